"""--position_concepts: object phrases that say where the object is, as concepts of the world's images"""
import pytest

import runtime
import train
import world


def test_position_phrase_names_the_cell():
    obj = lambda cell: dict(colour="red", shape="circle", cell=cell)  # noqa: E731
    assert [world.position_phrase(obj(c)) for c in range(4)] == [
        "a red circle at the top left", "a red circle at the top right",
        "a red circle at the bottom left", "a red circle at the bottom right"]
    assert world.GRID == 2  # the phrases above cover the grid


def test_add_and_only():
    objs = [dict(colour="red", shape="circle", cell=0), dict(colour="orange", shape="star", cell=3)]
    cons = [["a red circle", "an orange star", "a red circle left of an orange star"]]
    where = ["a red circle at the top left", "an orange star at the bottom right"]
    assert world.with_position_concepts(cons, [objs]) == [cons[0] + where]
    assert world.with_position_concepts(cons, [objs], only=True) == [["a red circle left of an orange star"] + where]


def test_default_vocabulary_unchanged():
    assert world.world_vocabulary() == world.world_vocabulary(positions=False)
    assert world.world_vocabulary(True, True)[:len(world.world_vocabulary(True))] == world.world_vocabulary(True)
    assert {"at", "top", "bottom", "left", "right"} <= set(world.world_vocabulary(positions=True))


@pytest.mark.parametrize("mode", ["add", "only"])
def test_position_concepts_reach_training(tmp_path, mode):
    cfg = train.Config(loss="c2lip", world_scenes=200, position_concepts=mode, out_dir=str(tmp_path))
    mcfg = runtime.load_start(cfg, log=lambda *a: None)[2]
    ds, tok = train.build_data(cfg, mcfg, log=lambda *a: None)
    for cons, objs in zip(ds.annotations["concepts"], ds.dataset.objects):
        where = {world.position_phrase(o) for o in objs}
        assert where <= set(cons)
        assert any(world.object_phrase(o) in cons for o in objs) == (mode == "add")
        for c in cons:  # every concept is made of words the tokenizer knows
            assert tok.UNK not in tok.encode([c])[0].tolist(), c


@pytest.mark.parametrize("flags,message", [
    (["--position_concepts=add"], "--position_concepts adds to the concept losses; use it with --loss=c2lip"),
    (["--position_concepts=both", "--loss=c2lip"], "--position_concepts=both: expected one of"),
    (["--position_contrast=-1"], "--position_contrast=-1.0: a loss weight"),
    (["--position_contrast=1", "--data=missing.jsonl"], "--position_contrast: only the built-in world knows"),
    (["--position_contrast_final=0.5"], "--position_contrast_final=0.5: the weight of --position_contrast at"),
    (["--position_contrast=1", "--position_contrast_final=-2"], "--position_contrast_final=-2.0: the weight"),
])
def test_bad_position_flags_are_one_line(flags, message, capsys, tmp_path):
    from test_cli import SMALL, one_line_error
    assert message in one_line_error(flags + SMALL + [f"--out_dir={tmp_path}"], capsys)

# -----------------------------------------------------------------------------
# --position_contrast


def slow_position_contrast(v, y, owner, logit_scale, n_images, variants):
    """one object at a time: -log softmax of its own cell's phrase among its variants, averaged per image"""
    import math
    per_image = {}
    for start in range(0, len(owner), variants):
        i = int(owner[start])
        scores = [math.exp(logit_scale.item()) * float(v[i] @ y[start + k]) for k in range(variants)]
        top = max(scores)
        nll = -(scores[0] - top - math.log(sum(math.exp(s - top) for s in scores)))
        per_image.setdefault(i, []).append(nll)
    return sum(sum(x) / len(x) for x in per_image.values()) / n_images


def test_position_contrast_loss_against_one_object_at_a_time():
    import torch
    import losses
    torch.manual_seed(0)
    b, d, variants = 5, 8, 4
    objects = [2, 3, 1, 0, 2]  # image 3 has none: it adds nothing, and still counts in the mean
    v = torch.nn.functional.normalize(torch.randn(b, d, dtype=torch.float64), dim=-1).requires_grad_()
    owner = torch.tensor([i for i, n in enumerate(objects) for _ in range(n * variants)])
    y = torch.nn.functional.normalize(torch.randn(len(owner), d, dtype=torch.float64), dim=-1).requires_grad_()
    t = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    fast = losses.position_contrast_loss(v, y, owner, t, b, variants)
    assert fast.item() == pytest.approx(slow_position_contrast(v.detach(), y.detach(), owner, t.detach(), b, variants),
                                        rel=1e-12)
    # two ranks, each its own images (owners local) over the global image count, add up to the one-process loss
    cut = sum(objects[:2]) * variants
    halves = (losses.position_contrast_loss(v[:2], y[:cut], owner[:cut], t, b, variants)
              + losses.position_contrast_loss(v[2:], y[cut:], owner[cut:] - 2, t, b, variants))
    assert halves.item() == pytest.approx(fast.item(), rel=1e-12)
    g_fast = torch.autograd.grad(fast, (v, y, t))
    g_halves = torch.autograd.grad(halves, (v, y, t))
    for a, c in zip(g_fast, g_halves):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_position_variants_reach_training(tmp_path, monkeypatch):
    import concepts
    real = concepts.negatives_for

    def drop_every_third(*args, **kwargs):  # captions without K negatives are dropped: positions must follow
        negatives, keep = real(*args, **kwargs)
        return [n for j, n in enumerate(negatives) if j % 3], [i for j, i in enumerate(keep) if j % 3]
    monkeypatch.setattr(concepts, "negatives_for", drop_every_third)
    cfg = train.Config(loss="degla", world_scenes=300, position_contrast=1.0, out_dir=str(tmp_path))
    mcfg = runtime.load_start(cfg, log=lambda *a: None)[2]
    ds, tok = train.build_data(cfg, mcfg, log=lambda *a: None)
    assert "positions" in train.text_groups(cfg.loss, False, True)
    base, indices = ds.dataset.dataset, ds.dataset.indices  # the negatives' Subset over the world
    assert len(indices) == 200
    for i, phrases in zip(indices, ds.annotations["positions"]):
        objs = base.objects[i]
        assert len(phrases) == 4 * len(objs)
        for j, o in enumerate(objs):
            group = phrases[4 * j:4 * j + 4]
            assert group[0] == world.position_phrase(o) and len(set(group)) == 4
            assert all(p.startswith(world.object_phrase(o) + " at the ") for p in group)
        for p in phrases:
            assert tok.UNK not in tok.encode([p])[0].tolist(), p


def test_position_contrast_is_fp32_under_bf16_autocast():
    import torch
    import losses
    torch.manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    owner = torch.tensor([i for i in (0, 0, 1, 2, 3, 3) for _ in range(4)])
    y = torch.nn.functional.normalize(torch.randn(len(owner), 16), dim=-1)
    t = torch.tensor(2.3)
    ref = losses.position_contrast_loss(v.double(), y.double(), owner, t.double(), 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the GPU's bf16 path, emulated
        got = losses.position_contrast_loss(v, y, owner, t, 4, 4)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)  # bf16 matmuls would be off by ~1e-2


def test_position_contrast_schedule_reaches_the_loss(tmp_path):
    """--position_contrast_final: L_pos's weight goes linearly from --position_contrast (first step) to it (last);
    read back from the logged total, which is the weighted sum of the logged terms"""
    import json
    import cli
    from test_cli import SMALL
    argv = [a for a in SMALL if not a.startswith("--steps")] + ["--steps=3", "--loss=c2lip", "--position_contrast=3",
                                                               "--position_contrast_final=0", f"--out_dir={tmp_path}"]
    cli.run(train.main, train.Config, argv=argv)
    recs = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    cfg = train.Config()
    w = [(r["loss"] - r["con"] - cfg.npc_weight * r["npc"] - cfg.xac_weight * r["xac"]) / r["pos"] for r in recs]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert w == pytest.approx([3.0, 1.5, 0.0], abs=1e-4)
    const = train.Config(position_contrast=3.0, steps=3)
    assert [train.LOSS_WEIGHTS["pos"](const, s) for s in range(3)] == [3.0, 3.0, 3.0]
    assert train.LOSS_WEIGHTS["npc"](train.Config(position_contrast_final=0.0, steps=3), 2) == cfg.npc_weight

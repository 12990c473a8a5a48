import dataclasses
import json
import math
import os
import resource

import pytest

import torch

import train
from model import DualEncoder, model_config


def test_default_recipe_pins():
    # the two changes that keep every seed of the default run converging (METHOD.md §11); a change to either
    # needs the five-seed table again (python reproduce.py --parts=default)
    assert train.Config().warmup == 200
    stds = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = DualEncoder(model_config("tiny", vocab_size=64))
        stds += [m.text.positional_embedding.std().item(), m.text.token_embedding.weight.std().item()]
    assert all(abs(s - 0.02) < 0.002 for s in stds)


@pytest.mark.parametrize("flag,tensor", [("image_pos_std", lambda m: m.visual.pos_embed),
                                         ("text_pos_std", lambda m: m.text.positional_embedding)])
def test_pos_std_sets_the_start_and_nothing_else(tmp_path, flag, tensor):
    import runtime
    for std in (0.02, 0.4):  # the default's 0.02, and the flag's value reaching the model through train.Config
        cfg = train.Config(**{flag: std if std != 0.02 else 0.0})
        _, _, mcfg = runtime.load_start(cfg, log=lambda *a: None)
        torch.manual_seed(0)
        m = DualEncoder(dataclasses.replace(mcfg, vocab_size=64))
        assert tensor(m).std().item() == pytest.approx(std, rel=0.1)
        torch.manual_seed(0)
        ref = DualEncoder(model_config("tiny", vocab_size=64))
        same = [k for k, v in m.state_dict().items() if torch.equal(v, ref.state_dict()[k])]
        assert len(same) == len(ref.state_dict()) - (std != 0.02)  # every other tensor as the default draws it
    import checkpoint
    from model import WordTokenizer
    tok = WordTokenizer(["a", "red", "circle"], 8)
    checkpoint.save_checkpoint(str(tmp_path / "c.pt"), DualEncoder(model_config("tiny", vocab_size=tok.vocab_size)),
                               None, train.Config(), tok, 0)
    runtime.load_start(train.Config(init=str(tmp_path / "c.pt")), log=lambda *a: None)  # (a valid checkpoint)
    with pytest.raises(runtime.UsageError, match=f"--{flag}"):  # an init keeps its weights: the flag is refused
        runtime.load_start(train.Config(**{flag: 0.4}, init=str(tmp_path / "c.pt")), log=lambda *a: None)


TINY = "--steps=3 --warmup=1 --world_scenes=64 --batch_size=16 --eval_scenes=16 --log_every=1 --ckpt_every=3"


def reproduce_part(tmp_path, part="default", jobs=2, train_=True, default_args=TINY, **kw):
    import reproduce
    s = reproduce.Settings(out_dir=str(tmp_path), parts=part, default_args=default_args, jobs=jobs, train=train_, **kw)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reproduce.main(s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reproduce_part.children_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with open(tmp_path / f"results_{part}.json") as f:
        return json.load(f), (tmp_path / f"results_{part}.md").read_text()


def test_default_part_runs_in_parallel_with_timing_and_mean_std(tmp_path):
    import reproduce
    res, md = reproduce_part(tmp_path, default_seeds="0,1")
    (name, done), = res["runs"].items()
    assert name == "python train.py " + TINY and [r["seed"] for r in done] == [0, 1]
    t = [r["timing"] for r in done]
    for one in t:
        assert one["returncode"] == 0 and 0 < one["cpu_s"] <= one["wall_s"] + 2
        assert f"| {one['wall_s'] / 60:.1f} min | {one['cpu_s'] / 60:.1f} min |" in md
    # each run's own CPU time: together they are the CPU time of all children, not more
    assert sum(one["cpu_s"] for one in t) == pytest.approx(reproduce_part.children_cpu, abs=0.2)
    assert t[0]["started"] < t[1]["ended"] and t[1]["started"] < t[0]["ended"]  # both ran at once
    # each cell of the table: mean and sample std over the seeds, computed here, and each seed's own row
    for key, _ in reproduce.COLUMNS:
        vals = [100 * r["metrics"][key] for r in done]
        mean, std = sum(vals) / 2, abs(vals[0] - vals[1]) / math.sqrt(2)
        assert f"{mean:.1f} ± {std:.1f}" in md
    assert "| seed 0 |" in md and "| seed 1 |" in md
    # the run is train.py's own, with its own evaluation
    with open(tmp_path / "default_s0" / "eval.json") as f:
        assert json.load(f) == done[0]["metrics"]
    # the same call again reuses both runs (no new timing) and says which seed is missing
    before = [os.path.getmtime(p) for p in tmp_path.glob("default_s0/timing.json")]
    res2, md2 = reproduce_part(tmp_path, default_seeds="0,1,2", train_=False)
    assert [r["seed"] for r in res2["runs"][name]] == [0, 1] and "(2 of 3 seeds: 0, 1)" in md2
    assert [os.path.getmtime(p) for p in tmp_path.glob("default_s0/timing.json")] == before


def test_default_part_one_job_runs_one_at_a_time(tmp_path):
    res, md = reproduce_part(tmp_path, default_seeds="0,1", jobs=1)
    a, b = [r["timing"] for r in next(iter(res["runs"].values()))]
    assert a["ended"] <= b["started"]


def test_scratch_and_compositional_parts_run_every_row(tmp_path, monkeypatch):
    import reproduce
    rows = [("SigLIP", ""), ("C2LIP", "--loss=c2lip")]
    monkeypatch.setattr(reproduce, "SCRATCH_ROWS", rows)
    monkeypatch.setattr(reproduce, "COMPOSITIONAL_ROWS", rows[1:])
    tiny = dict(scratch_seeds="0,1", scratch_steps=2, world_scenes=64, batch_size=16, eval_scenes=16)
    res, md = reproduce_part(tmp_path, "scratch", **tiny)
    assert sorted(res["runs"]) == ["C2LIP", "SigLIP"] and all(len(v) == 2 for v in res["runs"].values())
    with open(tmp_path / "scratch_c2lip_s1" / "config.json") as f:
        cfg = json.load(f)
    cfg = cfg.get("config", cfg)
    assert (cfg["loss"], cfg["seed"], cfg["steps"], cfg["batch_size"], cfg["world_scenes"]) == ("c2lip", 1, 2, 16, 64)
    assert "| C2LIP |" in md and "| SigLIP |" in md and md.count(" min |") == 2 * 4  # wall and CPU of 4 runs
    res, md = reproduce_part(tmp_path, "compositional", **tiny)
    (seed, run), = [(r["seed"], r) for r in res["runs"]["C2LIP"] if r["seed"] == 0]
    assert "seen/swap_rel" in run["metrics"] and "unseen/swap_rel" in run["metrics"]
    assert "### Seen compositions" in md and "### Unseen compositions" in md


def test_mean_std_cell():
    import reproduce
    # mean 23.33, sample std sqrt(((10-23.33)^2 + (20-23.33)^2 + (40-23.33)^2) / 2) = 15.28
    assert reproduce.fmt([0.1, 0.2, 0.4]) == "23.3 ± 15.3"


def test_binding_scores_see_a_bag_of_words_text_tower():
    import figures
    import world
    from model import WordTokenizer
    tok = WordTokenizer(world.world_vocabulary(), 16)
    torch.manual_seed(0)
    m = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    with torch.no_grad():
        m.text.positional_embedding.zero_()  # no positions: a caption and its colour swap are the same multiset
    bag = figures.binding_scores(m, tok, n=40)
    assert bag["text_swap_cos"] == pytest.approx(1.0, abs=1e-5)  # (swap_acc is then a coin toss on rounding)
    with torch.no_grad():
        m.text.positional_embedding.normal_(std=0.5)
    order = figures.binding_scores(m, tok, n=40)
    assert order["text_swap_cos"] < 1 - 2e-5  # at init the embeddings are close, but no longer equal
    assert -1 < order["image_cos"] < 1 and -1 < order["caption_cos"] < 1


def test_relation_scores_agree_with_the_benchmark_scorer(tmp_path):
    # swap_acc is the evaluator's swap_rel accuracy on the same folder; a text tower without positions reads a
    # relation caption and its swap as one bag of words (cosine 1; swap_acc then a coin toss on rounding)
    import evaluate
    import figures
    import world
    from model import WordTokenizer
    tok = WordTokenizer(world.world_vocabulary(True), 16)
    folder = world.export_world_relations(str(tmp_path / "rel"), 60, 3, part="seen")
    torch.manual_seed(0)
    m = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    with torch.no_grad():
        m.text.positional_embedding.normal_(std=0.5)
    mine = figures.relation_scores(m, tok, folder)
    theirs = evaluate.eval_sugarcrepe(evaluate.Encoder(m, tok, "cpu", 32), folder, os.path.join(folder, "images"), False,
                                      prefix="relation")
    with open(os.path.join(folder, "swap_rel.json")) as f:
        assert mine["records"] == len(json.load(f)) >= 50 and mine["text_swap_cos"] < 1 - 2e-5
    assert mine["swap_acc"] == pytest.approx(next(r["metrics"]["acc"] for r in theirs if r["dataset"] == "relation/swap_rel"),
                                             abs=1e-6)  # one record of 56 would move it by 0.018
    # the mirror score, against each record's scene and its mirror encoded one at a time here
    import numpy as np
    import data
    with open(os.path.join(folder, "swap_rel.json")) as f:
        names = [r["filename"] for r in json.load(f).values()]
    cos = []
    with torch.no_grad():
        for name in names:
            img = data.to_tensor(np.array(data.load_image(os.path.join(folder, "images", name))))[None]
            cos.append((m.encode_image(img)[0] * m.encode_image(torch.flip(img, dims=[3]))[0]).sum().item())
    assert mine["image_mirror_cos"] == pytest.approx(sum(cos) / len(cos), abs=1e-5) and max(cos) < 1 - 1e-4
    with torch.no_grad():
        m.text.positional_embedding.zero_()
    bag = figures.relation_scores(m, tok, folder)
    assert bag["text_swap_cos"] == pytest.approx(1.0, abs=1e-5)


def test_position_scores_against_one_object_at_a_time():
    import data
    import figures
    import world
    from model import WordTokenizer
    tok = WordTokenizer(world.world_vocabulary(True, True), 16)
    torch.manual_seed(1)
    m = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size)).eval()
    with torch.no_grad():
        m.visual.pos_embed.normal_(std=0.5)  # an image tower that sees where things are, a little
    mine = figures.position_scores(m, tok, n=40, seed=2)
    images, _, objects = world.make_world(40, 2, 32, split="test", relations=True)
    right, n = {"left_right": 0, "top_bottom": 0}, 0
    with torch.no_grad():
        for img, objs in zip(images, objects):
            x = m.encode_image(data.to_tensor(img)[None])[0][0]
            for o in objs:
                r, c = divmod(o["cell"], 2)
                score = lambda cell: (m.encode_text(tok.encode([world.position_phrase({**o, "cell": cell})]))[0] @ x).item()  # noqa: E731
                right["left_right"] += score(o["cell"]) > score(2 * r + 1 - c)
                right["top_bottom"] += score(o["cell"]) > score(2 * (1 - r) + c)
                n += 1
    assert mine["objects"] == n == sum(len(o) for o in objects)
    assert mine["left_right"] == pytest.approx(right["left_right"] / n, abs=1.5 / n)  # one near-tie may round apart
    assert mine["top_bottom"] == pytest.approx(right["top_bottom"] / n, abs=1.5 / n)
    assert 0 < mine["left_right"] < 1 and 0 < mine["top_bottom"] < 1


def test_seeds_figure_scores_every_kept_checkpoint(tmp_path):
    import figures
    run = tmp_path / "run"
    train.main(train.Config(steps=4, warmup=1, world_scenes=64, batch_size=16, eval=False, ckpt_every=2, keep_ckpts=5,
                            log_every=1, out_dir=str(run)))
    figures.main(figures.CurvesConfig(runs=str(run), seeds=True, out=str(tmp_path / "seeds.png")))
    with open(run / "binding_scores.json") as f:
        assert [r["step"] for r in json.load(f)] == [2, 4]
    assert (tmp_path / "seeds.png").stat().st_size > 10_000


def test_scratch_siglip_row_is_the_default_run_at_the_default_budget(tmp_path, monkeypatch):
    import reproduce
    monkeypatch.setattr(reproduce, "SCRATCH_ROWS", [("SigLIP", ""), ("C2LIP", "--loss=c2lip")])
    metrics = {k: 0.5 for k, _ in reproduce.COLUMNS}
    for folder in ("default_s0", "scratch_c2lip_s0"):  # finished runs, as train.py and run_jobs leave them
        os.makedirs(tmp_path / folder)
        (tmp_path / folder / "eval.json").write_text(json.dumps(metrics))
        (tmp_path / folder / "timing.json").write_text(json.dumps({"wall_s": 60.0, "cpu_s": 50.0}))
    res, md = reproduce_part(tmp_path, "scratch", train_=False, scratch_seeds="0", default_args="")
    assert [r["seed"] for r in res["runs"]["SigLIP"]] == [0] and [r["seed"] for r in res["runs"]["C2LIP"]] == [0]
    assert not (tmp_path / "scratch_siglip_s0").exists()


def test_a_run_is_reused_only_for_the_same_flags_and_a_clean_exit(tmp_path, monkeypatch):
    import reproduce
    launched = []

    def fake_jobs(runs, jobs, returncode=0):  # what run_jobs leaves behind, without training
        for out_dir, argv in runs:
            launched.append(reproduce.run_flags(argv))
            os.makedirs(out_dir, exist_ok=True)
            (open(os.path.join(out_dir, "eval.json"), "w")).write(json.dumps({k: 0.5 for k, _ in reproduce.COLUMNS}))
            (open(os.path.join(out_dir, "timing.json"), "w")).write(json.dumps(
                {"wall_s": 1.0, "cpu_s": 1.0, "returncode": fake_jobs.rc, "flags": reproduce.run_flags(argv)}))
    fake_jobs.rc = 0
    monkeypatch.setattr(reproduce, "run_jobs", fake_jobs)
    run = lambda args, train_=True: reproduce_part(tmp_path, default_seeds="0", default_args=args, train_=train_)[0]
    run("--steps=5")
    run("--steps=5")
    assert launched == [["--steps=5", "--threads=1", "--seed=0"]]  # the second call reused it
    res = run("--steps=6")  # other flags, same folder: trained again, not reused
    assert len(launched) == 2 and [r["timing"]["flags"] for r in res["runs"]["python train.py --steps=6"]] == [launched[1]]
    fake_jobs.rc = 1
    res = run("--steps=7")  # a run that failed is not tabulated ...
    assert res["runs"]["python train.py --steps=7"] == []
    fake_jobs.rc = 0
    run("--steps=7")  # ... and runs again next time
    assert len(launched) == 4
    res = run("--steps=8", train_=False)  # --train=false tabulates what is there, whatever made it
    assert len(launched) == 4 and len(res["runs"]["python train.py --steps=8"]) == 1


def test_device_setting_reaches_every_run(tmp_path, monkeypatch):
    """reproduce.py --device=cuda: each train.py run gets --device, and the timing header says where they ran"""
    import reproduce
    launched = []

    def fake_jobs(runs, jobs):
        for out_dir, argv in runs:
            launched.append(reproduce.run_flags(argv))
            os.makedirs(out_dir, exist_ok=True)
            (open(os.path.join(out_dir, "eval.json"), "w")).write(json.dumps({k: 0.5 for k, _ in reproduce.COLUMNS}))
            (open(os.path.join(out_dir, "timing.json"), "w")).write(json.dumps(
                {"wall_s": 1.0, "cpu_s": 1.0, "returncode": 0, "flags": reproduce.run_flags(argv)}))
    monkeypatch.setattr(reproduce, "run_jobs", fake_jobs)
    monkeypatch.setattr(reproduce, "SCRATCH_ROWS", [("SigLIP", ""), ("C2LIP", "--loss=c2lip")])
    _, md = reproduce_part(tmp_path, "scratch", scratch_seeds="0", default_args="", device="cuda")
    assert sorted(launched) == [["--loss=c2lip", "--threads=1", "--device=cuda", "--seed=0"],
                                ["--threads=1", "--device=cuda", "--seed=0"]]
    assert "1 thread(s) each on cuda" in md
    launched.clear()
    reproduce_part(tmp_path, "default", default_seeds="1", default_args="", device="cuda")
    assert launched == [["--threads=1", "--device=cuda", "--seed=1"]]

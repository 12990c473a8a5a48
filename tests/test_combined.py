"""--loss=c2lip+degla: the combined objective is exactly C2LIP's concept terms plus DeGLA's terms on the same
embeddings (float64), trains the bias that --loss=degla freezes, and runs end to end on the compositional world.
Its 2-process gloo parity test is in test_distributed.py."""
import json
import math
import os

import torch
import torch.nn.functional as F

import test_degla
import train


def embeddings(B=5, K=3, T=4, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=gen, dtype=torch.float64), dim=-1)
    counts = [1, 3, 2, 1, 2][:B]
    owner = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])
    emb = {"image": unit(B, d), "captions": unit(B, d), "patch_tokens": unit(B, T, d), "concepts": unit(len(owner), d),
           "negatives": unit(B * K, d)}
    emb = {k: v.requires_grad_() for k, v in emb.items()}
    teacher = {"image": unit(B, d), "text": {"captions": unit(B, d), "negatives": unit(B * K, d)}}
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    return emb, teacher, owner, t, b


def terms_of(loss, emb, teacher, owner, t, b):
    groups = {"c2lip": ["concepts"], "degla": ["negatives"], "c2lip+degla": ["concepts", "negatives"]}[loss]
    out = {"image": emb["image"], "text": {k: emb[k] for k in ["captions"] + groups}, "patch_tokens": emb["patch_tokens"],
           "logit_scale": t, "logit_bias": b}
    cfg = train.Config(loss=loss, batch_size=emb["image"].shape[0])
    terms = train.compute_losses(out, {"owner": {"concepts": owner}, "teacher": teacher}, cfg, [emb["image"].shape[0]])
    return terms, sum(train.LOSS_WEIGHTS[k](cfg, 0) * v for k, v in terms.items())


def test_combined_is_the_concept_terms_plus_the_degla_terms():
    emb, teacher, owner, t, b = embeddings()
    combined, total = terms_of("c2lip+degla", emb, teacher, owner, t, b)
    c2lip, _ = terms_of("c2lip", emb, teacher, owner, t, b)
    degla, _ = terms_of("degla", emb, teacher, owner, t, b)
    # L_base replaces L_con; the concept terms and DeGLA's terms are unchanged by the combination
    assert list(combined) == ["base", "npc", "xac", "igc", "tgc", "distill"]
    for k in ("npc", "xac"):
        torch.testing.assert_close(combined[k], c2lip[k])
    for k in ("base", "igc", "tgc", "distill"):
        torch.testing.assert_close(combined[k], degla[k])
    # and so are the gradients of the weighted sum: the concept part's plus the DeGLA part's
    cfg = train.Config(batch_size=emb["image"].shape[0])  # the distillation weight depends on it
    parts = sum(train.LOSS_WEIGHTS[k](cfg, 0) * c2lip[k] for k in ("npc", "xac")) + \
        sum(train.LOSS_WEIGHTS[k](cfg, 0) * degla[k] for k in ("base", "igc", "tgc", "distill"))
    inputs = [*emb.values(), t, b]
    for g, r in zip(torch.autograd.grad(total, inputs), torch.autograd.grad(parts, inputs)):
        torch.testing.assert_close(g, r)


def test_bias_trains_in_the_combination_only():
    emb, teacher, owner, t, b = embeddings(seed=1)
    _, total = terms_of("c2lip+degla", emb, teacher, owner, t, b)
    assert torch.autograd.grad(total, b)[0].abs() > 0
    _, degla = terms_of("degla", emb, teacher, owner, t, b)
    assert torch.autograd.grad(degla, b, allow_unused=True)[0] is None  # softmax losses: no gradient for b


def run_train(out_dir, *args):
    # test_degla's short run, with the combined loss on the compositional world (a later flag wins)
    return test_degla.run_train(out_dir, "--loss=c2lip+degla", "--world_split=compositional", "--relations", *args)


def test_train_combined_smoke_and_resume(tmp_path):
    full = run_train(str(tmp_path / "full"), "--steps=3")
    recs = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("loss", "base", "npc", "xac", "igc", "tgc", "distill"))
    assert recs[0]["distill"] == 0.0 and recs[-1]["distill"] > 0.0
    assert full["model"]["logit_bias"].item() != -10.0  # trained (frozen under --loss=degla)
    assert "teacher" in full
    run_train(str(tmp_path / "part"), "--steps=2")
    resumed = run_train(str(tmp_path / "part"), "--steps=3", "--resume")
    for name in ("model", "teacher"):
        for k in full[name]:
            torch.testing.assert_close(resumed[name][k], full[name][k], rtol=0, atol=1e-6)

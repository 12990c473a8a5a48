"""The training objective, wired end to end, against losses.* calls written out here.

At world size 1, in float64, for every --loss and with a non-default value of every weight and loss option,
train.train_step is run on a fake forward and teacher (fixed embeddings, so that nothing but the objective is
under test): each term train.compute_losses returns, the weighted total train_step backpropagates and the
gradient of every embedding must equal the reference below, which spells out each weight and each option. The
logged `loss` must equal the weighted sum of the logged terms."""
import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import losses
import runtime
import train

B, D, K, T, L = 6, 8, 3, 5, 7       # images, width, negatives per caption, patch tokens, token length
OWNER = [0, 0, 1, 2, 2, 2, 3, 5, 5]  # image 4 has no concept

# every weight and option away from its default (asserted below), and the batch the distillation scaling reads
OPTIONS = dict(npc_weight=0.7, xac_weight=0.3, xac_temperature=2.5, xac_chunk=2, igc_weight=0.45, tgc_weight=0.2,
               distill_weight=0.02, distill_ref_batch=64, tgc_scale=4.0, tgc_mask="official", base_own_only=True,
               num_negatives=K, batch_size=B)
# the weights, written out: a swapped or rescaled weight in train.py must not match these
W_NPC, W_XAC, W_IGC, W_TGC = 0.7, 0.3, 0.45, 0.2
W_DISTILL = 0.02 * 64 / 6  # lambda_3 x ref_batch / batch


def test_options_are_not_the_defaults():
    default = train.Config()
    for k, v in OPTIONS.items():
        if k not in ("xac_chunk",):  # chunking changes memory, not values
            assert getattr(default, k) != v, k


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def make_case(loss):
    """(batch, student leaves, teacher outputs) for one step of `loss`"""
    g = torch.Generator().manual_seed(7)
    batch = {"images": torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64),
             "texts": {"captions": torch.randint(0, 50, (B, L), generator=g)}, "owner": {}, "skipped": []}
    concepts, negatives = train.uses_concepts(loss), train.uses_negatives(loss)
    if concepts:
        batch["texts"]["concepts"] = torch.randint(0, 50, (len(OWNER), L), generator=g)
        batch["owner"]["concepts"] = torch.tensor(OWNER)
    if negatives:
        batch["texts"]["negatives"] = torch.randint(0, 50, (B * K, L), generator=g)
    batch["rows"] = {k: torch.arange(v.shape[0]) for k, v in batch["texts"].items()}
    leaves = {"image": unit(B, D, seed=1), "captions": unit(B, D, seed=2),
              "patch_tokens": unit(B, T, D, seed=3),
              "logit_scale": torch.tensor(1.3, dtype=torch.float64), "logit_bias": torch.tensor(-2.1, dtype=torch.float64)}
    if concepts:
        leaves["concepts"] = unit(len(OWNER), D, seed=4)
    if negatives:
        leaves["negatives"] = unit(B * K, D, seed=9)
    for v in leaves.values():
        v.requires_grad_(True)
    teacher = {"image": unit(B, D, seed=5), "text": {"captions": unit(B, D, seed=6), "negatives": unit(B * K, D, seed=8)}}
    return batch, leaves, teacher if negatives else None


def as_output(leaves):
    """the model's output layout: texts by name under out["text"]"""
    out = {k: v for k, v in leaves.items() if k not in ("captions", "concepts", "negatives")}
    out["text"] = {k: leaves[k] for k in ("captions", "concepts", "negatives") if k in leaves}
    return out


def run_step(loss, batch, leaves, teacher_out):
    """train.train_step with a fake forward and teacher that check what they are handed"""
    cfg = train.Config(loss=loss, **OPTIONS)
    calls = []

    def forward(images, texts, rows, return_tokens=False):
        assert set(texts) == set(rows) == set(batch["texts"]) == {"captions", *train.text_groups(loss)}
        assert all(torch.equal(texts[k], batch["texts"][k]) and torch.equal(rows[k], batch["rows"][k]) for k in texts)
        assert return_tokens == train.uses_concepts(loss)
        calls.append("student")
        return as_output(leaves)

    def teacher(images, texts, rows):
        assert set(texts) == set(rows) == {"captions", "negatives"}  # captions and negatives, never concepts
        assert all(torch.equal(texts[k], batch["texts"][k]) and torch.equal(rows[k], batch["rows"][k]) for k in texts)
        calls.append("teacher")
        return teacher_out

    env = SimpleNamespace(device=torch.device("cpu"), use_cuda=False, world=1, ddp=False, master=True, rank=0)
    report = SimpleNamespace(add_skipped=lambda skipped, n: None)
    total, terms, n = train.train_step(dict(batch), forward, teacher if teacher_out else None, cfg, env, report)
    assert n == B and calls == ["student"] + (["teacher"] if teacher_out else [])
    return cfg, total, terms


def reference(loss, batch, x, teacher_out):
    """{term: value} and the weighted total, every call and weight spelled out"""
    t, b = x["logit_scale"], x["logit_bias"]
    ref = {}
    if train.uses_negatives(loss):
        q, tea = x["negatives"], teacher_out["text"]
        ref["base"] = losses.degla_base_loss(x["image"], x["image"], x["captions"], q, t, 0, own_only=True)
        ref["igc"] = losses.igc_loss(x["image"], x["captions"], q, t, 0)
        ref["tgc"] = losses.tgc_loss(x["captions"], tea["captions"], q, 0, scale=4.0, mask="official")
        ref["distill"] = losses.distill_loss((x["image"], x["captions"], q),
                                             (teacher_out["image"], tea["captions"], tea["negatives"]))
    else:
        ref["con"] = losses.siglip_loss(x["image"], x["captions"], t, b, 0)
    if train.uses_concepts(loss):
        c, owner = x["concepts"], torch.tensor(OWNER)
        ref["npc"] = losses.concept_loss(x["image"], c, owner, t, b, 0)
        ref["xac"] = losses.xattn_concept_loss(x["patch_tokens"], c, owner, t, b, 0, temperature=2.5)
    weights = {"con": 1.0, "base": 1.0, "npc": W_NPC, "xac": W_XAC, "igc": W_IGC, "tgc": W_TGC, "distill": W_DISTILL}
    return ref, sum(weights[k] * v for k, v in ref.items())


@pytest.mark.parametrize("loss", ["siglip", "c2lip", "degla", "c2lip+degla"])
def test_terms_total_and_gradients_match_direct_calls(loss, tmp_path):
    batch, leaves, teacher_out = make_case(loss)
    cfg, total, terms = run_step(loss, batch, leaves, teacher_out)
    grads = {k: v.grad.clone() for k, v in leaves.items() if v.grad is not None}
    ref, ref_total = reference(loss, batch, leaves, teacher_out)
    assert set(terms) == set(ref)
    for k in ref:
        assert terms[k].dtype == torch.float64
        torch.testing.assert_close(terms[k], ref[k], rtol=1e-12, atol=1e-12, msg=lambda m: f"{loss} {k}: {m}")
    torch.testing.assert_close(total, ref_total, rtol=1e-12, atol=1e-12)
    ref_grads = torch.autograd.grad(ref_total, list(leaves.values()), allow_unused=True)
    for (name, leaf), g in zip(leaves.items(), ref_grads):
        if g is None:
            assert name not in grads or not grads[name].any(), name
        else:
            torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=lambda m: f"{loss} d/d{name}: {m}")

    # the logged line: its loss is the weighted sum of its logged terms
    cfg.out_dir = str(tmp_path)
    env = SimpleNamespace(ddp=False, master=True)
    model = SimpleNamespace(logit_scale=leaves["logit_scale"].detach(), logit_bias=leaves["logit_bias"].detach())
    logger = runtime.Logger(cfg, env, 0)
    logger.log_step(1, total, terms, 1e-3, model)
    logger.close()
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rec = json.loads(f.readline())
    weights = {"con": 1.0, "base": 1.0, "npc": W_NPC, "xac": W_XAC, "igc": W_IGC, "tgc": W_TGC, "distill": W_DISTILL}
    assert rec["loss"] == pytest.approx(sum(weights[k] * rec[k] for k in ref), rel=1e-5)


@pytest.mark.parametrize("option, default", [("xac_temperature", 1.0), ("tgc_scale", 10.0), ("tgc_mask", "own"),
                                             ("base_own_only", False)])
def test_each_option_changes_the_reference(option, default):
    # the options above must move the value, or the test could not see them dropped on the way to losses.*
    _, leaves, teacher_out = make_case("c2lip+degla")
    x, q, c, y_t = leaves, leaves["negatives"], leaves["concepts"], teacher_out["text"]["captions"]
    t, b, owner = x["logit_scale"], x["logit_bias"], torch.tensor(OWNER)
    value = {
        "xac_temperature": lambda v: losses.xattn_concept_loss(x["patch_tokens"], c, owner, t, b, 0, temperature=v),
        "tgc_scale": lambda v: losses.tgc_loss(x["captions"], y_t, q, 0, scale=v),
        "tgc_mask": lambda v: losses.tgc_loss(x["captions"], y_t, q, 0, mask=v),
        "base_own_only": lambda v: losses.degla_base_loss(x["image"], x["image"], x["captions"], q, t, 0, own_only=v),
    }[option]
    assert abs(value(OPTIONS[option]).item() - value(default).item()) > 1e-3
    # TGC's positive is the teacher's caption: its image embedding gives another value
    assert abs(losses.tgc_loss(x["captions"], teacher_out["image"], q).item()
               - losses.tgc_loss(x["captions"], y_t, q).item()) > 1e-3

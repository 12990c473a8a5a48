"""Each distinct text once (data.Collate, model.encode_texts): the text tower encodes every distinct text of a
group once and the step indexes the result, so the loss terms and every gradient equal those of a step that
encodes every text (distinct=False, the reference), in float64 and in float32 to rounding. The 2-rank DDP
case is in test_ddp_step.py (its reference encodes every text on one process)."""
from types import SimpleNamespace

import pytest
import torch

import data
import train
import world
from model import WordTokenizer
from test_ddp_step import setup


def test_collate_keeps_each_distinct_text_once():
    tok = WordTokenizer(world.world_vocabulary(), 8)
    ds = world.WorldDataset(4, seed=0)
    # repeats within an image, across images, and two strings with the same token ids (case, punctuation)
    concepts = [["a red circle", "a blue square"], ["a red circle"], ["A red circle!", "a green star"], []]
    items = [dict(ds[i], concepts=c) for i, c in enumerate(concepts)]
    every = data.Collate(tok, 32, ("concepts",), distinct=False)(items)
    batch = data.Collate(tok, 32, ("concepts",))(items)
    assert batch["texts"]["concepts"].shape == (3, 8)  # a red circle, a blue square, a green star
    rows = batch["rows"]["concepts"].tolist()
    assert rows[0] == rows[2] == rows[3] and len(set(rows)) == 3
    assert torch.equal(batch["texts"]["concepts"][batch["rows"]["concepts"]], every["texts"]["concepts"])
    assert torch.equal(every["rows"]["concepts"], torch.arange(5)) and every["texts"]["concepts"].shape == (5, 8)
    assert torch.equal(batch["owner"]["concepts"], every["owner"]["concepts"])
    # captions keep a row each, repeated or not: a SigLIP step is exactly what it was
    captions = data.Collate(tok, 32, ("concepts",))(items + items[:2])
    assert torch.equal(captions["rows"]["captions"], torch.arange(6)) and captions["texts"]["captions"].shape == (6, 8)


def with_repeats(loss):
    """test_ddp_step's setup with the first scenes again at the end, so that captions, concepts and negatives
    all repeat in the batch"""
    cfg, model, teacher, items, _ = setup(loss)
    items = items + [dict(it) for it in items[:3]]
    return cfg, model, teacher, items


def step(cfg, model, teacher, items, distinct, dtype):
    """one train_step on one process -> (loss terms, gradients by parameter name)"""
    model, teacher = model.to(dtype), teacher.to(dtype) if teacher is not None else None
    model.zero_grad(set_to_none=True)
    tok = WordTokenizer(world.world_vocabulary(), 16)
    batch = data.Collate(tok, model.cfg.image_size, train.text_groups(cfg.loss), distinct)(items)
    if distinct:  # the case really has repeats to merge in every group
        groups = [k for k in batch["texts"] if k != "captions"]
        assert all(batch["texts"][k].shape[0] < batch["rows"][k].shape[0] for k in groups)
    batch["images"] = batch["images"].to(dtype)
    env = SimpleNamespace(device=torch.device("cpu"), use_cuda=False, world=1)
    _, terms, _ = train.train_step(batch, model, teacher, cfg, env, SimpleNamespace(add_skipped=lambda *a: None))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("loss", ["c2lip", "degla", "c2lip+degla"])
def test_distinct_texts_step_equals_every_text(loss, dtype, tol):
    cfg, model, teacher, items = with_repeats(loss)
    ref_terms, ref_grads = step(cfg, model, teacher, items, False, dtype)
    terms, grads = step(cfg, model, teacher, items, True, dtype)
    assert set(terms) == set(ref_terms) and set(grads) == set(ref_grads)
    for k, v in ref_terms.items():
        torch.testing.assert_close(terms[k], v, rtol=tol, atol=tol, msg=lambda m: f"{k}: {m}")
    for name, g in ref_grads.items():
        assert g.abs().sum() > 0 or name == "logit_bias", name
        # to rounding: relative to the largest entry (a gradient summed in another order cancels differently)
        torch.testing.assert_close(grads[name], g, rtol=tol, atol=tol * g.abs().max().item(), msg=lambda m: f"{name}: {m}")

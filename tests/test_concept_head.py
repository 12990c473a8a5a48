"""--concept_head: a second MAP head pools the image for C2LIP's concept losses (L_npc, and L_xac's patch
tokens), so that they no longer shape the embedding the caption losses use (METHOD.md §12)."""
import copy

import pytest
import torch

import runtime
import train
from test_compile import setup
from model import DualEncoder

NO_REPORT = type("NoReport", (), {"add_skipped": staticmethod(lambda skipped, n: None)})
ENV = runtime.Env(rank=0, world=1, local_rank=0, device=torch.device("cpu"), ddp=False, use_cuda=False)


def with_head(model, same=True):
    """the model with a concept head: a copy of its MAP head (same=True) or a fresh one"""
    cfg = copy.deepcopy(model.cfg)
    cfg.concept_head = True
    torch.manual_seed(1)
    twin = DualEncoder(cfg)
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("visual.concept_pool.") for k in missing) and missing
    if same:
        twin.visual.concept_pool.load_state_dict(model.visual.attn_pool.state_dict())
    return twin


def step(loss, model, teacher, batch, terms_to_backward=None):
    cfg = train.Config(loss=loss, batch_size=8, num_negatives=4)
    model.zero_grad(set_to_none=True)
    if terms_to_backward is None:
        _, terms, _ = train.train_step(copy.deepcopy(batch), model, teacher, cfg, ENV, NO_REPORT)
        return terms
    # forward as train_step does, backward through the chosen terms only
    b = copy.deepcopy(batch)
    b["sizes"] = {"images": [b["images"].shape[0]], **{k: [v.shape[0]] for k, v in b["rows"].items()}}
    out = model(b["images"], b["texts"], b["rows"], return_tokens=True)
    if teacher is not None:
        with torch.no_grad():
            b["teacher"] = teacher(b["images"], {k: b["texts"][k] for k in train.TEACHER_TEXTS},
                                   {k: b["rows"][k] for k in train.TEACHER_TEXTS})
    terms = train.compute_losses(out, b, cfg, [b["images"].shape[0]])
    sum(terms[k] for k in terms_to_backward).backward()
    return terms


@pytest.mark.parametrize("loss", ["c2lip", "c2lip+degla"])
def test_a_copied_head_computes_the_same_step(loss):
    """a concept head equal to the MAP head: the same loss terms, and the two heads' gradients add up to the one
    head's gradient; every other parameter's gradient unchanged"""
    torch.set_default_dtype(torch.float64)
    try:
        batch, model, teacher = setup(loss)
        batch["images"] = batch["images"].double()
        model, teacher = model.double(), teacher.double() if teacher is not None else None
        twin = with_head(model).double()
        teacher_twin = with_head(teacher).double() if teacher is not None else None
        ref = step(loss, model, teacher, batch)
        got = step(loss, twin, teacher_twin, batch)
    finally:
        torch.set_default_dtype(torch.float32)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-12, msg=lambda m: f"{k}: {m}")
    grads = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        if name.startswith("visual.attn_pool."):
            g = grads[name].grad + grads[name.replace("attn_pool", "concept_pool")].grad
        else:
            g = grads[name].grad
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_concept_losses_reach_only_the_concept_head_and_caption_loss_only_the_main_one():
    batch, model, _ = setup("c2lip")
    twin = with_head(model, same=False)
    step("c2lip", twin, None, batch, ["npc", "xac"])
    heads = {n: p.grad for n, p in twin.named_parameters() if ".attn_pool." in n or ".concept_pool." in n}
    assert all(g is None or not g.any() for n, g in heads.items() if ".attn_pool." in n)
    assert all(g is not None and g.any() for n, g in heads.items() if ".concept_pool." in n)
    assert twin.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the shared trunk learns from both
    step("c2lip", twin, None, batch, ["con"])
    heads = {n: p.grad for n, p in twin.named_parameters() if ".attn_pool." in n or ".concept_pool." in n}
    assert all(g is None or not g.any() for n, g in heads.items() if ".concept_pool." in n)
    assert all(g is not None and g.any() for n, g in heads.items() if ".attn_pool." in n)


def test_off_by_default_and_the_default_model_unchanged():
    assert train.Config().concept_head is False
    torch.manual_seed(0)
    a = DualEncoder(setup("siglip")[1].cfg)
    assert not hasattr(a.visual, "concept_pool")


def test_concept_head_flag_mistakes(tmp_path):
    with pytest.raises(runtime.UsageError, match="--concept_head pools the image for the concept losses"):
        runtime.check_config(train.Config(loss="degla", concept_head=True), 1, train.LOSSES)
    runtime.check_config(train.Config(loss="c2lip+degla", concept_head=True), 1, train.LOSSES)
    mcfg = runtime.load_start(train.Config(concept_head=True), log=lambda *a: None)[2]
    assert mcfg.concept_head is True
    import checkpoint
    from model import WordTokenizer, model_config
    tok = WordTokenizer(["a", "red", "circle"], 8)
    checkpoint.save_checkpoint(str(tmp_path / "c.pt"), DualEncoder(model_config("tiny", vocab_size=tok.vocab_size)),
                               None, train.Config(), tok, 0)
    with pytest.raises(runtime.UsageError, match="--concept_head sets how a model starts from scratch"):
        runtime.load_start(train.Config(concept_head=True, init=str(tmp_path / "c.pt")), log=lambda *a: None)


def test_forward_with_a_concept_head_has_no_graph_break():
    batch, model, _ = setup("c2lip+degla")
    twin = with_head(model, same=False)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(twin)(batch["images"], batch["texts"], batch["rows"], return_tokens=True)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]


def test_evaluate_can_score_the_concept_head(tmp_path):
    """evaluate.py --image_head=concept: the image embedding is the concept head's pooling; refused without one"""
    import checkpoint
    import evaluate
    import torch.nn.functional as F
    from model import WordTokenizer
    batch, model, _ = setup("c2lip")
    twin = with_head(model, same=False).eval()
    x_main = twin.encode_image(batch["images"])[0]
    twin.image_head = "concept"
    x_c = twin.encode_image(batch["images"])[0]
    ref = F.normalize(twin.visual.concept_pool(twin.visual.trunk(batch["images"]))[0], dim=-1)
    torch.testing.assert_close(x_c, ref)
    assert not torch.allclose(x_c, x_main)
    tok = WordTokenizer(["a", "red", "circle"], 8)
    plain = DualEncoder(model.cfg)
    checkpoint.save_checkpoint(str(tmp_path / "p.pt"), plain, None, train.Config(), tok, 0)
    with pytest.raises(runtime.UsageError, match="has no concept head"):
        evaluate.main(evaluate.EvalConfig(ckpt=str(tmp_path / "p.pt"), image_head="concept", threads=1))

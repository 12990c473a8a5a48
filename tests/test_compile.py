"""--compile, checked on the CPU: the model's forward compiles without graph breaks for every combination of
text groups, and a compiled training step computes what the eager one does. The tests compile with the
aot_eager backend (dynamo's tracing and autograd graph, without inductor's C++ build, which takes about a minute
on the tiny model); train.py's --compile uses the default inductor backend over the same traced graphs."""
import copy

import pytest
import torch

import data
import runtime
import train
import world
from model import DualEncoder, WordTokenizer, model_config

GROUPS = {"siglip": (), "c2lip": ("concepts",), "degla": ("negatives",), "c2lip+degla": ("concepts", "negatives")}


def setup(loss):
    import concepts
    vocab = world.world_vocabulary()
    tok = WordTokenizer(vocab, 16)
    ds = world.WorldDataset(8, seed=4)
    items = [ds[i] for i in range(8)]
    for i, it in enumerate(items):
        if train.uses_concepts(loss):
            it["concepts"] = [world.object_phrase(o) for o in ds.objects[i]][: 1 + i % 3]
        if train.uses_negatives(loss):
            it["negatives"] = concepts.hard_negatives(it["caption"], 4, 0, set(vocab))
    batch = data.Collate(tok, 32, train.text_groups(loss))(items)
    torch.manual_seed(0)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    teacher = copy.deepcopy(model).requires_grad_(False) if train.uses_negatives(loss) else None
    return batch, model, teacher


@pytest.mark.parametrize("loss", list(GROUPS))
def test_forward_has_no_graph_break(loss):
    batch, model, _ = setup(loss)
    assert set(batch["texts"]) == {"captions", *GROUPS[loss]}
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(batch["images"], batch["texts"], batch["rows"], return_tokens=train.uses_concepts(loss))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("loss", list(GROUPS))
def test_compiled_step_equals_eager(loss):
    batch, model, teacher = setup(loss)
    cfg = train.Config(loss=loss, batch_size=8, num_negatives=4)
    env = runtime.Env(rank=0, world=1, local_rank=0, device=torch.device("cpu"), ddp=False, use_cuda=False)
    report = type("NoReport", (), {"add_skipped": staticmethod(lambda skipped, n: None)})
    compiled_model = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    ref_loss, ref_terms, _ = train.train_step(copy.deepcopy(batch), model, teacher, cfg, env, report)
    loss_c, terms_c, _ = train.train_step(copy.deepcopy(batch), compiled, teacher, cfg, env, report)
    torch.testing.assert_close(loss_c, ref_loss, rtol=1e-5, atol=1e-6)
    for k in ref_terms:
        torch.testing.assert_close(terms_c[k], ref_terms[k], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), compiled_model.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")

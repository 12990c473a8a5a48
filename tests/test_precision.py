"""Every loss computes in fp32 inside a bf16 autocast region (a `.float()` alone would not: autocast casts the
next matmul back to bf16). Each loss gets bf16 embeddings inside torch.autocast("cpu", bfloat16) and must return
an fp32 value equal to the same loss of the same (upcast) inputs computed in fp64."""

import pytest
import torch
import torch.nn.functional as F

import losses

B, K, T, D = 12, 3, 9, 32


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(torch.bfloat16)


@pytest.fixture(scope="module")
def inputs():
    owner = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11])
    return dict(x=unit(B, D, seed=0), y=unit(B, D, seed=1), c=unit(len(owner), D, seed=2), owner=owner,
                tokens=unit(B, T, D, seed=3), q=unit(B * K, D, seed=4), pt=unit(B, D, seed=5),
                scale=torch.tensor(2.3), bias=torch.tensor(-4.0))


CASES = {
    "siglip": lambda a: losses.siglip_loss(a["x"], a["y"], a["scale"], a["bias"]),
    "concept": lambda a: losses.concept_loss(a["x"], a["c"], a["owner"], a["scale"], a["bias"]),
    "xac": lambda a: losses.xattn_concept_loss(a["tokens"], a["c"], a["owner"], a["scale"], a["bias"], temperature=3.0),
    "xac_chunked": lambda a: losses.xattn_concept_loss(a["tokens"], a["c"], a["owner"], a["scale"], a["bias"],
                                                       temperature=3.0, chunk=5),
    "degla_base": lambda a: losses.degla_base_loss(a["x"], a["x"], a["y"], a["q"], a["scale"]),
    "degla_base_own": lambda a: losses.degla_base_loss(a["x"], a["x"], a["y"], a["q"], a["scale"], own_only=True),
    "igc": lambda a: losses.igc_loss(a["x"], a["y"], a["q"], a["scale"]),
    "tgc": lambda a: losses.tgc_loss(a["y"], a["pt"], a["q"], scale=10.0),
    "distill": lambda a: losses.distill_loss((a["x"], a["y"]), (a["pt"], a["x"])),
}


def as_fp64(a):
    return {k: v.double() if v.is_floating_point() else v for k, v in a.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_fp32_under_bf16_autocast(inputs, name):
    ref = CASES[name](as_fp64(inputs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = CASES[name](inputs)
    assert got.dtype == torch.float32, f"{name} returned {got.dtype} under bf16 autocast"
    assert abs(got.item() - ref.item()) <= 2e-6 * abs(ref.item()) + 1e-7, (name, got.item(), ref.item())


def test_bf16_matmul_would_differ(inputs):
    """the check above can fail: the same siglip logits computed by autocast's bf16 matmul are off by far more"""
    a = inputs
    ref = losses.siglip_loss(a["x"].double(), a["y"].double(), a["scale"], a["bias"]).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = a["scale"].exp() * (a["x"].float() @ a["y"].float().T) + a["bias"]
        assert logits.dtype == torch.bfloat16
        pos = torch.eye(B, dtype=torch.bool)
        naive = losses.sigmoid_loss(logits, pos, B).item()
    assert abs(naive - ref) > 2e-6 * abs(ref)


# -----------------------------------------------------------------------------
# --precision: the bf16 path of train_step runs on the CPU


def setup_apart(loss):
    """test_compile.setup's batch, model and teacher, the teacher moved away from the student (same each call), so
    that the distillation term is not ~0"""
    from test_compile import setup  # a world batch with every group, the tiny model, a teacher copy
    batch, model, teacher = setup(loss)
    if teacher is not None:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return batch, model, teacher


def first_step_terms(loss, precision):
    """the loss terms of train_step's first step on a small world batch, same weights and batch each call"""
    import runtime
    import train
    batch, model, teacher = setup_apart(loss)
    cfg = train.Config(loss=loss, precision=precision, batch_size=8)
    env = runtime.Env(rank=0, world=1, local_rank=0, device=torch.device("cpu"), ddp=False, use_cuda=False)
    report = type("NoReport", (), {"add_skipped": staticmethod(lambda skipped, n: None)})
    loss_value, terms, _ = train.train_step(batch, model, teacher, cfg, env, report)
    grads_dtype = {p.grad.dtype for p in model.parameters() if p.grad is not None}
    return loss_value, terms, grads_dtype


@pytest.mark.parametrize("loss", ["siglip", "c2lip", "degla", "c2lip+degla"])
def test_bf16_step_on_the_cpu(loss):
    import train
    assert train.Config().precision == "auto"  # auto = fp32 on the CPU: the default run's numbers do not move
    ref_total, ref, _ = first_step_terms(loss, "auto")
    total, terms, grads_dtype = first_step_terms(loss, "bf16")
    assert grads_dtype == {torch.float32}  # fp32 master weights, fp32 gradients
    assert set(terms) == set(ref)
    for k in ref:
        assert terms[k].dtype == torch.float32, k  # the loss runs in fp32 on bf16 embeddings
        rel = abs(terms[k].item() - ref[k].item()) / abs(ref[k].item())
        assert rel < 0.05, (k, terms[k].item(), ref[k].item())
    # bf16 really ran: the forward's rounding moves at least one term
    assert any(terms[k].item() != ref[k].item() for k in ref)
    assert abs(total.item() - ref_total.item()) / abs(ref_total.item()) < 0.05

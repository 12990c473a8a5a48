"""The GPU path on a real GPU. The CPU tests emulate bf16 autocast on the CPU; these run the same checks under
CUDA's autocast, and set the CUDA step beside the CPU one. Marked `cuda`: skipped where no GPU is visible (CI);
`python bench_gpu.py` runs them as its cuda_tests stage."""
import copy

import pytest
import torch

import runtime
import train
from test_compile import setup
from test_precision import CASES, as_fp64, inputs, setup_apart  # noqa: F401 (inputs is a fixture)

pytestmark = pytest.mark.cuda
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NO_REPORT = type("NoReport", (), {"add_skipped": staticmethod(lambda skipped, n: None)})


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off for these comparisons (train.py turns it on for speed); restored afterwards"""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on(device, a):
    return {k: v.to(device) for k, v in a.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_fp32_under_cuda_bf16_autocast(inputs, name):  # noqa: F811
    a = on(CUDA, inputs)
    ref = CASES[name](as_fp64(a))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = CASES[name](a)
    assert got.device.type == "cuda"
    assert got.dtype == torch.float32, f"{name} returned {got.dtype} under CUDA bf16 autocast"
    assert abs(got.item() - ref.item()) <= 2e-6 * abs(ref.item()) + 1e-7, (name, got.item(), ref.item())


def test_cuda_bf16_matmul_would_differ(inputs):  # noqa: F811
    """the check above can fail on this device: the logits' matmul left to CUDA's autocast runs in bf16"""
    a = on(CUDA, inputs)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = a["x"].float() @ a["y"].float().T
    assert logits.dtype == torch.bfloat16


def step(loss, device, precision, compile_backend=None):
    """(total, terms, {name: grad on the CPU}) of train_step's first step; same weights and batch on every call"""
    batch, model, teacher = setup_apart(loss)
    if teacher is not None:
        teacher.to(device)
    model.to(device)
    forward = model
    if compile_backend:
        torch._dynamo.reset()
        forward = torch.compile(model, backend=compile_backend)
    cfg = train.Config(loss=loss, precision=precision, batch_size=8, num_negatives=4)
    env = runtime.Env(rank=0, world=1, local_rank=0, device=device, ddp=False, use_cuda=device.type == "cuda")
    total, terms, _ = train.train_step(copy.deepcopy(batch), forward, teacher, cfg, env, NO_REPORT)
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return total, terms, grads


def assert_grads_close(got, ref, tol):
    """every gradient within tol of its own largest entry"""
    assert set(got) == set(ref)
    for n in ref:
        err = (got[n].float() - ref[n].float()).abs().max().item()
        assert err <= tol * ref[n].abs().max().item() + 1e-12, (n, err, ref[n].abs().max().item())


LOSSES = ["siglip", "c2lip", "degla", "c2lip+degla"]


@pytest.mark.parametrize("loss", LOSSES)
def test_cuda_fp32_step_equals_cpu(loss):
    ref_total, ref_terms, ref_grads = step(loss, CPU, "fp32")
    total, terms, grads = step(loss, CUDA, "fp32")
    for k in ref_terms:
        assert abs(terms[k].item() - ref_terms[k].item()) <= 1e-5 * abs(ref_terms[k].item()) + 1e-7, k
    assert_grads_close(grads, ref_grads, 1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_cuda_auto_is_bf16_with_fp32_losses_and_grads(loss):
    assert train.uses_bf16(train.Config(loss=loss), runtime.Env(0, 1, 0, CUDA, False, True))
    ref_total, ref_terms, ref_grads = step(loss, CUDA, "fp32")
    total, terms, grads = step(loss, CUDA, "auto")
    assert {g.dtype for g in grads.values()} == {torch.float32}
    for k in ref_terms:
        assert terms[k].dtype == torch.float32, k
        assert abs(terms[k].item() - ref_terms[k].item()) <= 0.05 * abs(ref_terms[k].item()), k
    assert any(terms[k].item() != ref_terms[k].item() for k in ref_terms)  # bf16 really ran
    assert abs(total.item() - ref_total.item()) <= 0.05 * abs(ref_total.item())


def test_auto_adamw_is_fused_on_cuda_and_steps_like_foreach():
    _, _, grads = step("c2lip+degla", CUDA, "fp32")
    params = {}
    for kind in ("auto", "foreach"):
        torch.manual_seed(0)
        _, model, _ = setup("c2lip+degla")
        model.to(CUDA)
        for n, p in model.named_parameters():
            p.grad = grads[n].to(CUDA) if n in grads else None
        opt = train.configure_optimizer(model, train.Config(loss="c2lip+degla", adamw=kind), log=lambda *a: None)
        assert bool(opt.defaults.get("fused")) == (kind == "auto")
        opt.step()
        params[kind] = {n: p.detach().cpu() for n, p in model.named_parameters()}
    for n, p in params["foreach"].items():
        torch.testing.assert_close(params["auto"][n], p, rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}: {m}")


def test_inductor_compiled_step_equals_eager_on_cuda():
    """--compile's default backend (inductor, Triton kernels) on the loss that uses every text group"""
    ref_total, ref_terms, ref_grads = step("c2lip+degla", CUDA, "fp32")
    total, terms, grads = step("c2lip+degla", CUDA, "fp32", compile_backend="inductor")
    for k in ref_terms:
        assert abs(terms[k].item() - ref_terms[k].item()) <= 1e-4 * abs(ref_terms[k].item()) + 1e-6, k
    assert_grads_close(grads, ref_grads, 1e-3)

"""AdamW's implementation (--adamw): fused under auto on CUDA, foreach elsewhere. foreach gives exactly what
torch's default (a per-tensor loop on the CPU) gives, so CPU runs keep their numbers; fused computes the
same update to rounding, with every tensor in one kernel."""
import copy

import pytest
import torch

import train
from cli import UsageError
from model import DualEncoder, model_config


def model_and_grads(seed=0):
    torch.manual_seed(seed)
    model = DualEncoder(model_config("tiny", vocab_size=64, depth=1, text_depth=1))
    g = torch.Generator().manual_seed(seed + 1)
    grads = [[torch.randn(p.shape, generator=g) for p in model.parameters()] for _ in range(4)]
    return model, grads


def run_steps(model, optimizer, grads, cfg):
    for step, gs in enumerate(grads):
        for group in optimizer.param_groups:  # as the loop does: the schedule times each group's multiplier
            group["lr"] = train.get_lr(step, cfg) * group["lr_mult"]
        for p, g in zip(model.parameters(), gs):
            p.grad = g.clone()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_auto_is_fused_on_cuda_and_foreach_elsewhere():
    cfg = train.Config()
    assert train.adamw_kind(cfg, torch.device("cuda")) == "fused"
    assert train.adamw_kind(cfg, torch.device("cpu")) == "foreach"
    assert train.adamw_kind(train.Config(adamw="foreach"), torch.device("cuda")) == "foreach"
    assert train.adamw_kind(train.Config(adamw="fused"), torch.device("cpu")) == "fused"


def test_foreach_is_torchs_default_exactly_and_fused_equal_to_rounding():
    cfg = train.Config(warmup=2, steps=4)
    model, grads = model_and_grads()
    lines = []
    auto = train.configure_optimizer(model, cfg, log=lines.append)
    assert "foreach AdamW (--adamw=auto on cpu)" in lines[0]
    assert all(g["foreach"] and not g["fused"] for g in auto.param_groups)
    # the reference: torch's AdamW with its own defaults on the same groups (a per-tensor loop on the CPU)
    ref_model = copy.deepcopy(model)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    index = {id(p): i for i, p in enumerate(model.parameters())}
    ref_params = list(ref_model.parameters())
    groups = [{**{k: v for k, v in g.items() if k in ("weight_decay", "lr_mult")},
               "params": [ref_params[index[id(p)]] for p in g["params"]]} for g in auto.param_groups]
    ref = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    fused_model = copy.deepcopy(model)
    fused = train.configure_optimizer(fused_model, train.Config(warmup=2, steps=4, adamw="fused"), log=lines.append)
    assert "fused AdamW" in lines[1] and all(g["fused"] for g in fused.param_groups)
    got, want, near = (run_steps(m, o, grads, cfg) for m, o in ((model, auto), (ref_model, ref), (fused_model, fused)))
    assert torch.equal(got, want) and not torch.equal(got, start)
    torch.testing.assert_close(near, want, rtol=1e-6, atol=1e-6)


def test_fused_where_torch_has_no_kernel_is_one_line(monkeypatch):
    model, _ = model_and_grads()
    real = torch.optim.AdamW

    def no_kernel(*args, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_kernel)
    with pytest.raises(UsageError, match="--adamw=fused: .*supported devices.*; use --adamw=foreach"):
        train.configure_optimizer(model, train.Config(adamw="fused"), log=lambda *a: None)

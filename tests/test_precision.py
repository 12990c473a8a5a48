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

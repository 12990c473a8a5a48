"""Fast losses against slow, obviously correct references written here (float64)."""
import math

import pytest
import torch
import torch.nn.functional as F

import losses


def unit(*shape, gen):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()


def ref_sigmoid(sim_fn, rows, cols, is_pos, t, b, divisor):
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            z = 1.0 if is_pos(i, j) else -1.0
            total = total - torch.log(torch.sigmoid(z * (t.exp() * sim_fn(i, j) + b)))
    return total / divisor


def ref_xattn_cos(tokens, c, i, k, lam):
    # the official per-concept loop, for one (image, concept): pool the tokens, normalise, cosine
    s = tokens[i] @ c[k]  # (T,)
    a = torch.softmax(lam * s, dim=0)
    v = (a[:, None] * tokens[i]).sum(0)
    v = v / torch.clamp(v.norm(), min=1e-8)
    return v @ c[k]


def params(gen):
    t = torch.tensor(math.log(10.0) + 0.3 * torch.randn(1, generator=gen).item(), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0 + torch.randn(1, generator=gen).item(), dtype=torch.float64, requires_grad=True)
    return t, b


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("B,d", [(1, 4), (5, 8), (9, 3)])
def test_siglip_matches_double_loop(B, d):
    gen = torch.Generator().manual_seed(B)
    x, y = unit(B, d, gen=gen), unit(B, d, gen=gen)
    t, b = params(gen)
    fast = losses.siglip_loss(x, y, t, b)
    ref = ref_sigmoid(lambda i, j: x[i] @ y[j], B, B, lambda i, j: i == j, t, b, B)
    torch.testing.assert_close(fast, ref)
    for g1, g2 in zip(grads(fast, (x, y, t, b)), grads(ref, (x, y, t, b))):
        torch.testing.assert_close(g1, g2)


def test_siglip_rows_sum_to_whole():
    # the per-rank share (rows offset..offset+b against all columns) sums to the whole loss
    gen = torch.Generator().manual_seed(0)
    x, y = unit(7, 5, gen=gen), unit(7, 5, gen=gen)
    t, b = params(gen)
    parts = losses.siglip_loss(x[:3], y, t, b, 0) + losses.siglip_loss(x[3:], y, t, b, 3)
    torch.testing.assert_close(parts, losses.siglip_loss(x, y, t, b))


def owners_for(counts):
    return torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])


@pytest.mark.parametrize("counts", [[1, 2, 3], [4, 1, 1, 2, 1], [1]])
def test_concept_loss_matches_loop(counts):
    gen = torch.Generator().manual_seed(len(counts))
    B, N, d = len(counts), sum(counts), 6
    owner = owners_for(counts)
    x, c = unit(B, d, gen=gen), unit(N, d, gen=gen)
    t, b = params(gen)
    fast = losses.concept_loss(x, c, owner, t, b)
    ref = ref_sigmoid(lambda i, k: x[i] @ c[k], B, N, lambda i, k: owner[k] == i, t, b, N)
    torch.testing.assert_close(fast, ref)
    for g1, g2 in zip(grads(fast, (x, c, t, b)), grads(ref, (x, c, t, b))):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("counts,M", [([1, 2, 3], 2), ([2, 1], 0), ([1], 3)])
def test_concept_loss_with_negative_concepts_matches_loop(counts, M):
    # --concept_negatives: M more columns, a negative for every image, and the sum still divided by N (positives)
    gen = torch.Generator().manual_seed(10 + M)
    B, N, d = len(counts), sum(counts), 6
    owner = owners_for(counts)
    x, c, neg = unit(B, d, gen=gen), unit(N, d, gen=gen), unit(M, d, gen=gen)
    t, b = params(gen)
    fast = losses.concept_loss(x, c, owner, t, b, negatives=neg)
    cols = torch.cat([c, neg])
    ref = ref_sigmoid(lambda i, k: x[i] @ cols[k], B, N + M, lambda i, k: k < N and owner[k] == i, t, b, N)
    torch.testing.assert_close(fast, ref)
    for g1, g2 in zip(grads(fast, (x, c, neg, t, b)), grads(ref, (x, c, neg, t, b))):
        torch.testing.assert_close(g1, g2)
    # split over two "ranks" by rows (global owners, this rank's row offset), the shares sum to the whole
    parts = losses.concept_loss(x[:1], c, owner, t, b, 0, neg) + losses.concept_loss(x[1:], c, owner, t, b, 1, neg)
    torch.testing.assert_close(parts, fast)


@pytest.mark.parametrize("counts,T,d,lam", [([1, 2, 3], 5, 8, 1.0), ([2, 1, 1, 3], 9, 4, 3.0), ([1], 1, 5, 1.0)])
@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_xattn_loss_matches_per_concept_loop(counts, T, d, lam, chunk):
    gen = torch.Generator().manual_seed(T)
    B, N = len(counts), sum(counts)
    owner = owners_for(counts)
    tokens, c = unit(B, T, d, gen=gen), unit(N, d, gen=gen)
    t, b = params(gen)
    fast = losses.xattn_concept_loss(tokens, c, owner, t, b, temperature=lam, chunk=chunk)
    ref = ref_sigmoid(lambda i, k: ref_xattn_cos(tokens, c, i, k, lam), B, N, lambda i, k: owner[k] == i, t, b, N)
    torch.testing.assert_close(fast, ref)
    for g1, g2 in zip(grads(fast, (tokens, c, t, b)), grads(ref, (tokens, c, t, b))):
        torch.testing.assert_close(g1, g2)


def test_xattn_uniform_tokens_give_mean_pooling():
    # identical tokens: attention is uniform and the pooled vector is that token
    gen = torch.Generator().manual_seed(1)
    tok = unit(1, 1, 4, gen=gen).detach().expand(1, 6, 4)
    c = unit(3, 4, gen=gen).detach()
    cos = losses.xattn_cosines(tok, c)
    torch.testing.assert_close(cos, (tok[0, 0] @ c.T)[None])

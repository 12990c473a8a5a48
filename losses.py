"""
Losses, as pure functions of embeddings. Each returns a scalar; the training loop names and weights them.

  siglip_loss          L_con, the SigLIP pairwise sigmoid loss                (METHOD.md 2.4)
  concept_loss         L_npc, images vs their noun-phrase concepts            (METHOD.md 2.4)
  xattn_concept_loss   L_xac, concepts vs concept-pooled visual tokens        (METHOD.md 2.4, 2.5)

All embeddings arrive L2-normalised. Logits are computed in fp32 whatever the autocast dtype.

Distributed form (METHOD.md 2.7, the "preferred" scheme): every rank keeps its own image rows
(x and the visual tokens U) and gathers the texts and concepts of all ranks with a gather that
carries gradients back to their owners. Each rank then computes only its b image rows against the
global columns, divided by the global count, so the per-rank losses sum to the single-process
loss on the concatenated batch. `row_offset` says which global rows this rank holds.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# the sigmoid loss core


def fp32(x):
    """losses run in at least fp32 (bf16/fp16 inputs are upcast; fp64 stays fp64 for the tests)"""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sigmoid_loss(logits, positive, divisor):
    """-(1/divisor) sum_ij log sigmoid(z_ij * logit_ij), z = +1 on positives and -1 elsewhere"""
    z = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).sum() / divisor


def siglip_loss(x, y, logit_scale, logit_bias, row_offset=0):
    """L_con. x: this rank's images (b, d); y: all captions (B, d); image i matches caption row_offset + i.

    Normalised by the number of captions B (big_vision's convention), so that summing the per-rank
    values gives the loss of one process on the whole batch.
    """
    logits = logit_scale.exp() * (fp32(x) @ fp32(y).T) + logit_bias  # (b, B)
    rows = torch.arange(x.shape[0], device=x.device) + row_offset
    positive = rows[:, None] == torch.arange(y.shape[0], device=x.device)[None, :]
    return sigmoid_loss(logits, positive, y.shape[0])

# -----------------------------------------------------------------------------
# C2LIP


def concept_loss(x, c, owner, logit_scale, logit_bias, row_offset=0):
    """L_npc. x: images (b, d); c: all concepts (N, d); owner: (N,) global image index of each concept.

    One positive per column (its owner image), n_i per row; divided by N, not B.
    """
    logits = logit_scale.exp() * (fp32(x) @ fp32(c).T) + logit_bias  # (b, N)
    rows = torch.arange(x.shape[0], device=x.device) + row_offset
    return sigmoid_loss(logits, rows[:, None] == owner[None, :], c.shape[0])


def xattn_cosines(tokens, c, temperature=1.0):
    """cos(v_ik, c_k) for every image i and concept k, without building the (b, N, d) pooled vectors.

    v_ik = sum_t a_ikt u_it with a_ik = softmax_t(temperature * <u_it, c_k>). Then
    <v_ik, c_k> = sum_t a_ikt s_ikt and |v_ik|^2 = a_ik^T G_i a_ik with G_i = U_i U_i^T (METHOD.md 2.5).
    tokens: unit (b, T, d); c: unit (N, d) -> (b, N)
    """
    s = torch.einsum("btd,nd->bnt", tokens, c)  # (b, N, T) cosines
    a = torch.softmax(temperature * s, dim=-1)  # attention over the T patches
    num = (a * s).sum(-1)  # (b, N)
    gram = tokens @ tokens.transpose(1, 2)  # (b, T, T)
    den2 = (torch.bmm(a, gram) * a).sum(-1)  # (b, N) = |v_ik|^2
    return num / den2.clamp_min(1e-16).sqrt()  # = num / max(|v|, 1e-8)


def xattn_concept_loss(tokens, c, owner, logit_scale, logit_bias, row_offset=0, temperature=1.0, chunk=0):
    """L_xac. tokens: this rank's unit visual tokens (b, T, d); c, owner as in concept_loss.

    chunk > 0 processes that many images at a time under activation checkpointing, so memory is
    O(chunk * N * T) instead of O(b * N * T); the result is the same.
    """
    tokens, c = fp32(tokens), fp32(c)
    if chunk and chunk < tokens.shape[0]:
        cos = torch.cat([checkpoint(xattn_cosines, tokens[i:i + chunk], c, temperature, use_reentrant=False)
                         for i in range(0, tokens.shape[0], chunk)])
    else:
        cos = xattn_cosines(tokens, c, temperature)
    logits = logit_scale.exp() * cos + logit_bias  # (b, N)
    rows = torch.arange(tokens.shape[0], device=tokens.device) + row_offset
    return sigmoid_loss(logits, rows[:, None] == owner[None, :], c.shape[0])

# -----------------------------------------------------------------------------
# distributed helpers (no-ops at world size 1)


def world_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(n, device):
    """every rank's count of rows, as a list of ints"""
    rank, world = world_info()
    if world == 1:
        return [n]
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [int(s) for s in out]


def _gather_padded(x, sizes):
    """all_gather of (n_r, ...) tensors with different n_r: pad to the max, gather, unpad (rank-major)"""
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])]) if pad else x.contiguous()
    out = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(out, xp)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes = sizes
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        # every rank holds d(its loss)/d(all rows); summing over ranks gives each owner its rows' total
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, _ = world_info()
        start = sum(ctx.sizes[:rank])
        return grad[start:start + ctx.sizes[rank]], None


def gather(x, with_grad=True):
    """concatenate every rank's rows (rank-major); returns (gathered, sizes). Gradients flow to owners."""
    rank, world = world_info()
    if world == 1:
        return x, [x.shape[0]]
    sizes = gather_sizes(x.shape[0], x.device)
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x, sizes), sizes
    return _gather_padded(x.detach(), sizes), sizes


def gather_owners(owner, images_per_rank):
    """local owner indices -> global ones: offset by the images held by earlier ranks (fixes C-2)"""
    rank, _ = world_info()
    local = owner + sum(images_per_rank[:rank])
    return gather(local, with_grad=False)[0]

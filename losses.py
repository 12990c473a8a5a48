"""
Losses, as pure functions of embeddings. Each returns a scalar; the training loop names and weights them.

  siglip_loss          L_con, the SigLIP pairwise sigmoid loss                (METHOD.md §2.4)
  concept_loss         L_npc, images vs their noun-phrase concepts            (METHOD.md §2.4)
  xattn_concept_loss   L_xac, concepts vs concept-pooled visual tokens        (METHOD.md §2.4, §2.5)
  degla_base_loss      L_base, NegCLIP-style softmax with hard negatives      (METHOD.md §3.3)
  igc_loss, tgc_loss   DeGLA's image- and text-grounded contrast             (METHOD.md §3.4, §3.5)
  distill_loss         DeGLA's squared distance to the EMA teacher            (METHOD.md §3.6)
  position_contrast_loss  ours: a softmax over each object's position phrases  (METHOD.md §12)

All embeddings arrive L2-normalised. Every loss runs in at least fp32 whatever the autocast region around it:
`fp32_loss` switches autocast off for the loss and upcasts bf16/fp16 inputs (a `.float()` alone is not enough:
autocast would cast the next matmul back to bf16). fp64 inputs stay fp64, for the tests.

Distributed form (METHOD.md §4.1-§4.2): every rank keeps its own image rows
(x and the visual tokens U) and gathers the texts and concepts of all ranks with a gather that
carries gradients back to their owners. Each rank then computes only its b image rows against the
global columns, divided by the global count, so the per-rank losses sum to the single-process
loss on the concatenated batch. `row_offset` says which global rows this rank holds.
"""

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# the sigmoid loss core


def fp32(x):
    """losses run in at least fp32 (bf16/fp16 inputs are upcast; fp64 stays fp64 for the tests)"""
    if isinstance(x, (tuple, list)):
        return type(x)(fp32(v) for v in x)
    if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _device_type(args):
    for a in args:
        if torch.is_tensor(a):
            return a.device.type
        if isinstance(a, (tuple, list)) and a and torch.is_tensor(a[0]):
            return a[0].device.type
    return "cpu"


def fp32_loss(fn):
    """run a loss with autocast off and its low-precision tensor inputs upcast to fp32"""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast(_device_type(args), enabled=False):
            return fn(*fp32(args), **{k: fp32(v) for k, v in kwargs.items()})
    return wrapped


def sigmoid_loss(logits, positive, divisor):
    """-(1/divisor) sum_ij log sigmoid(z_ij * logit_ij), z = +1 on positives and -1 elsewhere"""
    z = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).sum() / divisor


@fp32_loss
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


@fp32_loss
def concept_loss(x, c, owner, logit_scale, logit_bias, row_offset=0, negatives=None):
    """L_npc. x: images (b, d); c: all concepts (N, d); owner: (N,) global image index of each concept.

    One positive per column (its owner image), n_i per row; divided by N, not B.
    negatives: optional (M, d) concept-level hard negatives (METHOD.md §2.7), M more columns that no image owns,
    so a negative for every image, its source included; still divided by N, so they add terms without
    diluting the positives' ones.
    """
    n = c.shape[0]
    if negatives is not None:
        c = torch.cat([c, negatives])
        owner = torch.cat([owner, owner.new_full((negatives.shape[0],), -1)])
    logits = logit_scale.exp() * (fp32(x) @ fp32(c).T) + logit_bias  # (b, N + M)
    rows = torch.arange(x.shape[0], device=x.device) + row_offset
    return sigmoid_loss(logits, rows[:, None] == owner[None, :], n)


def xattn_cosines(tokens, c, temperature=1.0):
    """cos(v_ik, c_k) for every image i and concept k, without building the (b, N, d) pooled vectors.

    v_ik = sum_t a_ikt u_it with a_ik = softmax_t(temperature * <u_it, c_k>). Then
    <v_ik, c_k> = sum_t a_ikt s_ikt and |v_ik|^2 = a_ik^T G_i a_ik with G_i = U_i U_i^T (METHOD.md §2.5).
    tokens: unit (b, T, d); c: unit (N, d) -> (b, N)
    """
    s = torch.einsum("btd,nd->bnt", tokens, c)  # (b, N, T) cosines
    a = torch.softmax(temperature * s, dim=-1)  # attention over the T patches
    num = (a * s).sum(-1)  # (b, N)
    gram = tokens @ tokens.transpose(1, 2)  # (b, T, T)
    den2 = (torch.bmm(a, gram) * a).sum(-1)  # (b, N) = |v_ik|^2
    return num / den2.clamp_min(1e-16).sqrt()  # = num / max(|v|, 1e-8)


@fp32_loss
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
    """every rank's row counts: n a dict {name: count} -> {name: [count of each rank]}, all names in one
    all_gather and one read on the host (a step's only one besides the finite/stop decision); n an int -> list"""
    if not isinstance(n, dict):
        return gather_sizes({"rows": n}, device)["rows"]
    rank, world = world_info()
    if world == 1:
        return {k: [v] for k, v in n.items()}
    t = torch.tensor(list(n.values()), device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    per_rank = torch.stack(out).tolist()  # (world, names)
    return {k: [r[i] for r in per_rank] for i, k in enumerate(n)}


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


def gather(x, with_grad=True, sizes=None):
    """concatenate every rank's rows (rank-major); returns (gathered, sizes). Gradients flow to owners.
    sizes: every rank's row count when the step already has it (gather_sizes), else gathered here"""
    rank, world = world_info()
    if world == 1:
        return x, [x.shape[0]]
    x = fp32(x)  # bf16 rows travel as fp32: the loss upcasts them anyway, and not every backend reduces bf16
    sizes = sizes or gather_sizes(x.shape[0], x.device)
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x, sizes), sizes
    return _gather_padded(x.detach(), sizes), sizes


def gather_owners(owner, images_per_rank, sizes=None):
    """local owner indices -> global ones: offset by the images held by earlier ranks (METHOD.md §4.3)"""
    rank, _ = world_info()
    local = owner + sum(images_per_rank[:rank])
    return gather(local, with_grad=False, sizes=sizes)[0]

# -----------------------------------------------------------------------------
# DeGLA (METHOD.md §3): softmax losses over captions plus K hard negatives per caption.
#
# Layout of the global batch: v_all (N, d) images, p_all (N, d) their captions, q_all (N*K, d) the
# negatives, sample-major (row n*K + k = negative k of sample n). Positives and negatives are
# gathered separately, never as one [P; Q] block (METHOD.md §4.5), so that layout holds at any world size.
# Each rank computes the rows of its own samples (global rows row_offset .. row_offset + b - 1) and
# divides by the global N, so the per-rank losses sum to the loss of one process on the whole batch.
# Only t = exp(logit_scale) scales these logits: a bias shifts a whole softmax row and gets no
# gradient (METHOD.md §3.1).


def _rows(b, row_offset, device):
    return torch.arange(b, device=device) + row_offset


@fp32_loss
def degla_base_loss(v, v_all, p_all, q_all, logit_scale, row_offset=0, own_only=False):
    """L_base, NegCLIP-style (METHOD.md §3.3, paper Eq. 4): 1/2 (CE_I->T + CE_T->I), each a mean over N.

    v: this rank's images (b, d); v_all, p_all: all images and captions (N, d); q_all: all negatives (N*K, d).
    I->T: each image against every caption and, by default, every negative of the global batch (the
    official code); own_only=True keeps only the image's own K negatives (the paper's Eq. 4).
    T->I: each of this rank's captions against all images; negatives are never anchors.
    """
    v, v_all, p_all, q_all = fp32(v), fp32(v_all), fp32(p_all), fp32(q_all)
    N, b = p_all.shape[0], v.shape[0]
    rows = _rows(b, row_offset, v.device)
    if own_only:
        q_own = q_all.view(N, -1, q_all.shape[-1])[rows]  # (b, K, d)
        i2t = torch.cat([v @ p_all.T, torch.einsum("bd,bkd->bk", v, q_own)], dim=1)  # (b, N + K)
    else:
        i2t = v @ torch.cat([p_all, q_all]).T  # (b, N + N*K): the official [all positives; all negatives]
    t2i = p_all[rows] @ v_all.T  # (b, N)
    t = logit_scale.exp()
    ce_i2t = F.cross_entropy(t * i2t, rows, reduction="sum")
    ce_t2i = F.cross_entropy(t * t2i, rows, reduction="sum")
    return 0.5 * (ce_i2t + ce_t2i) / N


@fp32_loss
def igc_loss(v, p_all, q_all, logit_scale, row_offset=0):
    """L_IGC, image-grounded contrast (paper Eq. 8): per image a (1+K)-way softmax over its caption and
    its own K negatives, label 0, mean over the global N. A column subset of L_base's I->T logits."""
    v, p_all, q_all = fp32(v), fp32(p_all), fp32(q_all)
    N, b = p_all.shape[0], v.shape[0]
    rows = _rows(b, row_offset, v.device)
    q_own = q_all.view(N, -1, q_all.shape[-1])[rows]  # (b, K, d)
    logits = torch.cat([(v * p_all[rows]).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", v, q_own)], dim=1)
    target = torch.zeros(b, dtype=torch.long, device=v.device)
    return F.cross_entropy(logit_scale.exp() * logits, target, reduction="sum") / N


def tgc_negative_rows(rows, N, K, mask="own"):
    """indices into q_all (N*K, d) of the K negatives each caption in rows meets in L_TGC: (b, K)

    own: its own negatives n*K + k (the paper's Eq. 9, our default).
    official: the released mask is the identity tiled K times along the negative block instead of
    interleaved (METHOD.md §3.5), so caption n keeps rows m*N + n, m = 0..K-1: negatives of samples (m*N + n) // K,
    almost never its own.
    """
    m = torch.arange(K, device=rows.device)
    if mask == "own":
        return rows[:, None] * K + m[None, :]
    if mask == "official":
        return m[None, :] * N + rows[:, None]
    raise ValueError(f"tgc_mask={mask!r}: expected 'own' or 'official'")


@fp32_loss
def tgc_loss(p_all, p_teacher, q_all, row_offset=0, scale=10.0, mask="own"):
    """L_TGC, text-grounded contrast (paper Eq. 9): this rank's student captions p_i as queries, the
    EMA teacher's embedding of the same caption as the positive, K student negatives, label 0.

    p_all: all student captions (N, d); p_teacher: the teacher's embeddings of this rank's captions (b, d),
    no grad; q_all: all student negatives (N*K, d). A fixed scale (10 in the code, the paper's 1/tau).
    """
    p_all, p_teacher, q_all = fp32(p_all), fp32(p_teacher).detach(), fp32(q_all)
    N, b = p_all.shape[0], p_teacher.shape[0]
    rows = _rows(b, row_offset, p_all.device)
    p = p_all[rows]  # (b, d)
    q = q_all[tgc_negative_rows(rows, N, q_all.shape[0] // N, mask)]  # (b, K, d)
    logits = torch.cat([(p * p_teacher).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", p, q)], dim=1)
    target = torch.zeros(b, dtype=torch.long, device=p.device)
    return F.cross_entropy(scale * logits, target, reduction="sum") / N


@fp32_loss
def distill_loss(student, teacher):
    """L_distill (paper Eq. 7): sum over every vector of |s - s*|^2, no mean, no temperature.

    student, teacher: matching tuples of (n_j, d) tensors (this rank's images, captions, negatives).
    A sum, so the per-rank values add up to the global one; its size grows with the batch (METHOD.md §3.6: the
    training loop scales its weight by ref_batch / N).
    """
    return sum(((fp32(s) - fp32(t).detach()) ** 2).sum() for s, t in zip(student, teacher))


@fp32_loss
def position_contrast_loss(v, y, owner, logit_scale, n_images, variants):
    """ours (METHOD.md §12, --position_contrast): for each object of an image, a softmax over the image's
    scores of `variants` phrases of that object, one per grid cell, its own cell first (label 0); mean over
    the image's objects, then over the global n_images (so the ranks' shares add up to the one-process loss).
    v: (b, d) this rank's images; y: (n * variants, d) the phrases, object-major; owner: (n * variants,) the
    local image of each phrase."""
    v, y = fp32(v), fp32(y)
    y = y.view(-1, variants, y.shape[-1])  # (n, variants, d)
    own = owner.view(-1, variants)[:, 0]  # (n,)
    logits = logit_scale.exp() * torch.einsum("nd,nkd->nk", v[own], y)
    ce = F.cross_entropy(logits, torch.zeros_like(own), reduction="none")
    per_image = torch.bincount(own, minlength=v.shape[0]).clamp(min=1)
    return (ce / per_image[own]).sum() / n_images

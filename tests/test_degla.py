"""DeGLA: losses against slow per-sample references (float64), column selections, the EMA teacher,
2-process gloo parity, and short train.py runs (smoke, resume)."""
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import concepts
import losses
import train
from model import DualEncoder, model_config


def unit(*shape, gen):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


def batch(N, K, d, seed):
    """student images, captions, negatives (sample-major), their teacher versions, and logit_scale"""
    gen = torch.Generator().manual_seed(seed)
    v, p, q = unit(N, d, gen=gen), unit(N, d, gen=gen), unit(N * K, d, gen=gen)
    vt, pt, qt = unit(N, d, gen=gen), unit(N, d, gen=gen), unit(N * K, d, gen=gen)
    t = torch.tensor(math.log(10.0) + 0.5 * torch.randn(1, generator=gen).item(), dtype=torch.float64)
    return [x.requires_grad_() for x in (v, p, q, t)], (vt, pt, qt)

# -----------------------------------------------------------------------------
# slow references: one sample at a time, logits listed explicitly


def ce(logits, label):
    return -torch.log_softmax(torch.stack(logits), 0)[label]


def ref_base(v, p, q, t, K, own_only=False):
    N, s = v.shape[0], t.exp()
    i2t = t2i = 0.0
    for i in range(N):
        logits = [s * (v[i] @ p[j]) for j in range(N)]
        negs = [i * K + k for k in range(K)] if own_only else range(N * K)
        logits += [s * (v[i] @ q[m]) for m in negs]
        i2t = i2t + ce(logits, i)
    for j in range(N):
        t2i = t2i + ce([s * (p[j] @ v[i]) for i in range(N)], j)
    return 0.5 * (i2t / N + t2i / N)


def ref_igc(v, p, q, t, K):
    N, s = v.shape[0], t.exp()
    return sum(ce([s * (v[i] @ p[i])] + [s * (v[i] @ q[i * K + k]) for k in range(K)], 0) for i in range(N)) / N


def official_style_mask(N, K, mask):
    """the (N, N*K) 0/1 masks over the negative block: interleaved (own) or the released tiled identity"""
    eye = torch.eye(N)
    return eye.repeat_interleave(K, dim=1) if mask == "own" else eye.repeat(1, K)


def ref_tgc(p, pt, q, K, scale, mask):
    N = p.shape[0]
    keep = official_style_mask(N, K, mask)
    total = 0.0
    for i in range(N):
        cols = [m for m in range(N * K) if keep[i, m] == 1]
        total = total + ce([scale * (p[i] @ pt[i])] + [scale * (p[i] @ q[m]) for m in cols], 0)
    return total / N


def ref_distill(student, teacher):
    total = 0.0
    for s, t in zip(student, teacher):
        for a, b in zip(s, t):
            total = total + ((a - b) ** 2).sum()
    return total


def close_with_grads(fast, ref, inputs):
    torch.testing.assert_close(fast, ref)
    g_fast = torch.autograd.grad(fast, inputs, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b)

# -----------------------------------------------------------------------------
# losses vs references


@pytest.mark.parametrize("N,K,d", [(1, 1, 3), (4, 2, 5), (6, 4, 8)])
@pytest.mark.parametrize("own_only", [False, True])
def test_base_matches_reference(N, K, d, own_only):
    (v, p, q, t), _ = batch(N, K, d, seed=N + K)
    fast = losses.degla_base_loss(v, v, p, q, t, own_only=own_only)
    close_with_grads(fast, ref_base(v, p, q, t, K, own_only), (v, p, q, t))


@pytest.mark.parametrize("N,K,d", [(1, 1, 3), (4, 2, 5), (6, 4, 8)])
def test_igc_matches_reference(N, K, d):
    (v, p, q, t), _ = batch(N, K, d, seed=N)
    close_with_grads(losses.igc_loss(v, p, q, t), ref_igc(v, p, q, t, K), (v, p, q, t))


@pytest.mark.parametrize("N,K,d", [(1, 1, 3), (4, 2, 5), (6, 4, 8), (8, 4, 4)])
@pytest.mark.parametrize("mask", ["own", "official"])
def test_tgc_matches_reference(N, K, d, mask):
    (v, p, q, t), (vt, pt, qt) = batch(N, K, d, seed=d)
    fast = losses.tgc_loss(p, pt, q, scale=10.0, mask=mask)
    close_with_grads(fast, ref_tgc(p, pt, q, K, 10.0, mask), (p, q))


def test_distill_matches_reference_and_is_zero_at_start():
    (v, p, q, t), (vt, pt, qt) = batch(5, 3, 4, seed=0)
    close_with_grads(losses.distill_loss((v, p, q), (vt, pt, qt)), ref_distill((v, p, q), (vt, pt, qt)), (v, p, q))
    zero = losses.distill_loss((v, p, q), (v.detach().clone(), p.detach().clone(), q.detach().clone()))
    assert zero.item() == 0.0


def test_softmax_losses_ignore_the_bias_and_teacher_gets_no_grad():
    (v, p, q, t), (vt, pt, qt) = batch(4, 2, 5, seed=3)
    pt = pt.clone().requires_grad_()
    loss = losses.tgc_loss(p, pt, q) + losses.distill_loss((p,), (pt,))
    assert torch.autograd.grad(loss, pt, allow_unused=True)[0] is None

# -----------------------------------------------------------------------------
# which columns each loss reads


def grad_rows(loss, q):
    """indices of the negatives that receive gradient: the columns the loss actually reads"""
    g = torch.autograd.grad(loss, q)[0]
    return set(torch.nonzero(g.abs().sum(-1)).flatten().tolist())


def test_igc_reads_exactly_own_columns():
    N, K = 5, 3
    (v, p, q, t), _ = batch(N, K, 4, seed=1)
    for i in range(N):
        row = v[i:i + 1]
        # this image's row alone: its own K negatives and nothing else
        assert grad_rows(losses.igc_loss(row, p, q, t, row_offset=i), q) == {i * K + k for k in range(K)}
        # and its positive is column i of the captions
        g = torch.autograd.grad(losses.igc_loss(row, p, q, t, row_offset=i), p)[0]
        assert set(torch.nonzero(g.abs().sum(-1)).flatten().tolist()) == {i}
    # the same logits as the matching columns of L_base's full I->T matrix [P; Q]
    full = t.exp() * v @ torch.cat([p, q]).T  # (N, N + N*K)
    cols = torch.tensor([[i] + [N + i * K + k for k in range(K)] for i in range(N)])
    ref = F.cross_entropy(full.gather(1, cols), torch.zeros(N, dtype=torch.long))
    torch.testing.assert_close(losses.igc_loss(v, p, q, t), ref)


def test_tgc_selection_own_vs_official_pinned():
    # N = 4 samples, K = 2 negatives each; q rows: 0,1 = sample 0; 2,3 = sample 1; 4,5 = sample 2; 6,7 = sample 3
    rows = torch.arange(4)
    own = losses.tgc_negative_rows(rows, 4, 2, "own")
    official = losses.tgc_negative_rows(rows, 4, 2, "official")
    assert own.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert official.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]  # rows m*N + i
    assert (official // 2).tolist() == [[0, 2], [0, 2], [1, 3], [1, 3]]  # owner samples: rows 1 and 2 miss their own
    # at the official N = 256, K = 4: row i reads negatives of samples 64m + i // 4 (METHOD.md §3.5)
    big = losses.tgc_negative_rows(torch.arange(256), 256, 4, "official") // 4
    assert torch.equal(big, torch.arange(4)[None, :] * 64 + torch.arange(256)[:, None] // 4)
    # the gradient pattern agrees: caption 3 reads q rows {6, 7} (own) or {3, 7} (official)
    (v, p, q, t), (vt, pt, qt) = batch(4, 2, 5, seed=2)
    assert grad_rows(losses.tgc_loss(p, pt[3:], q, row_offset=3, mask="own"), q) == {6, 7}
    assert grad_rows(losses.tgc_loss(p, pt[3:], q, row_offset=3, mask="official"), q) == {3, 7}
    with pytest.raises(ValueError):
        losses.tgc_negative_rows(rows, 4, 2, "tiled")


def test_base_own_only_reads_own_negatives_all_reads_all():
    N, K = 4, 2
    (v, p, q, t), _ = batch(N, K, 5, seed=4)
    assert grad_rows(losses.degla_base_loss(v[1:2], v, p, q, t, row_offset=1, own_only=True), q) == {2, 3}
    assert grad_rows(losses.degla_base_loss(v[1:2], v, p, q, t, row_offset=1), q) == set(range(N * K))

# -----------------------------------------------------------------------------
# EMA teacher


def test_ema_step_moves_teacher_by_one_minus_a_delta():
    torch.manual_seed(0)
    student = DualEncoder(model_config("tiny", vocab_size=20)).double()
    teacher = DualEncoder(model_config("tiny", vocab_size=20)).double().requires_grad_(False)
    before = [p.clone() for p in teacher.parameters()]
    a = 0.9996
    train.ema_update(teacher, student, a)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t1 - t0, (1 - a) * (s.detach() - t0), rtol=1e-9, atol=1e-15)
    # a teacher equal to its student stays put, and the student is never touched
    s_before = [p.clone() for p in student.parameters()]
    teacher.load_state_dict(student.state_dict())
    train.ema_update(teacher, student, a)
    for t1, s, s0 in zip(teacher.parameters(), student.parameters(), s_before):
        torch.testing.assert_close(t1, s.detach())
        assert torch.equal(s, s0)

# -----------------------------------------------------------------------------
# 2-process parity (gloo): summed per-rank losses and gradients = one process on the whole batch

SIZES = (3, 2)  # samples per rank, uneven on purpose
K, D = 3, 6


def _parity_worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        N = sum(SIZES)
        off = sum(SIZES[:rank])
        lo, hi = off, off + SIZES[rank]
        for own_only in (False, True):
            for mask in ("own", "official"):
                (V, P, Q, t_ref), (Vt, Pt, Qt) = batch(N, K, D, seed=7)
                # single process on the whole batch
                terms_ref = {
                    "base": losses.degla_base_loss(V, V, P, Q, t_ref, 0, own_only),
                    "igc": losses.igc_loss(V, P, Q, t_ref),
                    "tgc": losses.tgc_loss(P, Pt, Q, 0, 10.0, mask),
                    "distill": losses.distill_loss((V, P, Q), (Vt, Pt, Qt)),
                }
                total_ref = sum(terms_ref.values())
                g_ref = torch.autograd.grad(total_ref, (V, P, Q, t_ref))
                # this rank: local rows, gathered separately (positives, negatives and images)
                v = V.detach()[lo:hi].clone().requires_grad_()
                p = P.detach()[lo:hi].clone().requires_grad_()
                q = Q.detach()[lo * K:hi * K].clone().requires_grad_()
                t = t_ref.detach().clone().requires_grad_()
                v_all, _ = losses.gather(v)
                p_all, _ = losses.gather(p)
                q_all, _ = losses.gather(q)
                # separate gathers reproduce the single-process layout [P], [Q sample-major]
                assert torch.equal(v_all, V) and torch.equal(p_all, P) and torch.equal(q_all, Q)
                # one [p; q] block per rank would interleave ranks' positives and negatives (METHOD.md §4.5)
                block, _ = losses.gather(torch.cat([p, q]).detach(), with_grad=False)
                assert not torch.equal(block, torch.cat([P, Q]))
                terms = {
                    "base": losses.degla_base_loss(v, v_all, p_all, q_all, t, off, own_only),
                    "igc": losses.igc_loss(v, p_all, q_all, t, off),
                    "tgc": losses.tgc_loss(p_all, Pt[lo:hi], q_all, off, 10.0, mask),
                    "distill": losses.distill_loss((v, p, q), (Vt[lo:hi], Pt[lo:hi], Qt[lo * K:hi * K])),
                }
                vals = torch.stack([terms[k].detach() for k in terms_ref])
                dist.all_reduce(vals)
                torch.testing.assert_close(vals, torch.stack([terms_ref[k].detach() for k in terms_ref]))
                g = torch.autograd.grad(sum(terms.values()), (v, p, q, t))
                torch.testing.assert_close(g[0], g_ref[0][lo:hi])
                torch.testing.assert_close(g[1], g_ref[1][lo:hi])
                torch.testing.assert_close(g[2], g_ref[2][lo * K:hi * K])
                g_t = g[3].clone()
                dist.all_reduce(g_t)  # a replicated parameter: DDP would average, train.py x world
                torch.testing.assert_close(g_t, g_ref[3])
    finally:
        dist.destroy_process_group()


def test_two_process_parity(tmp_path):
    mp.spawn(_parity_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)

# -----------------------------------------------------------------------------
# negatives for training: file, generation, dropped records


def test_negatives_for_file_and_drop(tmp_path):
    path = tmp_path / "neg.json"
    good = "a red circle and a blue square"
    rec = {"image_id": 1, "original": good, "enhanced": ["n1", "n2", "n3", "n4", "n5"]}
    path.write_text(json.dumps([rec]))
    captions = [good, "circle", "a blue ring and a green star"]  # "circle": no 4 distinct negatives
    negs, keep = concepts.negatives_for(captions, 4, 0, str(path), log=lambda *a: None)
    assert keep == [0, 2]
    assert negs[0] == ["n1", "n2", "n3", "n4"]  # from the file, first K
    assert len(negs[1]) == 4 and len(set(negs[1])) == 4 and captions[2] not in negs[1]  # generated

# -----------------------------------------------------------------------------
# train.py: smoke and resume


def run_train(out_dir, *args):
    cfg = train.parse_args(["--loss=degla", "--world_scenes=256", "--batch_size=32", "--eval=false",
                            "--log_every=1", f"--out_dir={out_dir}", *args])
    train.main(cfg)
    return train.load_checkpoint(os.path.join(out_dir, "ckpt.pt"))


def test_train_degla_smoke(tmp_path):
    ckpt = run_train(str(tmp_path / "run"), "--steps=3")
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("loss", "base", "igc", "tgc", "distill"))
    assert recs[0]["distill"] == 0.0  # teacher == student at step 0
    assert recs[-1]["distill"] > 0.0
    student, teacher = ckpt["model"], ckpt["teacher"]
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)


def test_train_degla_resume_restores_teacher(tmp_path):
    full = run_train(str(tmp_path / "full"), "--steps=4")
    run_train(str(tmp_path / "part"), "--steps=2")  # warm-up lasts 50 steps: lr is the same as in the full run
    half = train.load_checkpoint(str(tmp_path / "part" / "ckpt.pt"))
    resumed = run_train(str(tmp_path / "part"), "--steps=4", "--resume")
    assert half["step"] == 2 and resumed["step"] == 4
    # without the saved teacher, a resumed run would restart the EMA from the step-2 student
    assert any(not torch.equal(half["model"][k], half["teacher"][k]) for k in half["model"])
    for name in ("model", "teacher"):
        for k in full[name]:
            torch.testing.assert_close(resumed[name][k], full[name][k], rtol=0, atol=1e-6)

"""Distributed losses on 2 and 3 gloo processes against one process on the concatenated batch."""
import contextlib
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import data
import world as W
import losses
import train
from model import DualEncoder, WordTokenizer, model_config

# per-rank image counts and per-image concept counts: unequal on purpose, a rank with a 1-concept last image
LAYOUTS = {
    2: {"images": [3, 2], "concepts": [[1, 3, 1], [2, 1]]},
    3: {"images": [2, 3, 1], "concepts": [[2, 1], [1, 1, 4], [3]]},
}


@contextlib.contextmanager
def alone():
    """compute a single-process reference inside a worker: the losses then see world size 1"""
    saved = losses.world_info
    losses.world_info = lambda: (0, 1)
    try:
        yield
    finally:
        losses.world_info = saved


def _init(rank, world, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)


K = 2  # hard negatives per caption (c2lip+degla)


def _global_embeddings(layout, T=5, d=6):
    gen = torch.Generator().manual_seed(7)
    B = sum(layout["images"])
    counts = [n for r in layout["concepts"] for n in r]
    N = sum(counts)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=gen, dtype=torch.float64), dim=-1)
    emb = {"image": unit(B, d), "text": unit(B, d), "patch_tokens": unit(B, T, d), "extra": unit(N, d),
           "negatives": unit(B * K, d)}
    teacher = {"image": unit(B, d), "text": unit(B, d), "extra": unit(B * K, d)}
    owner = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])
    return emb, teacher, owner, counts


def _run_losses(emb, teacher, owner, rank_images, logit_scale, logit_bias, loss_name):
    cfg = train.Config(loss=loss_name, xac_weight=0.5, npc_weight=0.7, igc_weight=0.3, tgc_weight=0.2)
    text = {"captions": emb["text"], "concepts": emb["extra"], "negatives": emb["negatives"]}
    out = {"image": emb["image"], "patch_tokens": emb["patch_tokens"], "text": text,
           "logit_scale": logit_scale, "logit_bias": logit_bias}
    teacher = {"image": teacher["image"], "text": {"captions": teacher["text"], "negatives": teacher["extra"]}}
    terms = train.compute_losses(out, {"owner": {"concepts": owner}, "teacher": teacher}, cfg, rank_images)
    return terms, sum(train.LOSS_WEIGHTS[k](cfg, 0) * v for k, v in terms.items())


def _loss_worker(rank, world, store, loss_name):
    _init(rank, world, store)
    layout = LAYOUTS[world]
    emb, teacher, owner, counts = _global_embeddings(layout)
    # reference: one process, whole batch
    leaves = {k: v.clone().requires_grad_() for k, v in emb.items()}
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    with alone():
        ref_terms, ref_loss = _run_losses(leaves, teacher, owner, [sum(layout["images"])], t, b, loss_name)
    ref_loss.backward()
    # this rank's slice
    start = sum(layout["images"][:rank])
    stop = start + layout["images"][rank]
    c_start = sum(counts[:start])
    c_stop = sum(counts[:stop])
    rows = {"extra": slice(c_start, c_stop), "negatives": slice(start * K, stop * K)}
    local = {k: v[rows.get(k, slice(start, stop))].clone().requires_grad_() for k, v in emb.items()}
    local_teacher = {k: v[rows.get(k, slice(start, stop)) if k != "extra" else rows["negatives"]] for k, v in teacher.items()}
    local_owner = owner[c_start:c_stop] - start  # owners as the collate makes them: indices into the local batch
    t2 = t.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    rank_images = losses.gather_sizes(stop - start, torch.device("cpu"))
    terms, loss = _run_losses(local, local_teacher, local_owner, rank_images, t2, b2, loss_name)
    loss.backward()
    # values: the per-rank shares sum to the single-process losses
    for k, v in terms.items():
        total = v.detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, ref_terms[k].detach(), msg=f"term {k}")
    # gradients: every rank's rows get exactly the single-process gradient; replicated scalars sum across ranks
    assert set(terms) == set(ref_terms) == ({"con", "npc", "xac"} if loss_name == "c2lip" else
                                            {"base", "npc", "xac", "igc", "tgc", "distill"})
    for k, v in local.items():
        if leaves[k].grad is None:  # c2lip reads no negatives
            assert v.grad is None and loss_name == "c2lip"
            continue
        torch.testing.assert_close(v.grad, leaves[k].grad[rows.get(k, slice(start, stop))], msg=f"grad {k}")
    for mine, ref in ((t2, t), (b2, b)):
        g = mine.grad.clone()
        dist.all_reduce(g)
        torch.testing.assert_close(g, ref.grad)
    assert b.grad.abs() > 0  # the sigmoid concept losses train the bias, in the combination too
    dist.destroy_process_group()


@pytest.mark.parametrize("world,loss_name", [(2, "c2lip"), (3, "c2lip"), (2, "c2lip+degla")])
def test_distributed_losses_match_single_process(world, loss_name, tmp_path):
    mp.spawn(_loss_worker, args=(world, str(tmp_path / "store"), loss_name), nprocs=world, join=True)


def _ddp_worker(rank, world, store, loss_name):
    _init(rank, world, store)
    torch.manual_seed(0)
    tok = WordTokenizer(W.world_vocabulary(), 16)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    ds = W.WorldDataset(8, seed=3)
    items = [ds[i] for i in range(8)]
    if loss_name == "c2lip":  # unequal concept counts: the ground-truth object phrases, 1 to 3 per image
        for i, it in enumerate(items):
            it["concepts"] = [W.object_phrase(o) for o in ds.objects[i]][: 1 + i % 3]
    cfg = train.Config(loss=loss_name, xac_weight=1.0)
    collate = data.Collate(tok, 32, train.text_groups(loss_name))

    def step(model_fn, batch, rank_images):
        out = model_fn(batch["images"], batch["texts"], batch["rows"], return_tokens=loss_name == "c2lip")
        terms = train.compute_losses(out, batch, cfg, rank_images)
        return sum(train.LOSS_WEIGHTS[k](cfg, 0) * v for k, v in terms.items())

    # reference on the whole batch, without any process group involvement
    ref_model = DualEncoder(model.cfg)
    ref_model.load_state_dict(model.state_dict())
    full = collate(items)
    with alone():
        ref_loss = step(ref_model, full, [8])
    ref_loss.backward()
    # DDP on this rank's half
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    per = 8 // world
    batch = collate(items[rank * per:(rank + 1) * per])
    loss = step(ddp, batch, [per] * world)
    (loss * world).backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.testing.assert_close(total, ref_loss.detach(), rtol=1e-5, atol=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"grad {name}")
    dist.destroy_process_group()


@pytest.mark.parametrize("loss_name", ["siglip", "c2lip"])
def test_ddp_step_matches_single_process(loss_name, tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), loss_name), nprocs=2, join=True)

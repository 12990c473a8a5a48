"""Host syncs per training step, counted. Every .item(), bool(t), int(t) of a tensor goes through
aten._local_scalar_dense, which a TorchDispatchMode sees; .tolist(), .cpu() and .numpy() are counted by
wrapping them. AdamW's reads of its per-parameter step counters (inside optimizer.step) are counted apart: those
counters live on the host (torch keeps them on the CPU unless the optimizer is capturable or fused), so reading
them costs no device sync. A steady-state step of the real train.main (no log line, no checkpoint) syncs the host
once: the agreed "all finite? anyone stopping?" decision (runtime.agree_on_step)."""
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train


class SyncCounter(TorchDispatchMode):
    """host reads per training step (the step is advanced by train.set_lr); key "optimizer" for AdamW's own"""

    def __init__(self):
        super().__init__()
        self.step, self.in_optimizer, self.counts, self.optimizer_reads = 0, False, Counter(), Counter()

    def count(self):
        (self.optimizer_reads if self.in_optimizer else self.counts)[self.step] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count()
        return func(*args, **(kwargs or {}))


def run_counted(loss, tmp_path, monkeypatch):
    counter = SyncCounter()
    set_lr, adamw_step = train.set_lr, torch.optim.AdamW.step

    def counting_set_lr(optimizer, step, cfg):
        counter.step = step + 1  # what follows belongs to step `step + 1`
        return set_lr(optimizer, step, cfg)

    def marked_step(self, *args, **kwargs):
        counter.in_optimizer = True
        try:
            return adamw_step(self, *args, **kwargs)
        finally:
            counter.in_optimizer = False

    for name in ("tolist", "cpu", "numpy"):  # device-to-host copies that bypass _local_scalar_dense
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _m=method, **k: (counter.count(), _m(self, *a, **k))[1])
    monkeypatch.setattr(train, "set_lr", counting_set_lr)
    monkeypatch.setattr(torch.optim.AdamW, "step", marked_step)
    cfg = train.Config(loss=loss, out_dir=str(tmp_path / loss), world_scenes=128, batch_size=16, steps=5,
                       log_every=100, ckpt_every=100, eval=False, warmup=2)
    with counter:
        train.main(cfg)
    return counter


@pytest.mark.parametrize("loss", ["siglip", "c2lip", "degla", "c2lip+degla"])
def test_one_host_sync_per_steady_step(loss, tmp_path, monkeypatch):
    counter = run_counted(loss, tmp_path, monkeypatch)
    # steps 2-4: neither the first step nor the last (which logs and checkpoints)
    assert [counter.counts[s] for s in (2, 3, 4)] == [1, 1, 1], dict(counter.counts)
    assert counter.counts[5] > 1  # the last step logs its terms: the counter does see those reads
    assert counter.optimizer_reads[3] > 0  # and AdamW's step counters were seen, and kept apart


class _Patch:
    """monkeypatch's setattr/undo for a spawned worker, which has no fixtures"""

    def __init__(self):
        self.saved = []

    def setattr(self, obj, name, value):
        self.saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)


def _ddp_worker(rank, world, port, loss, out):
    import json
    import os
    import pathlib
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    counter = run_counted(loss, pathlib.Path(out), _Patch())
    with open(os.path.join(out, f"counts{rank}.json"), "w") as f:
        json.dump({str(s): counter.counts[s] for s in (2, 3, 4)}, f)


@pytest.mark.parametrize("loss", ["siglip", "c2lip+degla"])
def test_host_syncs_per_steady_step_under_ddp(loss, tmp_path):
    # 2 gloo ranks running the real train.main: the agreed decision, plus one read of every rank's row counts
    # per step (losses.gather_sizes, once for the whole step); README states the numbers
    import json
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, loss, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        counts = json.load(open(tmp_path / f"counts{rank}.json"))
        assert list(counts.values()) == [DDP_SYNCS[loss]] * 3, counts


DDP_SYNCS = {"siglip": 2, "c2lip+degla": 2}  # the row counts, and the decision

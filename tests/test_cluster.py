"""Running on a cluster and surviving it: a two-"node" torchrun launch, preemption (SIGTERM / --preempt_signal),
an elastic restart after a killed worker, the checkpoint history and its fallback, a failed save, a dead
DataLoader worker.

The torchrun tests run this file as their entry point (see `__main__` at the bottom): train.py plus faults
injected at chosen steps through $CLUSTER_FAULTS, so that they land at the same step on every machine.
"""
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint  # noqa: E402
import cli  # noqa: E402
import data  # noqa: E402
import world  # noqa: E402
import runtime  # noqa: E402
import train  # noqa: E402

STEPS = 12
FLAGS = dict(world_scenes=256, batch_size=32, steps=STEPS, warmup=2, log_every=1, ckpt_every=4, eval=False, threads=1)


def small(out_dir, **kw):
    return train.Config(**{**FLAGS, "out_dir": str(out_dir), **kw})


def as_args(**kw):
    return [f"--{k}={v}" for k, v in {**FLAGS, **kw}.items()]


def losses_of(out_dir):
    """step -> loss, the last value logged for each step"""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """per-step losses of one uninterrupted single-process run: what every other run here must reproduce"""
    out = tmp_path_factory.mktemp("reference")
    train.main(small(out))
    return losses_of(out)


def assert_same_losses(got, ref, steps, rel):
    assert sorted(got) == list(range(1, STEPS + 1)), "a step is missing from metrics.jsonl"
    for s in steps:
        assert got[s] == pytest.approx(ref[s], rel=rel), f"step {s}"

# -----------------------------------------------------------------------------
# torchrun: two nodes, and preemption plus a killed worker under --max-restarts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launcher_args, train_args, faults=""):
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: without it a restarted group reuses the agent's store, where the
    # dead group's addresses are still written, and its ranks may connect to those (gloo "Connection refused")
    env = {**os.environ, "CLUSTER_FAULTS": faults, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher_args, os.path.abspath(__file__),
                             *train_args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(p, timeout=240):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and its workers
        out, _ = p.communicate()
        pytest.fail(f"torchrun still running after {timeout}s:\n{out[-3000:]}")
    return p.returncode, out


def test_two_nodes_match_one_process(tmp_path, reference):
    """two torchrun launches with --nnodes=2 (one process each) meet at a c10d rendezvous on 127.0.0.1, as two
    machines would at the first node's address; the run equals one process on the same global batch"""
    port, out = free_port(), tmp_path / "run"
    nodes = [torchrun(["--nnodes=2", "--nproc_per_node=1", f"--node_rank={r}", "--rdzv_backend=c10d",
                       f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes"], as_args(out_dir=out))
             for r in (0, 1)]
    for node in nodes:
        rc, text = finish(node)
        assert rc == 0, text[-3000:]
    with open(out / "config.json") as f:
        assert json.load(f)["world_size"] == 2
    assert_same_losses(losses_of(out), reference, range(1, STEPS + 1), rel=1e-5)


def test_preemption_and_killed_worker_under_torchrun(tmp_path, reference):
    """2 gloo ranks under `torchrun --max-restarts=2 ... --resume`:
    attempt 0: SIGUSR1 reaches rank 1 only, during step 3 -> both ranks finish step 3, rank 0 saves, both exit 75;
    attempt 1: resumes at step 3; rank 1 is SIGKILLed during step 7 (after the checkpoint of step 4);
    attempt 2: resumes at step 4 and completes. Every step's loss equals the uninterrupted run's."""
    out = tmp_path / "run"
    p = torchrun(["--standalone", "--nproc_per_node=2", "--max-restarts=2"],
                 as_args(out_dir=out, resume=True), faults="0:1:3:SIGUSR1,1:1:7:SIGKILL")
    rc, text = finish(p, timeout=300)
    assert rc == 0, text[-3000:]
    assert "stopped: SIGUSR1 received: finished step 3 of 12" in text  # rank 1
    assert "stopped: another rank received a stop signal: finished step 3 of 12" in text  # rank 0 agreed
    assert "resumed at step 3" in text and "resumed at step 4" in text
    assert_same_losses(losses_of(out), reference, range(1, STEPS + 1), rel=1e-5)
    assert checkpoint.load_checkpoint(str(out / "ckpt.pt"))["step"] == STEPS

# -----------------------------------------------------------------------------
# one process: preemption, checkpoint history, failed saves, a dying DataLoader worker


def signal_at(monkeypatch, steps):
    """send this process signal s during the training step that ends at step n, for (n, s) in steps"""
    real, count = train.train_step, {"calls": 0, "start": 0}
    real_logger = runtime.Logger.__init__

    def logger_init(self, cfg, env, start_step):
        count["start"], count["calls"] = start_step, 0
        real_logger(self, cfg, env, start_step)

    def step(*a, **k):
        count["calls"] += 1
        for n, sig in steps:
            if count["start"] + count["calls"] == n:
                os.kill(os.getpid(), sig)  # arrives mid-step: the handler only raises a flag
        return real(*a, **k)

    monkeypatch.setattr(runtime.Logger, "__init__", logger_init)
    monkeypatch.setattr(train, "train_step", step)


def test_preempted_run_resumes_with_identical_losses(tmp_path, monkeypatch, reference):
    signal_at(monkeypatch, [(3, signal.SIGUSR1), (6, signal.SIGTERM)])
    cfg = small(tmp_path / "run")
    with pytest.raises(runtime.Preempted, match="SIGUSR1 received: finished step 3 of 12") as stop:
        train.main(cfg)
    assert stop.value.exit_code == runtime.PREEMPTED_EXIT == 75
    assert checkpoint.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    with pytest.raises(runtime.Preempted, match="SIGTERM received: finished step 6 of 12"):
        train.main(small(tmp_path / "run", resume=True))
    train.main(small(tmp_path / "run", resume=True))
    assert_same_losses(losses_of(cfg.out_dir), reference, range(1, STEPS + 1), rel=1e-6)


def test_preemption_exit_status_and_one_line(capsys):
    def preempted(cfg):
        raise runtime.Preempted("SIGTERM received: finished step 3 of 12 ...")
    with pytest.raises(SystemExit) as done:
        cli.run(preempted, train.Config, argv=[])
    assert done.value.code == 75
    assert capsys.readouterr().err.strip().splitlines() == ["stopped: SIGTERM received: finished step 3 of 12 ..."]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_history_keeps_last_k_with_manifests_and_falls_back(tmp_path, capsys, reference):
    cfg = small(tmp_path / "run", steps=8, ckpt_every=2, keep_ckpts=2)
    train.main(cfg)
    out = cfg.out_dir
    names = sorted(f for f in os.listdir(out) if f.startswith("ckpt"))
    assert names == ["ckpt.pt", "ckpt_6.json", "ckpt_6.pt", "ckpt_8.json", "ckpt_8.pt"]
    for step in (6, 8):
        with open(os.path.join(out, f"ckpt_{step}.json")) as f:
            manifest = json.load(f)
        path = os.path.join(out, f"ckpt_{step}.pt")
        assert manifest == {"file": f"ckpt_{step}.pt", "step": step, "size": os.path.getsize(path),
                            "sha256": sha256(path)}
    assert os.path.samefile(os.path.join(out, "ckpt.pt"), os.path.join(out, "ckpt_8.pt"))  # no second copy
    first = losses_of(out)

    # the newest is damaged in place (same size, one byte changed): reported, and the previous one is used
    with open(os.path.join(out, "ckpt_8.pt"), "r+b") as f:
        f.seek(os.path.getsize(os.path.join(out, "ckpt_8.pt")) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    train.main(small(tmp_path / "run", steps=8, ckpt_every=2, keep_ckpts=2, resume=True))
    log = capsys.readouterr().out
    assert "passed over ckpt_8.pt (checksum differs from its manifest" in log and "resumed at step 6" in log
    assert losses_of(out)[7] == first[7] and losses_of(out)[8] == first[8]
    assert checkpoint.check_against_manifest(os.path.join(out, "ckpt_8.json"))[1] is None  # rewritten whole

    # both unusable (one truncated, one missing): one line, exit status 2
    blob = open(os.path.join(out, "ckpt_8.pt"), "rb").read()
    os.remove(os.path.join(out, "ckpt_8.pt"))
    os.remove(os.path.join(out, "ckpt.pt"))
    with open(os.path.join(out, "ckpt_8.pt"), "wb") as f:
        f.write(blob[: len(blob) // 3])
    os.remove(os.path.join(out, "ckpt_6.pt"))
    with pytest.raises(SystemExit) as done:
        cli.run(train.main, train.Config, argv=as_args(out_dir=out, steps=8, ckpt_every=2, resume=True))
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: no usable checkpoint in")
    assert "ckpt_8.pt (" in err[0] and "truncated" in err[0] and "ckpt_6.pt (file missing)" in err[0]


def test_history_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(os, "link", no_links)
    cfg = small(tmp_path / "run", steps=4, ckpt_every=2)
    train.main(cfg)
    newest, last = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "ckpt_4.pt")
    assert not os.path.samefile(newest, last) and sha256(newest) == sha256(last)
    assert not [f for f in os.listdir(cfg.out_dir) if f.endswith(".tmp")]


class FillingFile:
    """a file on a disk that is full after `room` bytes: what torch.save meets on a real full disk"""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            self.f.write(bytes(b)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):  # flush, fileno, close
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def full_disk(monkeypatch):  # real torch.save, the disk fills part-way through the checkpoint of step 4
    def opener(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        return FillingFile(f, 100_000) if "w" in mode and "ckpt_4" in str(path) else f
    monkeypatch.setattr(checkpoint, "open", opener, raising=False)


def late_full_disk(monkeypatch):  # the data fit in the page cache; the disk says no when it is flushed
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        if "ckpt_4.pt.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def read_only(monkeypatch):  # chmod does not stop root, who runs CI, so the refusal is simulated
    real = open

    def refusing(path, mode="r", *a, **k):
        if "w" in mode and "ckpt_4" in str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, mode, *a, **k)
    monkeypatch.setattr(checkpoint, "open", refusing, raising=False)


@pytest.mark.parametrize("fault,says", [(full_disk, "No space left on device (ENOSPC)"),
                                        (late_full_disk, "No space left on device (ENOSPC)"),
                                        (read_only, "Permission denied (EACCES)")])
def test_failed_save_stops_with_one_line_and_keeps_the_previous(tmp_path, monkeypatch, capsys, fault, says):
    out = tmp_path / "run"
    fault(monkeypatch)
    with pytest.raises(SystemExit) as done:
        cli.run(train.main, train.Config, argv=as_args(out_dir=out, steps=6, ckpt_every=2))
    assert done.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stopped: cannot write checkpoint ckpt_4.pt in"), err
    assert says in err[0] and "the previous checkpoint ckpt_2.pt is intact" in err[0] and "--resume" in err[0]
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt")) == ["ckpt.pt", "ckpt_2.json", "ckpt_2.pt"]
    ckpt, why = checkpoint.check_against_manifest(str(out / "ckpt_2.json"))
    assert why is None and checkpoint.load_checkpoint(str(out / "ckpt.pt"))["step"] == 2


def test_dead_dataloader_worker_is_one_line_not_a_hang(tmp_path, monkeypatch):
    real = world.WorldDataset.__getitem__

    def dying(self, i):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            dying.served = getattr(dying, "served", 0) + 1
            if dying.served > 40:  # inside the worker process, part-way through its second batch
                os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(self, i)

    monkeypatch.setattr(world.WorldDataset, "__getitem__", dying)
    with pytest.raises(runtime.DataWorkerDied, match=r"data-loading worker failed \(DataLoader worker .*(killed by signal|exited unexpectedly)"
                                                   r".*lower --workers .*--resume"):
        train.main(small(tmp_path / "run", workers=1))

# -----------------------------------------------------------------------------
# the torchrun entry point of the tests above: train.py with faults


def inject_faults(spec):
    """spec: comma-separated attempt:rank:step:SIGNAL; on that torchrun attempt (TORCHELASTIC_RESTART_COUNT),
    that rank sends itself SIGNAL during the training step that ends at that step"""
    attempt, rank = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("RANK", "0")
    due = {int(s): getattr(signal, name) for a, r, s, name in (f.split(":") for f in spec.split(",") if f)
           if a == attempt and r == rank}
    real_step, real_logger = train.train_step, runtime.Logger.__init__
    state = {"step": 0}

    def logger_init(self, cfg, env, start_step):
        state["step"] = start_step
        real_logger(self, cfg, env, start_step)

    def step(*a, **k):
        state["step"] += 1
        if state["step"] in due:
            os.kill(os.getpid(), due[state["step"]])
        return real_step(*a, **k)

    runtime.Logger.__init__, train.train_step = logger_init, step


if __name__ == "__main__":
    inject_faults(os.environ.get("CLUSTER_FAULTS", ""))
    cli.run(train.main, train.Config, doc=train.__doc__)

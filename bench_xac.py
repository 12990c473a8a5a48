"""
Benchmark L_xac (C2LIP's cross-attended concept loss): our closed form (losses.xattn_concept_loss),
its chunked variant, and the official per-concept loop, forward + backward, time and peak memory.

    python bench_xac.py                      # CPU (one thread), small shapes
    python bench_xac.py --device=cuda        # GPU, up to the official global batch (B=768, N=2300, T=196, d=768)

Each (shape, method) runs in a fresh subprocess so peak memory is its own, measured after one warm-up call
(the first call pays one-off costs, e.g. the first non-reentrant checkpoint): on CUDA the allocator's peak
above the inputs, on CPU the growth of the peak resident set (VmHWM, Linux) over the timed calls.

Methods: closed (losses.xattn_concept_loss), chunked (the same in B/8-image chunks under checkpointing),
loop (the official per-concept scheme, see loop_loss), loop_bmm (the cheapest per-concept loop).
"""

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import losses
from cli import UsageError, run


def loop_loss(tokens, c, owner, logit_scale, logit_bias, temperature=1.0):
    """the official scheme (not available here; built from its description): a Python loop over the N
    concepts, each attending over every image's tokens: logits, softmax over patches, the pooled vector as
    the attention-weighted sum of the tokens, its normalisation and score; labels filled one concept at a
    time with a host sync each. Autograd keeps every concept's intermediates. Same value as the closed form."""
    B, N = tokens.shape[0], c.shape[0]
    cols = []
    for k in range(N):
        s = torch.bmm(tokens, c[k].expand(B, -1).unsqueeze(-1)).squeeze(-1)  # (B, T) attention logits
        a = torch.softmax(temperature * s, dim=-1)  # over the patches
        v = (a.unsqueeze(-1) * tokens).sum(1)  # (B, d) pooled vector, through a (B, T, d) product
        v = F.normalize(v, dim=-1, eps=1e-8)
        cols.append((v * c[k]).sum(-1))  # (B,) score
    logits = logit_scale.exp() * torch.stack(cols, 1) + logit_bias  # (B, N)
    positive = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
    for k in range(N):
        positive[owner[k].item(), k] = True
    return losses.sigmoid_loss(logits, positive, N)


def loop_bmm_loss(tokens, c, owner, logit_scale, logit_bias, temperature=1.0):
    """the cheapest per-concept loop (this benchmark's earlier baseline): pooling by a bmm, labels vectorised"""
    B, N = tokens.shape[0], c.shape[0]
    cols = []
    for k in range(N):
        s = torch.bmm(tokens, c[k].expand(B, -1).unsqueeze(-1)).squeeze(-1)  # (B, T)
        a = torch.softmax(temperature * s, dim=-1)
        v = torch.bmm(a.unsqueeze(1), tokens).squeeze(1)  # (B, d)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        cols.append(v @ c[k])
    logits = logit_scale.exp() * torch.stack(cols, 1) + logit_bias  # (B, N)
    positive = torch.arange(B, device=tokens.device)[:, None] == owner[None, :]
    return losses.sigmoid_loss(logits, positive, N)


METHODS = ("closed", "chunked", "loop", "loop_bmm")


@dataclass
class XacConfig:
    device: str = "cpu"           # cpu | cuda
    reps: int = 3                 # timed calls per case, after one warm-up call
    shapes: str = ""              # B x N x T x d list, e.g. 32x80x16x128,96x290x196x768 ("" = the device's list)
    methods: str = ",".join(METHODS)  # comma-separated subset of closed, chunked, loop, loop_bmm
    max_loop: int = 300_000       # skip the loops on CPU above this B * N (minutes each)
    threads: int = 1              # torch CPU threads (0 = leave as is)
    json: bool = False            # one JSON object per case instead of the table
    one: str = ""                 # internal: run one case given as JSON, print its result


def _proc_status_bytes(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def run_one(B, N, T, d, method, device, dtype, chunk, reps):
    torch.manual_seed(0)
    dev = torch.device(device)
    tokens = F.normalize(torch.randn(B, T, d, device=dev, dtype=dtype), dim=-1).requires_grad_()
    c = F.normalize(torch.randn(N, d, device=dev, dtype=dtype), dim=-1).requires_grad_()
    owner = torch.randint(0, B, (N,), device=dev)
    t = torch.tensor(2.3, device=dev, requires_grad=True)
    b = torch.tensor(-10.0, device=dev, requires_grad=True)

    def step():
        if method == "loop":
            loss = loop_loss(tokens, c, owner, t, b)
        elif method == "loop_bmm":
            loss = loop_bmm_loss(tokens, c, owner, t, b)
        else:
            loss = losses.xattn_concept_loss(tokens, c, owner, t, b, chunk=chunk if method == "chunked" else 0)
        loss.backward()
        tokens.grad = c.grad = t.grad = b.grad = None

    # a warm-up call first: the first non-reentrant checkpoint call (and the first use of a kernel) has a
    # one-off cost that no later step pays; the peak is that of a later step
    step()
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident high-water mark (VmHWM) to the current resident set
        base = _proc_status_bytes("VmRSS")
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = _proc_status_bytes("VmHWM") - base
    return {"B": B, "N": N, "T": T, "d": d, "method": method, "chunk": chunk if method == "chunked" else 0,
            "device": device, "dtype": str(dtype).replace("torch.", ""), "ms_min": 1000 * min(times),
            "ms_median": 1000 * statistics.median(times), "reps": reps, "peak_MiB": peak / 2 ** 20}


def parse_shapes(text):
    try:
        shapes = [tuple(int(x) for x in s.split("x")) for s in text.split(",") if s]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise UsageError(f"--shapes={text!r} is not a list like 32x80x16x128,96x290x196x768 (B x N x T x d)")
    return shapes


def main(a):
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.one:
        case = json.loads(a.one)
        case["dtype"] = getattr(torch, case["dtype"])
        print(json.dumps(run_one(**case, device=a.device, reps=a.reps)))
        return
    methods = [m for m in a.methods.split(",") if m]
    if not methods or any(m not in METHODS for m in methods):
        raise UsageError(f"--methods={a.methods!r}: expected a comma-separated subset of {','.join(METHODS)}")
    if a.device not in ("cpu", "cuda") or a.reps < 1:
        raise UsageError(f"--device={a.device} --reps={a.reps}: expected cpu or cuda and reps >= 1")
    if a.device == "cuda":
        # (B, N, T, d): a scaled-down official shape, then the official global batch
        shapes = [(96, 290, 196, 768), (192, 575, 196, 768), (768, 2300, 196, 768)]
        dtype = "bfloat16"
    else:
        shapes = [(32, 80, 16, 128), (128, 320, 16, 128), (48, 144, 196, 768), (96, 290, 196, 768)]
        dtype = "float32"
    shapes = parse_shapes(a.shapes) if a.shapes else shapes
    if not a.json:
        print(f"{'B':>5} {'N':>5} {'T':>4} {'d':>4}  {'method':8} {'chunk':>5} {'ms min':>10} {'median':>10} "
              f"{'peak MiB':>9}")
    for B, N, T, d in shapes:
        for method in methods:
            if method.startswith("loop") and B * N > a.max_loop and a.device == "cpu":
                continue  # the official loop at this size takes minutes on a CPU
            chunk = max(1, B // 8)
            arg = json.dumps(dict(B=B, N=N, T=T, d=d, method=method, dtype=dtype, chunk=chunk))
            cmd = [sys.executable, os.path.abspath(__file__), f"--device={a.device}", f"--reps={a.reps}",
                   f"--threads={a.threads}", f"--one={arg}"]
            # glibc then returns every freed block over 64 KiB at once, so the resident set follows torch's use
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(f"{B:5d} {N:5d} {T:4d} {d:4d}  {method:8} failed: {res.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            if a.json:
                print(json.dumps(r))
            else:
                print(f"{B:5d} {N:5d} {T:4d} {d:4d}  {method:8} {r['chunk']:5d} {r['ms_min']:10.1f} "
                      f"{r['ms_median']:10.1f} {r['peak_MiB']:9.1f}")


if __name__ == "__main__":
    run(main, XacConfig, doc=__doc__)

"""
Benchmark L_xac (C2LIP's cross-attended concept loss): our closed form (losses.xattn_concept_loss),
its chunked variant, and the official per-concept loop, forward + backward, time and peak memory.

    python bench_xac.py                      # CPU, small shapes
    python bench_xac.py --device=cuda        # GPU, up to the official global batch (B=768, N=2300, T=196, d=768)

Each (shape, method) runs in a fresh subprocess so peak memory is its own: on CUDA the allocator's peak,
on CPU the growth of the process's peak resident set during forward + backward.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import losses


def loop_loss(tokens, c, owner, logit_scale, logit_bias, temperature=1.0):
    """the official scheme: one pooled (B, d) matrix per concept, in a Python loop over concepts"""
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
        else:
            loss = losses.xattn_concept_loss(tokens, c, owner, t, b, chunk=chunk if method == "chunked" else 0)
        loss.backward()
        tokens.grad = c.grad = t.grad = b.grad = None

    if dev.type == "cuda":
        step()  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()  # the first step sets the peak (and warms up)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        dt = (time.perf_counter() - t0) / reps
    return {"B": B, "N": N, "T": T, "d": d, "method": method, "chunk": chunk if method == "chunked" else 0,
            "device": device, "dtype": str(dtype).replace("torch.", ""), "ms": 1000 * dt, "peak_MiB": peak / 2 ** 20}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one case as JSON
    a = p.parse_args()
    if a.one:
        case = json.loads(a.one)
        case["dtype"] = getattr(torch, case["dtype"])
        print(json.dumps(run_one(**case, device=a.device, reps=a.reps)))
        return
    if a.device == "cuda":
        # (B, N, T, d): small, a scaled-down official shape, then the official global batch
        shapes = [(96, 290, 196, 768), (192, 575, 196, 768), (768, 2300, 196, 768)]
        dtype = "bfloat16"
    else:
        shapes = [(32, 80, 16, 128), (128, 320, 16, 128), (48, 144, 196, 768), (96, 290, 196, 768)]
        dtype = "float32"
    print(f"{'B':>5} {'N':>5} {'T':>4} {'d':>4}  {'method':8} {'chunk':>5} {'ms fwd+bwd':>11} {'peak MiB':>9}")
    for B, N, T, d in shapes:
        for method in ("closed", "chunked", "loop"):
            if method == "loop" and B * N > 300_000 and a.device == "cpu":
                continue  # the official loop at this size takes minutes on a CPU
            chunk = max(1, B // 8)
            arg = json.dumps(dict(B=B, N=N, T=T, d=d, method=method, dtype=dtype, chunk=chunk))
            cmd = [sys.executable, __file__, f"--device={a.device}", f"--reps={a.reps}", "--one", arg]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{B:5d} {N:5d} {T:4d} {d:4d}  {method:8} failed: {res.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(res.stdout)
            print(f"{B:5d} {N:5d} {T:4d} {d:4d}  {method:8} {r['chunk']:5d} {r['ms']:11.1f} {r['peak_MiB']:9.1f}")


if __name__ == "__main__":
    main()

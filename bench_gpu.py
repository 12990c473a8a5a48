"""
Everything the README's GPU rows need, in one run on one GPU (6 minutes on an H200), written to a folder as
results.json and table.md:

    python bench_gpu.py --out=gpu_results            # on a machine with one CUDA GPU
    python bench_gpu.py --out=/tmp/dry --dry_run     # the same stages on the CPU at toy sizes (the tests run it)

Stages, each its own subprocess with a time cap, so that a slow or failing stage is recorded and the rest
still run; results.json and table.md are rewritten after each, and --budget=SECONDS caps them all together:
  1. train_eager, train_compiled: bench_train.py at B/16, 96 images, bf16, fused AdamW, the SigLIP, C2LIP and
     DeGLA steps alternating (C2LIP with the world's concept repeat rate is not assumed: random concepts, every
     one encoded), MFU against a bf16 matmul measured in the same run, peak memory; without and with
     torch.compile (its compile time apart). The eager run also times OpenCLIP's ViT-B-16-SigLIP when
     open_clip is installed.
  2. xac: bench_xac.py at the official global shape (B = 768, N = 2,300, T = 196, d = 768, bf16), the closed
     form and its chunked variant; then the official per-concept loop under its own time cap.
  3. world: python train.py --device=cuda (the default run: tiny model, built-in world, 1,000 steps) and its
     evaluation, next to the CPU run's numbers the README gives for the same command.
  4. cuda_tests: tests/test_cuda.py (losses in fp32 under CUDA's bf16 autocast, the CUDA step against the CPU
     step, fused AdamW against foreach, an inductor-compiled step against eager).
They run in the order 1 eager, 3, 4, 2, 1 compiled, 2 loop: the most wanted first.
A stage that runs past its cap is killed and recorded as such. --dry_run swaps every stage for a toy CPU
version of the same command (tiny model, a few steps, small shapes, compile with the aot_eager backend).
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from cli import UsageError, run


@dataclass
class GpuBenchConfig:
    out: str = ""                 # folder for results.json and table.md (created)
    dry_run: bool = False         # toy sizes on the CPU: checks every stage end to end without a GPU
    python: str = sys.executable  # the interpreter the stages run with
    budget: int = 0               # seconds for all stages together (0 = no limit): a stage's cap shrinks to what
                                  # is left, and a stage with under 20 s left is recorded as not run
    predict_memory: str = ""      # no GPU needed: predict the peak memory of a B/16 step at these images per GPU
                                  # (e.g. 96) from saved-tensor bytes measured on the CPU at 1, 2 and 4 images


# the default run on our 2-core CPU (README, "Two commands"): what the GPU's world run is set beside
CPU_WORLD = {"i2t_R@1": 78.4, "t2i_R@1": 81.4, "zeroshot_shape": 67.6, "concept_binding": 72.9}
XAC_SHAPE = "768x2300x196x768"
# the GPU's own checks (tests/test_cuda.py: bf16 autocast, CUDA vs CPU step, fused AdamW, inductor); skipped on a CPU
CUDA_TESTS = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]


def stages(cfg):
    """[(name, argv, seconds allowed)] for a GPU, or their toy CPU versions under --dry_run"""
    world_dir = os.path.join(cfg.out, "world")
    if cfg.dry_run:
        bench = ["bench_train.py", "--model=tiny", "--batch=4", "--steps=2", "--warmup=1", "--loss=siglip,c2lip,degla",
                 "--bf16", "--fused", "--peak_size=128", "--threads=1", "--json"]
        return [("train_eager", bench + ["--memory=false"], 300),
                ("world", ["train.py", "--steps=3", "--world_scenes=64", "--batch_size=16", "--eval_scenes=40",
                           "--log_every=1", f"--out_dir={world_dir}", "--overwrite"], 300),
                ("cuda_tests", CUDA_TESTS, 300),
                ("xac", ["bench_xac.py", "--shapes=8x20x16x32", "--methods=closed,chunked", "--reps=1", "--json"], 120),
                ("train_compiled", bench + ["--memory=false", "--compile", "--compile_backend=aot_eager"], 300),
                ("xac_loop", ["bench_xac.py", "--shapes=8x20x16x32", "--methods=loop", "--reps=1", "--json"], 120)]
    bench = ["bench_train.py", "--model=B/16", "--batch=96", "--steps=10", "--warmup=2", "--loss=siglip,c2lip,degla",
             "--device=cuda", "--bf16", "--fused", "--json"]
    # most wanted first: under --budget the last stages are the ones cut
    return [("train_eager", bench + ["--compare=openclip"], 150),
            ("world", ["train.py", "--device=cuda", f"--out_dir={world_dir}", "--overwrite"], 150),
            ("cuda_tests", CUDA_TESTS, 150),
            ("xac", ["bench_xac.py", "--device=cuda", f"--shapes={XAC_SHAPE}", "--methods=closed,chunked", "--reps=3",
                     "--json"], 60),
            ("train_compiled", bench + ["--compile", "--warmup=1", "--memory=false"], 180),
            ("xac_loop", ["bench_xac.py", "--device=cuda", f"--shapes={XAC_SHAPE}", "--methods=loop", "--reps=1",
                          "--json"], 45)]


def run_stage(cfg, name, argv, cap):
    """run one stage -> {"status": ok | failed | over the cap, "seconds", "output": its JSON lines, "tail"}"""
    t0 = time.time()
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        res = subprocess.run([cfg.python, *argv], cwd=here, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"argv": argv, "status": f"over the {cap} s cap", "seconds": time.time() - t0, "output": []}
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    last = [line for line in res.stdout.splitlines() if line.strip()][-1:]
    rec = {"argv": argv, "status": "ok" if res.returncode == 0 else f"failed (exit {res.returncode})",
           "seconds": time.time() - t0, "output": [json.loads(line) for line in lines], "last_line": "".join(last)}
    if res.returncode != 0:
        rec["tail"] = (res.stderr or res.stdout)[-2000:]
    return rec


def world_result(cfg):
    path = os.path.join(cfg.out, "world", "eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ev = json.load(f)
    return {k: 100 * ev[k] for k in CPU_WORLD if k in ev}


def table(results):
    """the markdown the README's GPU rows come from"""
    out = [f"bench_gpu | {results['device']} | {results['when']}{' | DRY RUN on the CPU' if results['dry_run'] else ''}",
           "", "| stage | status | seconds |", "|---|---|---|"]
    out += [f"| {k} | {v['status']} | {v['seconds']:.0f} |" for k, v in results["stages"].items()]
    tests = results["stages"].get("cuda_tests", {}).get("last_line")
    if tests:
        out += ["", f"tests/test_cuda.py: {tests}"]
    for name in ("train_eager", "train_compiled"):
        st = results["stages"].get(name, {})
        if not st.get("output"):
            continue
        b = st["output"][-1]
        out += ["", f"**{name}** ({b['dtype']}, batch {b['config']['batch']}, {b['config']['model']}; peak "
                f"{b['peak_flop_s'] / 1e12:.1f} TFLOP/s measured)", "",
                "| step | ms median | img/s | MFU | peak memory | compile |", "|---|---|---|---|---|---|"]
        for k, r in b["results"].items():
            mem = f"{r['peak_mem_bytes'] / 2 ** 30:.1f} GiB" if r.get("peak_mem_bytes") else "-"
            comp = f"{r['compile_s']:.0f} s" if r.get("compile_s") is not None else "-"
            out.append(f"| {k} | {1000 * r['step_s_median']:.1f} | {r['img_s']:.0f} | {100 * r['mfu']:.1f}% | {mem} "
                       f"| {comp} |")
    xac = [r for name in ("xac", "xac_loop") for r in results["stages"].get(name, {}).get("output", [])]
    if xac:
        out += ["", "| L_xac B x N x T x d | method | ms median | peak MiB |", "|---|---|---|---|"]
        out += [f"| {r['B']}x{r['N']}x{r['T']}x{r['d']} | {r['method']} | {r['ms_median']:.1f} | {r['peak_MiB']:.0f} |"
                for r in xac]
    if results.get("world"):
        out += ["", "| world, default run | " + " | ".join(results["world"]) + " |",
                "|---|" + "---|" * len(results["world"]),
                "| this device | " + " | ".join(f"{v:.1f}" for v in results["world"].values()) + " |",
                "| CPU (README) | " + " | ".join(f"{CPU_WORLD[k]:.1f}" for k in results["world"]) + " |"]
    return "\n".join(out) + "\n"


def batch_bytes(cfg, loss, images, concepts=3, negatives=4):
    """bytes of bench_train's synthetic batch: fp32 images, int64 token ids, rows and owners"""
    texts = images * (1 + concepts * (loss == "c2lip") + negatives * (loss == "degla"))
    return 4 * images * 3 * cfg.image_size ** 2 + 8 * texts * (cfg.context_length + 2)


def predict_memory(images, model="B/16", sizes=(1, 2, 4)):
    """{loss: {...}}: the bytes a step keeps for its backward under bf16 autocast (measured on the CPU at `sizes`
    images, fitted by a quadratic in the batch: the concept losses hold batch x concepts matrices), extrapolated
    to `images`, plus the resident state (fp32 weights, AdamW's two moments, the teacher, the batch); the
    backward's transients and the gradients, which grow as activations are freed, are not added"""
    import numpy as np
    import torch
    import bench_train as BT
    torch.set_num_threads(1)
    cfg, out = BT.model_config(model), {}
    for loss in BT.LOSSES:
        measured = [BT.activation_bytes(cfg, BT.BenchConfig(model=model, loss=loss, batch=b, bf16=True),
                                        torch.device("cpu")) for b in sizes]
        saved = [m[0] for m in measured]
        fit = np.polyfit(sizes, saved, 2)
        resident = measured[0][1] + batch_bytes(cfg, loss, images) - batch_bytes(cfg, loss, sizes[0])
        out[loss] = {"saved_bytes_measured": dict(zip(sizes, saved)), "saved_bytes_predicted": float(np.polyval(fit, images)),
                     "resident_bytes": resident, "images": images}
        out[loss]["peak_bytes_predicted"] = out[loss]["saved_bytes_predicted"] + resident
    return out


def main(cfg):
    if cfg.predict_memory:
        images = int(cfg.predict_memory)
        pred = predict_memory(images)
        print(f"PREDICTION (no GPU): B/16 step at {images} images, bf16 autocast; saved-for-backward bytes measured on "
              f"the CPU at 1, 2, 4 images, quadratic fit; + fp32 weights, AdamW moments, teacher, batch")
        for loss, p in pred.items():
            print(f"{loss:7s} activations {p['saved_bytes_predicted'] / 2 ** 30:6.1f} GiB + resident "
                  f"{p['resident_bytes'] / 2 ** 30:4.1f} GiB = {p['peak_bytes_predicted'] / 2 ** 30:6.1f} GiB "
                  f"(measured at 1/2/4: " + "/".join(f"{v / 2 ** 20:.0f}" for v in p["saved_bytes_measured"].values())
                  + " MiB)")
        if cfg.out:
            os.makedirs(cfg.out, exist_ok=True)
            with open(os.path.join(cfg.out, "memory_prediction.json"), "w") as f:
                json.dump(pred, f, indent=1)
        return
    if not cfg.out:
        raise UsageError("--out: name a folder for results.json and table.md, e.g. --out=gpu_results")
    if not cfg.dry_run:
        import torch
        if not torch.cuda.is_available():
            raise UsageError("no CUDA device is visible; run on a GPU machine, or --dry_run for the CPU check")
        device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        device = "cpu (dry run)"
    os.makedirs(cfg.out, exist_ok=True)
    results = {"device": device, "dry_run": cfg.dry_run, "when": time.strftime("%Y-%m-%d %H:%M"), "stages": {}}
    start = time.time()
    for name, argv, cap in stages(cfg):
        if cfg.budget:
            cap = min(cap, int(cfg.budget - (time.time() - start)))
        if cap < 20:
            results["stages"][name] = {"argv": argv, "status": "not run (--budget spent)", "seconds": 0, "output": []}
        else:
            print(f"bench_gpu: {name} (up to {cap} s) ...", flush=True)
            results["stages"][name] = run_stage(cfg, name, argv, cap)
        print(f"bench_gpu: {name} {results['stages'][name]['status']} in {results['stages'][name]['seconds']:.0f} s",
              flush=True)
        results["world"] = world_result(cfg)
        md = save(cfg, results)  # after every stage: a run killed from outside keeps what it measured
    print(md)


def save(cfg, results):
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = table(results)
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(md)
    return md


if __name__ == "__main__":
    run(main, GpuBenchConfig, doc=__doc__)

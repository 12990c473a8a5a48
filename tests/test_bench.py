"""Smoke tests of the benchmarks (bench_train.py, bench_xac.py) at tiny sizes, and parity of what they count.
Not timing tests: they check that the benchmarks run and report sane fields, that the analytic FLOPs of a step
equal torch's FLOP counter, and that the per-concept loop baselines compute the closed form's L_xac.
Run: python -m pytest -q tests/test_bench.py   (CPU, ~15 s on an idle 2-core machine)"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench_train as BT  # noqa: E402
import bench_xac as BX  # noqa: E402
import cli  # noqa: E402
import losses  # noqa: E402

CPU = torch.device("cpu")
# the tiny preset, and an odd small config: uneven widths, MLP ratio 3, 9 patches, context 8
CONFIGS = {
    "tiny": BT.model_config("tiny"),
    "odd": BT.model_config("tiny", image_size=24, patch_size=8, width=48, depth=2, heads=3, text_width=40,
                           text_depth=1, text_heads=2, context_length=8, embed_dim=48, mlp_ratio=3.0, vocab_size=64),
}


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)

# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("texts", ["random", "world"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("loss", ["siglip", "c2lip", "degla"])
def test_analytic_step_flops_equal_flop_counter(loss, name, texts):
    # the whole step (forward, losses, backward, teacher forward, AdamW) under torch's counter; the math
    # attention backend is used because the counter does not see the fused CPU attention kernel.
    # world texts: the world's concepts repeat, and the tower encodes each distinct one once
    cfg = CONFIGS[name]
    bcfg = BT.BenchConfig(loss=loss, batch=3 if texts == "random" else 12, concepts=2, negatives=2, texts=texts)
    step, (model, _, _, batch) = BT.build_ours(cfg, bcfg, CPU)
    if texts == "random":
        want = BT.step_flops(cfg, loss, 3, concepts=2, negatives=2)
    else:
        B, concepts, K, rows = BT.batch_counts(batch)
        assert loss != "c2lip" or rows["concepts"] < B * concepts  # repeats were merged
        want = BT.step_flops(cfg, loss, B, concepts, K, rows)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fwd:
        model(batch["images"], batch["texts"], batch["rows"], return_tokens=loss == "c2lip")
    assert fwd.get_total_flops() == want["model_fwd"]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as whole:
        step()
    assert whole.get_total_flops() == want["total"], (whole.get_flop_counts(), want)


def test_b16_flops_scale():
    # B/16 at 224 px: ~2 x 86M params x 196 tokens per image tower forward, the text tower alike at 64 tokens
    f = BT.step_flops(BT.model_config("B/16"), "siglip", 1)
    assert 30e9 < f["model_fwd"] < 60e9 and f["model_bwd"] > 1.9 * f["model_fwd"]
    assert BT.step_flops(BT.model_config("B/16"), "c2lip", 1)["total"] > f["total"]

# ----------------------------------------------------------------------------- bench_train


def check_result(out, loss, memory):
    assert out["peak_flop_s"] > 0 and out["flops"][loss]["total"] > 0
    r = out["results"][loss]
    assert len(r["step_s"]) == out["config"]["steps"] and min(r["step_s"]) > 0
    assert r["step_s_min"] <= r["step_s_median"] and r["img_s"] > 0
    assert r["flop_s"] > 0 and 0 < r["mfu"] < 5  # a fraction; > 1 only from a badly measured peak
    assert r["params"] == BT.DualEncoder(BT.model_config("tiny")).num_params()
    if memory:
        assert r["peak_mem_bytes"] > 4 * r["params"]  # at least the fp32 weights


def test_bench_train_cli_json():
    res = run_script("bench_train.py", "--loss=c2lip", "--batch=4", "--steps=2", "--warmup=1", "--threads=1",
                     "--peak_size=256", "--json")
    assert res.returncode == 0, res.stderr
    check_result(json.loads(res.stdout.strip().splitlines()[-1]), "c2lip", memory=True)


def test_bench_train_alternates_losses():
    out = BT.run(BT.BenchConfig(loss="siglip,degla", batch=4, steps=2, warmup=1, memory=False, peak_size=256))
    for loss in ("siglip", "degla"):
        check_result(out, loss, memory=False)
        assert (out["flops"][loss]["teacher_fwd"] > 0) == (loss == "degla")
    assert set(out["ratios"]) == {"degla/siglip"} and out["ratios"]["degla/siglip"]["median"] > 0
    BT.print_table(out)


def test_bench_train_bf16_fused_compiled_on_cpu():
    # the GPU settings on the CPU: bf16 autocast, fused AdamW, compile (aot_eager: no C++ toolchain needed);
    # the compile time is reported apart from the step times
    out = BT.run(BT.BenchConfig(loss="siglip", batch=4, steps=2, warmup=1, memory=False, peak_size=256, bf16=True,
                                fused=True, compile=True, compile_backend="aot_eager"))
    check_result(out, "siglip", memory=False)
    r = out["results"]["siglip"]
    assert out["dtype"] == "bfloat16" and r["first_step_s"] > 0 and r["compile_s"] == r["first_step_s"] - r["step_s_median"]
    plain = BT.run(BT.BenchConfig(loss="siglip", batch=4, steps=2, warmup=1, memory=False, peak_size=256))
    assert plain["results"]["siglip"]["compile_s"] is None
    BT.print_table(out)


def test_bench_train_distinct_texts_both_ways():
    out = BT.run(BT.BenchConfig(loss="c2lip", batch=16, steps=2, warmup=1, memory=False, peak_size=256,
                                texts="world", distinct="both"))
    for k in ("c2lip", "c2lip[all]"):
        check_result(out, k, memory=False)
    assert out["flops"]["c2lip"]["model_fwd"] < out["flops"]["c2lip[all]"]["model_fwd"]
    assert out["flops"]["c2lip"]["loss_fwd"] == out["flops"]["c2lip[all]"]["loss_fwd"]  # the losses see every text
    assert "c2lip/c2lip[all]" in out["ratios"]


@pytest.mark.parametrize("args", [["--loss=clip"], ["--loss=siglip,siglip"], ["--compare=openclip"], ["--batch=0"],
                                  ["--nope=1"], ["--distinct=both"], ["--texts=web"]])
def test_bench_train_bad_input_is_one_line(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.run(BT.main, BT.BenchConfig, argv=args, prog="bench_train.py")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err


# ----------------------------------------------------------------------------- bench_xac


def xac_inputs(B=5, N=7, T=6, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    tokens = F.normalize(torch.randn(B, T, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    c = F.normalize(torch.randn(N, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    owner = torch.randint(0, B, (N,), generator=g)
    t = torch.tensor(2.3, dtype=dtype, requires_grad=True)
    b = torch.tensor(-1.0, dtype=dtype, requires_grad=True)
    return tokens, c, owner, t, b


@pytest.mark.parametrize("loop", [BX.loop_loss, BX.loop_bmm_loss])
def test_loop_baselines_compute_the_closed_form(loop):
    inputs = xac_inputs()
    want = losses.xattn_concept_loss(*inputs, temperature=1.0)
    want_grads = torch.autograd.grad(want, [inputs[0], inputs[1], inputs[3], inputs[4]])
    got = loop(*inputs)
    got_grads = torch.autograd.grad(got, [inputs[0], inputs[1], inputs[3], inputs[4]])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", BX.METHODS)
def test_bench_xac_runs_every_method(method):
    r = BX.run_one(4, 6, 5, 8, method, "cpu", torch.float32, chunk=2, reps=2)
    assert (r["B"], r["N"], r["T"], r["d"], r["method"]) == (4, 6, 5, 8, method)
    # the kernel's resident-set counters are batched per thread (up to 64 pages stale), so a peak that did not
    # grow can read a fraction of a MiB below zero on a busy machine
    assert 0 < r["ms_min"] <= r["ms_median"] and r["peak_MiB"] > -1


def test_bench_xac_bad_shapes():
    assert BX.parse_shapes("4x6x5x8,2x3x4x5") == [(4, 6, 5, 8), (2, 3, 4, 5)]
    with pytest.raises(cli.UsageError):
        BX.parse_shapes("4x6x5")

# ----------------------------------------------------------------------------- bench_gpu


def test_bench_gpu_dry_run_runs_every_stage(tmp_path):
    # the GPU script's every stage at toy sizes on the CPU, so that it cannot rot before a GPU is at hand
    res = run_script("bench_gpu.py", f"--out={tmp_path}", "--dry_run")
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.load(open(tmp_path / "results.json"))
    assert set(results["stages"]) == {"train_eager", "train_compiled", "xac", "xac_loop", "world", "cuda_tests"}
    assert all(st["status"] == "ok" for st in results["stages"].values()), results["stages"]
    compiled = results["stages"]["train_compiled"]["output"][-1]["results"]
    assert set(compiled) == {"siglip", "c2lip", "degla"} and all(r["compile_s"] is not None for r in compiled.values())
    assert {r["method"] for r in results["stages"]["xac"]["output"]} == {"closed", "chunked"}
    assert set(results["world"]) == {"i2t_R@1", "t2i_R@1", "zeroshot_shape", "concept_binding"}
    table = (tmp_path / "table.md").read_text()
    assert "DRY RUN" in table and "| world, default run |" in table and "| c2lip |" in table


def test_bench_gpu_budget_spent_runs_nothing_and_says_so(tmp_path):
    res = run_script("bench_gpu.py", f"--out={tmp_path}", "--dry_run", "--budget=1")
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.load(open(tmp_path / "results.json"))
    assert {st["status"] for st in results["stages"].values()} == {"not run (--budget spent)"}
    assert len(results["stages"]) == 6 and results["world"] is None


def test_bench_gpu_without_a_gpu_is_one_line():
    res = run_script("bench_gpu.py", "--out=/tmp/nowhere")
    assert res.returncode == 2 and res.stderr.strip().startswith("error: ") and "\n" not in res.stderr.strip()


def test_memory_prediction_from_saved_tensors():
    # saved-for-backward bytes grow with the batch, exceed what the image blocks must keep (their inputs), and
    # the quadratic fit through the measured batches returns a measured batch's bytes
    cfg = BT.model_config("tiny")
    saved = [BT.activation_bytes(cfg, BT.BenchConfig(loss="siglip", batch=b), CPU)[0] for b in (2, 4)]
    T = (cfg.image_size // cfg.patch_size) ** 2
    assert saved[1] > saved[0] > 2 * T * cfg.width * 4 * cfg.depth
    import bench_gpu
    pred = bench_gpu.predict_memory(4, model="tiny")
    for loss, p in pred.items():
        assert p["saved_bytes_predicted"] == pytest.approx(p["saved_bytes_measured"][4], rel=1e-6)
        assert p["peak_bytes_predicted"] > p["resident_bytes"] > 3 * 4 * BT.DualEncoder(cfg).num_params()  # w, m, v
    assert pred["c2lip"]["saved_bytes_measured"][4] > pred["siglip"]["saved_bytes_measured"][4]
    # bf16 saves half-size matmul inputs but also autocast's bf16 copies of the weights: not far below fp32
    assert pred["siglip"]["saved_bytes_measured"][4] > 0.5 * saved[1]

"""
Time one training step (forward, loss, backward, AdamW) on a synthetic batch, with its analytic FLOPs and MFU.

    python bench_train.py                                         # tiny, SigLIP, CPU
    python bench_train.py --model=B/16 --batch=8 --threads=1 --compare=openclip
    python bench_train.py --model=B/16 --batch=96 --loss=c2lip --device=cuda --bf16 --compile --fused
    python bench_train.py --batch=128 --threads=1 --loss=siglip,c2lip --texts=world --distinct=both

The timed step is train.py's own: train.train_step (forward, the teacher's forward for DeGLA, compute_losses,
LOSS_WEIGHTS, backward) then train.finish_step (AdamW from configure_optimizer, fused or foreach,
the logit-scale clamp, the EMA update); --bf16 is train.py's --precision=bf16 on any device, --fused its
--adamw=fused (foreach otherwise). With --compile the first warm-up step's excess over a steady step is
reported apart as the compile time.
C2LIP gets `concepts` concept texts per image; DeGLA gets `negatives` hard negatives per caption, so
1 + K texts per image. Only the host-device sync of train.py's finite-loss check is left out.

FLOPs are the matmul FLOPs of the step (see step_flops: convolutions, linear layers, attention's
T^2 products, the loss matmuls), forward + backward, plus the teacher's forward; elementwise work,
softmaxes and the optimizer are not counted. MFU = those FLOPs per second / the peak FLOP/s that a
large matmul reaches in the same run, dtype and thread count, so the figure is comparable across devices.

Peak memory: on CUDA, torch.cuda.max_memory_allocated during one step above what was allocated at its
start, plus the resident parameters, optimizer state, teacher and batch. On CPU, the growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs; Linux only) of a fresh child process from just
before the model is built to the end of two steps, after a batch-1 warm-up step of its own (so library
code paged in on first use is not counted) and with glibc returning freed blocks at once; the allocator's
fragmentation is included, so it is an upper bound of what torch needs.

--loss=siglip,c2lip,degla times the three steps alternately in one run and prints their ratios to SigLIP.
--texts=world takes the texts of a batch of the built-in world (its captions, concepts and negatives, as
train.py makes them) instead of random ids, so texts repeat as in training; --distinct=both then times each
loss with each distinct text encoded once (train.py's default) and with every text encoded ("c2lip[all]"),
alternating. The FLOPs count the texts the tower really encodes.
--compare=openclip builds open_clip's ViT-B-16-SigLIP with random weights (nothing is downloaded) and
times its SigLIP step (open_clip.loss.SigLipLoss) on the same batch and settings, alternating with ours
step by step. open-clip-torch is a benchmark-only dependency.
"""

import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, asdict, fields, replace

import torch

import data
import runtime
import train
from cli import UsageError, run as run_cli
from model import DualEncoder, PRESETS, model_config

# -----------------------------------------------------------------------------
# config


@dataclass
class BenchConfig:
    model: str = "tiny"           # size preset in model.PRESETS: tiny, S/16, B/16
    loss: str = "siglip"          # siglip | c2lip | degla, or a list (siglip,c2lip,degla) timed alternately
    batch: int = 8                # images per step
    concepts: int = 3             # C2LIP: concept texts per image
    negatives: int = 4            # DeGLA: K hard negatives per caption
    texts: str = "random"         # random: every text distinct random ids | world: the world's captions, concepts, negatives
    distinct: str = "on"          # world texts: on = each distinct text once (train.py's default) | off | both, alternating
    steps: int = 10               # timed steps (per model with --compare)
    warmup: int = 2               # untimed steps first (compile, allocator, optimizer state)
    device: str = "cpu"           # cpu | cuda
    bf16: bool = False            # bf16 autocast around the forward (train.py's --precision=bf16; losses stay fp32)
    compile: bool = False         # torch.compile the model (not the teacher, as train.py)
    compile_backend: str = "inductor"  # torch.compile's backend (inductor as train.py; aot_eager to test quickly)
    fused: bool = False           # fused AdamW (train.py's --adamw=fused; its default on CUDA), else foreach
    threads: int = 0              # torch CPU threads (0 = leave as is)
    compare: str = ""             # "openclip": also time open_clip's ViT-B-16-SigLIP step, alternating
    memory: bool = True           # measure peak memory (on CPU in child processes, two more steps each)
    peak_size: int = 0            # side of the square matmul that measures peak FLOP/s (0 = 4096 on CUDA, 2048 on CPU)
    json: bool = False            # print one JSON object instead of the table
    seed: int = 0
    child: str = ""               # internal: a loss or "openclip" = measure that step's CPU peak memory, print JSON

# -----------------------------------------------------------------------------
# analytic FLOPs (matmul FLOPs: 2 per multiply-add)


def vision_flops(cfg, n, return_tokens):
    """forward FLOPs of the image tower on n images, as (patch embedding, the rest)"""
    T, D = (cfg.image_size // cfg.patch_size) ** 2, cfg.width
    M = round(D * cfg.mlp_ratio)
    patch = 2 * n * T * (3 * cfg.patch_size ** 2) * D
    # per block: qkv 3D^2 + proj D^2 + MLP 2DM per token, and q k^T, a v: 2 T^2 D per image each
    blocks = cfg.depth * (2 * n * T * (4 * D * D + 2 * D * M) + 4 * n * T * T * D)
    # MAP head: q of the one latent (once), k and v of every token, a 1 x T attention, proj and MLP on one token
    head = 2 * D * D + 2 * n * T * 2 * D * D + 4 * n * T * D + 2 * n * D * D + 4 * n * D * M
    if return_tokens:  # C2LIP's value path: proj and MLP on every token
        head += 2 * n * T * D * D + 4 * n * T * D * M
    return patch, blocks + head


def text_flops(cfg, n):
    """forward FLOPs of the text tower on n texts of cfg.context_length tokens (pads included, as computed)"""
    C, D = cfg.context_length, cfg.text_width
    M = round(D * cfg.mlp_ratio)
    blocks = cfg.text_depth * (2 * n * C * (4 * D * D + 2 * D * M) + 4 * n * C * C * D)
    return blocks + 2 * n * D * cfg.embed_dim  # projection of the last position


def loss_flops(cfg, loss, B, N, K):
    """forward FLOPs of the loss matmuls; B images, N concepts (C2LIP), K negatives per caption (DeGLA)"""
    E, T = cfg.embed_dim, (cfg.image_size // cfg.patch_size) ** 2
    if loss == "degla":
        # L_base: images x (captions + all negatives), captions x images; L_IGC and L_TGC: K dot products a row
        return 2 * B * (B + B * K) * E + 2 * B * B * E + 2 * (2 * B * K * E)
    flops = 2 * B * B * E  # L_con
    if loss == "c2lip":
        flops += 2 * B * N * E  # L_npc
        # L_xac closed form: cosines (B, N, T), Gram matrices (B, T, T), a_ik^T G_i (B, N, T)
        flops += 2 * B * N * T * E + 2 * B * T * T * E + 2 * B * N * T * T
    return flops


def step_flops(cfg, loss, B, concepts=3, negatives=4, rows=None):
    """FLOPs of one training step, by part. A matmul's backward costs twice its forward (the gradients of
    both operands), except the patch embedding's, whose input (the images) needs no gradient.

    concepts: concept texts per image (C2LIP; a mean is fine), negatives: K per caption (DeGLA).
    rows: {group: texts the text tower encodes} for captions, concepts, negatives; by default every text,
    fewer where data.Collate encodes each distinct text once (the losses still see every text)."""
    N = round(B * concepts) if loss == "c2lip" else 0
    K = negatives if loss == "degla" else 0
    rows = {"captions": B, "concepts": N, "negatives": B * K, **(rows or {})}
    patch, vision = vision_flops(cfg, B, return_tokens=loss == "c2lip")
    text = text_flops(cfg, rows["captions"] + (rows["concepts"] if N else 0) + (rows["negatives"] if K else 0))
    fwd = patch + vision + text
    loss_fwd = loss_flops(cfg, loss, B, N, negatives)
    teacher = 0
    if loss == "degla":  # the EMA teacher encodes the same images, captions and negatives, forward only
        teacher = sum(vision_flops(cfg, B, False)) + text_flops(cfg, rows["captions"] + rows["negatives"])
    parts = {"model_fwd": fwd, "model_bwd": patch + 2 * (vision + text), "loss_fwd": loss_fwd,
             "loss_bwd": 2 * loss_fwd, "teacher_fwd": teacher}
    parts["total"] = sum(parts.values())
    return parts


def batch_counts(batch):
    """step_flops' arguments for a batch as train.py's Collate gives it: (B, concepts per image, K, rows)"""
    B = batch["images"].shape[0]
    n = {k: v.shape[0] for k, v in batch["rows"].items()}
    return B, n.get("concepts", 0) / B, n.get("negatives", 0) // B, {k: v.shape[0] for k, v in batch["texts"].items()}

# -----------------------------------------------------------------------------
# the steps being timed


def synthetic_batch(cfg, bcfg, device):
    """random images and token ids in the layout train.py's Collate gives (texts by name, each its own row), on
    the device; random texts do not repeat"""
    g = torch.Generator().manual_seed(bcfg.seed)
    B, C = bcfg.batch, cfg.context_length
    tok = lambda n: torch.randint(3, cfg.vocab_size, (n, C), generator=g).to(device)  # noqa: E731 (0-2: specials)
    images = torch.randn(B, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    batch = {"images": images, "texts": {"captions": tok(B)}, "owner": {}, "skipped": []}
    if bcfg.loss == "c2lip":
        batch["texts"]["concepts"] = tok(B * bcfg.concepts)  # concept j belongs to image j // concepts
        batch["owner"]["concepts"] = torch.arange(B).repeat_interleave(bcfg.concepts).to(device)
    if bcfg.loss == "degla":
        batch["texts"]["negatives"] = tok(B * bcfg.negatives)  # sample-major: row n*K + k is negative k of caption n
    batch["rows"] = {k: torch.arange(v.shape[0], device=device) for k, v in batch["texts"].items()}
    return batch


def world_batch(cfg, bcfg, device):
    """the first bcfg.batch training scenes of the built-in world with train.py's own captions, concepts and
    negatives, through its Collate (each distinct text once unless --distinct=off): texts repeat as in training"""
    tcfg = train.Config(loss=bcfg.loss, world_scenes=2 * bcfg.batch, num_negatives=bcfg.negatives, seed=bcfg.seed)
    dataset, tokenizer = train.build_data(tcfg, cfg, log=lambda *a: None)  # negatives may drop a scene
    collate = data.Collate(tokenizer, cfg.image_size, train.text_groups(bcfg.loss), bcfg.distinct == "on")
    batch = collate([dataset[i] for i in range(bcfg.batch)])
    for part in ("texts", "rows", "owner"):
        batch[part] = {k: v.to(device) for k, v in batch[part].items()}
    batch["images"] = batch["images"].to(device)
    return batch


def make_optimizer(model, tcfg, fused):
    """train.configure_optimizer: fused AdamW or foreach (train.py's --adamw)"""
    return train.configure_optimizer(model, replace(tcfg, adamw="fused" if fused else "foreach"), log=lambda *a: None)


class _NoReport:
    """train_step reports unreadable images; a synthetic batch has none"""

    @staticmethod
    def add_skipped(skipped, n_global):
        pass


def build_ours(cfg, bcfg, device):
    """(step function, resident tensors): train.train_step and train.finish_step on our model"""
    torch.manual_seed(bcfg.seed)
    tcfg = train.Config(loss=bcfg.loss, batch_size=bcfg.batch, num_negatives=bcfg.negatives, model=bcfg.model,
                        precision="bf16" if bcfg.bf16 else "fp32", compile=bcfg.compile)
    env = runtime.Env(rank=0, world=1, local_rank=0, device=device, ddp=False, use_cuda=device.type == "cuda")
    model = DualEncoder(cfg).to(device).train()
    teacher = None
    if bcfg.loss == "degla":
        model.logit_bias.requires_grad_(False)  # as train.py: no softmax loss uses the bias
        teacher = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(model, tcfg, bcfg.fused)
    forward = torch.compile(model, backend=bcfg.compile_backend) if bcfg.compile else model
    batch = (world_batch if bcfg.texts == "world" else synthetic_batch)(cfg, bcfg, device)  # on the device already
    for g in opt.param_groups:
        g["lr"] = tcfg.lr * g["lr_mult"]

    def step():
        train.train_step(batch, forward, teacher, tcfg, env, _NoReport)
        train.finish_step(model, teacher, opt, tcfg)

    return step, (model, teacher, opt, batch)


def build_openclip(cfg, bcfg, device):
    """(step function, resident tensors) for open_clip's ViT-B-16-SigLIP with its SigLipLoss, same optimizer"""
    import open_clip
    from open_clip.loss import SigLipLoss
    torch.manual_seed(bcfg.seed)
    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).to(device).train()
    tcfg = train.Config(batch_size=bcfg.batch)
    opt = make_optimizer(model, tcfg, bcfg.fused)
    forward = torch.compile(model, backend=bcfg.compile_backend) if bcfg.compile else model
    batch = synthetic_batch(cfg, bcfg, device)
    loss_fn = SigLipLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bcfg.bf16)
    for g in opt.param_groups:
        g["lr"] = tcfg.lr * g["lr_mult"]

    def step():
        with autocast:
            x, y, scale, bias = forward(batch["images"], batch["texts"]["captions"])  # scale is already exp(logit_scale)
            loss = loss_fn(x, y, scale, bias)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, tcfg.max_logit_scale)

    return step, (model, None, opt, batch)


LOSSES = ("siglip", "c2lip", "degla")


def build(name, cfg, bcfg, device):
    """a step by name: one of our losses, the same with every text encoded ("c2lip[all]"), or "openclip" (its
    SigLIP step)"""
    if name == "openclip":
        return build_openclip(cfg, bcfg, device)
    loss, every = name.removesuffix("[all]"), name.endswith("[all]")
    distinct = "off" if every else "on" if bcfg.distinct == "both" else bcfg.distinct
    return build_ours(cfg, replace(bcfg, loss=bcfg.loss if loss == "ours" else loss, distinct=distinct), device)

# -----------------------------------------------------------------------------
# measuring


def resident_bytes(model, teacher, opt, batch):
    """bytes of what lives across steps: parameters, optimizer state, teacher, batch"""
    tensors = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors += list(teacher.parameters()) if teacher is not None else []
    tensors += [batch["images"], *batch["texts"].values(), *batch["rows"].values(), *batch["owner"].values()]  # (train_step adds the teacher's outputs: transient)
    return sum(t.numel() * t.element_size() for t in tensors)


def activation_bytes(cfg, bcfg, device):
    """(bytes the step's forward keeps for its backward, resident bytes): autograd's saved tensors, each storage
    once, parameters left out (they are resident anyway), from one step of build_ours; and what lives across
    steps after it (parameters, AdamW state, teacher, batch). Their sum, plus the backward's transients, is the
    step's peak: a device-free way to predict a GPU's memory (bench_gpu.py --predict_memory)."""
    step, state = build_ours(cfg, bcfg, device)
    params = {p.untyped_storage().data_ptr() for m in state[:2] if m is not None for p in m.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved.values()), resident_bytes(*state)


def cuda_peak_bytes(step, state):
    """one step's allocator peak above its start, plus the resident state: what this model alone needs"""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start + resident_bytes(*state)


def cpu_peak_bytes_child(bcfg, which):
    """peak resident set growth of a fresh process that builds one model and runs two steps"""
    argv = [f"--{f.name}={getattr(bcfg, f.name)}" for f in fields(bcfg) if f.name not in ("child", "json")]
    # a fixed mmap threshold: glibc then returns every freed block over 64 KiB to the system at once, so the
    # resident set follows what torch holds (and the warm-up's freed memory is not reused unseen)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--child={which}"],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory child for {which} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def _proc_status_bytes(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def child_main(bcfg):
    """runs in the child: resets the process's resident high-water mark (Linux), builds, runs two steps"""
    device = torch.device("cpu")
    cfg = model_config(bcfg.model)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS, so the peak counts from here (importing torch peaks higher)
    except OSError:
        print(json.dumps({"peak_bytes": None}))  # no /proc: no honest CPU figure
        return
    warm = build(bcfg.child, cfg, replace(bcfg, batch=1), device)[0]
    warm()  # first use of every kernel faults in library code pages; keep them out of the figure
    del warm
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_status_bytes("VmRSS")
    step, _ = build(bcfg.child, cfg, bcfg, device)
    step()
    step()
    print(json.dumps({"peak_bytes": _proc_status_bytes("VmHWM") - before}))


def peak_matmul_flops(device, dtype, n, reps=5):
    """best FLOP/s of an n x n x n matmul in this dtype: the peak MFU is measured against"""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / (10 if device.type == "cuda" else 1))
    return 2 * n ** 3 / best


def time_steps(steps, n, device):
    """alternate the step functions one step at a time, n rounds; seconds per step for each.

    CUDA: events around every step and one synchronize at the end, so no host sync inside the loop.
    """
    names = list(steps)
    if device.type == "cuda":
        ev = {k: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
              for k in names}
        for i in range(n):
            for k in names:
                ev[k][i][0].record()
                steps[k]()
                ev[k][i][1].record()
        torch.cuda.synchronize()
        return {k: [s.elapsed_time(e) / 1000 for s, e in ev[k]] for k in names}
    times = {k: [] for k in names}
    for _ in range(n):
        for k in names:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    return times

# -----------------------------------------------------------------------------
# main


def check(bcfg):
    if bcfg.model not in PRESETS:
        raise UsageError(f"--model={bcfg.model}: expected one of {', '.join(PRESETS)}")
    names = bcfg.loss.split(",")
    if not all(n in LOSSES for n in names) or len(set(names)) != len(names):
        raise UsageError(f"--loss={bcfg.loss}: expected siglip, c2lip or degla, or a list of them (siglip,c2lip)")
    if bcfg.device not in ("cpu", "cuda"):
        raise UsageError(f"--device={bcfg.device}: expected cpu or cuda")
    if bcfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda: no CUDA device is visible; use --device=cpu")
    if min(bcfg.batch, bcfg.steps, bcfg.concepts, bcfg.negatives) < 1 or bcfg.warmup < 0:
        raise UsageError("--batch, --steps, --concepts and --negatives must be >= 1 and --warmup >= 0")
    if bcfg.texts not in ("random", "world") or bcfg.distinct not in ("on", "off", "both"):
        raise UsageError(f"--texts={bcfg.texts} --distinct={bcfg.distinct}: expected --texts=random|world and "
                         f"--distinct=on|off|both")
    if bcfg.distinct != "on" and bcfg.texts != "world":
        raise UsageError("--distinct: random texts never repeat; compare with and without distinct texts on "
                         "--texts=world")
    if bcfg.compare not in ("", "openclip"):
        raise UsageError(f"--compare={bcfg.compare}: the only comparison is --compare=openclip")
    if bcfg.compare and (bcfg.model != "B/16" or "siglip" not in names):
        raise UsageError("--compare=openclip builds ViT-B-16-SigLIP with the SigLIP loss: "
                         "use it with --model=B/16 and siglip among --loss")


def run(bcfg):
    """everything measured, as a dict"""
    device = torch.device(bcfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
        torch.backends.cudnn.allow_tf32 = True
    cfg = model_config(bcfg.model)
    dtype = torch.bfloat16 if bcfg.bf16 else torch.float32
    n = bcfg.peak_size or (4096 if device.type == "cuda" else 2048)
    peak = peak_matmul_flops(device, dtype, n)

    which = bcfg.loss.split(",")
    if bcfg.distinct == "both":  # each loss with and without distinct texts, alternating
        which = [k + suffix for k in which for suffix in ("", "[all]")]
    skipped = None
    if bcfg.compare == "openclip":
        try:
            import open_clip  # noqa: F401
            import timm  # noqa: F401 (open_clip builds ViT-B-16-SigLIP's image tower with it)
            which.append("openclip")
        except ImportError:
            skipped = "open_clip is not installed (pip install open-clip-torch timm): OpenCLIP comparison skipped"
    # open_clip's ViT-B-16-SigLIP has our B/16's shapes, so our SigLIP formula counts its FLOPs too
    built = {k: build(k, cfg, bcfg, device) for k in which if k != "openclip"}
    if "openclip" in which:
        try:  # an open_clip that does not run beside this torch costs the comparison, not our rows
            built["openclip"] = build("openclip", cfg, bcfg, device)
        except Exception as e:
            which.remove("openclip")
            skipped = f"OpenCLIP comparison skipped: building its model failed ({type(e).__name__}: {e})"
    # FLOPs of the batch each step really runs: its concepts per image and its distinct texts
    flops = {k: step_flops(cfg, "siglip" if k == "openclip" else k.removesuffix("[all]"),
                           *batch_counts(built[k][1][3])) for k in which}
    steps = {k: s for k, (s, _) in built.items()}
    first = {}
    for k in which:  # warm-up one model at a time: compile, allocator, optimizer state
        for i in range(bcfg.warmup):
            t0 = time.perf_counter()
            steps[k]()
            if i == 0:  # the first step pays for compiling (torch.compile compiles on first call)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                first[k] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = time_steps(steps, bcfg.steps, device)

    results = {}
    for k in which:
        med = statistics.median(times[k])
        r = {"step_s_min": min(times[k]), "step_s_median": med, "step_s": times[k], "img_s": bcfg.batch / med,
             # compile time apart from step time: the first step's excess over a steady one
             "first_step_s": first.get(k), "compile_s": first[k] - med if bcfg.compile and k in first else None}
        r["flop_s"] = flops[k]["total"] / med
        r["mfu"] = r["flop_s"] / peak
        if bcfg.memory:
            if device.type == "cuda":
                r["peak_mem_bytes"] = cuda_peak_bytes(steps[k], built[k][1])
            else:
                r["peak_mem_bytes"] = cpu_peak_bytes_child(bcfg, k)
        r["params"] = sum(p.numel() for p in built[k][1][0].parameters())
        results[k] = r
    out = {"config": asdict(bcfg), "torch": torch.__version__, "device_name": device_name(device),
           "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
           "flops": flops, "peak_flop_s": peak, "peak_matmul_size": n,
           "memory_method": ("cuda max_memory_allocated over one step + resident state" if device.type == "cuda"
                             else "peak RSS (VmHWM) growth of a child process over build + 2 steps"),
           "results": results, "skipped": skipped}
    # step-time ratios between steps that alternated: ours against OpenCLIP, C2LIP and DeGLA against SigLIP
    pairs = [("siglip", "openclip"), ("c2lip", "siglip"), ("degla", "siglip"), ("c2lip[all]", "siglip"),
             ("degla[all]", "siglip"), ("c2lip", "c2lip[all]"), ("degla", "degla[all]")]
    out["ratios"] = {f"{a}/{b}": {q: results[a][f"step_s_{q}"] / results[b][f"step_s_{q}"] for q in ("min", "median")}
                     for a, b in pairs if a in results and b in results}
    return out


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def print_table(out):
    c = out["config"]
    print(f"bench_train | {c['model']} | loss {c['loss']} | batch {c['batch']} | {c['device']} {out['dtype']} | "
          f"compile {'on' if c['compile'] else 'off'} | fused {'on' if c['fused'] else 'off'} | "
          f"threads {out['threads']} | torch {out['torch']} | {out['device_name']}")
    for k, f in out["flops"].items():
        print(f"{k:10s} FLOPs per step {f['total'] / 1e9:,.1f} G (model fwd {f['model_fwd'] / 1e9:,.1f}, "
              f"bwd {f['model_bwd'] / 1e9:,.1f}; losses fwd+bwd {(f['loss_fwd'] + f['loss_bwd']) / 1e9:,.2f}; "
              f"teacher fwd {f['teacher_fwd'] / 1e9:,.1f})")
    print(f"peak: {out['peak_flop_s'] / 1e9:,.1f} GFLOP/s "
          f"({out['dtype']} {out['peak_matmul_size']}^3 matmul, best of 5)")
    print(f"{'':10s} {'params':>9s} {'step ms min':>12s} {'median':>9s} {'img/s':>8s} {'GFLOP/s':>9s} {'MFU':>6s} "
          f"{'peak MiB':>9s}")
    for k, r in out["results"].items():
        mfu, gf = f"{100 * r['mfu']:5.1f}%", f"{r['flop_s'] / 1e9:9.1f}"
        mem = f"{r['peak_mem_bytes'] / 2 ** 20:9.0f}" if r.get("peak_mem_bytes") is not None else f"{'-':>9s}"
        print(f"{k:10s} {r['params'] / 1e6:8.2f}M {1000 * r['step_s_min']:12.1f} {1000 * r['step_s_median']:9.1f} "
              f"{r['img_s']:8.2f} {gf} {mfu} {mem}")
    for k, r in out["results"].items():
        if r["compile_s"] is not None:
            print(f"{k:10s} compile: first step {r['first_step_s']:.1f} s, {r['compile_s']:.1f} s above a steady step "
                  f"(not in the step times above)")
    for name, r in out["ratios"].items():
        print(f"step time {name}: median {r['median']:.3f}, min {r['min']:.3f} ({c['steps']} alternating steps each)")
    if out["skipped"]:
        print(out["skipped"])
    if c["memory"]:
        print(f"memory: {out['memory_method']}")


def main(bcfg):
    check(bcfg)
    if bcfg.threads:
        torch.set_num_threads(bcfg.threads)
    if bcfg.child:
        return child_main(bcfg)
    out = run(bcfg)
    if bcfg.json:
        print(json.dumps(out))
    else:
        print_table(out)


if __name__ == "__main__":
    run_cli(main, BenchConfig, doc=__doc__)

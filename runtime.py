"""
The machinery around the training loop, apart from the learning code in train.py: the checks of its flags
(check_config), where the process runs (Env, setup_distributed), the out_dir claim, fresh/--init/--resume starts, stop signals and preemption, the
one agreed decision per step, checkpoint saves that every rank agrees on, the bad-data report, the logger,
and the errors these raise (METHOD.md §9). Nothing here changes what is learned.
"""

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import losses
import shards
import world
from checkpoint import SaveFailed, checkpoint_dict, find_resumable, history_files, load_checkpoint, save_to_history
from cli import MissingFileError, Stopped, UsageError, check_choice
from model import PRESETS, ModelConfig, WordTokenizer, model_config

RESUME_KEYS = ("data", "model", "image_size", "loss", "batch_size", "seed", "world_scenes", "world_seed", "min_objects",
               "max_objects", "world_split", "relations", "world_bare", "world_partial", "world_bare_all",
               "num_negatives", "concepts", "negatives", "caption_key", "resampled", "samples_per_epoch",
               "shuffle_window", "relation_negatives", "relation_concepts", "concept_negatives",
               "position_concepts", "position_contrast",
               "position_contrast_final")  # what must not change under --resume


def check_resume_config(saved, cfg, path):
    # a key the saved config lacks (an older run) had its default
    was = lambda k: saved.get(k, getattr(type(cfg), k))  # noqa: E731
    diff = [f"{k}: {was(k)!r} -> {getattr(cfg, k)!r}" for k in RESUME_KEYS if was(k) != getattr(cfg, k)]
    if diff:
        raise UsageError(f"--resume: {path} was written by a different run ({'; '.join(diff)}); "
                         f"use another --out_dir or the same settings")


def agree_on_step(loss, stop, ddp):
    """(is the loss finite on every rank, has any rank been asked to stop) after a step.

    One all_reduce and one host sync per step answer both: a stop signal may reach the ranks at different
    times (or only some of them), and every rank must stop after the same step or the others would wait
    in the next step's collectives forever."""
    flags = torch.stack([(~torch.isfinite(loss.detach())).float(), torch.full((), float(stop), device=loss.device)])
    if ddp:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return not bad, bool(stop)


PREEMPTED_EXIT = 75  # EX_TEMPFAIL ("try again later"): stopped by a signal, checkpoint written, resume me


class Preempted(Stopped):
    """stopped on SIGTERM or --preempt_signal after a checkpoint: one line, exit status PREEMPTED_EXIT"""
    exit_code = PREEMPTED_EXIT


class StopSignals:
    """SIGTERM (what schedulers send before a kill) and cfg.preempt_signal only raise a flag here; the loop
    looks at it after each step, so a step is never cut in half. Handlers are restored by close()."""

    def __init__(self, extra=""):
        self.received = None
        self.saved = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (train.main called from a thread: no handlers)
        for sig in {signal.SIGTERM} | ({getattr(signal, extra)} if extra else set()):
            self.saved[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.received = self.received or signal.Signals(signum).name

    def close(self):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        self.saved = {}


def save_step(cfg, env, model, optimizer, teacher, tokenizer, step):
    """rank 0 writes the checkpoint; every rank learns whether it worked, so that a failed save (full disk,
    read-only folder) stops all of them with the same message instead of leaving some waiting"""
    failure = None
    if env.master:
        extra = {"teacher": teacher.state_dict()} if teacher is not None else None
        try:
            save_to_history(cfg.out_dir, checkpoint_dict(model, optimizer, cfg, tokenizer, step, extra), cfg.keep_ckpts)
        except SaveFailed as e:
            failure = e
    if env.ddp:  # doubles as the barrier: nobody runs ahead of a checkpoint being written
        ok = torch.tensor(0.0 if failure else 1.0, device=env.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not ok.item() and failure is None:
            failure = SaveFailed(f"rank 0 could not write the checkpoint of step {step} (its message says why); "
                                 f"rerun with --resume once out_dir is writable")
    if failure is not None:
        raise failure


class DataWorkerDied(Stopped):
    """a DataLoader worker process died or stopped answering"""


def worker_failure(e):
    """a DataWorkerDied for torch's RuntimeError about a DataLoader worker that died or timed out, else None.
    torch notices a killed worker through SIGCHLD and raises wherever the main process happens to be (in the
    forward, say), so the loop as a whole is watched, not only the fetch of a batch"""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "DataLoader worker" not in text and "DataLoader timed out" not in text:
        return None
    return DataWorkerDied(f"a data-loading worker failed ({text}); usually the out-of-memory killer (see dmesg) or "
                          f"a crash while decoding an image: give the job more memory or lower --workers "
                          f"(--workers=0 shows the real error), then rerun with --resume")


def describe(rec):
    """one bad record as 'where: why'"""
    where = ":".join(str(rec[k]) for k in ("file", "line", "shard", "key") if rec.get(k) is not None) \
        or f"record {rec.get('index', '?')}"
    return f"{where}: {rec.get('reason', 'unreadable')}"


class BadDataReport:
    """counts and lists every record that was skipped (bad line, unreadable image) or altered (caption
    truncated to the context), in out_dir/bad_records.jsonl, and stops the run past cfg.max_skip_fraction"""

    def __init__(self, cfg, dataset, tokenizer, master, log):
        self.cfg, self.master, self.log = cfg, master, log
        self.path = os.path.join(cfg.out_dir, "bad_records.jsonl")
        self.load_skipped = list(getattr(getattr(dataset, "dataset", dataset), "problems", []))
        # a missing shard stands for many records ("samples": the mean shard size)
        self.load_count = sum(p.get("samples", 1) for p in self.load_skipped)
        self.n_records = len(dataset) + self.load_count
        self.image_skips = 0
        self.image_examples = []  # the first few, for the message that stops a run
        self.nonfinite_steps = 0
        # a caption longer than the context is truncated (its EOS kept last), as SigLIP does
        limit = tokenizer.context_length - 1
        long = [i for i, n in enumerate(tokenizer.token_counts(dataset.captions)) if n > limit] \
            if cfg.data != "world" else []
        if master:
            os.makedirs(cfg.out_dir, exist_ok=True)
            with open(self.path, "a") as f:
                for p in self.load_skipped:
                    f.write(json.dumps({**p, "action": "skipped"}) + "\n")
                for i in long:
                    f.write(json.dumps({"file": cfg.data, "index": i, "action": "truncated",
                                        "reason": f"caption longer than {limit} tokens"}) + "\n")
        if self.load_skipped or long:
            log(f"data: {len(self.load_skipped)} bad records skipped at load, {len(long)} captions truncated "
                f"to the context; listed in {self.path}")
        self.check()

    def add_skipped(self, skipped, n_global):
        """skipped: this rank's unreadable images (each rank lists its own); n_global: all ranks' count"""
        self.image_skips += n_global
        self.image_examples += skipped[:3]
        if skipped:
            with open(self.path, "a") as f:
                for s in skipped:
                    f.write(json.dumps({**s, "action": "skipped"}) + "\n")
        if n_global:
            self.check()

    def skipped(self):
        return self.load_count + self.image_skips

    def check(self):
        if self.skipped() > self.cfg.max_skip_fraction * self.n_records:
            first = "; ".join(describe(r) for r in (self.load_skipped + self.image_examples)[:3])
            raise Stopped(f"{self.skipped()} of {self.n_records} records skipped, more than "
                          f"--max_skip_fraction={self.cfg.max_skip_fraction} (first: {first}); all are listed in "
                          f"{self.path}; fix the data, or raise --max_skip_fraction")

    def summary(self):
        if self.skipped() or self.nonfinite_steps:
            self.log(f"data: {self.skipped()} records skipped in all ({self.load_count} at load, "
                     f"{self.image_skips} unreadable images), {self.nonfinite_steps} non-finite steps skipped; "
                     f"see {self.path}")


@dataclass
class Env:
    """where this process runs: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain python is world size 1"""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    ddp: bool
    use_cuda: bool

    @property
    def master(self):
        return self.rank == 0


# flags that only mean something with a loss that reads a text group: (flag, that group, what the flag does,
# whether on the world it needs --relations)
FLAG_NEEDS = (("relation_concepts", "concepts", "adds to the concept losses", True),
              ("concept_negatives", "concepts", "adds to the concept losses", True),
              ("relation_negatives", "negatives", "adds to the hard negatives", True),
              ("concept_head", "concepts", "pools the image for the concept losses", False),
              ("position_concepts", "concepts", "adds to the concept losses", False))


def check_config(cfg, world_size, losses):
    """the mistakes a train.py flag can make, found before anything is loaded. losses: {name: what it reads
    besides the captions} (train.LOSSES)"""
    check_choice("loss", cfg.loss, tuple(losses))
    check_choice("world_split", cfg.world_split, world.WORLD_SPLITS)
    check_choice("bad_data", cfg.bad_data, ("skip", "error"))
    check_choice("nonfinite", cfg.nonfinite, ("stop", "skip"))
    check_choice("tgc_mask", cfg.tgc_mask, ("own", "official"))
    check_choice("device", cfg.device, ("auto", "cpu", "cuda"))
    check_choice("precision", cfg.precision, ("auto", "bf16", "fp32"))
    check_choice("adamw", cfg.adamw, ("auto", "fused", "foreach"))
    check_choice("position_concepts", cfg.position_concepts, ("", "add", "only"))
    for flag in ("position_concepts", "position_contrast"):
        if getattr(cfg, flag) and cfg.data != "world":
            raise UsageError(f"--{flag}: only the built-in world knows where its objects are; drop it for --data")
    if cfg.position_contrast < 0:
        raise UsageError(f"--position_contrast={cfg.position_contrast}: a loss weight, 0 (off) or more")
    if cfg.position_contrast_final != -1 and (cfg.position_contrast_final < 0 or not cfg.position_contrast):
        raise UsageError(f"--position_contrast_final={cfg.position_contrast_final}: the weight of --position_contrast "
                         f"at the last step, 0 or more (-1 = constant); set --position_contrast too")
    for flag, reads, what, about_relations in FLAG_NEEDS:
        if getattr(cfg, flag) and reads not in losses[cfg.loss]:
            raise UsageError(f"--{flag} {what}; "
                             f"use it with --loss={' or '.join(n for n, r in losses.items() if reads in r)}")
        if getattr(cfg, flag) and about_relations and cfg.data == "world" and not cfg.relations:
            raise UsageError(f"--{flag}: the world's captions state no relation without --relations; add it")
    if cfg.data == "world":  # objects sit in distinct cells; a relation caption needs two of them
        low = 2 if cfg.relations else 1
        if not low <= cfg.min_objects <= cfg.max_objects <= world.GRID ** 2:
            raise UsageError(f"--min_objects={cfg.min_objects} --max_objects={cfg.max_objects}: the world takes "
                             f"{low} <= min <= max <= {world.GRID ** 2} objects per scene"
                             + (" (--relations: at least 2)" if cfg.relations else ""))
        for flag in ("world_bare", "world_partial", "world_bare_all"):
            if not 0 <= getattr(cfg, flag) <= 1:
                raise UsageError(f"--{flag}={getattr(cfg, flag)}: a probability, between 0 and 1")
            if getattr(cfg, flag) and cfg.relations:
                raise UsageError(f"--{flag}: relation captions are kept whole; drop --relations or --{flag}")
    if cfg.grad_clip < 0:
        raise UsageError(f"--grad_clip={cfg.grad_clip}: a norm must be positive (0 turns clipping off)")
    if cfg.batch_size % world_size:
        raise UsageError(f"--batch_size={cfg.batch_size} is not divisible by the world size {world_size}; "
                         f"choose a multiple of {world_size}")
    for name in ("init", "concepts", "negatives") + (("data",) if cfg.data != "world" and not shards.is_shards(cfg.data) else ()):
        path = getattr(cfg, name)
        if path and not os.path.exists(path):
            raise MissingFileError(f"--{name}={path}: no such file")
    if cfg.resampled and cfg.samples_per_epoch <= 0:
        raise UsageError("--resampled draws shards with replacement and needs --samples_per_epoch (e.g. the data's size)")
    if cfg.samples_per_epoch and not cfg.resampled:
        raise UsageError("--samples_per_epoch sets the length of a --resampled epoch; add --resampled or drop it")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if cfg.keep_ckpts < 1 or cfg.ckpt_every < 1:
        raise UsageError(f"--keep_ckpts={cfg.keep_ckpts} --ckpt_every={cfg.ckpt_every}: both must be at least 1")
    if cfg.preempt_signal and (not isinstance(getattr(signal, cfg.preempt_signal, None), signal.Signals)
                               or cfg.preempt_signal in ("SIGKILL", "SIGSTOP")):
        raise UsageError(f"--preempt_signal={cfg.preempt_signal}: not a signal a process can catch; use e.g. SIGUSR1, "
                         f"or \"\" for SIGTERM only")


def setup_distributed(cfg):
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if ddp:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = losses.world_info()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return Env(rank, world, local_rank, device, ddp, use_cuda)


RUN_FILES = ("ckpt.pt", "config.json", "metrics.jsonl", "eval.json", "bad_records.jsonl")


def claim_out_dir(cfg, env):
    """refuse to start a new run on top of another one; --overwrite clears it, --resume continues it.

    Every rank looks before anybody writes (a barrier follows), so all take the same decision."""
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(cfg.out_dir, f))]
    found += [f for f in history_files(cfg.out_dir) if f not in found]  # ckpt_<step>.pt/.json, leftover .tmp
    if found and not cfg.resume and not cfg.overwrite:
        raise UsageError(f"--out_dir={cfg.out_dir} holds another run ({', '.join(found)}); pass another --out_dir, "
                         f"--resume to continue it, or --overwrite to replace it")
    if env.ddp:
        dist.barrier()
    if env.master and cfg.overwrite:
        for f in found:
            os.remove(os.path.join(cfg.out_dir, f))


def load_start(cfg, log):
    """(resume checkpoint or None, init checkpoint or None, model config) for a fresh, --init or --resume start.

    --resume takes the newest checkpoint in out_dir that checks out against its manifest, reporting any it
    passes over; none at all starts at step 0 (so the first attempt of `torchrun --max-restarts=N ... --resume`
    is an ordinary start); checkpoints that are all unusable are an error."""
    resume_ckpt, ckpt_path = find_resumable(cfg.out_dir, log) if cfg.resume else (None, None)
    if cfg.resume:
        log(f"resume: {f'found {ckpt_path}' if ckpt_path else f'no checkpoint in {cfg.out_dir}, starting at step 0'}")
    init_ckpt = resume_ckpt or (load_checkpoint(cfg.init) if cfg.init else None)
    if init_ckpt is not None and (cfg.init or init_ckpt["config"].get("init")):  # the label travels on
        cfg.model = init_ckpt["config"].get("model", cfg.model)  # ("siglip2-B/16", not the default "tiny")
    if resume_ckpt is not None:
        check_resume_config(resume_ckpt["config"], cfg, ckpt_path)
    if init_ckpt is not None:
        mcfg = ModelConfig(**init_ckpt["model_config"])
        for flag in ("image_pos_std", "text_pos_std", "concept_head"):
            if getattr(cfg, flag) and cfg.init:
                raise UsageError(f"--{flag} sets how a model starts from scratch; --init={cfg.init} brings its own "
                                 f"weights: drop one of the two")
        if cfg.image_size and cfg.image_size != mcfg.image_size:
            raise UsageError(f"--image_size={cfg.image_size} does not match the checkpoint's {mcfg.image_size}; "
                             f"drop --image_size or start from scratch")
    else:
        try:
            mcfg = model_config(cfg.model, **({"image_size": cfg.image_size} if cfg.image_size else {}),
                                **({"image_pos_std": cfg.image_pos_std} if cfg.image_pos_std else {}),
                                **({"text_pos_std": cfg.text_pos_std} if cfg.text_pos_std else {}),
                                **({"concept_head": True} if cfg.concept_head else {}))
        except KeyError:
            raise UsageError(f"--model={cfg.model}: unknown preset; expected one of "
                             f"{', '.join(PRESETS)}") from None
    return resume_ckpt, init_ckpt, mcfg


def write_run_info(cfg, mcfg, env):
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump({"config": asdict(cfg), "model": asdict(mcfg), "world_size": env.world,
                   "torch": torch.__version__, "python": sys.version.split()[0]}, f, indent=2)


def checked(batches, on_error):
    """under --bad_data=error, the first unreadable sample stops the run here, naming it (shards)"""
    for batch in batches:
        if on_error == "error" and batch["skipped"]:
            raise data.BadRecord(f"{describe(batch['skipped'][0])}; --bad_data=skip skips and lists such samples")
        yield batch


def resume_optimizer(optimizer, resume_ckpt, log):
    """the first step: 0, or under --resume the checkpoint's, with its optimizer state loaded into `optimizer`"""
    if resume_ckpt is None:
        return 0
    optimizer.load_state_dict(resume_ckpt["optimizer"])
    log(f"resumed at step {resume_ckpt['step']}")
    return resume_ckpt["step"]


def wrap_model(model, cfg, env):
    """what the training loop calls: compiled (optional) before the DDP wrap, as torch recommends"""
    forward = torch.compile(model) if cfg.compile else model
    if env.ddp:
        forward = DDP(forward, device_ids=[env.local_rank] if env.use_cuda else None)
    return forward


def training_source(cfg, mcfg, log, tokenizer=None):
    """(dataset, tokenizer) of --data: the built-in world, drawn now, with its own vocabulary unless a checkpoint
    brought a tokenizer; WebDataset shards (their index); or a JSONL/CSV file. For shards and files the tokenizer
    stays None unless one was given (train.build_data builds a word vocabulary of the texts)"""
    if cfg.data == "world":
        t0 = time.time()
        log(f"world: drawing {cfg.world_scenes:,} training scenes (world_seed {cfg.world_seed}) ...")
        dataset = world.WorldDataset(cfg.world_scenes, cfg.world_seed, mcfg.image_size, cfg.min_objects, cfg.max_objects,
                                     world_split=cfg.world_split, relations=cfg.relations, bare=cfg.world_bare,
                                     partial=cfg.world_partial, bare_all=cfg.world_bare_all)
        log(f"world: {len(dataset):,} scenes in {time.time() - t0:.1f}s")
        positions = bool(cfg.position_concepts or cfg.position_contrast)  # their phrases' words (METHOD.md §12)
        return dataset, tokenizer or WordTokenizer(world.world_vocabulary(cfg.relations, positions), mcfg.context_length)
    if shards.is_shards(cfg.data):
        return shards.load_index_once(cfg.data, cfg.caption_key, cfg.out_dir, max(1, cfg.workers), cfg.bad_data,
                                      log), tokenizer
    return data.CaptionFileDataset(cfg.data, mcfg.image_size, train=True, image_key=cfg.image_key,
                                   caption_key=cfg.caption_key, seed=cfg.seed, on_error=cfg.bad_data), tokenizer


def make_batches(cfg, mcfg, dataset, tokenizer, env, start_step, groups):
    """(this rank's batches from global step start_step on, endless; steps per epoch) for either source:
    a sampler over an in-memory dataset, or the shard plan, which maps (epoch, step) to samples. groups: the text
    groups each batch carries (train.text_groups)"""
    local_batch = cfg.batch_size // env.world
    collate = data.Collate(tokenizer, mcfg.image_size, groups, cfg.distinct_texts)
    if isinstance(dataset, shards.ShardIndex):
        plan = shards.Plan(dataset, cfg.batch_size, env.world, cfg.seed, cfg.shuffle_window, cfg.resampled,
                           cfg.samples_per_epoch)
        steps = plan.steps
    else:
        loader = data.make_loader(dataset, local_batch, collate, env.rank, env.world, cfg.seed, cfg.workers,
                                  pin=env.use_cuda)
        steps = len(loader)
    if steps == 0:
        raise UsageError(f"{cfg.samples_per_epoch or len(dataset)} records are fewer than one global batch of "
                         f"{cfg.batch_size}; lower --batch_size or add data")
    if isinstance(dataset, shards.ShardIndex):
        stream = shards.ShardStream(dataset, plan, env.rank, mcfg.image_size, cfg.seed)
        stream.start_step = start_step
        return checked(iter(shards.make_loader(stream, collate, cfg.workers, pin=env.use_cuda)), cfg.bad_data), steps
    return data.epoch_batches(loader, dataset, start_step, local_batch), steps


class Logger:
    """one line per log step on rank 0 (step/total, losses, lr, t, b, img/s, elapsed, eta) and the same numbers
    in out_dir/metrics.jsonl; a fresh run starts a fresh file, a resumed one keeps the lines up to its step"""

    def __init__(self, cfg, env, start_step):
        self.cfg, self.env, self.start_step = cfg, env, start_step
        self.t_start = self.t_last = time.time()
        self.n_images = 0
        self.file = None
        if env.master:
            path = os.path.join(cfg.out_dir, "metrics.jsonl")
            kept = []
            if start_step and os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start_step]
            self.file = open(path, "w")
            self.file.writelines(kept)
            self.file.flush()

    def log_step(self, step, loss, terms, lr, model):
        vals = torch.stack([loss.detach()] + [v.detach() for v in terms.values()]).float()
        if self.env.ddp:
            dist.all_reduce(vals)  # per-rank shares sum to the global losses
        now = time.time()
        rec = {"step": step, "loss": vals[0].item(), **{k: vals[i + 1].item() for i, k in enumerate(terms)},
               "lr": lr, "t": model.logit_scale.exp().item(), "b": model.logit_bias.item(),
               "img_s": self.n_images / max(now - self.t_last, 1e-9), "elapsed_s": now - self.t_start}
        self.t_last, self.n_images = now, 0
        if self.env.master:
            done = step - self.start_step
            eta = (now - self.t_start) / done * (self.cfg.steps - step) if done else 0.0
            print(f"step {step:>{len(str(self.cfg.steps))}}/{self.cfg.steps} | loss {rec['loss']:.4f} | "
                  + " | ".join(f"{k} {rec[k]:.4f}" for k in terms)
                  + f" | lr {lr:.2e} | t {rec['t']:.2f} b {rec['b']:.2f} | {rec['img_s']:.0f} img/s"
                  + f" | {clock(now - self.t_start)} elapsed, eta {clock(eta)}", flush=True)
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def clock(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NonFiniteLoss(Stopped, FloatingPointError):
    """a NaN or inf loss under --nonfinite=stop"""


class Run:
    """the bookkeeping of one training loop: the step counter, stop signals, the progress bar, the logger, the
    agreed per-step decision, non-finite steps, checkpoints and preemption. train_loop calls it by name:

        with Run(...) as run:
            while run.step < cfg.steps:
                ... one step ...
                finite, stopping = run.agree(loss)
                run.log(...) or run.skip_nonfinite(terms)
                run.checkpoint(stopping, ...)

    Leaving the with-block closes the signal handlers, the bar and the log file, and turns torch's error about a
    dead DataLoader worker into one line."""

    def __init__(self, cfg, env, tokenizer, report, step, log):
        self.cfg, self.env, self.tokenizer, self.report, self.step, self.log_ = cfg, env, tokenizer, report, step, log
        self.ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.logger = Logger(cfg, env, step)
        self.signals = StopSignals(cfg.preempt_signal)
        from tqdm import tqdm
        self.pbar = tqdm(total=cfg.steps, initial=step, disable=not env.master or not sys.stderr.isatty(),
                         dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        self.signals.close()
        self.pbar.close()
        self.logger.close()
        if isinstance(err, RuntimeError) and worker_failure(err) is not None:
            raise worker_failure(err) from None
        if kind is None:
            self.log_(f"trained to step {self.step} in {clock(time.time() - self.logger.t_start)}")
        return False

    def agree(self, loss):
        """count the step; (finite on every rank?, has any rank been asked to stop?)"""
        self.step += 1
        self.pbar.update(1)
        return agree_on_step(loss, self.signals.received is not None, self.env.ddp)

    def log(self, loss, terms, lr, model, n_images):
        self.logger.n_images += n_images * self.env.world
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
            self.logger.log_step(self.step, loss, terms, lr, model)

    def skip_nonfinite(self, terms):
        """--nonfinite=stop: raise NonFiniteLoss; skip: warn and count (the caller drops the gradients)"""
        msg = (f"non-finite loss at step {self.step} ({', '.join(f'{k} {v.item():.4g}' for k, v in terms.items())}); "
               f"the last good checkpoint {self.ckpt_path} is kept")
        if self.cfg.nonfinite == "stop":
            raise NonFiniteLoss(msg + "; lower --lr, or --nonfinite=skip to skip such steps")
        self.log_("warning: " + msg + "; step skipped")
        self.report.nonfinite_steps += 1

    def checkpoint(self, stopping, model, optimizer, teacher):
        """save every ckpt_every steps, at the end and when stopping; after a stop signal raise Preempted"""
        cfg = self.cfg
        if stopping or self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
            save_step(cfg, self.env, model, optimizer, teacher, self.tokenizer, self.step)
        if stopping and self.step < cfg.steps:
            why = f"{self.signals.received} received" if self.signals.received else "another rank received a stop signal"
            raise Preempted(f"{why}: finished step {self.step} of {cfg.steps} and saved {self.ckpt_path}; "
                            f"continue with the same command and --resume (exit status {PREEMPTED_EXIT})")

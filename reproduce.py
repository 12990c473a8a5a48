"""
Reproduce both papers' claims on the built-in world, in one command.

Protocol (mirrors the papers): pretrain a SigLIP model on the world's long captions (the stand-in for the
web-scale SigLIP/CLIP both papers start from); from that checkpoint fine-tune with the same data, budget and
seed (a) SigLIP loss only, the fair control; (b) C2LIP; (c) DeGLA; plus the papers' ablations. Every model,
the pretrained one included, is scored by evaluate.py's suite on held-out scenes (the same export/score code
path as the public benchmarks); mean and std over seeds go to a JSON and a markdown table. Attention maps
(C2LIP minus the control) are drawn for seed 0.

    python reproduce.py                                # tiny model: 3 seeds, ablations on seed 0
    python reproduce.py --seeds=0 --ablations=false    # the main table for one seed only
    python reproduce.py --model=S/16 --image_size=64   # larger (single process; the runs are train.main calls)
    python reproduce.py --parts=default,scratch        # python train.py over 5 seeds; every loss from scratch, 3 seeds
    python reproduce.py --parts=compositional          # beyond the papers: from scratch on the compositional world
    python reproduce.py --parts=finetune               # the fine-tuning study: why C2LIP costs retrieval here

Parts (--parts, comma-separated):
  papers         the protocol above; results.md / results.json
  default        `python train.py` (the default recipe) over --default_seeds; results_default.md / .json
  scratch        from scratch, each loss's default run (SigLIP, C2LIP at L_xac weight 0.01 and 1.0, DeGLA with and
                 without TGC and distillation, C2LIP+DeGLA) over --scratch_seeds; results_scratch.md / .json
  compositional  from scratch, SigLIP, C2LIP, DeGLA and C2LIP+DeGLA on the compositional split with relation
                 captions (--world_split=compositional --relations) over --scratch_seeds, every test on seen and
                 unseen compositions; results_compositional.md / .json
  relations      the same world and budget: SigLIP, C2LIP, DeGLA with relation negatives, C2LIP with relation
                 concepts, with relation concepts and negative concepts, and C2LIP+DeGLA with all three;
                 results_relations.md / .json
  The default, scratch and compositional runs are train.py subprocesses (its own recipe and end-of-run
  evaluation), --jobs at once (default: CPU cores // --threads); each run folder keeps train.log, eval.json and
  timing.json (wall and CPU seconds), and the tables list both for every run.
  finetune       C2LIP fine-tuned from the pretrained model under other learning rates, step counts and loss
                 weights, each beside a SigLIP control of the same budget; results_finetune.md / .json

Runs that already finished (a checkpoint at the final step, or for the subprocess parts eval.json and
timing.json, in their folder) are not repeated, so an interrupted reproduction continues where it stopped.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, asdict

import torch

import evaluate
import figures
import train
from checkpoint import load_checkpoint, model_from_checkpoint
import cli


HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Settings:
    out_dir: str = "runs/reproduce"
    seeds: str = "0,1,2"              # fine-tuning seeds (the pretrained model is shared)
    model: str = "tiny"
    image_size: int = 0               # 0 = the preset's
    pretrain_steps: int = 1000
    pretrain_lr: float = 2e-3
    finetune_steps: int = 300
    finetune_lr: float = 5e-4
    finetune_warmup: int = 20
    batch_size: int = 128
    world_scenes: int = 40000         # training scenes, shared by pretraining and every fine-tune
    eval_scenes: int = 1000
    ablations: bool = True
    ablation_seeds: str = "0"         # seeds for the ablation runs (each costs as much as a main run)
    threads: int = 1                  # torch CPU threads per run (0 = torch's default; 1 keeps results exact)
    device: str = ""                  # default, scratch, compositional, relations: train.py --device for every run
                                      # ("" = train.py's auto); e.g. cuda with --jobs=8 runs 8 trainings on one GPU
    parts: str = "papers"             # papers, default, scratch, compositional, relations, finetune (comma-separated)
    scratch_steps: int = 1000         # scratch, compositional, relations: training steps of each run
    scratch_seeds: str = "0,1,2"      # scratch, compositional, relations: seeds of every row
    study_seeds: str = "0,1,2"        # finetune: seeds of every setting
    study_settings: int = 0           # finetune: run and tabulate only the first n settings of STUDY (0 = all)
    default_seeds: str = "0,1,2,3,4"  # default: seeds of `python train.py`
    default_args: str = ""            # default: extra train.py flags for every run (e.g. "--steps=100")
    jobs: int = 0                     # trainings at once in the default, scratch and compositional parts (0 = cores // threads)
    train: bool = True                # false: train nothing, tabulate the finished runs (all but papers)


# (name, loss, overrides); the first three are the main table
MAIN = [
    ("SigLIP ft (control)", "siglip", {}),
    ("C2LIP", "c2lip", {}),
    ("DeGLA", "degla", {}),
]
ABLATIONS = [
    ("C2LIP: L_npc only", "c2lip", {"xac_weight": 0.0}),
    ("C2LIP: L_xac only", "c2lip", {"npc_weight": 0.0}),
    ("C2LIP: L_xac weight 1.0", "c2lip", {"xac_weight": 1.0}),
    ("DeGLA: no distillation", "degla", {"distill_weight": 0.0}),
    ("DeGLA: no IGC", "degla", {"igc_weight": 0.0}),
    ("DeGLA: no TGC", "degla", {"tgc_weight": 0.0}),
]
# from scratch, train.py's own recipe and evaluation, one subprocess per run: (name, train.py flags)
SCRATCH_ROWS = [
    ("SigLIP", ""),
    ("C2LIP (L_xac weight 0.01)", "--loss=c2lip"),
    ("C2LIP (L_xac weight 1.0)", "--loss=c2lip --xac_weight=1.0"),
    ("DeGLA", "--loss=degla"),
    ("DeGLA without TGC and distillation", "--loss=degla --tgc_weight=0 --distill_weight=0"),
    ("C2LIP+DeGLA", "--loss=c2lip+degla"),
]
COMPOSITIONAL_ROWS = [("SigLIP", ""), ("C2LIP", "--loss=c2lip"), ("DeGLA", "--loss=degla"), ("C2LIP+DeGLA", "--loss=c2lip+degla")]
COMPOSITIONAL_FLAGS = "--world_split=compositional --relations"
# relations (METHOD.md §2.7, §3.8), on the same world and budget: (name, train.py flags)
RELATION_ROWS = [
    ("SigLIP", ""),
    ("C2LIP", "--loss=c2lip"),
    ("DeGLA + relation negatives", "--loss=degla --relation_negatives"),
    ("C2LIP + relation concepts", "--loss=c2lip --relation_concepts"),
    ("C2LIP + relation concepts + negative concepts", "--loss=c2lip --relation_concepts --concept_negatives"),
    ("C2LIP+DeGLA + all three", "--loss=c2lip+degla --relation_negatives --relation_concepts --concept_negatives"),
    # the same world with image position embeddings that start as large as the patches' spread (METHOD.md §12)
    ("SigLIP, image positions 0.4", "--image_pos_std=0.4"),
    ("C2LIP, image positions 0.4", "--loss=c2lip --image_pos_std=0.4"),
    ("DeGLA + relation negatives, image positions 0.4", "--loss=degla --relation_negatives --image_pos_std=0.4"),
    ("C2LIP+DeGLA + relation negatives, image positions 0.4", "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4"),
    ("C2LIP + relation concepts + negative concepts, image positions 0.4",
     "--loss=c2lip --relation_concepts --concept_negatives --image_pos_std=0.4"),
    # which of C2LIP's terms blinds the image side (METHOD.md §12): the combination without L_npc
    ("C2LIP+DeGLA + relation negatives, image positions 0.4, without L_npc",
     "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4 --npc_weight=0"),
    # ... and with the concept losses on a MAP head of their own (--concept_head)
    ("C2LIP+DeGLA + relation negatives, image positions 0.4, concept head",
     "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4 --concept_head"),
    # ... and with concepts that state where each object is (--position_concepts)
    ("C2LIP + relation concepts + negative concepts, image positions 0.4, position concepts",
     "--loss=c2lip --relation_concepts --concept_negatives --image_pos_std=0.4 --position_concepts=add"),
    ("C2LIP+DeGLA + relation negatives, image positions 0.4, position concepts",
     "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4 --position_concepts=add"),
    ("C2LIP+DeGLA + relation negatives, image positions 0.4, position concepts only",
     "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4 --position_concepts=only"),
    # ... and with a softmax over each object's four position phrases instead (--position_contrast, METHOD.md §12)
    ("C2LIP + relation concepts + negative concepts, image positions 0.4, position contrast",
     "--loss=c2lip --relation_concepts --concept_negatives --image_pos_std=0.4 --position_contrast=1.0"),
    ("C2LIP+DeGLA + relation negatives, image positions 0.4, position contrast",
     "--loss=c2lip+degla --relation_negatives --image_pos_std=0.4 --position_contrast=1.0"),
    ("C2LIP + relation concepts + negative concepts, image positions 0.4, position contrast 3.0",
     "--loss=c2lip --relation_concepts --concept_negatives --image_pos_std=0.4 --position_contrast=3.0"),
    # ... a weight falling over the run (--position_contrast_final), L_xac at 1, 2 or 3 (METHOD.md §12)
    *[(f"C2LIP + relation concepts + negative concepts, image positions 0.4, position contrast {name}",
       f"--loss=c2lip --relation_concepts --concept_negatives --image_pos_std=0.4 {flags}")
      for name, flags in (
          ("3.0 -> 1.0", "--position_contrast=3.0 --position_contrast_final=1.0"),
          ("3.0, L_xac 1.0", "--position_contrast=3.0 --xac_weight=1.0"),
          ("3.0 -> 1.0, L_xac 1.0", "--position_contrast=3.0 --position_contrast_final=1.0 --xac_weight=1.0"),
          ("3.0 -> 0, L_xac 1.0", "--position_contrast=3.0 --position_contrast_final=0 --xac_weight=1.0"),
          ("3.0 -> 1.0, L_xac 3.0", "--position_contrast=3.0 --position_contrast_final=1.0 --xac_weight=3.0"),
          ("5.0 -> 1.0, L_xac 1.0", "--position_contrast=5.0 --position_contrast_final=1.0 --xac_weight=1.0"),
          ("5.0 -> 1.0, L_xac 2.0", "--position_contrast=5.0 --position_contrast_final=1.0 --xac_weight=2.0"))],
]
# the fine-tuning study: (name, loss, overrides of the fine-tune); a control with the same lr and steps goes with
# each budget, so every C2LIP row has a like-for-like SigLIP row
STUDY = [  # run in this order, setting by setting; the two plain rows are the papers part's main rows (same folders)
    ("C2LIP, lr 1e-4", "c2lip", {"lr": 1e-4}),
    ("SigLIP ft, lr 1e-4", "siglip", {"lr": 1e-4}),
    ("C2LIP, L_npc weight 0.1", "c2lip", {"npc_weight": 0.1}),
    ("SigLIP ft, 100 steps", "siglip", {"steps": 100}),
    ("C2LIP, 100 steps", "c2lip", {"steps": 100}),
    ("SigLIP ft (control)", "siglip", {}),
    ("C2LIP", "c2lip", {}),
    ("C2LIP, L_npc 0.1, L_xac 0.1", "c2lip", {"npc_weight": 0.1, "xac_weight": 0.1}),
]
COLUMNS = [  # (metric key of evaluate_world, header)
    ("i2t_R@1", "I→T R@1"), ("t2i_R@1", "T→I R@1"), ("zeroshot_shape", "ZS shape"),
    ("zeroshot_colour_shape", "ZS colour+shape"), ("replace_att", "repl-att"), ("replace_obj", "repl-obj"),
    ("add_att", "add-att"), ("add_obj", "add-obj"), ("swap_att", "swap-att"), ("concept_binding", "concept binding"),
]


SPLIT_COLUMNS = [  # the compositional world: each on seen and on unseen compositions
    ("i2t_R@1", "I→T R@1"), ("zeroshot_colour_shape", "ZS colour+shape"), ("replace_att", "repl-att"),
    ("swap_att", "swap-att"), ("add_att", "add-att"), ("concept_binding", "concept binding"),
    ("swap_rel", "swap-rel"), ("replace_rel", "replace-rel"),
]
STUDY_COLUMNS = [("i2t_R@1", "I→T R@1"), ("t2i_R@1", "T→I R@1"), ("zeroshot_shape", "ZS shape"),
                 ("zeroshot_colour_shape", "ZS colour+shape"), ("add_att", "add-att"), ("swap_att", "swap-att"),
                 ("concept_binding", "concept binding")]


def slug(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def finished(out_dir, steps):
    path = os.path.join(out_dir, "ckpt.pt")
    return os.path.exists(path) and load_checkpoint(path)["step"] >= steps


def command(cfg):
    """the equivalent train.py command line, to run one step of the protocol at scale under torchrun"""
    default = train.Config()
    flags = [f"--{k}={v}" for k, v in asdict(cfg).items() if v != getattr(default, k) and k != "resume"]
    return "torchrun --standalone --nproc_per_node=N train.py " + " ".join(flags)


def run(cfg, train_it=True):
    """train unless already done; returns the wall time in seconds (0 when reused or not trained)"""
    print(f"== {command(cfg)}")
    if not train_it:
        return 0.0
    if finished(cfg.out_dir, cfg.steps):
        print(f"reusing {cfg.out_dir}")
        return 0.0
    cfg.resume = True  # an interrupted run continues exactly (or starts at step 0 when it saved nothing yet)
    t0 = time.time()
    train.main(cfg)
    return time.time() - t0


def scores(runs, s):
    """{name: [metrics of each finished run]} for {name: [(out_dir, steps)]}; unfinished runs are left out"""
    out = {}
    for name, dirs in runs.items():
        done = [d for d, steps in dirs if finished(d, steps)]
        if len(done) < len(dirs):
            print(f"{name}: {len(dirs) - len(done)} of {len(dirs)} runs not finished, left out")
            name = f"{name} ({len(done)} of {len(dirs)} seeds)"
        if done:
            out[name] = [cached_score(d, s) for d in done]
    return out


def cached_score(run_dir, s):
    """score() of a run's checkpoint, kept in run_dir/world_scores.json for that checkpoint file and scene count"""
    path, ckpt = os.path.join(run_dir, "world_scores.json"), os.path.join(run_dir, "ckpt.pt")
    key = {"ckpt_mtime_ns": os.stat(ckpt).st_mtime_ns, "eval_scenes": s.eval_scenes}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["metrics"]
    metrics = score(ckpt, s)[2]
    with open(path, "w") as f:
        json.dump({"key": key, "metrics": metrics}, f, indent=2)
    return metrics


def score(ckpt_path, s):
    ckpt = load_checkpoint(ckpt_path)
    model, tok = model_from_checkpoint(ckpt)
    world = ckpt["config"]  # evaluated on the world it was trained on
    return model, tok, evaluate.evaluate_world(model, tok, seed=0, n_scenes=s.eval_scenes, image_size=model.cfg.image_size,
                                               world_split=world.get("world_split", "default"),
                                               relations=world.get("relations", False))


def fmt(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(rows, seeds, columns=COLUMNS, what="fine-tuning seeds"):
    head = "| model | " + " | ".join(h for _, h in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for name, per_seed in rows:
        lines.append(f"| {name} | " + " | ".join(fmt([m[k] for m in per_seed]) for k, _ in columns) + " |")
    return "\n".join(lines) + f"\n\n%, held-out scenes; mean ± std over {what} {seeds} (a single value: one run)."


def write(s, stem, results, md):
    os.makedirs(s.out_dir, exist_ok=True)
    with open(os.path.join(s.out_dir, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(s.out_dir, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {s.out_dir}/{stem}.json and {stem}.md")


def footer(t0):
    return (f"\n\nWall time {(time.time() - t0) / 60:.1f} min on {os.cpu_count()} CPU cores "
            f"(torch {torch.__version__}, {torch.get_num_threads()} threads).\n")


def finetune_study(s, common, pre_ckpt):
    """C2LIP fine-tuned under other settings, each with a control of the same budget"""
    t0 = time.time()
    seeds = [int(x) for x in s.study_seeds.split(",")]
    study = STUDY[:s.study_settings or len(STUDY)]
    walls, runs = {}, {name: [] for name, _, _ in study}
    for name, loss, over in study:  # setting by setting: an interrupted study has whole settings
        for seed in seeds:
            over_ = {"steps": s.finetune_steps, "lr": s.finetune_lr, **over}
            cfg = train.Config(out_dir=os.path.join(s.out_dir, f"{slug(name)}_s{seed}"), init=pre_ckpt, loss=loss,
                               warmup=s.finetune_warmup, seed=seed, **common, **over_)
            walls[f"{name} s{seed}"] = run(cfg, s.train)
            runs[name].append((cfg.out_dir, cfg.steps))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    pretrained = cached_score(os.path.dirname(pre_ckpt), s)
    rows = scores(runs, s)
    md = "## Fine-tuning study\n\n" + table([("SigLIP pretrained (no ft)", [pretrained])] + list(rows.items()), seeds,
                                            STUDY_COLUMNS, "fine-tuning seeds")
    results = {"settings": asdict(s), "pretrained": pretrained, "variants": rows, "wall_s": walls}
    write(s, "results_finetune", results, md + footer(t0))


def run_jobs(runs, jobs):
    """[(out_dir, argv)] as train.py subprocesses, `jobs` at once; each out_dir gets train.log and timing.json"""
    pending, running = list(runs), {}
    while pending or running:
        while pending and len(running) < jobs:
            out_dir, argv = pending.pop(0)
            os.makedirs(out_dir, exist_ok=True)
            for stale in ("eval.json", "timing.json"):  # a run that fails early must not leave an older result
                if os.path.exists(os.path.join(out_dir, stale)):
                    os.remove(os.path.join(out_dir, stale))
            log = open(os.path.join(out_dir, "train.log"), "w")
            print(f"== python {' '.join(argv[1:])}", flush=True)
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (out_dir, log, time.time(), argv)
        pid, status, usage = os.wait4(-1, 0)  # per child: its own CPU time, even with others still running
        if pid not in running:
            continue
        out_dir, log, t0, argv = running.pop(pid)
        log.close()
        timing = {"wall_s": time.time() - t0, "cpu_s": usage.ru_utime + usage.ru_stime, "started": t0,
                  "ended": time.time(), "returncode": os.waitstatus_to_exitcode(status), "flags": run_flags(argv)}
        with open(os.path.join(out_dir, "timing.json"), "w") as f:
            json.dump(timing, f, indent=2)
        if timing["returncode"] != 0:
            print(f"{out_dir}: train.py exited {timing['returncode']}; see {out_dir}/train.log")


def scratch_flags(s):
    """train.py flags for the Settings that differ from train.py's own defaults (none, by default)"""
    default, model = train.Config(), {"model": s.model, **({"image_size": s.image_size} if s.image_size else {})}
    mine = dict(steps=s.scratch_steps, batch_size=s.batch_size, world_scenes=s.world_scenes, eval_scenes=s.eval_scenes)
    flags = [f"--{k}={v}" for k, v in mine.items() if v != getattr(default, k)]
    return flags + [f"--{k}={v}" for k, v in model.items() if k != "model" or v != "tiny"] + run_env_flags(s)


def run_env_flags(s):
    """where each run computes: threads, and the device when one is named"""
    return [f"--threads={s.threads}"] + ([f"--device={s.device}"] if s.device else [])


def run_flags(argv):
    """what makes a run: its train.py flags, less where it writes"""
    return [a for a in argv[2:] if not a.startswith(("--out_dir=", "--overwrite="))]


def train_runs(s, part, rows, seeds, flags=()):
    """`python train.py <row's flags> <flags> --seed=S` for every (row, seed), as subprocesses, s.jobs at once, seed
    by seed (an interrupted reproduction has every row on the first seeds); a run whose folder has eval.json and
    timing.json is reused when it ran the same flags and ended well; with --train=false every such folder is
    tabulated, and one made by other flags is named on the console. Folders: out_dir/<part>_<row>_s<seed>
    (default_s<seed> for `python train.py`). -> {name: [(seed, train.py's eval.json, timing) of each finished run]}"""
    folder = lambda name, seed: f"{part}_s{seed}" if part == "default" else f"{part}_{slug(name)}_s{seed}"
    base = {name: [sys.executable, os.path.join(HERE, "train.py")] + row_flags.split() + list(flags) for name, row_flags in rows}
    argv = {(name, seed): base[name] + [f"--seed={seed}", f"--out_dir={os.path.join(s.out_dir, folder(name, seed))}",
                                        "--overwrite=true"] for seed in seeds for name, _ in rows}

    def finished(key):  # (eval, timing) of a run that ended well in the key's folder, or None
        d = os.path.join(s.out_dir, folder(*key))
        if not all(os.path.exists(os.path.join(d, f)) for f in ("eval.json", "timing.json")):
            return None
        with open(os.path.join(d, "eval.json")) as f, open(os.path.join(d, "timing.json")) as g:
            metrics, timing = json.load(f), json.load(g)
        return (metrics, timing) if timing.get("returncode", 0) == 0 else None

    same = lambda key, run: run is not None and run[1].get("flags") == run_flags(argv[key])
    todo = [(os.path.join(s.out_dir, folder(*key)), a) for key, a in argv.items() if not same(key, finished(key))]
    if s.train and todo:
        run_jobs(todo, s.jobs or max(1, (os.cpu_count() or 1) // max(1, s.threads)))
    out = {name: [] for name, _ in rows}
    for (name, seed) in argv:
        run = finished((name, seed))
        if run is not None and (same((name, seed), run) or not s.train):
            if not same((name, seed), run):
                print(f"note: {folder(name, seed)} was made by {run[1].get('flags', 'unrecorded flags')}, "
                      f"not {run_flags(argv[(name, seed)])}; tabulated as it is (--train=false)")
            out[name].append((seed, *run))
    return out


def seed_table(runs, seeds, columns, what, per_seed=False):
    """mean ± std rows (and, with per_seed, one row per seed above them); names with missing seeds say which ran"""
    rows = []
    for name, done in runs.items():
        if per_seed:
            rows += [(f"seed {seed}", [m]) for seed, m, _ in done]
        if len(done) < len(seeds):
            ran = ", ".join(str(seed) for seed, _, _ in done)
            name = f"{name} ({len(done)} of {len(seeds)} seeds{': ' + ran if ran else ''})"
        rows.append((f"{name}: mean ± std" if per_seed else name, [m for _, m, _ in done]))
    return table(rows, sorted(seeds), columns, what)


def timing_table(runs):
    lines = ["| run | seed | wall | CPU |", "|---|---|---|---|"]
    lines += [f"| {name} | {seed} | {t['wall_s'] / 60:.1f} min | {t['cpu_s'] / 60:.1f} min |"
              for name, done in runs.items() for seed, _, t in done]
    return "\n".join(lines)


def write_runs(s, stem, title, runs, md):
    results = {"settings": asdict(s), "runs": {name: [{"seed": seed, "metrics": m, "timing": t} for seed, m, t in done]
                                              for name, done in runs.items()}}
    cpu = sum(t["cpu_s"] for done in runs.values() for _, _, t in done)
    where = f" on {s.device}" if s.device else ""
    md = (f"## {title}\n\n{md}\n\n### Wall and CPU time of each run\n\n{s.threads} thread(s) each{where}, "
          f"{s.jobs or 'cores // threads'} at once on {os.cpu_count()} CPU cores, torch {torch.__version__}; "
          f"{cpu / 3600:.2f} CPU-hours in all.\n\n" + timing_table(runs) + "\n")
    write(s, stem, results, md)


def seeds_of(text):
    return [int(x) for x in text.split(",")]


def default_runs(s):
    """`python train.py` (train.py's own recipe and evaluation) over --default_seeds; results_default.md / .json"""
    seeds = seeds_of(s.default_seeds)
    name = "python train.py" + (f" {s.default_args}" if s.default_args else "")
    runs = train_runs(s, "default", [(name, s.default_args)], seeds, run_env_flags(s))
    write_runs(s, "results_default", "The default run", runs, seed_table(runs, seeds, COLUMNS, "seeds", per_seed=True))


def scratch_runs(s):
    """every loss's from-scratch run over --scratch_seeds; results_scratch.md / .json"""
    seeds = seeds_of(s.scratch_seeds)
    flags = scratch_flags(s)
    shared = flags == run_env_flags(s) and not s.default_args
    runs = train_runs(s, "scratch", SCRATCH_ROWS[1:] if shared else SCRATCH_ROWS, seeds, flags)
    if shared:  # at the default budget SigLIP's row is `python train.py` itself: the default part's run folders
        runs = {**train_runs(s, "default", SCRATCH_ROWS[:1], seeds, flags), **runs}
    what = f"seeds (from scratch, {s.scratch_steps} steps, batch {s.batch_size})"
    write_runs(s, "results_scratch", "From scratch: every loss", runs, seed_table(runs, seeds, COLUMNS, what))


def compositional(s, stem="compositional", rows=None, title="The compositional world, from scratch"):
    """from scratch on the compositional split with relation captions; seen and unseen tables. Run folders
    compositional_<row>_s<seed> for every row of either table, so the rows they share are trained once."""
    seeds = seeds_of(s.scratch_seeds)
    runs = train_runs(s, "compositional", rows or COMPOSITIONAL_ROWS, seeds, COMPOSITIONAL_FLAGS.split() + scratch_flags(s))
    what = f"seeds (from scratch, {s.scratch_steps} steps, batch {s.batch_size})"
    md = "\n\n".join(f"### {split.capitalize()} compositions\n\n"
                      + seed_table(runs, seeds, [(f"{split}/{k}", h) for k, h in SPLIT_COLUMNS], what)
                      for split in ("seen", "unseen"))
    write_runs(s, f"results_{stem}", title, runs, md)


def relations(s):
    """the relation methods on the compositional world (results_relations.md / .json)"""
    compositional(s, "relations", RELATION_ROWS, "Relations on the compositional world, from scratch")


PARTS = ("papers", "default", "scratch", "compositional", "relations", "finetune")


def main(s):
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise cli.UsageError("reproduce.py runs its trainings one after another in one process; to scale up, run the "
                 "train.py commands it prints (== lines) under torchrun, then `python reproduce.py` reuses them")
    if s.threads:
        torch.set_num_threads(s.threads)
    parts = s.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise cli.UsageError(f"--parts: unknown {', '.join(unknown)}; use any of {', '.join(PARTS)}")
    for part, fn in (("default", default_runs), ("scratch", scratch_runs), ("compositional", compositional),
                     ("relations", relations)):
        if part in parts:
            fn(s)
    if not {"papers", "finetune"} & set(parts):
        return
    seeds = [int(x) for x in s.seeds.split(",")]
    size = {"model": s.model, **({"image_size": s.image_size} if s.image_size else {})}
    common = dict(batch_size=s.batch_size, world_scenes=s.world_scenes, threads=s.threads, eval=False, log_every=50, ckpt_every=100, **size)
    t_all = time.time()
    walls = {}
    # 1. pretrain on long captions with the SigLIP loss
    pre = train.Config(out_dir=os.path.join(s.out_dir, "pretrain"), loss="siglip", steps=s.pretrain_steps,
                       lr=s.pretrain_lr, seed=0, **common)
    walls["pretrain"] = run(pre, s.train)
    pre_ckpt = os.path.join(pre.out_dir, "ckpt.pt")
    if "finetune" in parts:
        finetune_study(s, common, pre_ckpt)
    if "papers" not in parts:
        return
    # 2. fine-tune every variant from it, per seed
    abl_seeds = [int(x) for x in s.ablation_seeds.split(",")] if s.ablations else []
    variants = MAIN + (ABLATIONS if s.ablations else [])
    plan = [(seed, v) for seed in seeds for v in MAIN] + [(seed, v) for seed in abl_seeds for v in ABLATIONS]
    for seed, (name, loss, over) in plan:
        cfg = train.Config(out_dir=os.path.join(s.out_dir, f"{slug(name)}_s{seed}"), init=pre_ckpt, loss=loss,
                           steps=s.finetune_steps, lr=s.finetune_lr, warmup=s.finetune_warmup, seed=seed,
                           **common, **over)
        walls[f"{name} s{seed}"] = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    # 3. evaluate everything on the same held-out scenes
    results = {"settings": asdict(s), "pretrained": None, "variants": {}, "wall_s": walls}
    _, _, results["pretrained"] = score(pre_ckpt, s)
    models = {}
    main_names = [n for n, _, _ in MAIN]
    for name, _, _ in variants:
        per_seed = []
        for seed in (seeds if name in main_names else abl_seeds):
            model, tok, m = score(os.path.join(s.out_dir, f"{slug(name)}_s{seed}", "ckpt.pt"), s)
            per_seed.append(m)
            if seed == seeds[0] and name in main_names + ["C2LIP: L_xac weight 1.0"]:
                models[name] = (model, tok)
        results["variants"][name] = per_seed
    # 4. tables
    main_rows = [("SigLIP pretrained (no ft)", [results["pretrained"]])] + \
                [(n, results["variants"][n]) for n, _, _ in MAIN]
    md = "## Main\n\n" + table(main_rows, seeds)
    if s.ablations:  # the full methods restricted to the ablation seeds, for a like-for-like comparison
        pick = lambda n: results["variants"][n] if n not in main_names else \
            [m for seed, m in zip(seeds, results["variants"][n]) if seed in abl_seeds]
        abl_rows = [(n, pick(n)) for n, _, _ in MAIN[1:2] + ABLATIONS[:3] + MAIN[2:3] + ABLATIONS[3:]]
        md += "\n\n## Ablations\n\n" + table(abl_rows, abl_seeds)
    # 5. attention maps: C2LIP and the control, seed 0
    fig = os.path.join(s.out_dir, "attention_c2lip_vs_control.png")
    c2, ctrl = models["C2LIP"], models["SigLIP ft (control)"]
    figures.attention_figure(fig, [("C2LIP", c2[0]), ("control", ctrl[0])], c2[1], n_scenes=2,
                              image_size=c2[0].cfg.image_size)
    if "C2LIP: L_xac weight 1.0" in models:
        x1 = models["C2LIP: L_xac weight 1.0"]
        figures.attention_figure(os.path.join(s.out_dir, "attention_c2lip_xac1_vs_control.png"),
                                  [("C2LIP xac 1.0", x1[0]), ("control", ctrl[0])], x1[1], n_scenes=2,
                                  image_size=x1[0].cfg.image_size)
    results["wall_total_s"] = time.time() - t_all
    md += (f"\n\nWall time {results['wall_total_s'] / 60:.1f} min on {os.cpu_count()} CPU cores "
           f"(torch {torch.__version__}, {torch.get_num_threads()} threads).\n")
    with open(os.path.join(s.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(s.out_dir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {s.out_dir}/results.json, results.md and {fig}")


if __name__ == "__main__":
    cli.run(main, Settings, doc=__doc__)

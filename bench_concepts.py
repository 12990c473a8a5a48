"""
Throughput of concepts.py: concept extraction and hard negatives, in captions per second.

Two caption sets: the synthetic world's lists ("a blue circle, a purple circle and a purple diamond")
and the 52 realistic captions of the gold set, repeated. Nothing is cached per caption or per tag
sequence, so repeating a caption costs what a new one would.

One process first (wall-clock rate and rate per CPU-second, which is the per-core figure on a busy
machine), then extraction over a process pool for each --workers count, to show how it scales: the wall
rate (which needs that many free cores) and the rate per CPU-second of the workers (the pool start-up and
the warm-up included), which stays at the one-process rate when the work splits without overhead.

Last, how often concepts repeat within a batch, which is what train.py saves by encoding each distinct text
of a batch once (data.Collate): the distinct share of the concepts of consecutive batches of --batch
captions, for the built-in world's training captions and for the gold captions (all 52 in one batch).

Run: python bench_concepts.py [--n=5000] [--workers=1,2] [--batch=128]
"""

import json
import random
import resource
import time
from dataclasses import dataclass
from multiprocessing import Pool

import concepts as C
from cli import UsageError, run


@dataclass
class BenchConfig:
    n: int = 5000                 # captions per set
    workers: str = "1,2"          # comma-separated process counts for the scaling rows
    batch: int = 128              # captions per batch for the repeat rate (train.py's default global batch)


COLOURS = "red green blue yellow purple orange white pink".split()
SHAPES = "circle square triangle ring star diamond".split()


def world_captions(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrases = [f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}" for _ in range(rng.randint(2, 4))]
        out.append(", ".join(phrases[:-1]) + " and " + phrases[-1])
    return out


def gold_captions(n=0):
    """the gold set's captions, repeated to n of them (0: each once)"""
    with open(C.GOLD_PATH, encoding="utf-8") as f:
        gold = [json.loads(line)["caption"] for line in f if line.strip()]
    return (gold * (n // len(gold) + 1))[:n] if n else gold


def rate(fn, captions):
    """(captions per wall second, captions per CPU second of this process)"""
    fn(captions[0])  # build the tagger outside the timing
    t0, c0 = time.perf_counter(), time.process_time()
    for c in captions:
        fn(c)
    return len(captions) / (time.perf_counter() - t0), len(captions) / max(time.process_time() - c0, 1e-9)


def pool_rate(captions, workers):
    """(captions per wall second, per CPU-second of the workers) of extraction over `workers` processes.
    The CPU-second rate does not depend on how busy the machine is: equal to one process's rate, the
    work splits with no overhead, and the wall rate grows with the free cores."""
    chunk = max(1, len(captions) // (8 * workers))
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool = Pool(workers)
    pool.map(C.extract_concepts, captions[:workers * 4], chunksize=4)  # start and warm every worker
    t0 = time.perf_counter()
    pool.map(C.extract_concepts_batch, [captions[i:i + chunk] for i in range(0, len(captions), chunk)])
    wall = time.perf_counter() - t0
    pool.close()
    pool.join()  # reaped workers count in RUSAGE_CHILDREN
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return len(captions) / wall, len(captions) / max(cpu, 1e-9)


def distinct_share(captions, batch):
    """(distinct concepts / concepts, concepts per batch), over consecutive batches of the captions"""
    per_caption = C.extract_concepts_batch(captions)
    distinct = total = 0
    for i in range(0, len(captions) - batch + 1, batch):
        phrases = [p for ps in per_caption[i:i + batch] for p in ps]
        distinct, total = distinct + len(set(phrases)), total + len(phrases)
    return distinct / total, total / (len(captions) // batch)


def main(cfg):
    try:
        workers = [int(w) for w in cfg.workers.split(",") if w]
    except ValueError:
        workers = []
    if not workers or min(workers) < 1 or cfg.n < 1:
        raise UsageError(f"--workers={cfg.workers!r} --n={cfg.n}: expected positive counts, "
                         f"e.g. --workers=1,2 --n=5000")
    sets = {"world": world_captions(cfg.n), "gold": gold_captions(cfg.n)}
    print(f"tagger {C.tagger_name()} | one process | {cfg.n} captions per set | captions/s (per CPU-second)")
    for name, caps in sets.items():
        tag_rate = rate(lambda c: C.tag(C.tokenize(c)), caps)
        ext_rate = rate(C.extract_concepts, caps)
        neg_rate = rate(C.hard_negatives, caps)
        print(f"{name:5s} | tokenize+tag {tag_rate[0]:7.0f} ({tag_rate[1]:.0f}) | extract_concepts {ext_rate[0]:6.0f} "
              f"({ext_rate[1]:.0f}) | hard_negatives k=4 {neg_rate[0]:5.0f} ({neg_rate[1]:.0f})")
    caps = sets["world"] + sets["gold"]
    base = None
    for w in workers:
        wall, per_cpu = pool_rate(caps, w)
        base = base or wall / w
        print(f"extract_concepts over {w} worker(s): {wall:7.0f} captions/s ({wall / (base * w):.2f} of linear "
              f"in wall time) | {per_cpu:6.0f} per worker CPU-second")
    import world  # the repeat rate on train.py's own world captions (not this file's look-alikes)
    gold = gold_captions()
    for name, caps, b in (("world", world.WorldDataset(10 * cfg.batch, 0).captions, cfg.batch),
                          ("gold", gold, len(gold))):
        share, n = distinct_share(caps, b)
        print(f"concepts repeating in a batch | {name:5s} | batch {b} captions: {n:.0f} concepts, "
              f"{100 * share:.1f}% distinct (the text tower's concept work with distinct texts)")


if __name__ == "__main__":
    run(main, BenchConfig, doc=__doc__)

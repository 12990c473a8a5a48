"""
One-core throughput of concepts.py: concept extraction and hard negatives, in captions per second.

Two caption sets: the synthetic world's lists ("a blue circle, a purple circle and a purple diamond")
and the 52 realistic captions of the gold set, repeated. Single process, so the numbers are per core;
the CLI's --workers multiplies them by about the number of free cores.

Run: python bench_concepts.py [--n 5000]
"""

import argparse
import json
import random
import time

import concepts as C

COLOURS = "red green blue yellow purple orange white pink".split()
SHAPES = "circle square triangle ring star diamond".split()


def world_captions(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrases = [f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}" for _ in range(rng.randint(2, 4))]
        out.append(", ".join(phrases[:-1]) + " and " + phrases[-1])
    return out


def rate(fn, captions):
    fn(captions[0])  # build the tagger outside the timing
    t0 = time.perf_counter()
    for c in captions:
        fn(c)
    return len(captions) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000, help="captions per set")
    args = ap.parse_args()
    with open(C.GOLD_PATH, encoding="utf-8") as f:
        gold = [json.loads(line)["caption"] for line in f if line.strip()]
    sets = {"world": world_captions(args.n), "gold": (gold * (args.n // len(gold) + 1))[:args.n]}
    print(f"tagger {C.tagger_name()} | one process | {args.n} captions per set")
    for name, caps in sets.items():
        tag_rate = rate(lambda c: C.tag(C.tokenize(c)), caps)
        ext_rate = rate(C.extract_concepts, caps)
        neg_rate = rate(C.hard_negatives, caps)
        print(f"{name:5s} | tokenize+tag {tag_rate:8.0f}/s | extract_concepts {ext_rate:7.0f}/s | "
              f"hard_negatives k=4 {neg_rate:6.0f}/s")


if __name__ == "__main__":
    main()

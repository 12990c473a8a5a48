"""
Benchmark the input pipeline of one DataLoader worker: read + decode + random resized crop + bicubic
resize to a float tensor, images per second on one core, for WebDataset shards and for loose files.

    python bench_data.py                          # 500x375, 640x480, 1024x768 JPEGs (quality 90) at 224 and 384 px
    python bench_data.py --images=1024x768 --n=32

Methods, on the same images and the same crops:
    naive   Image.open, convert("RGB") (a full-size decode), crop, bicubic resize: the JSONL path's pipeline
    box     full-size decode, then one bicubic resize of the crop region (resize's box; no crop copy)
    draft   box, plus Image.draft: libjpeg decodes at 1/2, 1/4 or 1/8 scale when the crop still covers the
            output size after it (shards.decode, what training from shards uses)
    webdataset  the peer: webdataset's own reader, webdataset.WebDataset(urls).decode("pil"), streaming the same
            shard, then naive's crop and resize (decode("pil") already returns RGB, so no convert is added)
The JPEGs are made here: noise at several scales, which compresses like a photo (about 4 bits/pixel at
quality 90, as COCO's and CC3M's are). Rates are per CPU second of this process (user + system, file
reads included), so other load on a shared machine does not count; the rounds alternate methods, and the
table gives the median and best round. The last columns compare each method's output to naive's (pixel levels, 0..255): the tolerance.
Below the table: ours (shards draft, what training uses) / webdataset, from the median and from the best rounds.
"""

import io
import json
import math
import os
import random
import statistics
import tarfile
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

import data
import shards


def photo(w, h, seed):
    """a photo-like JPEG: noise at several scales, smoothed (natural images have power at every scale)"""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3))
    for s, a in ((64, 90), (16, 50), (4, 30), (1, 12)):
        small = rng.normal(0, 1, (max(1, h // s), max(1, w // s), 3)) * 40 + 128
        up = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        acc += (np.asarray(up, float) - 128) / 40 * a
    buf = io.BytesIO()
    Image.fromarray(np.clip(acc + 120, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_sources(root, blobs):
    """the same JPEGs as loose files and as one shard; returns (file paths, shard index)"""
    paths = []
    with tarfile.open(os.path.join(root, "bench.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, blob in enumerate(blobs):
            paths.append(os.path.join(root, f"{i:06d}.jpg"))
            with open(paths[-1], "wb") as f:
                f.write(blob)
            for ext, payload in (("jpg", blob), ("txt", b"a photo")):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return paths, shards.load_index(os.path.join(root, "bench.tar"), fallback_dir=root)


def naive(src, size, rng):
    return data.preprocess(data.load_image(src), size, train=True, rng=rng)


def pipelines(paths, index):
    """{(source, method): function(i, size, rng) -> tensor}"""
    def from_file(i):
        with open(paths[i], "rb") as f:
            return f.read()

    def from_shard(i):
        return shards.read_sample(index.shards[index.shard[i]], int(index.start[i]), int(index.end[i]))["jpg"]

    return {
        ("files", "naive"): lambda i, size, rng: naive(paths[i], size, rng),
        ("files", "box"): lambda i, size, rng: shards.decode(from_file(i), size, True, rng, draft=False),
        ("files", "draft"): lambda i, size, rng: shards.decode(from_file(i), size, True, rng, draft=True),
        ("shards", "naive"): lambda i, size, rng: naive(io.BytesIO(from_shard(i)), size, rng),
        ("shards", "box"): lambda i, size, rng: shards.decode(from_shard(i), size, True, rng, draft=False),
        ("shards", "draft"): lambda i, size, rng: shards.decode(from_shard(i), size, True, rng, draft=True),
    }


def webdataset_pipeline(tar):
    """webdataset's reader and PIL decoder streaming the shard, then the same crop and resize as naive:
    function(n, size) -> [(key, image)] for the first n samples, in shard order (sample i gets crop_rng(i))"""
    import webdataset as wds

    def run(n, size):
        ds = wds.WebDataset([tar], shardshuffle=False).decode("pil")  # "pil" converts to RGB itself
        return [(sample["__key__"], data.preprocess(sample["jpg"], size, train=True, rng=crop_rng(i)))
                for i, sample in zip(range(n), ds)]
    return run


def crop_rng(i):
    return random.Random(1000 + i)  # the same crop for every method


def bench(fns, n, size, rounds, streams=None):
    """{name: [img/s of each round]}, methods alternating within each round; streams: {name: function(n, size)}
    for pipelines that read the shard in order (webdataset) rather than one image at a time"""
    streams = streams or {}
    rates = {name: [] for name in [*fns, *streams]}
    for _ in range(rounds):
        for name in rates:
            t0 = time.process_time()  # CPU time of this process: per core, and blind to other load on the machine
            if name in streams:
                streams[name](n, size)
            else:
                for i in range(n):
                    fns[name](i, size, crop_rng(i))
            rates[name].append(n / (time.process_time() - t0))
    return rates


def tolerance(fns, n, size):
    """max and mean |method - naive| over n images, in pixel levels (0..255)"""
    out = {}
    for method in ("box", "draft"):
        diffs = [(fns[("files", method)](i, size, crop_rng(i)) - fns[("files", "naive")](i, size, crop_rng(i))).abs()
                 * 127.5 for i in range(n)]
        out[method] = (max(d.max().item() for d in diffs), sum(d.mean().item() for d in diffs) / n)
    out["naive"] = (0.0, 0.0)
    return out


def peer(root):
    """{("shards", "webdataset"): function(n, size)}, or {} with one line when webdataset is not installed"""
    try:
        return {("shards", "webdataset"): webdataset_pipeline(os.path.join(root, "bench.tar"))}
    except ImportError:
        print("webdataset is not installed (pip install webdataset): its pipeline is not timed")
        return {}


@dataclass
class BenchConfig:
    images: str = "500x375,640x480,1024x768"  # source JPEG sizes, WxH, comma-separated
    sizes: str = "224,384"           # output sizes
    n: int = 48                      # images per set
    rounds: int = 5                  # alternating rounds; the table shows the median (best) of them
    gpu_img_s: str = "224:1500,384:500"  # ASSUMED img/s of one GPU at the B/16 recipe per output size (not measured)
    json: str = ""                   # also write the rows here


def main(a):
    import torch
    torch.set_num_threads(1)  # one worker process = one core
    rows = []
    print(f"one process, one thread; {a.n} images per set, {a.rounds} rounds, median (best) img/s per core")
    print(f"{'image':>9} {'size':>4} {'source':>6} {'method':>10} {'img/s':>14} {'x naive':>8} {'max diff':>8} {'mean diff':>9}")
    for spec in a.images.split(","):
        w, h = map(int, spec.split("x"))
        blobs = [photo(w, h, seed) for seed in range(a.n)]
        with tempfile.TemporaryDirectory() as root:
            paths, index = write_sources(root, blobs)
            fns, streams = pipelines(paths, index), peer(root)
            for size in map(int, a.sizes.split(",")):
                rates = bench(fns, a.n, size, a.rounds, streams)
                tol = tolerance(fns, min(a.n, 16), size)
                if streams:  # the same pixels as naive: both decode the full image, then crop and resize alike
                    got = streams[("shards", "webdataset")](min(a.n, 16), size)
                    if [k for k, _ in got] != index.keys[:len(got)]:  # the comparison below goes by position
                        raise RuntimeError("webdataset streamed the shard's samples in another order than our index")
                    diffs = [(x - fns[("shards", "naive")](i, size, crop_rng(i))).abs() * 127.5
                             for i, (_, x) in enumerate(got)]
                    tol["webdataset"] = (max(d.max().item() for d in diffs), sum(d.mean().item() for d in diffs) / len(diffs))
                for (source, method), r in rates.items():
                    med, best = statistics.median(r), max(r)
                    base = statistics.median(rates[(source, "naive")])
                    row = dict(image=spec, size=size, source=source, method=method, img_s_median=med, img_s_best=best,
                               speedup=med / base, max_diff=tol[method][0], mean_diff=tol[method][1],
                               kb_per_image=sum(map(len, blobs)) / len(blobs) / 1024)
                    if (source, method) == ("shards", "draft") and ("shards", "webdataset") in rates:  # against the peer
                        peer_rates = rates[("shards", "webdataset")]
                        row["vs_webdataset"] = med / statistics.median(peer_rates)
                        row["vs_webdataset_best"] = best / max(peer_rates)
                    rows.append(row)
                    print(f"{spec:>9} {size:>4} {source:>6} {method:>10} {med:>7.0f} ({best:>4.0f}) {med / base:>7.2f}x "
                          f"{row['max_diff']:>8.1f} {row['mean_diff']:>9.2f}")
    print(f"\nmean JPEG size: " + ", ".join(f"{s} {statistics.mean(r['kb_per_image'] for r in rows if r['image'] == s):.0f} kB"
                                         for s in a.images.split(",")))
    for r in rows:
        if "vs_webdataset" in r:
            print(f"ours (shards draft) / webdataset: {r['vs_webdataset']:.2f}x median, {r['vs_webdataset_best']:.2f}x best "
                  f"at {r['image']} -> {r['size']} px (img/s per CPU-second)")
    gpu = {int(k): float(v) for k, v in (kv.split(":") for kv in a.gpu_img_s.split(","))}
    print("workers per GPU = ASSUMED GPU rate (not measured here) / shard 'draft' rate per core (median); "
          "collation and transfer in the main process not included")
    for r in rows:
        if r["source"] == "shards" and r["method"] == "draft" and r["size"] in gpu:
            print(f"  {r['image']} -> {r['size']} px: {math.ceil(gpu[r['size']] / r['img_s_median'])} worker processes "
                  f"({r['img_s_median']:.0f} img/s each) for an assumed {gpu[r['size']]:.0f} img/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    from cli import run
    run(main, BenchConfig, doc=__doc__)

"""WebDataset shards: naming, the index against webdataset's reader, the rank/worker split, exact resume,
bad samples, caches and negatives joined by sample key, and the draft decode against a full decode."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import concepts
import data
import world
from bench_data import photo
import shards
import train
from cli import UsageError
from test_reliability import kill_after_lines, last_losses, run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a red circle and a blue square", "a green star", "a white ring and a pink diamond",
            "a yellow triangle and an orange circle", "a purple square"]


def jpeg(i, size=(24, 18)):
    buf = io.BytesIO()
    Image.new("RGB", size, ((i * 37) % 255, (i * 91) % 255, 120)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path, samples):
    """samples: [(key, {ext: bytes})], members in that order"""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def sample(n, caption=None):
    caption = caption or CAPTIONS[n % len(CAPTIONS)]
    return f"{n:06d}", {"jpg": jpeg(n), "txt": caption.encode(), "json": json.dumps({"short": f"short {n}"}).encode()}


def make_shards(root, sizes):
    """shards of the given sizes; keys numbered across shards; returns the folder"""
    os.makedirs(root, exist_ok=True)
    n = 0
    for s, size in enumerate(sizes):
        write_tar(os.path.join(root, f"{s:03d}.tar"), [sample(n + i) for i in range(size)])
        n += size
    return str(root)


SIZES = [7, 30, 1, 13, 21, 0, 8]  # unequal, one empty; 80 samples

# -----------------------------------------------------------------------------
# naming and the index


def test_shard_names_and_index_agree_with_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    root = make_shards(tmp_path / "s", SIZES)
    (tmp_path / "list.txt").write_text("# the shards\ns/{000..003}.tar\ns/004.tar\n\ns/005.tar\ns/006.tar\n")
    paths = shards.shard_paths(root)
    assert shards.shard_paths(f"{root}/{{000..006}}.tar") == paths
    assert [os.path.abspath(p) for p in shards.shard_paths(str(tmp_path / "list.txt"))] == paths
    with pytest.raises(ValueError, match="no .tar shards"):
        shards.shard_paths(str(tmp_path))
    index = shards.load_index(root)
    assert len(index) == sum(SIZES) and not index.problems
    assert os.path.isdir(os.path.join(root, ".shard-index"))  # cached beside the shards
    # the reference: webdataset's own reader, shard after shard
    ref = list(wds.WebDataset(paths, shardshuffle=False, empty_check=False))
    assert index.keys == [r["__key__"] for r in ref]
    assert index.captions == [r["txt"].decode() for r in ref]
    for i in (0, 7, 44, len(ref) - 1):  # our positioned read returns webdataset's bytes
        members = shards.read_sample(index.shards[index.shard[i]], int(index.start[i]), int(index.end[i]))
        assert members["jpg"] == ref[i]["jpg"] and members["json"] == ref[i]["json"]
    # a caption from a field of the json, and the cached index is used the second time
    by_field = shards.load_index(root, caption_key="short")
    assert by_field.captions[:2] == ["short 0", "short 1"]
    t0 = time.time()
    assert shards.load_index(root).keys == index.keys and time.time() - t0 < 1.0

# -----------------------------------------------------------------------------
# the order: every sample once per epoch, exact resume with any worker count


@pytest.mark.parametrize("world,batch", [(1, 8), (2, 8), (3, 12), (2, 6)])
def test_plan_sees_every_sample_once_per_epoch(tmp_path, world, batch):
    index = shards.load_index(make_shards(tmp_path / "s", SIZES))
    plan = shards.Plan(index, batch, world, seed=3, window=10)
    assert plan.steps == len(index) // batch
    orders = []
    for epoch in range(2):
        ids = [i for s in range(epoch * plan.steps, (epoch + 1) * plan.steps) for r in range(world)
               for i in plan.step(s, r).tolist()]
        assert len(ids) == len(set(ids)) == plan.steps * batch  # no repeats; only the remainder is dropped
        assert len(index) - len(ids) < batch
        orders.append(ids)
    assert orders[0] != orders[1]  # a new shard order and shuffle each epoch


def keys_of(items):
    return [it["key"] for it in items]


def _rank_worker(rank, world, store, root, batch, steps, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        index = shards.load_index(root)
        plan = shards.Plan(index, batch, world, seed=0, window=16)
        stream = shards.ShardStream(index, plan, rank, image_size=16)
        loader = shards.make_loader(stream, keys_of, workers=0)  # worker splits: the resume test
        seen = [k for _, k in zip(range(steps), loader)]
        everyone = [None] * world
        dist.all_gather_object(everyone, seen)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(everyone, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gloo_see_every_sample_once(tmp_path):
    sizes = [5, 17, 2, 9, 11, 4]  # 48 samples: 6 global batches of 8
    root = make_shards(tmp_path / "s", sizes)
    shards.load_index(root)  # index once, before the ranks start
    out = str(tmp_path / "seen.json")
    steps = 6
    # fork: the ranks inherit this process's imports (no process group exists here yet)
    mp.start_processes(_rank_worker, args=(2, str(tmp_path / "store"), root, 8, 2 * steps, out), nprocs=2, join=True,
                       start_method="fork")
    seen = json.load(open(out))  # [rank][step] -> keys
    all_keys = sorted(f"{n:06d}" for n in range(sum(sizes)))
    for epoch in range(2):
        keys = [k for rank in seen for batch in rank[epoch * steps:(epoch + 1) * steps] for k in batch]
        assert sorted(keys) == all_keys, epoch
    assert all(len(b) == 4 for rank in seen for b in rank)


def test_resume_at_any_step_with_any_worker_count(tmp_path):
    index = shards.load_index(make_shards(tmp_path / "s", SIZES))
    plan = shards.Plan(index, 8, 1, seed=1, window=24)
    collate = lambda items: ([it["key"] for it in items], torch.stack([it["image"] for it in items]))  # noqa: E731

    def run(start, steps, workers):
        stream = shards.ShardStream(index, plan, 0, image_size=16, seed=1)
        stream.start_step = start
        return [b for _, b in zip(range(steps), shards.make_loader(stream, collate, workers))]

    full = run(0, 14, 0)  # 10 steps an epoch: crosses into epoch 1
    for start, workers in ((3, 2), (11, 1)):
        part = run(start, 14 - start, workers)
        for (k_a, im_a), (k_b, im_b) in zip(full[start:], part):
            assert k_a == k_b
            assert torch.equal(im_a, im_b)  # the same crops


def test_resampled_draws_shards_with_replacement(tmp_path):
    index = shards.load_index(make_shards(tmp_path / "s", SIZES))
    with pytest.raises(ValueError, match="samples_per_epoch"):
        shards.Plan(index, 8, resampled=True)
    plan = shards.Plan(index, 8, 1, seed=0, resampled=True, samples_per_epoch=200)
    assert plan.steps == 25
    counts = [len(ids) for ids in plan.by_shard]
    order = shards.epoch_shards(counts, 0, 0, resampled=True, samples_per_epoch=200)
    assert sum(counts[s] for s in order) >= 200 and len(set(order.tolist())) < len(order)  # repeats
    assert 5 not in order.tolist()  # an empty shard is never drawn
    ids = [i for s in range(plan.steps) for i in plan.step(s, 0).tolist()]
    assert len(ids) == 200 and len(set(ids)) < 200

# -----------------------------------------------------------------------------
# training from shards: the world as shards, kill and resume


def test_world_shards_killed_run_resumes_with_identical_losses(tmp_path):
    root = str(tmp_path / "world")
    world.export_world_shards(root, n_scenes=300, shard_size=70)  # 5 shards, the last one shorter
    common = [f"--data={root}", "--batch_size=32", "--steps=14", "--warmup=3", "--log_every=1", "--ckpt_every=4",
              "--shuffle_window=64", "--eval=false"]  # 9 steps an epoch: the run crosses an epoch end
    train.main(train.parse_args(common + [f"--out_dir={tmp_path / 'ref'}"]))  # in-process: one start less
    out = str(tmp_path / "killed")
    kill_after_lines(run_train(common + [f"--out_dir={out}", "--workers=2"]), out, 9)
    killed_at = max(last_losses(out))
    assert killed_at < 14, "the run finished before it could be killed"
    ckpt_step = train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"]
    assert ckpt_step % 4 == 0 and ckpt_step <= killed_at
    train.main(train.parse_args(common + [f"--out_dir={out}", "--resume", "--workers=1"]))  # another worker count
    a, b = last_losses(str(tmp_path / "ref")), last_losses(out)
    assert sorted(b) == list(range(1, 15))
    for step in range(1, 15):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step

# -----------------------------------------------------------------------------
# bad samples


def make_dirty_shards(root):
    """good samples, a corrupt JPEG, a sample without caption and a truncated shard"""
    os.makedirs(root, exist_ok=True)
    write_tar(os.path.join(root, "good.tar"), [sample(n) for n in range(20)])
    corrupt = ("corrupt", {"jpg": b"\xff\xd8\xff\xe0 not a jpeg", "txt": b"a red circle"})
    no_caption = ("nocap", {"jpg": jpeg(1), "json": b"{}"})
    write_tar(os.path.join(root, "mixed.tar"), [sample(n) for n in range(20, 26)] + [corrupt, no_caption])
    cut = os.path.join(root, "cut.tar")
    write_tar(cut, [sample(n) for n in range(30, 36)])
    blob = open(cut, "rb").read()
    open(cut, "wb").write(blob[:15000])  # cut inside the fifth sample (each is 3.5 kB)
    listing = os.path.join(root, "shards.txt")
    with open(listing, "w") as f:
        f.write("good.tar\nmixed.tar\ncut.tar\n")
    return listing


def test_missing_shards_are_one_line_naming_them(tmp_path):
    root = tmp_path / "d"
    os.makedirs(root)
    for n in range(3):
        write_tar(root / f"{n:05d}.tar", [sample(n)])
    spec = str(root / "{00000..00009}.tar")  # a typo in the range: 7 of 10 do not exist
    with pytest.raises(UsageError, match=r"7 of 10 shards do not exist \(.*00003.tar, .*00004.tar, .*00005.tar "
                                         r"\.\.\. .*00009.tar\); fix the range"):
        shards.load_index(spec)
    listing = root / "list.txt"
    listing.write_text("00000.tar\ngone.tar\n")
    with pytest.raises(UsageError, match=r"1 of 2 shards do not exist \(.*gone.tar\)"):
        train.main(small(tmp_path, data=str(listing)))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--data={spec}", f"--out_dir={tmp_path / 'r'}"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "7 of 10 shards do not exist" in p.stderr


def test_shard_cut_between_samples_is_truncated(tmp_path):
    path = str(tmp_path / "a.tar")
    write_tar(path, [sample(n) for n in range(4)])
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:3 * 3584])  # exactly after the third sample: tarfile alone sees a shorter tar
    scan = shards.scan_shard(path)
    assert [s[0] for s in scan["samples"]] == ["000000", "000001"]  # the last one may be incomplete: dropped
    assert scan["problems"] == [{"key": "000002", "reason": "truncated shard (no end-of-archive blocks)"}]


def small(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), batch_size=8, steps=8, warmup=2, log_every=1, ckpt_every=100,
                eval=False)
    base.update(kw)
    return train.Config(**base)


def test_bad_samples_are_skipped_and_listed(tmp_path):
    listing = make_dirty_shards(tmp_path / "d")
    cfg = small(tmp_path, data=listing, max_skip_fraction=0.9)
    train.main(cfg)  # 8 steps over 30 usable samples of 3 steps an epoch: every sample is read
    with open(os.path.join(cfg.out_dir, "bad_records.jsonl")) as f:
        rep = [json.loads(line) for line in f]
    found = {(os.path.basename(r["shard"]), r["key"], r["reason"].split(" ")[0]) for r in rep}
    assert ("mixed.tar", "corrupt", "corrupt") in found
    assert ("mixed.tar", "nocap", "no") in found  # no caption
    assert any(s == "cut.tar" and why == "truncated" and key and key.startswith("0000") for s, key, why in found)
    assert train.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["step"] == 8


def test_bad_data_error_names_shard_and_key(tmp_path):
    listing = make_dirty_shards(tmp_path / "d")
    with pytest.raises(UsageError, match=r"mixed.tar: nocap: no caption"):
        train.main(small(tmp_path, data=listing, bad_data="error"))
    # a corrupt image shows only when it is decoded: the run stops there, in the main process
    root = tmp_path / "c"
    os.makedirs(root)
    write_tar(root / "a.tar", [sample(n) for n in range(7)] + [("corrupt", {"jpg": b"\xff\xd8 junk", "txt": b"a dog"})])
    with pytest.raises(UsageError, match=r"a.tar:corrupt: corrupt image"):
        train.main(small(tmp_path / "e", data=str(root), bad_data="error", workers=1))


def test_skip_budget_stops_with_one_line(tmp_path):
    listing = make_dirty_shards(tmp_path / "d")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--data={listing}", "--batch_size=8",
                        "--steps=2", f"--out_dir={tmp_path / 'run'}", "--max_skip_fraction=0.05"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped: ") and "max_skip_fraction" in lines[0]
    assert "gone.tar" in lines[0] or "nocap" in lines[0]

# -----------------------------------------------------------------------------
# concepts and negatives joined by sample key


def test_concept_cache_and_negatives_keyed_by_sample_key(tmp_path):
    root = make_shards(tmp_path / "s", [6, 4])
    index = shards.load_index(root)
    cache = str(tmp_path / "concepts.jsonl")
    concepts.main(["extract", f"--data={root}", f"--out={cache}", "--workers=2"])
    assert concepts.load_concept_cache(cache, index.captions, index.keys) == concepts.extract_concepts_batch(index.captions)
    lines = open(cache).read().splitlines()
    open(cache, "w").write("\n".join(lines[::-1]) + "\n")  # order does not matter, keys do
    assert concepts.load_concept_cache(cache, index.captions, index.keys) == concepts.extract_concepts_batch(index.captions)
    open(cache, "w").write("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(UsageError, match=f"no record for sample key '{index.keys[3]}'"):
        concepts.load_concept_cache(cache, index.captions, index.keys)
    other = [k + "x" for k in index.keys]
    with pytest.raises(UsageError, match="concepts.jsonl: none of its 9 keys"):
        concepts.load_concept_cache(cache, index.captions, other)

    neg = str(tmp_path / "neg.json")
    concepts.main(["negatives", f"--data={root}", f"--out={neg}", "--k=2"])
    recs = json.load(open(neg))
    assert all(isinstance(r["image_id"], int) and r["key"] in index.keys for r in recs)
    quiet = lambda *a: None  # noqa: E731
    negs, keep = concepts.negatives_for(index.captions, 2, 0, neg, keys=index.keys, data=root, log=quiet)
    by_key = {r["key"]: r["enhanced"][:2] for r in recs}
    assert negs == [by_key[index.keys[i]] for i in keep]
    json.dump(recs[1:], open(neg, "w"))
    with pytest.raises(UsageError, match=f"no record for sample key '{recs[0]['key']}'"):
        concepts.negatives_for(index.captions, 2, 0, neg, keys=index.keys, data=root, log=quiet)
    # every source: a file whose captions match nothing is an error naming it, not silently replaced
    json.dump([{"image_id": 1, "original": "something else", "enhanced": ["a", "b"]}], open(neg, "w"))
    with pytest.raises(UsageError, match=r"--negatives=.*neg.json: none of its 1 records matches"):
        concepts.negatives_for(CAPTIONS, 2, 0, neg, log=quiet)


def test_coco_image_ids():
    assert data.coco_image_id("train2014/COCO_train2014_000000057870.jpg") == 57870
    assert data.coco_image_id("http://images.cocodataset.org/val2017/000000391895.jpg") == 391895
    assert data.coco_image_id("imgs/0001.jpg") is None
    # one rule for caption files, shards and negatives files: the image_id field, else a COCO name in a path
    assert data.image_id({"image": "val2014/COCO_val2014_000000000042.jpg"}) == 42
    assert data.image_id({"url": "http://x/000000391895.jpg", "image_id": " 17"}) == 17
    assert data.image_id({"filename": "COCO_train2014_000000057870.jpg"}) == 57870
    assert data.image_id({"image": "imgs/0001.jpg"}) is None

# -----------------------------------------------------------------------------
# decode: the draft fast path against a full-size decode


@pytest.mark.parametrize("w,h,size", [(250, 190, 64), (320, 240, 96), (200, 150, 96)])
def test_draft_decode_within_tolerance_of_full_decode(w, h, size):
    import random
    blob = photo(w, h, 0)
    for seed in range(4):
        fast = shards.decode(blob, size, train=True, rng=random.Random(seed))
        ref = data.preprocess(Image.open(io.BytesIO(blob)).convert("RGB"), size, train=True, rng=random.Random(seed))
        diff = (fast - ref).abs() * 127.5  # in 0..255 pixel units
        # tolerance stated in the README: mean <= 3, max <= 40 levels (draft changes the antialiasing)
        assert diff.mean() <= 3.0 and diff.max() <= 40, (seed, diff.mean().item(), diff.max().item())
        exact = shards.decode(blob, size, train=True, rng=random.Random(seed), draft=False)
        assert ((exact - ref).abs() * 127.5).mean() <= 1.0  # full decode: only the crop's border pixels differ


def test_bench_data_times_webdataset_on_equal_work(tmp_path, capsys):
    # the peer pipeline in bench_data: webdataset streaming the same shard gives, key for key, naive's pixels for
    # the same crops and ours (the draft decode) within the draft tolerance above, so the timing compares equal work
    pytest.importorskip("webdataset")
    import bench_data
    blobs = [photo(160, 120, seed) for seed in range(4)]  # 160x120 -> 32 px: the draft decode applies (1/2 scale)
    paths, index = bench_data.write_sources(str(tmp_path), blobs)
    fns, streams = bench_data.pipelines(paths, index), bench_data.peer(str(tmp_path))
    got = dict(streams[("shards", "webdataset")](4, 32))
    assert sorted(got) == sorted(index.keys)
    for i, key in enumerate(index.keys):
        assert torch.equal(got[key], fns[("shards", "naive")](i, 32, bench_data.crop_rng(i))), key
        diff = (got[key] - fns[("shards", "draft")](i, 32, bench_data.crop_rng(i))).abs() * 127.5
        assert diff.mean() <= 3.0 and diff.max() <= 40, (key, diff.mean().item(), diff.max().item())
    rates = bench_data.bench(fns, 4, 32, 1, streams)
    assert set(rates) == set(fns) | {("shards", "webdataset")} and all(r[0] > 0 for r in rates.values())
    # the whole benchmark at a tiny size reports ours / webdataset (no assertion on speed)
    threads = torch.get_num_threads()
    try:
        bench_data.main(bench_data.BenchConfig(images="64x48", sizes="32", n=4, rounds=1, json=str(tmp_path / "rows.json")))
    finally:
        torch.set_num_threads(threads)
    rows = json.load(open(tmp_path / "rows.json"))
    [peer_row] = [r for r in rows if r["method"] == "webdataset"]
    assert peer_row["max_diff"] == 0.0
    assert [(r["vs_webdataset"] > 0, r["vs_webdataset_best"] > 0) for r in rows if "vs_webdataset" in r] == [(True, True)]
    assert "ours (shards draft) / webdataset" in capsys.readouterr().out


def test_bench_data_without_webdataset(tmp_path, monkeypatch, capsys):
    # webdataset is a benchmark-only dependency: without it, one line says so and the rest still runs
    import bench_data
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset raises ImportError
    threads = torch.get_num_threads()
    try:
        bench_data.main(bench_data.BenchConfig(images="64x48", sizes="32", n=4, rounds=1, json=str(tmp_path / "rows.json")))
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "webdataset" in line] == [
        "webdataset is not installed (pip install webdataset): its pipeline is not timed"]
    rows = json.load(open(tmp_path / "rows.json"))
    assert {r["method"] for r in rows} == {"naive", "box", "draft"} and not any("vs_webdataset" in r for r in rows)

"""
WebDataset tar shards as a training source: read in place, split over ranks and DataLoader workers,
resumable mid-epoch at the exact step.

A shard is a tar file of samples, as img2dataset writes them; a sample is the run of consecutive members
that share a key (the name up to its first dot): 000123.jpg, 000123.txt (the caption), 000123.json
(metadata). Three ways to name the shards:

    --data='cc3m/{00000..01411}.tar'    a brace pattern ('::' joins several, as in OpenCLIP)
    --data=cc3m/                        every .tar file in a folder, in name order
    --data=cc3m/shards.txt              a text file, one shard (or pattern) a line, relative to the file

Index. One pass over each shard records every sample's key, byte range and caption (from {key}.txt, or
from a field of {key}.json when caption_key is not "caption"), and lists bad samples (no image, no
caption, a truncated or missing shard). It is cached as JSON beside the shards (in .shard-index/, or in
the run's folder when the shard folder is read-only) and rebuilt for a shard whose size, mtime or ctime changed,
so the number of steps per epoch is known before training starts.

Order. Epoch e reads the shards in a permutation seeded by (seed, e) or, resampled, draws shards with
replacement until a declared number of samples is reached. The samples of the epoch form one stream.
Rank r takes the r-th contiguous slice of steps_per_epoch * local_batch samples of it (the remainder, less
than one global batch, is dropped, as DistributedSampler(drop_last=True) drops it for JSONL data).
Inside its slice a rank shuffles within windows of about `window` samples, seeded by (seed, e, r, window),
and step j takes the j-th local_batch of that order. So (epoch, step) alone fixes which samples a step
sees: a resumed run starts at its step without reading what came before, with any number of workers.
Worker w of W computes steps start + w, start + w + W, ..., which is the order in which the DataLoader
returns them; each sample is one positioned read of its byte range (os.pread), so a worker never scans a
shard from its start. Crops are seeded by (seed, epoch, sample), as for JSONL data.

Why not webdataset's own pipeline: its ranks and workers split whole shards, so with unequal shard sizes
ranks see unequal sample counts (a DDP step count mismatch, or samples repeated or lost by with_epoch);
its shuffle buffer's state is not part of a checkpoint, so a resume must re-read the epoch from its start
and cannot reproduce the buffer's order; and it reads a shard only from its beginning. We use webdataset
for what it does well here: the shard-name syntax (brace expansion), and, in the tests, as the reference
reader that our index must agree with.
"""

import hashlib
import io
import json
import math
import os
import random
import re
import tarfile
import time
import zlib

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from cli import MissingFileError, UsageError
from data import BadRecord, image_id, to_tensor

INDEX_FORMAT = "c2lip-shard-index/1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # key and extension, as webdataset splits a name

# -----------------------------------------------------------------------------
# naming the shards


def is_shards(spec):
    """does --data name shards (a .tar pattern, a folder, or a .txt list) rather than the world or a JSONL/CSV?"""
    return spec != "world" and (".tar" in spec or os.path.isdir(spec) or spec.endswith(".txt"))


def shard_paths(spec):
    """the shard files a --data value names, in order; ValueError when it names none"""
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(".tar"))
    elif spec.endswith(".txt"):
        if not os.path.isfile(spec):
            raise UsageError(f"--data={spec}: shard list not found")
        root = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as f:
            lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        paths = [os.path.join(root, p) for line in lines for p in _expand(line)]
    else:
        paths = _expand(spec)
    if not paths:
        raise UsageError(f"--data={spec}: no .tar shards found; name a folder of .tar files, a pattern or a list")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # a typo in a brace range or a list, not bad records: nothing is read until it is fixed
        named = ", ".join(missing[:3]) + (f" ... {missing[-1]}" if len(missing) > 3 else "")
        raise MissingFileError(f"--data={spec}: {len(missing)} of {len(paths)} shards do not exist ({named}); "
                               f"fix the range or the list")
    return paths


def _expand(pattern):
    from webdataset.shardlists import expand_urls  # brace expansion exactly as OpenCLIP reads --train-data
    return expand_urls(pattern)

# -----------------------------------------------------------------------------
# the index: one pass over each shard, cached


def scan_shard(path, caption_key="caption"):
    """one pass over a tar -> {"samples": [[key, start, end, caption, image_id]], "problems": [{key, reason}]}.

    start/end: the byte range of the sample's members (headers included); the caption is {key}.txt when
    caption_key is "caption" and the sample has one, else field caption_key of {key}.json.
    """
    size = os.path.getsize(path)
    samples, problems, seen = [], [], set()
    group = None  # the sample being read: key, start, end, members {ext: bytes or None}

    def close(g):
        if g is None:
            return
        key, start, end, members = g
        try:
            if key in seen:
                raise BadRecord("duplicate key (its members are not consecutive in the tar)")
            seen.add(key)
            if not any(e in members for e in IMAGE_EXTS):
                raise BadRecord(f"no image ({'/'.join(IMAGE_EXTS)})")
            meta = {}
            if "json" in members:
                try:
                    meta = json.loads(members["json"].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise BadRecord(f"{key}.json is not valid JSON ({e})") from None
            caption = None
            if caption_key == "caption" and "txt" in members:
                try:
                    caption = members["txt"].decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRecord(f"{key}.txt is not valid UTF-8") from None
            elif isinstance(meta, dict) and isinstance(meta.get(caption_key), str):
                caption = meta[caption_key]
            if caption is None or not caption.strip():
                where = f"{key}.txt or " if caption_key == "caption" else ""
                raise BadRecord(f"no caption ({where}field {caption_key!r} of {key}.json)")
            samples.append([key, start, end, caption.strip(), image_id(meta) if isinstance(meta, dict) else None])
        except BadRecord as e:
            problems.append({"key": key, "reason": str(e)})

    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = _KEY_RE.match(m.name).groups() if _KEY_RE.match(m.name) else (None, None)
                if key is None:
                    continue
                end = m.offset_data + m.size
                if end > size:  # tarfile lists a member whose data runs past the end of the file
                    raise tarfile.ReadError(f"unexpected end of file in {m.name}")
                if group is None or group[0] != key:
                    close(group)
                    group = [key, m.offset, None, {}]
                group[2] = m.offset_data + 512 * math.ceil(m.size / 512)
                ext = ext.lower()
                group[3][ext] = tar.extractfile(m).read() if ext in ("txt", "json") else None
            if tar.offset + 1024 > size:  # a tar ends with two zero blocks; a file cut between members has none
                raise tarfile.ReadError("no end-of-archive blocks")
    except (tarfile.TarError, EOFError, OSError) as e:
        # a truncated shard: the sample being read is lost, the complete ones before it are kept
        problems.append({"key": group[0] if group else None, "reason": f"truncated shard ({e})"})
        group = None
    close(group)
    return {"samples": samples, "problems": problems}


def _cache_path(shard, caption_key, fallback_dir):
    """.shard-index/<name>.<caption_key>.json beside the shard, or under fallback_dir if that folder is read-only"""
    folder = os.path.join(os.path.dirname(os.path.abspath(shard)), ".shard-index")
    name = f"{os.path.basename(shard)}.{re.sub(r'[^A-Za-z0-9_-]', '_', caption_key)}.json"
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return os.path.join(folder, name)
    except OSError:
        pass
    digest = hashlib.sha1(os.path.dirname(os.path.abspath(shard)).encode()).hexdigest()[:12]
    folder = os.path.join(fallback_dir, "shard-index", digest)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def _index_one(job):
    """cached scan of one shard; None for a missing shard"""
    shard, caption_key, fallback_dir = job
    if not os.path.isfile(shard):
        return None
    st = os.stat(shard)
    # ctime too: a shard rewritten in place with its old mtime put back (cp -p, rsync -t, tar -x) and the same
    # size would otherwise keep the old index; any rewrite or utime moves the ctime
    stamp = {"format": INDEX_FORMAT, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "caption_key": caption_key}
    path = _cache_path(shard, caption_key, fallback_dir)
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if all(cached.get(k) == v for k, v in stamp.items()):
            return cached
    except (OSError, ValueError):
        pass
    entry = {**stamp, **scan_shard(shard, caption_key)}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entry, f, ensure_ascii=False)
    os.replace(tmp, path)  # a crash mid-write leaves no half index
    return entry


class ShardIndex:
    """every usable sample of a set of shards, numbered 0..n-1 in shard order then tar order.

    .shards (paths), .shard (n,) shard number, .start / .end (n,) byte ranges, .keys, .captions, .image_ids,
    .problems: [{"shard", "key", "reason", "samples"}] for what the index left out ("samples": how many
    records a problem stands for, the mean shard size for a missing shard), .annotations: per-sample lists
    that training adds to each item (concepts, negatives).
    """

    def __init__(self, shards, shard, start, end, keys, captions, image_ids, problems, annotations=None):
        self.shards, self.shard, self.start, self.end = shards, shard, start, end
        self.keys, self.captions, self.image_ids, self.problems = keys, captions, image_ids, problems
        self.annotations = annotations or {}

    def __len__(self):
        return len(self.keys)

    def subset(self, ids):
        """the samples at ids, renumbered in that order"""
        ids = np.asarray(ids, dtype=np.int64)
        pick = lambda xs: [xs[i] for i in ids]
        return ShardIndex(self.shards, self.shard[ids], self.start[ids], self.end[ids], pick(self.keys),
                          pick(self.captions), pick(self.image_ids), self.problems,
                          {name: pick(values) for name, values in self.annotations.items()})

    def annotate(self, **annotations):
        """a copy whose items carry these per-sample lists (aligned with the samples)"""
        for name, values in annotations.items():
            if len(values) != len(self):
                raise ValueError(f"{name}: {len(values)} records for {len(self)} samples")
        return ShardIndex(self.shards, self.shard, self.start, self.end, self.keys, self.captions, self.image_ids,
                          self.problems, {**self.annotations, **annotations})

    def where(self, i):
        return f"{self.shards[self.shard[i]]}: {self.keys[i]}"


def load_index(spec, caption_key="caption", fallback_dir=".", workers=1, on_error="skip"):
    """ShardIndex for a --data value, scanning (in parallel over shards) only shards not cached yet.

    on_error="error": the first bad sample or missing shard raises BadRecord naming shard and key.
    """
    paths = shard_paths(spec)
    jobs = [(p, caption_key, fallback_dir) for p in paths]
    if workers > 1 and len(jobs) > 1:
        from multiprocessing import Pool
        with Pool(min(workers, len(jobs))) as pool:
            entries = pool.map(_index_one, jobs, chunksize=1)
    else:
        entries = [_index_one(j) for j in jobs]
    found = [len(e["samples"]) + len(e["problems"]) for e in entries if e is not None]
    mean_size = max(1, round(sum(found) / len(found))) if found else 1
    shard, start, end, keys, captions, image_ids, problems = [], [], [], [], [], [], []
    for s, (path, entry) in enumerate(zip(paths, entries)):
        if entry is None:
            problems.append({"shard": path, "key": None, "reason": "missing shard", "samples": mean_size})
            continue
        problems += [{"shard": path, **p, "samples": 1} for p in entry["problems"]]
        for key, a, b, cap, iid in entry["samples"]:
            shard.append(s), start.append(a), end.append(b), keys.append(key), captions.append(cap)
            image_ids.append(iid)
    if on_error == "error" and problems:
        p = problems[0]
        raise BadRecord(f"{p['shard']}: {p['key']}: {p['reason']}" if p["key"] else f"{p['shard']}: {p['reason']}")
    if not keys:
        first = f" (first: {problems[0]['shard']}: {problems[0]['reason']})" if problems else ""
        raise UsageError(f"--data={spec}: no usable samples in {len(paths)} shard(s){first}; check the paths")
    return ShardIndex(paths, np.array(shard, dtype=np.int64), np.array(start, dtype=np.int64),
                      np.array(end, dtype=np.int64), keys, captions, image_ids, problems)

def load_index_once(spec, caption_key, out_dir, workers, on_error, log=print):
    """load_index in a distributed run: rank 0 scans the shards not indexed yet (in parallel over workers)
    while the other ranks wait, then they read its cached index"""
    t0 = time.time()
    others_wait = dist.is_initialized() and dist.get_world_size() > 1
    if others_wait and dist.get_rank() != 0:
        dist.barrier()
    index = load_index(spec, caption_key, out_dir, workers, on_error)
    if others_wait and dist.get_rank() == 0:
        dist.barrier()
    log(f"shards: {len(index):,} samples in {len(index.shards)} shards, {len(index.problems)} problems, "
        f"indexed in {time.time() - t0:.1f}s")
    return index

# -----------------------------------------------------------------------------
# the order: (epoch, step) -> sample ids, a pure function


def steps_per_epoch(n_samples, batch_size, samples_per_epoch=0):
    """global batches per epoch: the remainder (less than one batch) is dropped"""
    return (samples_per_epoch or n_samples) // batch_size


def epoch_shards(counts, epoch, seed, resampled=False, samples_per_epoch=0):
    """the shard numbers epoch `epoch` reads, in order: a seeded permutation, or (resampled) draws with
    replacement until the declared samples_per_epoch is covered"""
    rng = np.random.default_rng([seed, epoch, 7])
    if not resampled:
        return rng.permutation(len(counts))
    order, total, nonempty = [], 0, np.flatnonzero(np.asarray(counts) > 0)
    while total < samples_per_epoch:
        s = int(nonempty[rng.integers(len(nonempty))])
        order.append(s)
        total += counts[s]
    return np.array(order, dtype=np.int64)


class Plan:
    """which samples each (rank, step) reads; shared by the loader and the tests"""

    def __init__(self, index, batch_size, world=1, seed=0, window=1024, resampled=False, samples_per_epoch=0):
        if batch_size % world:
            raise UsageError(f"batch_size {batch_size} is not divisible by the world size {world}")
        if resampled and samples_per_epoch <= 0:
            raise UsageError("--resampled needs --samples_per_epoch (the samples one epoch draws)")
        self.local = batch_size // world
        self.world, self.seed, self.resampled, self.samples_per_epoch = world, seed, resampled, samples_per_epoch
        self.steps = steps_per_epoch(len(index), batch_size, samples_per_epoch if resampled else 0)
        self.window = max(1, window // self.local)  # steps per shuffle window
        # the ids of each shard's samples, in tar order
        self.by_shard = [[] for _ in index.shards]
        for i, s in enumerate(index.shard.tolist()):
            self.by_shard[s].append(i)
        self.by_shard = [np.array(ids, dtype=np.int64) for ids in self.by_shard]
        self._epoch = None

    def _stream(self, epoch):
        """the epoch's sample ids, one array, cached for the current epoch"""
        if self._epoch != epoch:
            counts = [len(ids) for ids in self.by_shard]
            order = epoch_shards(counts, epoch, self.seed, self.resampled, self.samples_per_epoch)
            self._epoch, self._ids = epoch, np.concatenate([self.by_shard[s] for s in order] + [np.zeros(0, np.int64)])
        return self._ids

    def step(self, global_step, rank):
        """the sample ids rank `rank` trains on at global_step, in batch order"""
        epoch, j = divmod(global_step, self.steps)
        w0 = j - j % self.window  # first step of the shuffle window
        w1 = min(w0 + self.window, self.steps)
        rng = np.random.default_rng([self.seed, epoch, rank, w0])
        perm = rng.permutation((w1 - w0) * self.local)[(j - w0) * self.local:(j - w0 + 1) * self.local]
        base = rank * self.steps * self.local + w0 * self.local  # the rank's slice, then the window
        return self._stream(epoch)[base + perm]

# -----------------------------------------------------------------------------
# reading and decoding one sample


def crop_box(w, h, rng):
    """random resized crop, scale (0.9, 1), ratio (3/4, 4/3): the same draws as data.preprocess"""
    area = w * h * rng.uniform(0.9, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, int(round(math.sqrt(area * ratio))))
    ch = min(h, int(round(math.sqrt(area / ratio))))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return (x0, y0, x0 + cw, y0 + ch)


def decode(blob, size, train=False, rng=None, draft=True):
    """image bytes -> float (3, size, size) in [-1, 1]: bicubic resize of the (train: random) crop.

    draft: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop still covers size x size pixels
    after it (Image.draft), then resize the crop straight from the decoded image (resize's box), without
    a crop copy. Within the tolerance that tests/test_shards.py checks against a full-size decode.
    """
    with Image.open(io.BytesIO(blob)) as im:
        w, h = im.size
        box = crop_box(w, h, rng or random) if train else (0, 0, w, h)
        if draft and im.format == "JPEG":
            cw, ch = box[2] - box[0], box[3] - box[1]
            im.draft("RGB", (math.ceil(w * size / cw), math.ceil(h * size / ch)))
        if im.mode != "RGB":  # grey, CMYK, palette; convert would copy an RGB image for nothing
            im = im.convert("RGB")
        sx, sy = im.size[0] / w, im.size[1] / h
        out = im.resize((size, size), Image.BICUBIC, box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    return to_tensor(np.array(out))


_FDS = {}  # (pid, path) -> open file descriptor; pread keeps no shared offset, so forked workers are safe


def read_sample(path, start, end):
    """the raw bytes of a sample's members -> {ext: bytes}"""
    key = (os.getpid(), path)
    if key not in _FDS:
        _FDS[key] = os.open(path, os.O_RDONLY)
    blob = os.pread(_FDS[key], end - start, start)
    if len(blob) < end - start:
        raise EOFError(f"truncated shard (read {len(blob)} of {end - start} bytes)")
    members = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for m in tar:
            if m.isfile() and _KEY_RE.match(m.name):
                members[_KEY_RE.match(m.name).group(2).lower()] = tar.extractfile(m).read()
    return members

# -----------------------------------------------------------------------------
# the stream a DataLoader reads


class ShardStream(torch.utils.data.IterableDataset):
    """endless steps of one rank from start_step on: each element is the list of items of one step (the
    DataLoader's collate_fn makes the batch). Items are {"image", "caption", "index", "key"} plus the
    per-sample annotations; an unreadable sample is {"skip": reason, "index", "shard", "key"}, which the
    training loop counts, or turns into an error in its own process under --bad_data=error (an exception
    raised in a worker would arrive wrapped in a worker traceback)."""

    def __init__(self, index, plan, rank, image_size, seed=0, draft=True):
        self.index, self.plan, self.rank, self.image_size = index, plan, rank, image_size
        self.seed, self.draft = seed, draft
        self.start_step = 0

    def item(self, i, epoch):
        shard, key = self.index.shards[self.index.shard[i]], self.index.keys[i]
        try:
            try:
                members = read_sample(shard, int(self.index.start[i]), int(self.index.end[i]))
            except FileNotFoundError:
                raise OSError("missing shard") from None
            except (tarfile.TarError, EOFError) as e:
                raise OSError(f"truncated shard ({e})") from None
            blob = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if blob is None:
                raise OSError("no image")
            rng = random.Random(zlib.crc32(f"{self.seed}:{epoch}:{i}".encode()))  # crops reproducible per epoch
            try:
                image = decode(blob, self.image_size, True, rng, self.draft)
            except Exception as e:  # Pillow raises several kinds for a corrupt file
                raise OSError(f"corrupt image ({type(e).__name__}: {e})") from None
        except OSError as e:
            return {"skip": str(e), "index": i, "shard": shard, "key": key}
        out = {"image": image, "caption": self.index.captions[i], "index": i, "key": key}
        out.update({name: values[i] for name, values in self.index.annotations.items()})
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        step = self.start_step + w
        while True:  # the DataLoader asks workers in turn, so steps come back in order
            epoch = step // self.plan.steps
            yield [self.item(int(i), epoch) for i in self.plan.step(step, self.rank)]
            step += n


def make_loader(stream, collate, workers=0, pin=False):
    """DataLoader over a ShardStream; set stream.start_step before iterating it. pin: page-locked batches (GPU)"""
    return torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=collate, num_workers=workers,
                                       prefetch_factor=4 if workers else None, pin_memory=pin)

"""
Data: image-caption files, preprocessing and batching (the built-in world is in world.py).

Image-caption files: JSONL (one object a line) or CSV (a header row), each record holding an image
path relative to the file and a caption:

    {"image": "imgs/0001.jpg", "caption": "a dog on a red sofa"}

Preprocessing is Pillow + numpy (SigLIP's bicubic resize, mean = std = 0.5, a seeded random resized crop for
training). Collate turns items into a batch with its texts tokenised by name (captions, concepts, negatives,
or any group a loss adds), each distinct text of a group once; the sampler and epoch_batches resume part-way
through an epoch.
"""

import csv
import json
import math
import os
import random
import re
import zlib

import numpy as np
import torch
from PIL import Image

from cli import MissingFileError, UsageError

def to_tensor(arr):
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]"""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_image(path):
    """open as RGB; a corrupt or missing file raises an error naming it"""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def preprocess(img, size, train=False, rng=None):
    """eval: bicubic resize straight to size x size; train: random resized crop, scale (0.9, 1)"""
    if train:
        rng = rng or random
        w, h = img.size
        area = w * h * rng.uniform(0.9, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = min(w, int(round(math.sqrt(area * ratio))))
        ch = min(h, int(round(math.sqrt(area / ratio))))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = img.resize((size, size), Image.BICUBIC)
    return to_tensor(np.array(img))

# -----------------------------------------------------------------------------
# datasets: items are dicts {"image": (3, H, W), "caption": str, "index": int}


class BadRecord(UsageError):
    """a record that cannot be used; the message names the file and line"""


def _check_text(value, where, what):
    if not isinstance(value, str):
        raise BadRecord(f"{where}: {what} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes stand for undecodable bytes
        raise BadRecord(f"{where}: {what} is not valid UTF-8") from None
    return value


def read_rows(path, keys, on_error="error", nonempty=()):
    """JSONL (one object a line) or CSV (a header line) -> (rows [(line, {field: text})], problems).

    The one reader of record files, for training and for concepts.py. A row must hold every field in `keys`
    as valid UTF-8 text (those in `nonempty` not blank); a malformed line or a row that does not raises
    BadRecord naming the file and line
    (on_error="error"), or is left out and listed in problems [{"file", "line", "reason"}] (on_error="skip").
    """
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    if not os.path.isfile(path):
        raise MissingFileError(f"data file not found: {path}; give a JSONL/CSV caption file or WebDataset shards")
    rows, problems = [], []
    # undecodable bytes become surrogate escapes, so one bad line does not hide the rest of the file
    with open(path, newline="" if path.endswith(".csv") else None, encoding="utf-8", errors="surrogateescape") as f:
        for line_num, row in _raw_rows(path, f, keys):
            try:
                if isinstance(row, BadRecord):
                    raise row
                for key in keys:
                    if not _check_text(row.get(key), f"{path}:{line_num}", key).strip() and key in nonempty:
                        raise BadRecord(f"{path}:{line_num}: empty {key}")
                rows.append((line_num, row))
            except BadRecord as e:
                if on_error == "error":
                    raise
                problems.append({"file": path, "line": line_num, "reason": str(e)})
    return rows, problems


def _raw_rows(path, f, keys):
    """(line, dict or BadRecord) for each non-blank line of an open JSONL or CSV file"""
    if path.endswith(".csv"):
        reader = csv.DictReader(f)
        missing = [k for k in keys if reader.fieldnames is None or k not in reader.fieldnames]
        if missing:
            raise UsageError(f"{path}: CSV header {reader.fieldnames} has no column {missing[0]!r}")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                yield reader.line_num, BadRecord(f"{path}:{reader.line_num}: wrong number of CSV fields")
            else:
                yield reader.line_num, row
        return
    for line_num, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_num, BadRecord(f"{path}:{line_num}: not valid JSON ({e.msg})")
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in keys):
            yield line_num, BadRecord(f"{path}:{line_num}: record needs keys {' and '.join(map(repr, keys))}")
            continue
        yield line_num, rec


def read_records(path, image_key="image", caption_key="caption", on_error="error"):
    """an image-caption file -> (records [(line, image path, caption)], problems), as read_rows reads it.

    Captions are stripped and must not be empty; image paths are relative to the file.
    """
    rows, problems = read_rows(path, (image_key, caption_key), on_error, nonempty=(caption_key,))
    if not rows:
        raise UsageError(f"{path}: no usable records ({len(problems)} bad)")
    root = os.path.dirname(os.path.abspath(path))
    return [(n, os.path.join(root, row[image_key]), row[caption_key].strip()) for n, row in rows], problems


def coco_image_id(text):
    """the integer COCO image id in a file name or URL (COCO_train2014_000000057870.jpg, 000000057870.jpg), else None"""
    m = re.search(r"(?:COCO_[a-z]+\d{4}_|^|/)(\d{12})\.(?:jpg|jpeg|png)$", str(text))
    return int(m.group(1)) if m else None


def image_id(rec):
    """a record's integer image id (the one rule for files, shards and negatives files): its image_id field
    (an int or digits), else the COCO id in its image path, file name or URL; None when it has none"""
    v = rec.get("image_id")
    if isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()):
        return int(v)
    for field in ("image", "image_path", "filepath", "file_name", "filename", "url"):
        if isinstance(rec.get(field), str) and coco_image_id(rec[field]) is not None:
            return coco_image_id(rec[field])
    return None


class CaptionFileDataset(torch.utils.data.Dataset):
    """a user's image-caption file (JSONL or CSV), images relative to the file.

    With on_error="skip", bad records are left out at load time (listed in .problems), and an image that
    cannot be read at training time yields an item {"skip": reason, "index": i} that Collate drops and reports.
    """

    def __init__(self, path, image_size, train=True, image_key="image", caption_key="caption", seed=0,
                 on_error="error"):
        self.path, self.image_size, self.train, self.seed, self.on_error = path, image_size, train, seed, on_error
        self.records, self.problems = read_records(path, image_key, caption_key, on_error)
        self.captions = [c for _, _, c in self.records]
        self.epoch = 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        line_num, image_path, caption = self.records[i]
        rng = random.Random(zlib.crc32(f"{self.seed}:{self.epoch}:{i}".encode()))  # crops reproducible per epoch
        try:
            image = preprocess(load_image(image_path), self.image_size, self.train, rng)
        except OSError as e:
            if self.on_error == "error":
                raise OSError(f"{self.path}:{line_num}: {e}") from e
            return {"skip": f"{self.path}:{line_num}: {e}", "index": i}
        return {"image": image, "caption": caption, "index": i}


class Annotated(torch.utils.data.Dataset):
    """adds per-record lists to a dataset's items: concepts=[[str]] (C2LIP), negatives=[[str]] (DeGLA)"""

    def __init__(self, dataset, **annotations):
        for name, values in annotations.items():
            if len(values) != len(dataset):
                raise UsageError(f"{name}: {len(values)} records for a dataset of {len(dataset)}")
        self.dataset, self.annotations = dataset, annotations
        self.captions = dataset.captions

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if "skip" in item:
            return item
        item.update({name: values[i] for name, values in self.annotations.items()})
        return item

    @property
    def epoch(self):  # forwarded, so the training loop's per-epoch crops reach a wrapped dataset
        return getattr(self.dataset, "epoch", 0)

    @epoch.setter
    def epoch(self, value):
        self.dataset.epoch = value


class Subset(torch.utils.data.Dataset):
    """the records of a dataset at the given indices, in that order (DeGLA drops captions that have
    fewer than K hard negatives); items keep the wrapped dataset's "index" for tracing"""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        self.captions = [dataset.captions[i] for i in self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    epoch = Annotated.epoch  # the same forwarding property

# -----------------------------------------------------------------------------
# batching


TEXT_GROUPS = ("concepts", "negatives")  # texts an item may carry besides its caption, each a list of strings


class Collate:
    """list of items -> batch dict: images (b, 3, H, W), captions (strings), index (b,), skipped (the unreadable
    items), and the tokenised texts by name, for the captions and every group in `groups` (concepts, negatives):
    texts[name] (u, C) holds each distinct text of the group once, rows[name] (n,) the row of texts[name] for
    each of the group's n texts in order (texts[name][rows[name]] is every text, duplicates included), and for
    the groups, owner[name] (n,) the local image index of each text. Negatives are sample-major (text i*K + k is
    negative k of sample i). The text tower is a function of each row alone, so encoding texts[name] and
    indexing by rows[name] gives every text's embedding for a fraction of the work when texts repeat (concepts
    do: "a man", "the water"); distinct=False keeps every text as its own row (rows = 0..n-1), for comparison.
    Captions always keep a row each: they seldom repeat, and a SigLIP step stays exactly what it was.
    A rank whose items were all unreadable gets zero-row tensors of every kind, so it still joins every
    collective of the step. A new group of texts: the items carry it under its name, and it is listed in `groups`."""

    def __init__(self, tokenizer, image_size, groups=(), distinct=True):
        self.tokenizer, self.image_size, self.groups, self.distinct = tokenizer, image_size, tuple(groups), distinct

    def __call__(self, items):
        # what an unreadable item says about itself (index; shard and key for shards), then why
        skipped = [{**{k: v for k, v in it.items() if k != "skip"}, "reason": it["skip"]} for it in items if "skip" in it]
        items = [it for it in items if "skip" not in it]
        captions = [it["caption"] for it in items]
        images = torch.stack([it["image"] for it in items]) if items else torch.zeros(0, 3, self.image_size, self.image_size)
        batch = {"skipped": skipped, "images": images, "captions": captions,
                 "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
                 "texts": {}, "rows": {}, "owner": {}}
        batch["texts"]["captions"], batch["rows"]["captions"] = self.encode(captions, distinct=False)
        for name in self.groups:
            texts = [t for it in items for t in it[name]]
            batch["texts"][name], batch["rows"][name] = self.encode(texts, self.distinct)
            batch["owner"][name] = torch.tensor([i for i, it in enumerate(items) for _ in it[name]], dtype=torch.long)
        return batch

    def encode(self, texts, distinct):
        """-> (token ids of the distinct texts (u, C), row of each text (n,)); every text its own row unless distinct"""
        if not texts:
            return torch.zeros(0, self.tokenizer.context_length, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        if not distinct:
            return self.tokenizer.encode(texts), torch.arange(len(texts))
        first = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # equal strings: tokenised once
        tokens, row = torch.unique(self.tokenizer.encode(list(first)), dim=0, return_inverse=True)  # equal ids too
        return tokens, row[torch.tensor([first[t] for t in texts])]


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler that can start an epoch part-way through (exact resume without reading skipped data)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0  # samples of this rank to drop from the start of the current epoch

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


def make_loader(dataset, batch_size, collate, rank=0, world_size=1, seed=0, workers=0, shuffle=True, pin=False):
    """per-rank loader over a DistributedSampler (world size 1 included); call sampler.set_epoch each epoch.
    pin: page-locked batches, so the loop's non_blocking copies to the GPU really overlap"""
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=shuffle, seed=seed, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=workers, drop_last=True, pin_memory=pin,
                                       # not persistent: workers started per epoch copy the dataset then, with
                                       # the epoch the loop just set (persistent ones would crop as in epoch 0)
                                       persistent_workers=False)


def epoch_batches(loader, dataset, start_step, local_batch):
    """the batches from global step start_step on, epoch after epoch; a function of (seed, epoch, step) only"""
    steps_per_epoch = len(loader)
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = skip * local_batch
        if hasattr(dataset, "epoch"):
            dataset.epoch = epoch
        yield from loader
        epoch, skip = epoch + 1, 0

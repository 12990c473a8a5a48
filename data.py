"""
Data: the built-in compositional world, image-caption files, preprocessing and batching.

The world: small RGB scenes of 2-3 coloured shapes in distinct cells of a 2x2 grid, on a dark,
lightly noisy background, drawn with Pillow at 4x and downsampled. Each scene's long caption lists
every object in random order ("a blue circle, a purple circle and a purple diamond"), with no
relations, so a bag-of-words model can match captions: the situation both papers start from.
Everything is a pure function of (seed, index), so train and held-out scenes never depend on the
order in which they are made.

Image-caption files: JSONL (one object a line) or CSV (a header row), each record holding an image
path relative to the file and a caption:

    {"image": "imgs/0001.jpg", "caption": "a dog on a red sofa"}

    python data.py --out=world_preview.png    # draws a grid of scenes with their captions
"""

import csv
import json
import math
import os
import random
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw

# -----------------------------------------------------------------------------
# the built-in world

COLOURS = {  # every name is read as an adjective by the offline tagger
    "red": (220, 45, 45), "green": (50, 180, 60), "blue": (50, 90, 230), "yellow": (235, 215, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (235, 235, 235), "pink": (245, 140, 190),
}
SHAPES = ["circle", "square", "triangle", "ring", "star", "diamond"]
GRID = 2          # objects sit in distinct cells of a GRID x GRID layout
SUPERSAMPLE = 4   # drawn at 4x, then downsampled: smooth edges at 32 px
BACKGROUND = 40   # dark grey
NOISE = 6.0       # std of the per-pixel noise, in 0..255 units
TEST_SEED_OFFSET = 1_000_003  # held-out scenes use another seed stream


def scene_rng(seed, index):
    """one independent, reproducible stream per scene"""
    return random.Random(zlib.crc32(f"{seed}:{index}".encode()))


def sample_objects(rng, min_objects=2, max_objects=3):
    """distinct (colour, shape) pairs in distinct grid cells"""
    n = rng.randint(min_objects, max_objects)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    cells = rng.sample(range(GRID * GRID), n)
    return [dict(colour=c, shape=s, cell=k) for (c, s), k in zip(pairs, cells)]


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj):
    return f"{article(obj['colour'])} {obj['colour']} {obj['shape']}"


def list_phrases(phrases):
    """["a", "b", "c"] -> "a, b and c" """
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def long_caption(objects, rng):
    """every object, in random order"""
    order = list(objects)
    rng.shuffle(order)
    return list_phrases([object_phrase(o) for o in order])


def _shape_points(shape, cx, cy, r, angle):
    if shape == "triangle":
        k, start = 3, -math.pi / 2
    elif shape == "diamond":
        k, start = 4, -math.pi / 2
    elif shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + angle + i * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    else:
        raise ValueError(shape)
    return [(cx + r * math.cos(start + angle + 2 * math.pi * i / k), cy + r * math.sin(start + angle + 2 * math.pi * i / k))
            for i in range(k)]


def render(objects, image_size, rng):
    """objects -> uint8 array (H, W, 3)"""
    S = image_size * SUPERSAMPLE
    cell = S / GRID
    bg = BACKGROUND + rng.randint(-8, 8)
    img = Image.new("RGB", (S, S), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    for o in objects:
        row, col = divmod(o["cell"], GRID)
        r = cell * rng.uniform(0.34, 0.42)
        jitter = cell / 2 - r
        cx = (col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter)
        colour = tuple(min(255, max(0, v + rng.randint(-15, 15))) for v in COLOURS[o["colour"]])
        box = (cx - r, cy - r, cx + r, cy + r)
        if o["shape"] == "circle":
            draw.ellipse(box, fill=colour)
        elif o["shape"] == "ring":
            draw.ellipse(box, outline=colour, width=max(1, int(r * 0.38)))
        elif o["shape"] == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
        else:
            draw.polygon(_shape_points(o["shape"], cx, cy, r, rng.uniform(-0.2, 0.2)), fill=colour)
    img = img.resize((image_size, image_size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, NOISE, arr.shape)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def make_scene(seed, index, image_size=32, min_objects=2, max_objects=3):
    """(image uint8 (H, W, 3), long caption, objects); a pure function of its arguments"""
    rng = scene_rng(seed, index)
    objects = sample_objects(rng, min_objects, max_objects)
    caption = long_caption(objects, rng)
    return render(objects, image_size, rng), caption, objects


def make_world(n, seed, image_size=32, min_objects=2, max_objects=3, split="train"):
    """n scenes as (uint8 images (n, H, W, 3), captions, objects); split 'test' draws other seeds"""
    seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    captions, objects = [], []
    for i in range(n):
        images[i], cap, objs = make_scene(seed, i, image_size, min_objects, max_objects)
        captions.append(cap)
        objects.append(objs)
    return images, captions, objects


def world_vocabulary():
    """every word the world and its evaluation prompts use (the tokenizer is built from it)"""
    words = list(COLOURS) + SHAPES + ["a", "an", "and", "the", "photo", "of", "shape", "object"]
    return words

# -----------------------------------------------------------------------------
# preprocessing (Pillow + numpy; SigLIP's mean = std = 0.5)


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
    return to_tensor(np.asarray(img))

# -----------------------------------------------------------------------------
# datasets: items are dicts {"image": (3, H, W), "caption": str, "index": int}


class WorldDataset(torch.utils.data.Dataset):
    """the built-in world, rendered once into memory"""

    def __init__(self, n, seed, image_size=32, min_objects=2, max_objects=3, split="train"):
        self.images, self.captions, self.objects = make_world(n, seed, image_size, min_objects, max_objects, split)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return {"image": to_tensor(self.images[i]), "caption": self.captions[i], "index": i}


def read_records(path, image_key="image", caption_key="caption"):
    """JSONL or CSV -> list of (image path, caption); errors name the file and line"""
    records = []
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for key in (image_key, caption_key):
                if reader.fieldnames is None or key not in reader.fieldnames:
                    raise ValueError(f"{path}: CSV header {reader.fieldnames} has no column {key!r}")
            for row in reader:
                records.append((reader.line_num, row[image_key], row[caption_key]))
    else:
        with open(path, encoding="utf-8") as f:
            for line_num, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_num}: not valid JSON ({e})") from e
                if not isinstance(rec, dict) or image_key not in rec or caption_key not in rec:
                    raise ValueError(f"{path}:{line_num}: record needs keys {image_key!r} and {caption_key!r}")
                records.append((line_num, rec[image_key], rec[caption_key]))
    root = os.path.dirname(os.path.abspath(path))
    out = []
    for line_num, image, caption in records:
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}:{line_num}: empty caption")
        out.append((os.path.join(root, image), caption.strip()))
    if not out:
        raise ValueError(f"{path}: no records")
    return out


class CaptionFileDataset(torch.utils.data.Dataset):
    """a user's image-caption file (JSONL or CSV), images relative to the file"""

    def __init__(self, path, image_size, train=True, image_key="image", caption_key="caption", seed=0):
        self.path, self.image_size, self.train, self.seed = path, image_size, train, seed
        self.records = read_records(path, image_key, caption_key)
        self.captions = [c for _, c in self.records]
        self.epoch = 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        image_path, caption = self.records[i]
        rng = random.Random(zlib.crc32(f"{self.seed}:{self.epoch}:{i}".encode()))  # crops reproducible per epoch
        image = preprocess(load_image(image_path), self.image_size, self.train, rng)
        return {"image": image, "caption": caption, "index": i}

class Annotated(torch.utils.data.Dataset):
    """adds per-record lists to a dataset's items: concepts=[[str]] (C2LIP), negatives=[[str]] (DeGLA)"""

    def __init__(self, dataset, **annotations):
        for name, values in annotations.items():
            if len(values) != len(dataset):
                raise ValueError(f"{name}: {len(values)} records for a dataset of {len(dataset)}")
        self.dataset, self.annotations = dataset, annotations
        self.captions = dataset.captions

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
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


class Collate:
    """list of items -> batch dict: images (b, 3, H, W), tokens (b, C), captions, index (b,), and when the
    items carry them, concept_tokens (n, C) with owner (n,) = local image index of each concept, and
    negative_tokens (b*K, C), sample-major (row i*K + k = negative k of sample i)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items):
        captions = [it["caption"] for it in items]
        batch = {
            "images": torch.stack([it["image"] for it in items]),
            "tokens": self.tokenizer.encode(captions),
            "captions": captions,
            "index": torch.tensor([it["index"] for it in items]),
        }
        if "concepts" in items[0]:
            batch["concept_tokens"] = self.tokenizer.encode([p for it in items for p in it["concepts"]])
            batch["owner"] = torch.tensor([i for i, it in enumerate(items) for _ in it["concepts"]], dtype=torch.long)
        if "negatives" in items[0]:
            batch["negative_tokens"] = self.tokenizer.encode([n for it in items for n in it["negatives"]])
        return batch


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


def make_loader(dataset, batch_size, collate, rank=0, world_size=1, seed=0, workers=0, shuffle=True):
    """per-rank loader over a DistributedSampler (world size 1 included); call sampler.set_epoch each epoch"""
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=shuffle, seed=seed, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=workers, drop_last=True, persistent_workers=workers > 0)


if __name__ == "__main__":
    import argparse
    from PIL import ImageFont
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="world_preview.png")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    images, captions, _ = make_world(a.n, a.seed, image_size=32)
    scale, pad = 4, 110
    sheet = Image.new("RGB", (a.n * 0 + 4 * (128 + pad), ((a.n + 3) // 4) * (128 + 40)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for i, (im, cap) in enumerate(zip(images, captions)):
        x, y = (i % 4) * (128 + pad), (i // 4) * (128 + 40)
        sheet.paste(Image.fromarray(im).resize((128, 128), Image.NEAREST), (x, y))
        d.text((x, y + 130), cap, fill=(0, 0, 0), font=ImageFont.load_default())
    sheet.save(a.out)
    print(f"wrote {a.out}")

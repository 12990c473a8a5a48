"""
The built-in compositional world, and its export to the benchmarks' file formats and to shards.

Small RGB scenes of 2-3 coloured shapes in distinct cells of a 2x2 grid, on a dark, lightly noisy background,
drawn with Pillow at 4x and downsampled. Each scene's long caption lists every object in random order ("a blue
circle, a purple circle and a purple diamond"), with no relations, so a bag-of-words model can match captions:
the situation both papers start from. Everything is a pure function of (seed, index), so train and held-out
scenes never depend on the order in which they are made.

Two options change the world (the default world stays bit-identical without them):
- world_split="compositional": the colour-shape pairs in HELD_OUT_PAIRS and the spatial facts in
  HELD_OUT_FACTS never occur in a training scene (nor in its caption); held-out tests are then
  reported apart on seen and unseen compositions.
- relations=True: the caption states the spatial relation of two of the objects, last:
  "a green star and a red circle left of a blue square".
Training captions can also say less than the long caption (WorldDataset's bare, bare_all and partial,
train.py's --world_bare, --world_bare_all and --world_partial): objects without their colour, or only some of them.

    python world.py --out=world_preview.png    # draws a grid of scenes with their captions
"""

import functools
import json
import math
import os
import random
import re
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw

from data import to_tensor

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
# relations of the 2x2 grid, as written in captions. "right of" is left out on purpose: the offline tagger
# reads "right" as a noun ("a red circle right" would become a concept), so a horizontal relation is
# always stated with the left object first; vertical ones use both words.
RELATIONS = ("left of", "above", "below")
# the compositional split: one held-out colour per shape (6 of the 48 pairs), six different colours, so every
# colour and every shape still occurs in training ...
HELD_OUT_PAIRS = frozenset({("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "ring"),
                            ("purple", "star"), ("orange", "diamond")})
# ... and four spatial facts between shapes, in any colours: (a, "left of", b) = an a in a column left of a b's,
# (a, "above", b) = an a in a row above a b's (so "a b below an a" states the same fact). The converse facts
# ("a square left of a circle") stay in training.
HELD_OUT_FACTS = frozenset({("circle", "left of", "square"), ("star", "left of", "diamond"),
                            ("triangle", "above", "ring"), ("square", "above", "star")})
WORLD_SPLITS = ("default", "compositional")


def scene_rng(seed, index):
    """one independent, reproducible stream per scene"""
    return random.Random(zlib.crc32(f"{seed}:{index}".encode()))


def sample_objects(rng, min_objects=2, max_objects=3, keep=None):
    """distinct (colour, shape) pairs in distinct grid cells; redrawn from the same stream until keep(objects)
    holds (keep=None accepts the first draw, so the default world is unchanged)"""
    while True:
        n = rng.randint(min_objects, max_objects)
        pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
        cells = rng.sample(range(GRID * GRID), n)
        objects = [dict(colour=c, shape=s, cell=k) for (c, s), k in zip(pairs, cells)]
        if keep is None or keep(objects):
            return objects


def facts(objects):
    """every spatial fact (shape, "left of" | "above", shape) that holds between two objects of a scene"""
    out = set()
    for a in objects:
        for b in objects:
            (ra, ca), (rb, cb) = divmod(a["cell"], GRID), divmod(b["cell"], GRID)
            if ca < cb:
                out.add((a["shape"], "left of", b["shape"]))
            if ra < rb:
                out.add((a["shape"], "above", b["shape"]))
    return out


def held_out(objects):
    """does the scene hold a held-out colour-shape pair or a held-out spatial fact?"""
    return any((o["colour"], o["shape"]) in HELD_OUT_PAIRS for o in objects) or bool(facts(objects) & HELD_OUT_FACTS)


def seen_only(objects):
    """the training filter of the compositional split (a module-level function: make_world caches by it)"""
    return not held_out(objects)


def scene_filter(world_split):
    """the keep predicate of a world split's training scenes"""
    if world_split not in WORLD_SPLITS:
        raise ValueError(f"world split {world_split!r}: expected one of {', '.join(WORLD_SPLITS)}")
    return seen_only if world_split == "compositional" else None


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


def bare_phrase(obj):
    """the object without its colour: "a circle" """
    return f"{article(obj['shape'])} {obj['shape']}"


def varied_caption(objects, rng, bare=0.0, partial=0.0, bare_all=0.0):
    """a true caption that may say less than long_caption: with probability `partial` it names a random
    non-empty part of the objects (fewer than all); with probability `bare_all` it names them all without
    their colours ("a circle and a square"), and otherwise each goes without its colour with probability
    `bare` ("a circle and a blue square")"""
    order = list(objects)
    rng.shuffle(order)
    if len(order) > 1 and rng.random() < partial:
        order = order[:rng.randint(1, len(order) - 1)]
    if bare_all and rng.random() < bare_all:
        return list_phrases([bare_phrase(o) for o in order])
    return list_phrases([bare_phrase(o) if rng.random() < bare else object_phrase(o) for o in order])


def vary_captions(objects, seed, bare, partial, bare_all=0.0):
    """varied_caption for every scene, each from a stream of its own (apart from the scene's, so the images
    stay those of the plain world)"""
    return [varied_caption(objs, random.Random(zlib.crc32(f"caption:{seed}:{i}".encode())), bare, partial, bare_all)
            for i, objs in enumerate(objects)]


def true_relations(a, b):
    """the RELATIONS words that hold for "a <relation> b" in the grid (empty when a is right of b, same row)"""
    (ra, ca), (rb, cb) = divmod(a["cell"], GRID), divmod(b["cell"], GRID)
    return [r for r, ok in (("left of", ca < cb), ("above", ra < rb), ("below", ra > rb)) if ok]


def relation_phrase(a, relation, b):
    return f"{object_phrase(a)} {relation} {object_phrase(b)}"


def relation_caption(objects, rng):
    """the other objects in random order, then "a <relation> b" for a random pair: a relation that holds,
    the pair reordered when only "right of" would (see RELATIONS)"""
    order = list(objects)
    rng.shuffle(order)
    *others, a, b = order
    if not true_relations(a, b):
        a, b = b, a
    return list_phrases([object_phrase(o) for o in others] + [relation_phrase(a, rng.choice(true_relations(a, b)), b)])


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


def make_scene(seed, index, image_size=32, min_objects=2, max_objects=3, keep=None, relations=False):
    """(image uint8 (H, W, 3), caption, objects); a pure function of its arguments.
    keep: only scenes with keep(objects) (redrawn from the scene's own stream); relations: a relation caption"""
    rng = scene_rng(seed, index)
    objects = sample_objects(rng, min_objects, max_objects, keep)
    caption = relation_caption(objects, rng) if relations else long_caption(objects, rng)
    return render(objects, image_size, rng), caption, objects


def distinct(objects):
    """two objects with different colours and different shapes: every binding test is well defined on them"""
    return objects[0]["colour"] != objects[1]["colour"] and objects[0]["shape"] != objects[1]["shape"]


def binding_scenes(stream, image_size=32, keep=None):
    """endless (image, (a, b)) scenes of exactly two objects with different colours and different shapes,
    from the seed stream `stream`; keep: a further condition on the objects, met by redrawing"""
    index = 0
    while True:
        img, _, objs = make_scene(stream, index, image_size, 2, 2, keep)
        index += 1
        if distinct(objs):
            yield img, objs


@functools.lru_cache(maxsize=4)  # reproduce.py trains many models on the same scenes in one process
def make_world(n, seed, image_size=32, min_objects=2, max_objects=3, split="train", keep=None, relations=False):
    """n scenes as (uint8 images (n, H, W, 3), captions, objects); split 'test' draws other seeds.
    keep, relations: as in make_scene. Cached: treat the returned arrays as read-only."""
    seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    captions, objects = [], []
    for i in range(n):
        images[i], cap, objs = make_scene(seed, i, image_size, min_objects, max_objects, keep, relations)
        captions.append(cap)
        objects.append(objs)
    return images, captions, objects


def world_vocabulary(relations=False, positions=False):
    """every word the world and its evaluation prompts use (the tokenizer is built from it); the relation
    and position words come last and only when asked for, so the default vocabulary (and model) is unchanged"""
    words = list(COLOURS) + SHAPES + ["a", "an", "and", "the", "photo", "of", "shape", "object"]
    words += ["left", "above", "below"] if relations else []
    return words + ([w for w in ("at", "top", "bottom", "left", "right") if w not in words] if positions else [])


def position_phrase(obj):
    """the object and its cell of the 2x2 grid: "a red circle at the top left" """
    row, col = divmod(obj["cell"], GRID)
    return f"{object_phrase(obj)} at the {('top', 'bottom')[row]} {('left', 'right')[col]}"


def position_variants(obj):
    """position_phrase of the object in each cell of the grid, its own cell first"""
    cells = [obj["cell"]] + [c for c in range(GRID * GRID) if c != obj["cell"]]
    return [position_phrase({**obj, "cell": c}) for c in cells]


def with_position_concepts(concepts, objects, only=False):
    """each scene's concepts plus a position_phrase per object; only=True: its object phrases ("a red circle")
    give way to them, the other concepts (relation phrases) stay"""
    out = []
    for cons, objs in zip(concepts, objects):
        plain = {object_phrase(o) for o in objs}
        kept = [c for c in cons if not (only and c in plain)]
        out.append(kept + [position_phrase(o) for o in objs])
    return out


_RELATION_TEXT = re.compile(r"\b(%s) (left of|above|below) an? (%s) (%s)\b" % (
    "|".join(SHAPES), "|".join(COLOURS), "|".join(SHAPES)))


def names_held_out(text):
    """does a text name a held-out colour-shape pair ("red circle") or state a held-out fact ("circle left of
    a blue square", "square below a red circle")? Adjacent words only: what a caption or negative states."""
    words = text.lower().split()
    if any((c, s) in HELD_OUT_PAIRS for c, s in zip(words, words[1:])):
        return True
    for a, rel, _, b in _RELATION_TEXT.findall(text.lower()):
        fact = (b, "above", a) if rel == "below" else (a, rel, b)
        if fact in HELD_OUT_FACTS:
            return True
    return False


def clean_negatives(captions, negatives, k, seed, vocab, relations=False):
    """DeGLA's negatives of compositional-split captions, without any that names a held-out pair or fact
    (a negative is training text too). A caption with such a negative gets 3k generated ones, filtered, first
    k kept. -> (negatives, indices of the captions that still have k)"""
    import concepts
    out, keep = [], []
    for i, (cap, negs) in enumerate(zip(captions, negatives)):
        if any(names_held_out(n) for n in negs):
            negs = [n for n in concepts.hard_negatives(cap, 3 * k, seed, vocab, relations) if not names_held_out(n)][:k]
        if len(negs) >= k:
            out.append(negs)
            keep.append(i)
    return out, keep

# -----------------------------------------------------------------------------
# preprocessing (Pillow + numpy; SigLIP's mean = std = 0.5)




class WorldDataset(torch.utils.data.Dataset):
    """the built-in world, rendered once into memory"""

    def __init__(self, n, seed, image_size=32, min_objects=2, max_objects=3, split="train", world_split="default",
                 relations=False, bare=0.0, partial=0.0, bare_all=0.0):
        """bare, partial, bare_all: captions that say less (varied_caption); all 0 keeps the long captions"""
        keep = scene_filter(world_split) if split == "train" else None
        self.images, self.captions, self.objects = make_world(n, seed, image_size, min_objects, max_objects, split,
                                                              keep, relations)
        if bare or partial or bare_all:
            self.captions = vary_captions(self.objects, seed, bare, partial, bare_all)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return {"image": to_tensor(self.images[i]), "caption": self.captions[i], "index": i}


def has_held_out_pair(objects):
    return any((o["colour"], o["shape"]) in HELD_OUT_PAIRS for o in objects)


def export_world(root, n_scenes=1000, seed=0, image_size=32, part="all", relations=False):
    """Write held-out scenes of the world in the official benchmark file formats, so that evaluate.py
    scores the world with the same readers and scorers as the real benchmarks. Layout under root:

        coco/val2017/%012d.png        two-object scenes (distinct colours and shapes), one flat folder like COCO's
        sugarcrepe/<subset>.json      SugarCrepe dicts {"0": {filename, caption, negative_caption}} for
                                      replace_att, replace_obj, swap_att, swap_obj, add_att, add_obj
        binding/concept_binding.json  same shape: "a red circle" vs "a blue circle", blue = the other object's colour
        zeroshot/world_shape/<shape>/*.png, zeroshot/world_colour_shape/<colour>_<shape>/*.png  single objects,
                                      plus zeroshot/classnames.json and zeroshot/templates.json
        retrieval/world.json          Karpathy-style, split "test", one long caption a scene; images in retrieval/world_images/

    The captions list objects without relations, so swap_obj ("a red square and a blue circle" for a red circle
    and a blue square) names the same two objects as swap_att in another order: both test binding, not syntax.
    Held-out scenes come from the test seed stream (+3 single objects, +7 pairs). Returns root.

    part (PARTS): "all" as above; "seen" keeps scenes with no held-out pair or fact and drops a record whose
    negative names a held-out pair; "unseen" keeps scenes holding a held-out pair, and its concept-binding
    records ask only for the held-out object. relations: retrieval captions state a relation, as training did.
    """
    base = seed + TEST_SEED_OFFSET
    keep = PARTS[part]
    dirs = {k: os.path.join(root, k) for k in ("coco/val2017", "sugarcrepe", "binding", "zeroshot", "retrieval/world_images")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    _export_pairs(dirs, n_scenes, base, image_size, keep, part, random.Random(seed))  # rng: the edits, a function of seed
    _export_single_objects(dirs["zeroshot"], n_scenes, base, image_size, keep)
    _export_retrieval(root, dirs["retrieval/world_images"], n_scenes, seed, image_size, keep, relations)
    return root


def _dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _export_pairs(dirs, n_scenes, base, image_size, keep, part, rng):
    """two-object scenes -> the SugarCrepe-style subsets and the concept-binding test"""
    def both(first, second):
        return f"{first} and {second}"

    subsets = {k: {} for k in ("replace_att", "replace_obj", "swap_att", "swap_obj", "add_att", "add_obj")}
    binding = {}
    for kept, (img, objs) in zip(range(n_scenes), binding_scenes(base + 7, image_size, keep)):
        a, b = objs
        name = f"{kept:012d}.png"
        Image.fromarray(img).save(os.path.join(dirs["coco/val2017"], name))
        colour = rng.choice([c for c in COLOURS if c not in (a["colour"], b["colour"])])  # absent from the scene
        shape = rng.choice([s for s in SHAPES if s not in (a["shape"], b["shape"])])
        k = rng.randrange(2)  # which object an edit touches
        edit = lambda **kw: [{**o, **kw} if j == k else o for j, o in enumerate(objs)]
        pairs = {
            "replace_att": edit(colour=colour),
            "replace_obj": edit(shape=shape),
            "swap_att": [{**a, "colour": b["colour"]}, {**b, "colour": a["colour"]}],
            "swap_obj": [{**a, "shape": b["shape"]}, {**b, "shape": a["shape"]}],
        }
        def add(records, caption, negative):
            if part != "seen" or not names_held_out(negative):  # seen: no held-out pair anywhere in the record
                records[str(len(records))] = dict(filename=name, caption=caption, negative_caption=negative)

        caption = both(object_phrase(a), object_phrase(b))
        for sub, neg in pairs.items():
            add(subsets[sub], caption, both(object_phrase(neg[0]), object_phrase(neg[1])))
        # add_obj: a third, absent object; add_att: a wrong colour on an object the positive leaves bare
        add(subsets["add_obj"], caption,
            list_phrases([object_phrase(a), object_phrase(b), object_phrase(dict(colour=colour, shape=shape))]))
        phr = [object_phrase(a), object_phrase(b)]
        pos, neg = list(phr), list(phr)
        pos[k], neg[k] = bare_phrase(objs[k]), object_phrase({**objs[k], "colour": colour})
        add(subsets["add_att"], both(*pos), both(*neg))
        for o, other in ((a, b), (b, a)):
            if part != "unseen" or (o["colour"], o["shape"]) in HELD_OUT_PAIRS:
                add(binding, object_phrase(o), object_phrase({**o, "colour": other["colour"]}))
    for sub, records in subsets.items():
        _dump(records, os.path.join(dirs["sugarcrepe"], f"{sub}.json"))
    _dump(binding, os.path.join(dirs["binding"], "concept_binding.json"))


def _export_single_objects(folder, n_scenes, base, image_size, keep):
    """single-object scenes -> two image folders (by shape; by colour + shape), every class folder made even if empty"""
    folders = {"world_shape": lambda o: o["shape"], "world_colour_shape": lambda o: f"{o['colour']}_{o['shape']}"}
    classes = {"world_shape": sorted(SHAPES), "world_colour_shape": sorted(f"{c}_{s}" for c in COLOURS for s in SHAPES)}
    for ds, names in classes.items():
        for c in names:
            os.makedirs(os.path.join(folder, ds, c), exist_ok=True)
    for i in range(n_scenes):
        img, _, (o,) = make_scene(base + 3, i, image_size, 1, 1, keep)
        for ds, cls in folders.items():
            Image.fromarray(img).save(os.path.join(folder, ds, cls(o), f"{i:06d}.png"))
    _dump({ds: [c.replace("_", " ") for c in names] for ds, names in classes.items()},
         os.path.join(folder, "classnames.json"))
    _dump({ds: ["a photo of a {c}", "a {c}", "a {c} shape"] for ds in classes}, os.path.join(folder, "templates.json"))


def _export_retrieval(root, image_dir, n_scenes, seed, image_size, keep, relations):
    """every held-out scene with its long caption, as a Karpathy-style retrieval file"""
    images, captions, _ = make_world(n_scenes, seed, image_size, split="test", keep=keep, relations=relations)
    entries = []
    for i, (img, cap) in enumerate(zip(images, captions)):
        Image.fromarray(img).save(os.path.join(image_dir, f"{i:06d}.png"))
        entries.append(dict(filepath="world_images", filename=f"{i:06d}.png", imgid=i, split="test", sentids=[i],
                            sentences=[dict(tokens=cap.replace(",", "").split(), raw=cap, imgid=i, sentid=i)]))
    _dump({"dataset": "world", "images": entries}, os.path.join(root, "retrieval", "world.json"))


def export_world_relations(root, n_scenes=1000, seed=0, image_size=32, part="all"):
    """Held-out relation tests of the world in the SugarCrepe file format, beside export_world's:

        relation/images/%012d.png     two-object scenes (distinct colours and shapes)
        relation/swap_rel.json        "a red circle left of a blue square" vs "a blue square left of a red circle"
        relation/replace_rel.json     the same positive vs a relation that does not hold ("... above ...")

    part: "all" (any scene); "seen": no held-out pair or fact in the scene, and no record whose negative states a
    held-out fact; "unseen": no held-out pair, but a held-out fact holds and the positive states it. Scenes come
    from the test stream + 13, edits from random.Random(seed + 13). Returns the folder.
    """
    base = seed + TEST_SEED_OFFSET
    rng = random.Random(seed + 13)
    folder = os.path.join(root, "relation")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    keep = {"all": None, "seen": seen_only,
            "unseen": lambda objs: not has_held_out_pair(objs) and bool(facts(objs) & HELD_OUT_FACTS)}[part]
    subsets = {"swap_rel": {}, "replace_rel": {}}
    for kept, (img, objs) in zip(range(n_scenes), binding_scenes(base + 13, image_size, keep)):
        name = f"{kept:012d}.png"
        Image.fromarray(img).save(os.path.join(folder, "images", name))
        stated = [(a, r, b) for a in objs for b in objs if a is not b for r in true_relations(a, b)]
        if part == "unseen":  # the positive states the held-out fact, as "a above b" or "b below a"
            stated = [(a, r, b) for a, r, b in stated
                      if (a["shape"], r, b["shape"]) in HELD_OUT_FACTS or (b["shape"], "above", a["shape"]) in HELD_OUT_FACTS and r == "below"]
        a, r, b = rng.choice(stated)
        positive = relation_phrase(a, r, b)
        wrong = rng.choice([x for x in RELATIONS if x not in true_relations(a, b)])
        for sub, negative in (("swap_rel", relation_phrase(b, r, a)), ("replace_rel", relation_phrase(a, wrong, b))):
            if part != "seen" or not names_held_out(negative):
                subsets[sub][str(len(subsets[sub]))] = dict(filename=name, caption=positive, negative_caption=negative)
    for sub, records in subsets.items():
        with open(os.path.join(folder, f"{sub}.json"), "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    return folder


def export_world_shards(root, n_scenes=40000, seed=0, image_size=32, shard_size=1000, min_objects=2, max_objects=3):
    """Write the training world as WebDataset shards, the layout img2dataset writes, so that training from
    shards can be run end to end on the built-in scenes (`python train.py --data=<root>`):

        root/00000.tar, 00001.tar, ...    shard_size samples each, the last one shorter
            {key}.png                     the scene, lossless (a JPEG would blur 32 px shapes)
            {key}.txt                     its long caption
            {key}.json                    {"key", "caption", "index"}

    Scene i is make_world's scene i (the same (seed, index) stream as --data=world). Returns the shard paths.
    """
    import io
    import tarfile
    os.makedirs(root, exist_ok=True)
    images, captions, _ = make_world(n_scenes, seed, image_size, min_objects, max_objects)
    paths = []

    def add(tar, name, payload):
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(payload), 0  # fixed mtime: the same scenes give the same bytes
        tar.addfile(info, io.BytesIO(payload))

    for s in range(0, n_scenes, shard_size):
        paths.append(os.path.join(root, f"{s // shard_size:05d}.tar"))
        tmp = paths[-1] + ".tmp"
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s, min(s + shard_size, n_scenes)):
                key = f"{i:09d}"
                buf = io.BytesIO()
                Image.fromarray(images[i]).save(buf, format="PNG")
                add(tar, f"{key}.png", buf.getvalue())
                add(tar, f"{key}.txt", captions[i].encode("utf-8"))
                add(tar, f"{key}.json", json.dumps({"key": key, "caption": captions[i], "index": i}).encode("utf-8"))
        os.replace(tmp, paths[-1])
    return paths


# which held-out scenes a part of the evaluation draws: all (the default world), seen (could have been a training
# scene of the compositional split), unseen (holds a held-out colour-shape pair)
PARTS = {"all": None, "seen": seen_only, "unseen": has_held_out_pair}


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

"""The built-in world judged by its pixels, not by the code that wrote it.

Every check here reads a rendered image: an object's colour centroid must lie in the grid cell its record names,
a relation written in a caption must hold between the centroids (image axes: row 0 is the top, so "above" means
a smaller row), and the negatives of every exported world test must be false for the scene, decided by a small
reference parser in this file from the scene's objects and pixel centroids (the exporter's own true_relations,
facts and names_held_out are never asked)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

try:
    import world
except ImportError:  # before the world moved to its own module
    import data as world

TOL = 45  # largest per-channel distance to a palette colour (colour jitter 15 + pixel noise 6 std)
MIN_PIXELS = 10  # the smallest object (a ring, r = 0.34 cell) covers > 25 pixels of its colour at 32 px


def centroid(img, colour):
    """(row, col) mean of the pixels within TOL of a palette colour, in units of grid cells (0.0 = the top or
    left edge, GRID = the bottom or right edge); None if too few pixels have the colour"""
    names = list(world.COLOURS)
    palette = np.array([world.COLOURS[c] for c in names])  # (P, 3)
    dist = np.abs(img.astype(np.int32)[:, :, None, :] - palette).max(-1)  # (H, W, P)
    mask = (dist.argmin(-1) == names.index(colour)) & (dist.min(-1) <= TOL)  # nearest palette colour, and near
    if mask.sum() < MIN_PIXELS:
        return None
    rows, cols = np.nonzero(mask)
    cell = img.shape[0] / world.GRID
    return (rows.mean() + 0.5) / cell, (cols.mean() + 0.5) / cell


def one_per_colour(objects):
    return len({o["colour"] for o in objects}) == len(objects)


def with_centroids(img, objects):
    out = []
    for o in objects:
        c = centroid(img, o["colour"])
        assert c is not None, f"no {o['colour']} pixels for {o}"
        out.append({**o, "_centroid": c})
    return out


def test_each_object_lies_in_its_cell():
    images, _, objects = world.make_world(150, 0)
    checked = 0
    for img, objs in zip(images, objects):
        if not one_per_colour(objs):
            continue  # two objects of one colour would share a centroid
        objs = with_centroids(img, objs)
        for o in objs:
            row, col = (int(v) for v in o["_centroid"])  # reference layout: cell k = (k // GRID, k % GRID)
            assert (row, col) == (o["cell"] // world.GRID, o["cell"] % world.GRID), o
            checked += 1
        # colours absent from the scene have (almost) no pixels
        for colour in set(world.COLOURS) - {o["colour"] for o in objs}:
            assert centroid(img, colour) is None, colour
    assert checked > 200


def relation_holds(a, relation, b):
    """reference, from two centroids (row, col) in cell units: image row 0 is the top. Objects of one row or
    column sit up to 0.32 cell apart (position jitter), of neighbouring ones at least 0.68: half a cell decides"""
    (ra, ca), (rb, cb) = a["_centroid"], b["_centroid"]
    return {"left of": cb - ca > 0.5, "right of": ca - cb > 0.5, "above": rb - ra > 0.5, "below": ra - rb > 0.5}[relation]


# ------------------------------------------------------------------ a reference reader of the world's texts
RELATION_WORDS = ("left of", "right of", "above", "below")


def parse_object(phrase):
    """'a red circle' -> (colour, shape); 'a circle' -> (None, shape)"""
    words = phrase.split()
    assert words[0] in ("a", "an") and len(words) in (2, 3), phrase
    return (words[1] if len(words) == 3 else None), words[-1]


def parse(text):
    """a world text -> (object claims [(colour | None, shape)], relation claims [(claim_a, relation, claim_b)])"""
    parts = [p.strip() for chunk in text.split(",") for p in chunk.split(" and ")]
    objects, relations = [], []
    for part in parts:
        rel = next((r for r in RELATION_WORDS if f" {r} " in part), None)
        if rel is None:
            objects.append(parse_object(part))
        else:
            left, right = part.split(f" {rel} ")
            a, b = parse_object(left), parse_object(right)
            objects += [a, b]
            relations.append((a, rel, b))
    return objects, relations


def matches(claim, obj):
    colour, shape = claim
    return obj["shape"] == shape and colour in (None, obj["colour"])


def true_of(text, objects):
    """a text is true of a scene when its object claims pick out distinct objects of the scene and each relation
    it states holds between the centroids of the objects its two sides name"""
    claims, relations = parse(text)

    def assign(i, used):  # a distinct object for every claim (tiny scenes: brute force)
        if i == len(claims):
            return [used]
        return [m for k, o in enumerate(objects) if k not in used and matches(claims[i], o)
                for m in assign(i + 1, used + [k])]

    if not assign(0, []):
        return False
    for a, rel, b in relations:
        oa = [o for o in objects if matches(a, o)]
        ob = [o for o in objects if matches(b, o)]
        if not any(x is not y and relation_holds(x, rel, y) for x in oa for y in ob):
            return False
    return True


def test_reference_reader():
    objs = [dict(colour="red", shape="circle", _centroid=(0.4, 0.5)),
            dict(colour="blue", shape="square", _centroid=(1.6, 1.4))]
    assert true_of("a red circle and a blue square", objs)
    assert true_of("a circle and a blue square", objs)
    assert not true_of("a blue circle and a red square", objs)
    assert not true_of("a red circle, a blue square and a green star", objs)
    assert not true_of("a red circle and a red circle", objs)
    assert true_of("a red circle left of a blue square", objs) and true_of("a red circle above a blue square", objs)
    assert true_of("a blue square below a red circle", objs)
    assert not true_of("a red circle below a blue square", objs)
    assert not true_of("a blue square left of a red circle", objs)


def test_relation_captions_hold_between_centroids():
    images, captions, objects = world.make_world(200, 1, relations=True)
    checked = set()
    for img, cap, objs in zip(images, captions, objects):
        if not one_per_colour(objs):
            continue
        objs = with_centroids(img, objs)
        assert true_of(cap, objs), cap
        checked |= {r for _, r, _ in parse(cap)[1]}
    assert checked == {"left of", "above", "below"}


# ------------------------------------------------------------------ exported tests: positives true, negatives false
def _load(path):
    with open(path) as f:
        return json.load(f)


def _scene_objects(image_path, objs):
    img = np.asarray(Image.open(image_path).convert("RGB"))
    return with_centroids(img, objs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    world.export_world(root, 25, 4)
    world.export_world_relations(root, 25, 4)
    return root


def _scenes(stream, n):
    # the exported two-object scenes, in file order: every scene of the stream is kept when part="all"
    return [objs for _, (_, objs) in zip(range(n), world.binding_scenes(stream))]


def test_exported_sugarcrepe_and_binding_negatives_are_false(exported):
    scenes = _scenes(4 + world.TEST_SEED_OFFSET + 7, 25)
    folder = os.path.join(exported, "coco", "val2017")
    files = [(os.path.join(exported, "sugarcrepe", f"{s}.json"), s)
             for s in ("replace_att", "replace_obj", "swap_att", "swap_obj", "add_att", "add_obj")]
    files.append((os.path.join(exported, "binding", "concept_binding.json"), "binding"))
    for path, name in files:
        records = list(_load(path).values())
        assert len(records) >= 25, name
        for r in records:
            k = int(r["filename"].split(".")[0])
            objs = _scene_objects(os.path.join(folder, r["filename"]), scenes[k])
            assert true_of(r["caption"], objs), (name, r)
            assert not true_of(r["negative_caption"], objs), (name, r)


def test_exported_relation_negatives_are_false(exported):
    scenes = _scenes(4 + world.TEST_SEED_OFFSET + 13, 25)
    folder = os.path.join(exported, "relation")
    for sub in ("swap_rel", "replace_rel"):
        records = list(_load(os.path.join(folder, f"{sub}.json")).values())
        assert len(records) == 25
        for r in records:
            k = int(r["filename"].split(".")[0])
            objs = _scene_objects(os.path.join(folder, "images", r["filename"]), scenes[k])
            assert true_of(r["caption"], objs), (sub, r)
            assert not true_of(r["negative_caption"], objs), (sub, r)


def test_exported_zeroshot_folders_hold_their_colour(exported):
    base = os.path.join(exported, "zeroshot", "world_colour_shape")
    seen = 0
    for cls in os.listdir(base):
        colour = cls.split("_")[0]
        for f in os.listdir(os.path.join(base, cls)):
            img = np.asarray(Image.open(os.path.join(base, cls, f)).convert("RGB"))
            assert centroid(img, colour) is not None, (cls, f)
            assert all(centroid(img, c) is None for c in world.COLOURS if c != colour), (cls, f)
            seen += 1
    assert seen == 25

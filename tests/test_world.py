"""The world's options: the default world unchanged, the compositional split's held-out pairs and facts,
relation captions, and the seen/unseen and relation tests exported for evaluate.py."""
import hashlib
import json
import os

import pytest
import torch

import concepts
import data
import world
import evaluate as ev
from model import DualEncoder, WordTokenizer, model_config


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def read(path):
    with open(path) as f:
        return json.load(f)


def test_default_world_unchanged():
    # pinned from the code before the split and relation options existed (captions, objects, exported files);
    # the images follow from the same per-scene random stream
    _, caps, objs = world.make_world(64, 0)
    _, tcaps, tobjs = world.make_world(64, 0, split="test")
    assert digest([caps, objs, tcaps, tobjs]) == "397ac9025f2216a8"
    assert world.world_vocabulary() == ["red", "green", "blue", "yellow", "purple", "orange", "white", "pink", "circle",
                                       "square", "triangle", "ring", "star", "diamond", "a", "an", "and", "the",
                                       "photo", "of", "shape", "object"]
    assert world.WorldDataset(64, 0).captions == caps


def test_default_export_unchanged(tmp_path):
    root = str(tmp_path)
    world.export_world(root, 20, 3)
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert digest([files] + [read(os.path.join(root, f)) for f in files if f.endswith(".json")]) == "b4cf5238831a749f"


def test_held_out_sets_leave_every_colour_and_shape_in_training():
    colours = [c for c, _ in world.HELD_OUT_PAIRS]
    shapes = [s for _, s in world.HELD_OUT_PAIRS]
    assert sorted(shapes) == sorted(world.SHAPES) and len(set(colours)) == len(colours)  # one colour per shape
    # the converse of a held-out fact is a training fact
    for a, rel, b in world.HELD_OUT_FACTS:
        assert (b, rel, a) not in world.HELD_OUT_FACTS


@pytest.fixture(scope="module")
def comp_world():
    return world.WorldDataset(3000, 0, world_split="compositional", relations=True)


def test_compositional_training_scenes_hold_nothing_held_out(comp_world):
    pairs, shapes_in_facts = set(), set()
    for cap, objs in zip(comp_world.captions, comp_world.objects):
        assert not world.held_out(objs) and not world.names_held_out(cap)
        pairs |= {(o["colour"], o["shape"]) for o in objs}
        shapes_in_facts |= world.facts(objs)
    assert pairs == {(c, s) for c in world.COLOURS for s in world.SHAPES} - world.HELD_OUT_PAIRS  # 42 pairs, all used
    assert not shapes_in_facts & world.HELD_OUT_FACTS
    assert {(b, r, a) for a, r, b in world.HELD_OUT_FACTS} <= shapes_in_facts  # the converses are trained on


def test_relation_captions_state_a_true_relation_and_chunk_to_the_objects(comp_world):
    for cap, objs in zip(comp_world.captions[:400], comp_world.objects[:400]):
        by_phrase = {world.object_phrase(o): o for o in objs}
        rel = next(r for r in world.RELATIONS if f" {r} " in cap)
        left, right = cap.rsplit(f" {rel} ", 1)
        a = next(o for p, o in by_phrase.items() if left.endswith(p))
        assert rel in world.true_relations(a, by_phrase[right])
        # the chunker reads the relation words as none of the concepts: one concept per object
        assert sorted(concepts.extract_concepts(cap)) == sorted(by_phrase)


def test_names_held_out():
    assert world.names_held_out("a blue square and a red circle")
    assert not world.names_held_out("a red square and a blue circle")
    assert world.names_held_out("a white circle left of a pink square")
    assert not world.names_held_out("a white square left of a pink circle")  # the converse is a training fact
    assert world.names_held_out("a blue ring below a red triangle")  # = triangle above ring
    assert not world.names_held_out("a blue ring above a red triangle")


def test_clean_negatives_drop_held_out_text():
    vocab = set(world.world_vocabulary(True))
    captions = ["a blue circle left of a red square", "a green star and a white ring above a pink diamond"]
    negs = [concepts.hard_negatives(c, 4, 0, vocab) for c in captions]
    negs[0][1] = "a red circle left of a blue square"  # names a held-out pair and a held-out fact
    clean, keep = world.clean_negatives(captions, negs, 4, 0, vocab)
    assert keep == [0, 1] and clean[1] == negs[1]
    assert len(clean[0]) == 4 and not any(world.names_held_out(n) for n in clean[0])


def _records(root, sub):
    return list(read(os.path.join(root, f"{sub}.json")).values())


def test_export_parts_seen_and_unseen(tmp_path):
    for part in ("seen", "unseen"):
        root = str(tmp_path / part)
        world.export_world(root, 40, 1, part=part, relations=True)
        rel = world.export_world_relations(root, 40, 1, part=part)
        for sub in ("replace_att", "replace_obj", "swap_att", "swap_obj", "add_att", "add_obj"):
            recs = _records(os.path.join(root, "sugarcrepe"), sub)
            assert recs
            for r in recs:
                if part == "seen":
                    assert not world.names_held_out(r["caption"]) and not world.names_held_out(r["negative_caption"])
                elif sub != "add_att":  # add_att's positive leaves one object bare
                    assert world.names_held_out(r["caption"])
        for r in _records(os.path.join(root, "binding"), "concept_binding"):
            assert world.names_held_out(r["caption"]) == (part == "unseen")
        # zero-shot: the held-out pairs' folders hold images only in the unseen part
        zs = os.path.join(root, "zeroshot", "world_colour_shape")
        for c, s in world.HELD_OUT_PAIRS:
            assert bool(os.listdir(os.path.join(zs, f"{c}_{s}"))) == (part == "unseen")
        # relations: swaps and replacements are false, unseen positives state a held-out fact
        for sub in ("swap_rel", "replace_rel"):
            recs = _records(rel, sub)
            assert len(recs) >= 30
            for r in recs:
                assert world.names_held_out(r["caption"]) == (part == "unseen")
                assert r["caption"] != r["negative_caption"]


def test_relation_negatives_are_false(tmp_path):
    rel = world.export_world_relations(str(tmp_path), 30, 2)
    scenes = [objs for _, (_, objs) in zip(range(30), world.binding_scenes(2 + world.TEST_SEED_OFFSET + 13))]
    for sub in ("swap_rel", "replace_rel"):
        for r, objs in zip(_records(rel, sub), scenes):
            by_phrase = {world.object_phrase(o): o for o in objs}
            for text, truth in ((r["caption"], True), (r["negative_caption"], False)):
                rel_word = next(x for x in world.RELATIONS if f" {x} " in text)
                a, b = text.split(f" {rel_word} ")
                assert (rel_word in world.true_relations(by_phrase[a], by_phrase[b])) == truth


def test_evaluate_world_reports_seen_unseen_and_relations():
    tok = WordTokenizer(world.world_vocabulary(True), 16)
    torch.manual_seed(0)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size, depth=1, text_depth=1))
    res = ev.evaluate_world(model, tok, seed=3, n_scenes=10, world_split="compositional", relations=True)
    names = ["i2t_R@1", "zeroshot_shape", "concept_binding", "swap_att", "add_obj", "swap_rel", "replace_rel"]
    for part in ("seen", "unseen"):
        assert all(0.0 <= res[f"{part}/{n}"] <= 1.0 for n in names)
    assert len(res) == 2 * 17
    # the default evaluation keeps its names
    plain = ev.evaluate_world(model, tok, seed=3, n_scenes=10)
    assert "concept_binding" in plain and "swap_rel" not in plain and len(plain) == 15

"""Relation negatives (concepts.swap_relation_args, concepts.replace_relation; METHOD.md §3.8): the hand-judged
gold set, unit cases, the world's relation captions, and the opt-in slots of hard_negatives.
Run: python -m pytest -q tests/test_relation_negatives.py   (CPU only, a few seconds)"""

import json
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import concepts as C  # noqa: E402
import world  # noqa: E402


def sent(caption):
    return C._Sentence(caption)


def rng(seed=0):
    return random.Random(seed)


def swap(caption, seed=0, vocab=None):
    return C.swap_relation_args(sent(caption), rng(seed), vocab)


def replace(caption, seed=0, vocab=None):
    return C.replace_relation(sent(caption), rng(seed), vocab)


def load_gold():
    with open(C.RELATIONS_GOLD_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- the gold set


def test_gold_labels_are_the_codes_output():
    # a change that alters a negative fails here: regenerate, judge the new strings, relabel
    for r in load_gold():
        got = [[t, n] for t, n in C.relation_negatives(r["caption"])]
        assert got == [[x["type"], x["negative"]] for x in r["negatives"]], r["caption"]


def test_gold_precision_floors():
    gold = load_gold()
    assert len(gold) >= 60
    s = C.score_relation_negatives(gold)
    print(s)
    assert s["stale"] == 0
    # measured (textblob-pattern tagger): 49 of 61 captions with a relation, 94 negatives,
    # grammatical 0.989, false 0.957, both 0.947
    assert s["with_relation"] >= 45 and s["negatives"] >= 85
    assert s["grammatical"] >= 0.95 and s["false"] >= 0.92 and s["both"] >= 0.90


def test_score_cli(capsys):
    C.main(["score", "--relations"])
    out = capsys.readouterr().out
    assert "relation negatives" in out and "both" in out and "stale" not in out


# ----------------------------------------------------------------------------- finding relations


def found(caption):
    s = sent(caption)
    return [(" ".join(s.words[slice(*r.left)]), " ".join(s.words[slice(*r.rel)]), " ".join(s.words[slice(*r.right)]))
            for r in C._relations(s)]


def test_find_relations():
    assert found("a red circle left of a blue square") == [("a red circle", "left of", "a blue square")]
    assert found("a man is riding a horse") == [("a man", "riding", "a horse")]
    # multiword relations, across a chunk the tagger makes of "front" and inside a chunk ("a car right")
    assert found("A cat is sitting in front of a tv.") == [("a cat", "in front of", "a tv")]
    assert found("a cat sitting on top of a laptop") == [("a cat", "on top of", "a laptop")]
    assert found("a car right of a truck") == [("a car", "right of", "a truck")]
    assert found("a man standing to the left of a woman") == [("a man", "to the left of", "a woman")]
    # the subject keeps its "in ..." and the quantity's "of ..."
    assert found("a man in a red shirt holding a bat") == [("a man in a red shirt", "holding", "a bat")]
    assert found("a cup of coffee on a table") == [("a cup of coffee", "on", "a table")]
    assert found("a giraffe eating leaves from a tree") == []
    assert found("a pizza with pepperoni and cheese") == []


# ----------------------------------------------------------------------------- swap_relation_args


def test_swap_relation_args():
    assert swap("a red circle left of a blue square") == "a blue square left of a red circle"
    assert swap("a man riding a horse") == "a horse riding a man"
    assert swap("A cat sitting on top of a laptop.") == "A laptop sitting on top of a cat."  # capital moves
    assert swap("An apple on a table") == "A table on an apple"
    assert swap("two dogs are chasing a cat") == "a cat is chasing two dogs"  # is/are agrees
    assert swap("a dog is chasing two cats") == "two cats are chasing a dog"
    assert swap("a green star and a red circle left of a blue square") == \
        "a green star and a blue square left of a red circle"


def test_swap_skips_symmetric_and_equal_phrases_and_no_relation():
    for rel in ("next to", "near", "beside", "close to"):
        for seed in range(5):
            assert swap(f"a plate of food {rel} a cup of coffee", seed) is None
    assert swap("a dog next to a dog") is None
    assert swap("a red square above a red square") is None
    assert swap("a dog and a cat") is None
    assert swap("It is raining.") is None


# ----------------------------------------------------------------------------- replace_relation


def test_replace_relation_converse_first():
    assert replace("a cat on a mat") == "a cat under a mat"
    assert replace("a lamp beneath a shelf") == "a lamp on top of a shelf"
    assert replace("a clock above a door") == "a clock below a door"
    assert replace("a car right of a truck") == "a car left of a truck"
    assert replace("A cow standing behind a fence.") == "A cow standing in front of a fence."
    assert replace("a cat inside a box") == "a cat outside a box"


def test_replace_relation_never_a_synonym():
    down = {"under", "below", "beneath", "underneath"}
    for cap in ("a lamp below a shelf", "a dog under a table", "a cat beneath a car"):
        for seed in range(10):
            new = replace(cap, seed).split()
            assert not down & set(new), new
    for seed in range(30):  # symmetric: a vertical relation only, never another "next to" nor "left of"
        new = replace("a plate next to a cup", seed)
        assert new in ("a plate on a cup", "a plate under a cup"), new
        new = replace("a woman holding an umbrella", seed)
        assert "carrying" not in new and "holding" not in new and "grabbing" not in new


def test_replace_relation_vocab():
    vocab = set(world.world_vocabulary(True))
    assert replace("a red circle above a blue square", vocab=vocab) == "a red circle below a blue square"
    assert replace("a red circle below a blue square", vocab=vocab) == "a red circle above a blue square"
    outs = {replace("a red circle left of a blue square", s, vocab) for s in range(20)}
    assert outs == {"a red circle above a blue square", "a red circle below a blue square"}
    assert replace("a man riding a horse", vocab=vocab) is None  # no action word in vocab: nothing
    assert replace("a cat on a mat", vocab=vocab) == "a cat below a mat"  # the first in-vocab spelling
    assert replace("a cat on a mat", vocab={"a", "beneath"}) == "a cat beneath a mat"
    assert {replace("a plate next to a cup", s, vocab) for s in range(20)} == {"a plate above a cup", "a plate below a cup"}
    assert replace("a cat on a mat", vocab={"left", "of"}) == "a cat left of a mat"  # no converse word: another group
    assert replace("It is raining.") is None


def test_relation_lexicon():
    for g in C._REL_GROUPS:
        if g.converse is not None:
            assert C._REL_GROUPS[g.converse].converse is not None
            assert C._REL_GROUPS[C._REL_GROUPS[g.converse].converse] == g
        assert not (g.symmetric and g.converse is not None)
    sym = {s for g in C._REL_GROUPS if g.symmetric for s in g.spellings}
    assert {"next to", "near", "beside"} <= sym
    assert {"swap_relation_args", "replace_relation"} <= set(C.NEGATIVE_TYPES)


# ----------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def rel_world():
    return world.WorldDataset(300, 0, world_split="compositional", relations=True)


def stated(text, objs):
    """(relation, a, b) of "... a <relation> b" in a world text, mapped to the scene's objects by phrase"""
    by_phrase = {world.object_phrase(o): o for o in objs}
    rel = next(r for r in world.RELATIONS if f" {r} " in text)
    left, right = text.rsplit(f" {rel} ", 1)
    a = next(o for p, o in by_phrase.items() if left.endswith(p))
    return rel, a, by_phrase[right]


def test_world_relation_negatives_are_false(rel_world):
    vocab = set(world.world_vocabulary(True))
    swapped_false = replaced_false = 0
    n = len(rel_world.captions)
    for i, (cap, objs) in enumerate(zip(rel_world.captions, rel_world.objects)):
        s = sent(cap)
        neg = C.swap_relation_args(s, random.Random(i), vocab)
        assert neg is not None and neg != cap and set(neg.replace(",", " ").split()) <= vocab
        rel, a, b = stated(neg, objs)
        swapped_false += rel not in world.true_relations(a, b)
        neg = C.replace_relation(s, random.Random(i), vocab)
        assert neg is not None and neg != cap and set(neg.replace(",", " ").split()) <= vocab
        rel, a, b = stated(neg, objs)
        replaced_false += rel not in world.true_relations(a, b)
    print(f"world: swap false {swapped_false}/{n}, replace false {replaced_false}/{n}")
    assert swapped_false == n  # the grid's relations are strict: the swapped statement never holds
    # above <-> below is always false; "left of" -> above / below is true for a diagonal pair
    # (measured 281 / 300 = 0.937 here; 282 / 300 with random.Random(0) for every caption)
    assert replaced_false >= 0.9 * n


def test_world_hard_negatives_with_relations(rel_world):
    vocab = set(world.world_vocabulary(True))
    for cap in rel_world.captions[:100]:
        negs = C.hard_negatives(cap, 4, 0, vocab, relations=True)
        assert len(negs) == 4 and C.hard_negatives(cap, 4, 0, vocab, relations=True) == negs  # deterministic
        s = sent(cap)
        assert negs[1] in {C.swap_relation_args(s, random.Random(x), vocab) for x in range(5)}  # slot 2


# ----------------------------------------------------------------------------- slots and the default


def test_default_negatives_unchanged_and_opt_in():
    gold = [r["caption"] for r in load_gold()]
    no_rel = [c for c in gold if not C._relations(sent(c))]
    assert no_rel
    for c in no_rel:  # without a relation the opt-in changes nothing
        assert C.hard_negatives(c, 4, 0, relations=True) == C.hard_negatives(c, 4, 0)
    assert C.RELATION_SLOT_CHAINS[1][0] == "swap_relation_args" and C.RELATION_SLOT_CHAINS[3][0] == "replace_relation"
    assert C.RELATION_SLOT_CHAINS[1][1:] == C.SLOT_CHAINS[1] and C.RELATION_SLOT_CHAINS[3][1:] == C.SLOT_CHAINS[3]
    assert C.RELATION_SLOT_CHAINS[0] == C.SLOT_CHAINS[0] and C.RELATION_SLOT_CHAINS[2] == C.SLOT_CHAINS[2]
    cap = "A woman holding an umbrella."
    negs = C.hard_negatives(cap, 4, 0, relations=True)
    assert negs[1] == "An umbrella holding a woman."
    assert negs[3] in {C.replace_relation(sent(cap), random.Random(x)) for x in range(50)}
    assert negs != C.hard_negatives(cap, 4, 0)


def test_negatives_for_passes_relations():
    caps = ["A woman holding an umbrella.", "A cat on a mat next to a dog."]
    quiet = lambda *a: None  # noqa: E731
    negs, keep = C.negatives_for(caps, 4, 0, log=quiet, relations=True)
    assert negs == [C.hard_negatives(caps[i], 4, 0, relations=True) for i in keep]
    negs, keep = C.negatives_for(caps, 4, 0, log=quiet)
    assert negs == [C.hard_negatives(caps[i], 4, 0) for i in keep]


def test_default_negatives_pinned(rel_world):
    # relations=False (the default) must keep every existing run's negatives: a digest of the default output on
    # the gold captions and 100 world relation captions, computed with the code before relation negatives
    # (git show 8d8974b:concepts.py) and equal to it
    import hashlib
    vocab = set(world.world_vocabulary(True))
    negs = [C.hard_negatives(r["caption"], 4, 0) for r in load_gold()] + \
        [C.hard_negatives(c, 4, 0, vocab) for c in rel_world.captions[:100]]
    assert hashlib.sha256(json.dumps(negs).encode()).hexdigest()[:16] == "e059bd3a86bf0735"

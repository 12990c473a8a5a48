"""--relation_concepts and --concept_negatives (METHOD.md §2.7): the "subject relation object" phrase of a caption
as a concept, its swapped / replaced forms as negative concepts, on the world (checked against the scene) and
on real-style captions, and what build_data hands to the loss."""
import pytest

import concepts
import train
import world
from model import model_config


@pytest.fixture(scope="module")
def comp_world():
    return world.WorldDataset(600, 0, world_split="compositional", relations=True)


def test_real_captions():
    caps = ["A man riding a horse on a beach", "two dogs playing with a frisbee", "a bowl of fruit", "a cat next to a dog"]
    phrases, negs = concepts.relation_concepts(caps)
    assert phrases[0] == ["a man riding a horse", "a horse on a beach"]  # lower case, like every concept
    assert "a horse riding a man" in negs[0] and "a beach on a horse" in negs[0]
    assert phrases[1] == ["two dogs playing with a frisbee"] and "a frisbee playing with two dogs" in negs[1]
    assert phrases[2] == [] and negs[2] == []  # no relation: nothing added
    assert phrases[3] == ["a cat next to a dog"]
    assert "a dog next to a cat" not in negs[3]  # symmetric: never swapped (its replacement "on"/"under" stays)
    assert negs[3] and all(" next to " not in n for n in negs[3])


def test_world_phrase_is_the_stated_relation_and_the_swap_is_false(comp_world):
    vocab = set(world.world_vocabulary(True))
    caps, objs = comp_world.captions[:300], comp_world.objects[:300]
    phrases, negs = concepts.relation_concepts(caps, 0, vocab)
    swapped_false = replaced = replaced_false = 0
    for cap, os_, ps, ns in zip(caps, objs, phrases, negs):
        by_phrase = {world.object_phrase(o): o for o in os_}
        rel = next(r for r in world.RELATIONS if f" {r} " in cap)
        assert len(ps) == 1 and cap.endswith(ps[0]) and f" {rel} " in ps[0]  # the caption's last phrase, whole
        assert len(ns) == 2 and all(not concepts._canon(n) == concepts._canon(ps[0]) for n in ns)
        for n in ns:
            r = next(r for r in world.RELATIONS if f" {r} " in n)
            a, b = (by_phrase[p] for p in n.split(f" {r} "))
            holds = r in world.true_relations(a, b)
            if n.startswith(ps[0].split(f" {rel} ")[0]):  # same subject: the relation was replaced
                replaced += 1
                replaced_false += not holds
            else:
                swapped_false += not holds
                assert not holds
    assert swapped_false == 300
    # "left of" has no converse in the world's words, so it becomes "above"/"below": true for a diagonal pair
    assert replaced == 300 and replaced_false / replaced >= 0.9


def test_build_data_adds_relation_concepts_and_clean_negative_concepts():
    cfg = train.Config(loss="c2lip", world_split="compositional", relations=True, world_scenes=400,
                       relation_concepts=True, concept_negatives=True)
    dataset, tok = train.build_data(cfg, model_config("tiny"), log=lambda *a: None)
    n_neg = 0
    for i in range(len(dataset)):
        item = dataset[i]
        cap, cs, negs = item["caption"], item["concepts"], item["concept_negatives"]
        rel = [c for c in cs if any(f" {r} " in c for r in world.RELATIONS)]
        assert len(rel) == 1 and cap.endswith(rel[0]) and len(cs) == len(concepts.extract_concepts(cap)) + 1
        assert not any(world.names_held_out(n) for n in negs)  # held-out facts stay out of every training text
        n_neg += len(negs)
    assert n_neg >= len(dataset)  # some dropped for naming a held-out fact, most kept
    assert train.text_groups(cfg.loss, cfg.concept_negatives) == ("concepts", "concept_negatives")


def test_each_flag_alone():
    caps = ["A man riding a horse on a beach", "a bowl of fruit"]
    both, alone = concepts.relation_concepts(caps), concepts.relation_concepts(caps, negatives=False)
    assert alone[0] == both[0] and alone[1] == [[], []] and both[1][0]  # phrases only: no negative is made
    base = lambda: {"concepts": [concepts.extract_concepts(c) for c in caps]}
    only_rel, only_neg = base(), base()
    concepts.add_relation_concepts(only_rel, caps, negatives=False, log=lambda *a: None)
    concepts.add_relation_concepts(only_neg, caps, phrases=False, drop=lambda n: "beach" in n, log=lambda *a: None)
    assert set(only_rel) == {"concepts"} and only_rel["concepts"][0] == base()["concepts"][0] + both[0][0]
    assert only_neg["concepts"] == base()["concepts"]
    assert only_neg["concept_negatives"][0] == [n for n in both[1][0] if "beach" not in n] != both[1][0]


def test_flags_need_a_concept_loss(tmp_path):
    import runtime
    with pytest.raises(runtime.UsageError, match="--concept_negatives"):
        runtime.check_config(train.Config(loss="degla", concept_negatives=True), 1, train.LOSSES)


def test_a_short_run_trains_with_both(tmp_path):
    cfg = train.Config(loss="c2lip", world_split="compositional", relations=True, world_scenes=64, batch_size=16,
                       steps=2, warmup=1, relation_concepts=True, concept_negatives=True, eval=False,
                       out_dir=str(tmp_path / "run"), log_every=1)
    train.main(cfg)
    import json
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "npc" in r] == [1, 2] and all(r["npc"] > 0 for r in rows if "npc" in r)


def test_a_chunk_trimmed_as_a_left_phrase_is_trimmed_as_a_right_one_too():
    # the tagger folds "right" (of "right of") and "reading" into the chunk before; that chunk is also the
    # right-hand phrase of the relation before it
    phrases, negs = concepts.relation_concepts(["a dog behind a car right of a truck", "a dog under an old man reading a book"])
    assert phrases == [["a dog behind a car", "a car right of a truck"], ["a dog under an old man", "an old man reading a book"]]
    assert "a car behind a dog" in negs[0] and "an old man under a dog" in negs[1]
    assert concepts.hard_negatives("a dog behind a car right of a truck", 4, 0, None, True)[1] == "a dog behind a truck right of a car"


def test_relation_concepts_are_lower_case_after_the_first_clause():
    phrases, negs = concepts.relation_concepts(["The dog is under the table, and a cat is on the chair"])
    assert phrases == [["the dog is under the table", "a cat is on the chair"]]
    assert all(n[0].islower() for n in negs[0])


def test_relation_flags_are_checked():
    import runtime
    with pytest.raises(runtime.UsageError, match="--relation_negatives adds to the hard negatives"):
        runtime.check_config(train.Config(loss="c2lip", relation_negatives=True, relations=True), 1, train.LOSSES)
    with pytest.raises(runtime.UsageError, match="add it"):  # the world without --relations has no relation to read
        runtime.check_config(train.Config(loss="c2lip", relation_concepts=True), 1, train.LOSSES)
    assert {"relation_negatives", "relation_concepts", "concept_negatives"} <= set(runtime.RESUME_KEYS)

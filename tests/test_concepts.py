"""Tests for concepts.py: noun-phrase concepts, the gold set, the cache and negatives files, hard negatives.
Run: python -m pytest -q tests/test_concepts.py   (CPU only, a few seconds)"""

import csv
import itertools
import json
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import concepts as C  # noqa: E402

COLOURS = "red green blue yellow purple orange white pink".split()
SHAPES = "circle square triangle ring star diamond".split()
OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES]  # the 48 colour-shape pairs of the world


def canon_set(xs):
    return {" ".join(x.lower().split()) for x in xs}


def world_caption(objs):
    phrases = [f"a {o}" for o in objs]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def world_cases():
    """Every ordered pair of distinct objects (2,256 short captions), plus each object in 10 seeded
    3-object and 10 seeded 4-object captions; single objects too."""
    cases = [[o] for o in OBJECTS] + [list(p) for p in itertools.permutations(OBJECTS, 2)]
    rng = random.Random(0)
    for o in OBJECTS:
        for n in (3, 4):
            for _ in range(10):
                objs = [o] + rng.sample([x for x in OBJECTS if x != o], n - 1)
                rng.shuffle(objs)
                cases.append(objs)
    return cases


# ----------------------------------------------------------------------------- tokenizing, tagging


def test_tokenize():
    assert C.tokenize("The dog's bowl isn't 3.5 cm-wide, is it?") == \
        ["The", "dog", "'s", "bowl", "is", "n't", "3.5", "cm-wide", ",", "is", "it", "?"]
    assert C.tokenize("") == []


def test_tagger_runs_and_is_named():
    assert C.tagger_name() in ("nltk-perceptron", "textblob-pattern")
    toks = C.tokenize("A woman wearing a red dress.")
    tagged = C.tag(toks)
    assert [w for w, _ in tagged] == toks
    assert [t for _, t in tagged][:2] == ["DT", "NN"]


@pytest.mark.skipif(C.tagger_name() != "textblob-pattern", reason="only for the lexicon fallback")
def test_direct_lexicon_tagging_matches_pattern_tagger():
    from textblob.en.taggers import PatternTagger
    toks = C.tokenize("A man riding a wave on top of a surfboard, near the dog's bowl.")
    ours = C._load_tagger()[1](toks)
    theirs = [t for _, t in PatternTagger().tag(" ".join(toks), tokenize=False)]
    assert ours == theirs


def test_context_fixes():
    # base verbs after a determiner or adjective are nouns; "a <noun> <plural>": the plural is the verb
    assert C.extract_concepts("A large brown bear catches a fish.") == ["A large brown bear", "a fish"]
    assert C.extract_concepts("A red bus drives down the road.") == ["A red bus", "the road"]
    # a plural head after a noun is kept when the phrase does not open with a/an
    assert C.extract_concepts("Surfers ride the ocean waves.")[-1] == "the ocean waves"


def test_plural_subject_then_bare_verb_at_the_start():
    # "<numeral|quantifier|the> <plural> <verb>": the lexicon tags the verb as a noun, the chunk swallowed it
    assert C.extract_concepts("Two people ski down a slope.") == ["Two people", "a slope"]
    assert C.extract_concepts("The boys surf on big waves.") == ["The boys", "big waves"]
    assert C.extract_concepts("Several surfers paddle out into the ocean waves.") == \
        ["Several surfers", "the ocean waves"]
    assert C.extract_concepts("Two cats nap.") == ["Two cats"]
    assert C.extract_concepts("One man rides a horse.") == ["One man", "a horse"]
    # a -s word after "<numeral> <noun>" is the plural head, not a verb
    assert C.extract_concepts("Three teddy bears sitting on a shelf.") == ["Three teddy bears", "a shelf"]
    # compounds stay whole: a known attributive plural, a singular noun then a verb, plural heads
    assert C.extract_concepts("The sports car on the road.") == ["The sports car", "the road"]
    assert C.extract_concepts("The tennis players on a court.") == ["The tennis players", "a court"]
    assert C.extract_concepts("The dogs bowl is empty.") == ["The dogs bowl"]


def _random_tag_sequences(n, seed=0):
    """tag sequences weighted towards noun-phrase tags, so that every branch of GRAMMAR is exercised"""
    rng = random.Random(seed)
    common = ["DT", "PDT", "PRP$", "CD", "RB", "RBR", "JJ", "JJR", "JJS", "CC", "VBN", "VBG", "NN", "NNS",
              "NNP", "NNPS", "POS", "IN", "VBZ", "VBP", "VB", ",", ".", "TO", "PRP"]
    return [[rng.choice(common) for _ in range(rng.randint(0, 25))] for _ in range(n)]


def test_fast_chunker_matches_nltk_regexp_parser():
    # the reference: nltk.RegexpParser with GRAMMAR, spans read off its tree
    import nltk
    parser = nltk.RegexpParser(C.GRAMMAR)

    def reference_spans(tags):
        if not tags:
            return []
        spans, i = [], 0
        for node in parser.parse([(str(k), t) for k, t in enumerate(tags)]):
            if isinstance(node, nltk.Tree):
                spans.append((i, i + len(node)))
                i += len(node)
            else:
                i += 1
        return spans

    captions = [world_caption(objs) for objs in world_cases()[::3]] + [r["caption"] for r in load_gold()]
    sequences = [[t for _, t in C.tag(C.tokenize(c))] for c in captions] + _random_tag_sequences(3000)
    mismatches = [tags for tags in sequences if C._chunk_spans(tags) != reference_spans(tags)]
    assert not mismatches, mismatches[:3]
    assert sum(len(C._chunk_spans(t)) for t in sequences) > 5000  # many chunks were compared, not just empties


# ----------------------------------------------------------------------------- concept rules


def test_method_examples():
    assert C.extract_concepts("A woman wearing a red dress sits next to a fireplace at a university.") == \
        ["A woman", "a red dress", "a fireplace"]
    assert C.extract_concepts("It is raining.") == ["It is raining."]


def test_fallback_is_the_stripped_caption():
    assert C.extract_concepts("  He is smiling.  ") == ["He is smiling."]
    assert C.extract_concepts("Students walk across campus at the university.") == ["Students"]
    # only stoplisted phrases: nothing is left, so the whole caption comes back
    assert C.extract_concepts("The street.") == ["The street."]


def test_stoplist_boilerplate_and_frames():
    assert C.extract_concepts("A bus on a city street near two schools.") == ["A bus"]  # plural matched
    assert C.extract_concepts("Vintage car parked on the street, news photo.") == ["Vintage car"]
    assert C.extract_concepts("Portrait of a young woman [stock photo]") == ["a young woman"]
    assert C.extract_concepts("A photo of a brown horse in a field.") == ["a brown horse", "a field"]
    # a frame noun not followed by "of" is a thing in the picture
    assert C.extract_concepts("A man holding a picture on a wall.") == ["A man", "a picture", "a wall"]


def test_dedupe_casing_order_whitespace():
    assert C.extract_concepts("A Red Ball, a red  ball and a blue ball.") == ["A Red Ball", "a blue ball"]
    assert C.extract_concepts("a   big\tdog near a cat") == ["a big dog", "a cat"]
    # order follows the caption, not the alphabet or the length
    assert C.extract_concepts("The zebra and an apple.") == ["The zebra", "an apple"]


def test_possessives_are_one_concept():
    assert C.extract_concepts("The man's hat and the woman's scarf are red.") == ["The man's hat", "the woman's scarf"]
    assert C.extract_concepts("A cat on his dog's bed.") == ["A cat", "his dog's bed"]


def test_x_of_y():
    # partitive / container nouns join their complement, other "X of Y" give two concepts
    assert C.extract_concepts("A herd of elephants near a cup of coffee.") == ["A herd of elephants", "a cup of coffee"]
    assert C.extract_concepts("The front of a building.") == ["The front", "a building"]
    assert C.extract_concepts("A photo of a group of people.") == ["a group of people"]


def test_adjective_coordination_and_adverbs():
    assert C.extract_concepts("A black and white cat.") == ["A black and white cat"]
    assert C.extract_concepts("A very large dog on the beach.") == ["A very large dog", "the beach"]
    assert C.extract_concepts("A smiling woman holds her baby.") == ["A smiling woman", "her baby"]
    assert C.extract_concepts("People riding bikes.") == ["People", "bikes"]  # no determiner: no participle


def test_batch_matches_single():
    caps = ["A dog.", "It is raining.", "A red circle and a blue square"]
    assert C.extract_concepts_batch(caps) == [C.extract_concepts(c) for c in caps]


def test_world_captions_one_concept_per_object():
    cases = world_cases()
    ok = sum(C.extract_concepts(world_caption(objs)) == [f"a {o}" for o in objs] for objs in cases)
    assert ok == len(cases), f"exact-set agreement {ok}/{len(cases)} = {ok / len(cases):.4f}"
    assert C.extract_concepts("a blue circle, a purple circle and a purple diamond") == \
        ["a blue circle", "a purple circle", "a purple diamond"]


# ----------------------------------------------------------------------------- gold set


def load_gold():
    with open(C.GOLD_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_gold_set_shape():
    gold = load_gold()
    assert len(gold) >= 40
    for r in gold:
        assert isinstance(r["caption"], str) and r["concepts"] and all(isinstance(c, str) for c in r["concepts"])


def test_score_chunker_arithmetic():
    recs = [{"caption": "A dog and a cat.", "concepts": ["a dog", "a cat", "a bird"]},
            {"caption": "It is raining.", "concepts": ["a cloud"]}]
    s = C.score_chunker(recs)  # predicted {a dog, a cat} and {it is raining.}: tp 2 of 3 predicted, 4 gold
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)) and s["exact"] == 0.0


def test_gold_precision_recall_floor():
    # measured with textblob-pattern on 52 captions: precision 0.992, recall 0.978, f1 0.985, exact 0.942
    # (0.977 / 0.963 before _opening_fix, 0.954 / 0.925 before the other _context_fixes rules). floors a few
    # points below the measurement; the remaining misses are tagger errors ("top" as JJ, "reading" as NN).
    s = C.score_chunker(load_gold())
    assert s["precision"] >= 0.94, s
    assert s["recall"] >= 0.92, s


# ----------------------------------------------------------------------------- concept cache


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


CAPS = ["A dog's bowl on the floor.", "It is raining.", "a red circle and a blue square", "Two cats, one chair."]


@pytest.mark.parametrize("fmt,workers", [("jsonl", 1), ("csv", 2)])
def test_concept_cache_round_trip(tmp_path, capsys, fmt, workers):
    data = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(data, [{"caption": c, "image_id": i} for i, c in enumerate(CAPS)])
    else:
        with open(data, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows([[f"img{i}.jpg", c] for i, c in enumerate(CAPS)])
    out = tmp_path / "cache.jsonl"
    C.main(["extract", f"--data={data}", f"--out={out}", f"--workers={workers}"])
    assert "captions/s" in capsys.readouterr().out
    lines = [json.loads(line) for line in open(out)]
    assert [r["i"] for r in lines] == list(range(len(CAPS))) and [r["caption"] for r in lines] == CAPS
    assert C.load_concept_cache(str(out), CAPS) == C.extract_concepts_batch(CAPS)


def test_concept_cache_mismatches(tmp_path):
    path = tmp_path / "cache.jsonl"
    C.write_concept_cache(str(path), CAPS, C.extract_concepts_batch(CAPS))
    changed = list(CAPS)
    changed[2] = "a red circle and a green square"
    with pytest.raises(ValueError, match=r"cache\.jsonl:3: cached caption"):
        C.load_concept_cache(str(path), changed)
    with pytest.raises(ValueError, match=r"4 records but the data has 5"):
        C.load_concept_cache(str(path), CAPS + ["extra"])
    with pytest.raises(ValueError, match=r"cache\.jsonl:4: more records"):
        C.load_concept_cache(str(path), CAPS[:3])
    lines = open(path).read().splitlines()
    lines[1] = "{not json"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cache\.jsonl:2: bad JSON"):
        C.load_concept_cache(str(path), CAPS)


def test_caption_source_errors(tmp_path):
    # concepts.py reads caption files with data.read_rows, the reader training uses
    path = tmp_path / "data.jsonl"
    path.write_text('{"caption": "a dog"}\n{"text": "a cat"}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl:2: record needs keys 'caption'"):
        C._read_source(str(path), "caption", str(tmp_path / "out.jsonl"), 1)
    with pytest.raises(ValueError, match=r"data\.jsonl:1: record needs keys 'text'"):
        C._read_source(str(path), "text", str(tmp_path / "out.jsonl"), 1)
    path.write_text('{"caption": "a dog"}\n\n{"caption": 3}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl:3: caption is not a string"):
        C._read_source(str(path), "caption", str(tmp_path / "out.jsonl"), 1)
    path.write_text('{"caption": "a dog"}\n\n{"caption": "a cat"}\n')  # blank lines are skipped
    records, keys = C._read_source(str(path), "caption", str(tmp_path / "out.jsonl"), 1)
    assert [r["caption"] for r in records] == ["a dog", "a cat"] and keys is None


# ----------------------------------------------------------------------------- hard negatives: each type


def sent(caption):
    return C._Sentence(caption)


def rng():
    return random.Random(0)


def test_reshuffle():
    cap = "A black dog chases a white cat."
    for seed in range(5):
        out = C.reshuffle(sent(cap), random.Random(seed))
        assert out.endswith(".") and out[0].isupper() and out != cap
        assert sorted(out[:-1].lower().split()) == sorted(cap[:-1].lower().split())
    assert C.reshuffle(sent("Dog cat."), rng()) == "Cat dog."
    assert C.reshuffle(sent("Dog."), rng()) is None  # fewer than two distinct words
    assert C.reshuffle(sent("dog dog dog"), rng()) is None


def test_swap_nouns():
    assert C.swap_nouns(sent("A black dog chases a white cat."), rng()) == "A black cat chases a white dog."
    assert C.swap_nouns(sent("A dog runs."), rng()) is None  # one noun
    # in a plain list, identical modifiers would make the swap say the same thing
    assert C.swap_nouns(sent("a red circle and a red square"), rng()) is None
    assert C.swap_nouns(sent("a red circle and a blue square"), rng()) == "a red square and a blue circle"
    assert C.swap_nouns(sent("A dog chases an elephant."), rng()) == "An elephant chases a dog."  # articles agree
    # a pair the caption already had is left as written ("a orange" stays)
    assert C.replace_nouns(sent("a orange circle"), rng(), vocab={"star"}) == "a orange star"


def test_swap_adjectives():
    assert C.swap_adjectives(sent("gray cat on a wooden bench"), rng()) == "wooden cat on a gray bench"
    assert C.swap_adjectives(sent("A gray cat on a bench."), rng()) == "A cat on a gray bench."  # one adjective moves
    assert C.swap_adjectives(sent("Gray cats on a bench."), rng()) == "Cats on a gray bench."
    assert C.swap_adjectives(sent("A cat on a bench."), rng()) is None  # no adjective
    assert C.swap_adjectives(sent("a red circle and a blue circle"), rng()) is None  # same thing said
    assert C.swap_adjectives(sent("a red circle and a blue square"), rng()) == "a blue circle and a red square"


def test_replace_adjectives():
    assert C.replace_adjectives(sent("A red ball."), rng(), vocab={"blue"}) == "A blue ball."
    assert C.replace_adjectives(sent("An empty glass."), rng(), vocab={"full"}) == "A full glass."
    for seed in range(20):  # never a synonym: "large" -> small only; gray never becomes grey
        assert C.replace_adjectives(sent("A large dog."), random.Random(seed)) == "A small dog."
        assert "grey" not in C.replace_adjectives(sent("A gray cat."), random.Random(seed))
    assert C.replace_adjectives(sent("Two dogs."), rng(), vocab={"three"}) == "Three dogs."  # counts
    assert C.replace_adjectives(sent("A dog runs."), rng()) is None
    assert C.replace_adjectives(sent("A red ball."), rng(), vocab={"red"}) is None  # nothing left in vocab


def test_replace_nouns():
    assert C.replace_nouns(sent("A dog runs."), rng(), vocab={"cat"}) == "A cat runs."
    assert C.replace_nouns(sent("Two dogs run."), rng(), vocab={"cat"}) == "Two cats run."  # number kept
    assert C.replace_nouns(sent("A dog."), rng(), vocab={"elephant"}) == "An elephant."
    assert C.replace_nouns(sent("a red circle"), rng(), vocab={"star"}) == "a red star"  # shapes class
    for seed in range(20):  # siblings only: a hypernym or synonym is no negative
        out = C.replace_nouns(sent("A man on a bike."), random.Random(seed))
        assert "person" not in out and "bicycle" not in out and "guy" not in out
    assert C.replace_nouns(sent("A xylophone."), rng()) is None


# ----------------------------------------------------------------------------- hard negatives: slots


def test_method_example_slots():
    cap = "A black dog chases a white cat across the lawn."
    negs = C.hard_negatives(cap, k=4, seed=0)
    assert len(negs) == 4
    assert sorted(negs[0][:-1].lower().split()) == sorted(cap[:-1].lower().split())  # slot 1: reshuffle
    assert negs[1] in ("A black cat chases a white dog across the lawn.", "A black lawn chases a white cat across the dog.",
                       "A black dog chases a white lawn across the cat.")  # slot 2: swap nouns


def test_hard_negatives_deterministic_and_seeded():
    gold = [r["caption"] for r in load_gold()]
    a = [C.hard_negatives(c, seed=0) for c in gold]
    assert a == [C.hard_negatives(c, seed=0) for c in gold]
    assert a != [C.hard_negatives(c, seed=1) for c in gold]


def test_hard_negatives_distinct_and_fallbacks():
    for cap in [r["caption"] for r in load_gold()] + ["A dog.", "It is raining."]:
        negs = C.hard_negatives(cap, k=4, seed=0)
        keys = canon_set(negs)
        assert len(negs) == 4 and len(keys) == 4 and " ".join(cap.lower().split()) not in keys, (cap, negs)
    # no nouns or adjectives: every slot falls back to a (different) reshuffle
    negs = C.hard_negatives("It is raining.", k=4, seed=0)
    assert all(sorted(n[:-1].lower().split()) == ["is", "it", "raining"] for n in negs)
    # impossible to fill: fewer come back, the caller decides
    assert C.hard_negatives("Xylophone", k=4) == []
    assert C.hard_negatives("Dog", k=4) == ["Sheep", "Cow", "Zebra"]  # no reshuffle; nouns fill 3 slots
    assert C.hard_negatives("Xylophone solo.", k=4) == ["Solo xylophone."]


def test_hard_negatives_on_world_captions():
    vocab = set(COLOURS) | set(SHAPES) | {"a", "an", "and"}
    rng_ = random.Random(1)
    for _ in range(200):
        objs = rng_.sample(OBJECTS, rng_.randint(2, 4))
        cap = world_caption(objs)
        negs = C.hard_negatives(cap, k=4, seed=0, vocab=vocab)
        assert len(canon_set(negs)) == 4 and cap not in negs
        for n in negs:  # only known words, so a word-level tower sees no unknown token
            assert set(n.replace(",", " ").split()) <= vocab, n


# ----------------------------------------------------------------------------- negatives file


def test_negatives_file_round_trip(tmp_path, capsys):
    caps = ["A black dog chases a white cat.", "Dog", "a red circle and a blue square"]
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"caption": caps[0], "image_id": 391}, {"caption": caps[1], "image_id": 7},
                       {"caption": caps[2], "image": "world/000002.png"}])
    out = tmp_path / "neg.json"
    C.main(["negatives", f"--data={data}", f"--out={out}", "--k=4", "--seed=0"])
    assert "1 dropped" in capsys.readouterr().out  # "Dog" cannot give 4 negatives
    recs = json.load(open(out))
    assert [r["image_id"] for r in recs] == [391, 2]  # no COCO id in a path: the record index, an int
    kept = [caps[0], caps[2]]
    assert C.load_negatives(str(out), kept, k=4) == [C.hard_negatives(c, k=4, seed=0) for c in kept]
    assert C.load_negatives(str(out), k=2) == [C.hard_negatives(c, k=4, seed=0)[:2] for c in kept]


def test_negatives_file_with_relation_negatives(tmp_path):
    caps = ["A man riding a horse on a beach", "a red circle and a blue square"]
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"caption": c, "image_id": i} for i, c in enumerate(caps)])
    out = tmp_path / "neg.json"
    C.main(["negatives", f"--data={data}", f"--out={out}", "--k=4", "--seed=0", "--relations=true"])
    got = C.load_negatives(str(out), caps, k=4)
    assert got == [C.hard_negatives(c, k=4, seed=0, relations=True) for c in caps]
    assert got[0] != C.hard_negatives(caps[0], k=4, seed=0)
    assert {"A horse riding a man on a beach", "A man riding a beach on a horse"} & set(got[0])  # a swap, slot 2
    assert got[1] == C.hard_negatives(caps[1], k=4, seed=0)  # no relation: the default negatives


def test_negatives_file_validation(tmp_path):
    path = tmp_path / "neg.json"
    good = {"image_id": 1, "original": "a dog", "enhanced": ["w", "x", "y", "z"]}

    def check(records, match, captions=None):
        path.write_text(json.dumps(records))
        with pytest.raises(ValueError, match=match):
            C.load_negatives(str(path), captions, k=4)

    check({"a": 1}, r"neg\.json: expected a JSON list")
    check([good, {"image_id": 2, "original": "a cat"}], r"neg\.json: record 1 lacks enhanced")
    check([good, dict(good, enhanced=["x", "y"])], r"record 1 has 2 negatives, fewer than k=4")
    check([good, good], r"record 1: original 'a dog' != caption 'a cat'", captions=["a dog", "a cat"])
    check([good], r"1 records but 2 captions", captions=["a dog", "a cat"])
    path.write_text("[{")
    with pytest.raises(ValueError, match=r"neg\.json: bad JSON"):
        C.load_negatives(str(path))

"""
Benchmark readers and protocols on fixtures written in each official file shape, scored by a stub model
whose answers are worked out by hand: an image embeds as its mean colour, a caption as the sum of its
colour words. Exact ties (identical vectors) are pinned to the protocol's rule.
"""

import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import world
import evaluate as ev
from model import DualEncoder, WordTokenizer, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGB = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1),
       "magenta": (1, 0, 1), "white": (1, 1, 1)}
PIXEL = {k: tuple(255 * c for c in v) for k, v in RGB.items()}


class Stub(torch.nn.Module):
    """image -> unit mean colour (RGB); text -> unit sum of its colour words' RGB (zero if none)"""

    def __init__(self, tokenizer, image_size=8):
        super().__init__()
        self.cfg = SimpleNamespace(image_size=image_size)
        self.ids = torch.tensor([tokenizer.stoi[c] for c in RGB])
        self.rgb = torch.tensor(list(RGB.values()), dtype=torch.float)

    def encode_image(self, images):
        return F.normalize((images.mean((2, 3)) + 1) / 2, dim=-1), None

    def encode_text(self, tokens):
        counts = (tokens[:, :, None] == self.ids).sum(1).float()  # (n, colours)
        return F.normalize(counts @ self.rgb, dim=-1)


@pytest.fixture
def enc():
    tok = WordTokenizer(list(RGB) + "a the and cube ball thing photo of".split(), context_length=12)
    return ev.Encoder(Stub(tok), tok, progress=False)


def png(path, *colours, size=8, height=None):
    """vertical stripes (size wide) of the given colours, left to right; PNG bytes whatever the extension"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    height = height or size
    img = Image.new("RGB", (size * len(colours), height))
    for i, c in enumerate(colours):
        img.paste(PIXEL[c], (i * size, 0, (i + 1) * size, height))
    img.save(path, format="PNG")  # lossless: the stub's cosines stay exact


def dump(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def metrics_of(results, dataset):
    return next(r["metrics"] for r in results if r["dataset"] == dataset)

# -----------------------------------------------------------------------------
# the shared scorer


def test_selection_positional_truth_and_ties():
    e = torch.eye(3)
    img = torch.stack([e[0], e[1]])[None]  # (1, 2 images, 3)
    txt = torch.stack([e[0], e[1], e[2]])[None]  # caption 2 is a distractor
    assert [t.tolist() for t in ev.selection(img, txt)] == [[True], [True]]
    txt_tie = torch.stack([e[0], e[1], e[1]])[None]  # the distractor ties image 1's caption
    assert ev.selection(img, txt_tie)[0].tolist() == [False]
    assert ev.selection(img, txt_tie, strict=False)[0].tolist() == [True]

# -----------------------------------------------------------------------------
# SugarCrepe and SugarCrepe++


def test_sugarcrepe_by_hand_with_groups_and_json(enc, tmp_path):
    for c in ("red", "blue"):
        png(str(tmp_path / "coco/val2017" / f"{c}.png"), c)
    dump({"0": {"filename": "red.png", "caption": "a red cube", "negative_caption": "a blue cube"},    # right
          "2": {"filename": "red.png", "caption": "a blue cube", "negative_caption": "a red cube"},    # wrong
          "5": {"filename": "red.png", "caption": "a red cube", "negative_caption": "a red ball"},     # tie: wrong
          "7": {"filename": "blue.png", "caption": "a blue ball", "negative_caption": "a green ball"}},
         str(tmp_path / "sugarcrepe/swap_att.json"))
    dump({"0": {"filename": "blue.png", "caption": "the blue cube", "negative_caption": "the red cube"}},
         str(tmp_path / "sugarcrepe/replace_att.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    assert metrics_of(res, "sugar_crepe/swap_att") == {"acc": 0.5, "text_acc": 0.5, "image_acc": 1.0}
    assert metrics_of(res, "sugar_crepe/replace_att")["acc"] == 1.0
    assert metrics_of(res, "sugar_crepe") == {"replace": 1.0, "swap": 0.5, "overall": 0.75}
    paths = ev.write_results(res, str(tmp_path / "out"), "stub", "runs/x/ckpt.pt")
    doc = json.load(open(paths[0]))
    assert set(doc) >= {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert doc["task"] == "image_caption_selection" and doc["language"] == "en"


def test_sugarcrepe_replace_rel_is_read_and_grouped(enc, tmp_path):
    # the relation subset (issue: relations) goes through the same reader and scorer, into the "replace" group
    png(str(tmp_path / "coco/val2017" / "red.png"), "red")
    dump({"0": {"filename": "red.png", "caption": "a red cube on a table", "negative_caption": "a blue cube on a table"},
          "1": {"filename": "red.png", "caption": "a blue cube under a table", "negative_caption": "a red cube on a table"}},
         str(tmp_path / "sugarcrepe/replace_rel.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    assert metrics_of(res, "sugar_crepe/replace_rel")["acc"] == 0.5
    assert metrics_of(res, "sugar_crepe")["replace"] == 0.5


def test_sugarcrepe_pp_itt_tot(enc, tmp_path):
    for c in ("red", "blue", "green"):
        png(str(tmp_path / "coco/val2017" / f"{c}.png"), c)
    rec = lambda i, f, p1, p2, n: {"id": i, "filename": f, "caption": p1, "caption2": p2, "negative_caption": n}
    dump([rec(0, "red.png", "a red cube", "red, a cube", "a blue cube"),        # itt yes, tot yes
          rec(1, "red.png", "a red cube", "a cube", "a blue cube"),             # I-P2-N tie -> itt no; tot tie -> no
          rec(2, "blue.png", "a blue and red cube", "a red and blue cube", "a red cube"),  # itt yes, tot yes
          rec(3, "green.png", "a red thing", "a red ball", "a green thing")],  # itt no, tot yes (text only)
         str(tmp_path / "sugarcrepe++/swap_att.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe++"])
    assert metrics_of(res, "sugar_crepe_pp/swap_att") == {"itt": 0.5, "tot": 0.75, "i_p1_n": 0.75, "i_p2_n": 0.5}
    assert metrics_of(res, "sugar_crepe_pp")["itt_swap"] == 0.5

# -----------------------------------------------------------------------------
# ARO


def vg_record(kind, colour_left, true, false, **kw):
    """a 16x8 image, red on the left and blue on the right; the bbox picks the named half (or both)"""
    x, w = {"red": (0, 8), "blue": (8, 8), "both": (0, 16)}[colour_left]
    return {"image_path": "rb.png", "bbox_x": x, "bbox_y": 0, "bbox_w": w, "bbox_h": 8,
            "true_caption": true, "false_caption": false, **kw}


def test_aro_vg_relation_macro_drops_symmetric_and_crops(enc, tmp_path):
    png(str(tmp_path / "aro/images/rb.png"), "red", "blue")
    recs = [vg_record("r", "red", "the red cube", "the blue cube", relation_name="on"),   # right (needs the crop)
            vg_record("r", "blue", "the red cube", "the blue cube", relation_name="on"),  # wrong
            vg_record("r", "red", "a red cube", "the red ball", relation_name="on"),      # tie: argmax -> false
            vg_record("r", "red", "red", "blue", relation_name="above"),                  # right
            vg_record("r", "both", "blue", "red", relation_name="next to"),               # tie, symmetric
            vg_record("r", "blue", "red", "blue", relation_name="next to")]               # wrong, symmetric
    dump(recs, str(tmp_path / "aro/visual_genome_relation.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["aro"])
    m = metrics_of(res, "aro/vg_relation")
    assert m["micro_acc"] == pytest.approx(2 / 6)
    assert m["macro_acc"] == pytest.approx((1 / 3 + 1) / 2)  # "next to" is one of the 157 symmetric relations
    assert "next to" in ev.ARO_SYMMETRIC and "on" not in ev.ARO_SYMMETRIC


@pytest.mark.parametrize("min_count, expected", [(25, (1 + 1 / 3) / 2), (24, (1 + 0 + 1 / 3) / 3)])
def test_aro_vg_attribution_pair_threshold(enc, tmp_path, min_count, expected):
    png(str(tmp_path / "aro/images/rb.png"), "red", "blue")
    right = lambda a: vg_record("a", "red", "the red cube", "the blue cube", attributes=a)
    wrong = lambda a: vg_record("a", "red", "the blue cube", "the red cube", attributes=a)
    recs = ([right(["red", "blue"])] * 25 + [wrong(["blue", "red"])] * 24
            + [right(["green", "red"])] * 10 + [wrong(["green", "red"])] * 20)
    dump(recs, str(tmp_path / "aro/visual_genome_attribution.json"))
    res = ev.eval_aro(enc, str(tmp_path), min_count=min_count)
    m = metrics_of(res, "aro/vg_attribution")
    assert m["macro_acc"] == pytest.approx(expected)
    assert m["micro_acc"] == pytest.approx(35 / 79)


def test_order_preprocessing_and_perturbations():
    assert ev.pre_caption('A "Big" dog (brown); runs!  Fast~') == "a big dog brown runs fast"
    assert len(ev.pre_caption(" ".join(["w"] * 40)).split()) == 30
    cap = "A small brown dog chases a large red ball across green parks"  # 12 tokens: whole trigrams
    tokens = ev._TOKEN.findall(cap)
    tags = ev.pos_tags(tokens)
    nouns_adjs = {i for i, t in enumerate(tags) if t in ev.NOUN_TAGS | ev.ADJ_TAGS}
    assert {tokens[i] for i in nouns_adjs} >= {"dog", "ball", "parks", "small", "red"}
    f1, f2, f3, f4 = [f.split() for f in ev.order_perturbations(cap, random.Random(1))]
    assert f1 != tokens and f2 != tokens
    for i in range(len(tokens)):  # f1 moves only nouns/adjectives, f2 only the rest
        assert (f1[i] == tokens[i]) or i in nouns_adjs
        assert (f2[i] == tokens[i]) or i not in nouns_adjs
    tris = ev._trigrams(tokens)
    assert [sorted(t) for t in ev._trigrams(f3)] == [sorted(t) for t in tris]
    assert sorted(ev._trigrams(f4)) == sorted(tris) and f4 != tokens
    assert ev.order_perturbations(cap, random.Random(1)) == ev.order_perturbations(cap, random.Random(1))


def test_order_ties_are_wrong(enc, tmp_path):
    # a bag-of-colours model cannot tell a caption from its shuffles: all five options tie, and a tie is wrong
    # (the official argmax would give it to index 0, the true caption, and score this model 100%)
    png(str(tmp_path / "flickr30k/flickr30k-images/1.jpg"), "red")
    dump([{"image": "flickr30k-images/1.jpg", "caption": ["A red cube on a blue ball.", "The green thing."]}],
         str(tmp_path / "retrieval/flickr30k_test.json"))
    m = metrics_of(ev.eval_aro(enc, str(tmp_path)), "aro/flickr_order")
    assert m == {"precision@1": 0.0}

# -----------------------------------------------------------------------------
# VALSE and Winoground


def valse_record(image, caption, foil, mturk_caption):
    return {"dataset": "x", "original_split": "test", "linguistic_phenomena": "p", "image_file": image,
            "caption": caption, "foil": foil, "classes": "a", "classes_foil": "b",
            "mturk": {"caption": mturk_caption, "foil": 0, "other": 0}}


def test_valse_mturk_filter_and_piece_image_roots(enc, tmp_path):
    png(str(tmp_path / "visual7w/v7w_1.jpg"), "red")
    png(str(tmp_path / "coco/val2017/000000000001.jpg"), "blue")
    dump({"e:0": valse_record("v7w_1.jpg", "a red cube", "a blue cube", 3),     # right
          "e:1": valse_record("v7w_1.jpg", "a red cube", "a red ball", 2),      # tie: wrong
          "e:2": valse_record("v7w_1.jpg", "a red cube", "a blue cube", 1),     # right, but filtered out
          "e:3": valse_record("v7w_1.jpg", "a blue cube", "a red cube", 2)},    # wrong
         str(tmp_path / "valse/existence.json"))
    dump({"p:0": valse_record("000000000001.jpg", "blue", "red", 2)}, str(tmp_path / "valse/plurals.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["valse"])
    assert metrics_of(res, "valse/existence") == {"acc_r": pytest.approx(1 / 3)}
    assert metrics_of(res, "valse/plurals") == {"acc_r": 1.0}
    summary = metrics_of(res, "valse")
    assert summary["mean"] == pytest.approx((1 / 3 + 1) / 2) and summary["plurality"] == 1.0


def test_winoground_text_image_group(enc, tmp_path):
    imgs = {0: ("red", "blue"), 1: ("red", "red"), 2: (("red", "blue"), "blue"), 3: ("red", "green")}
    caps = {0: ("red", "blue"), 1: ("red", "blue"), 2: ("red", "blue"), 3: ("red green green", "green")}
    lines = []
    for i in range(4):
        for k in (0, 1):
            c = imgs[i][k]
            png(str(tmp_path / "winoground/images" / f"ex_{i}_img_{k}.png"), *(c if isinstance(c, tuple) else (c,)),
                size=8 if isinstance(c, str) else 4, height=8)
        lines.append(json.dumps({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
                                 "caption_0": caps[i][0], "caption_1": caps[i][1], "tag": "t", "secondary_tag": "",
                                 "num_main_preds": 1, "collapsed_tag": "Object" if i < 2 else "Relation"}))
    (tmp_path / "winoground/examples.jsonl").write_text("\n".join(lines) + "\n")
    # 0: all right; 1: all wrong (image tie); 2: text tie, image right; 3: text right, image wrong
    m = metrics_of(ev.run_benchmarks(enc, str(tmp_path), ["winoground"]), "winoground")
    assert (m["text_acc"], m["image_acc"], m["acc"]) == (0.5, 0.5, 0.25)
    assert (m["acc/Object"], m["text_acc/Relation"], m["image_acc/Relation"]) == (0.5, 0.5, 0.5)

# -----------------------------------------------------------------------------
# zero-shot classification


def test_zeroshot_top1_top5_mean_per_class(enc, tmp_path):
    folders = {"n0_blue": ["white"], "n1_cyan": [], "n2_green": [], "n3_magenta": [], "n4_red": ["red", "red"],
               "n5_white": [], "n6_yellow": ["yellow", "red"]}
    for cls, colours in folders.items():
        os.makedirs(tmp_path / "zeroshot/seven" / cls, exist_ok=True)
        for j, c in enumerate(colours):
            png(str(tmp_path / "zeroshot/seven" / cls / f"{j}.png"), c)
    png(str(tmp_path / "zeroshot/three/a/0.png"), "red")
    for c in "bc":
        os.makedirs(tmp_path / "zeroshot/three" / c)
    dump({"seven": [c.split("_")[1] for c in sorted(folders)], "three": ["red", "green", "blue"]},
         str(tmp_path / "zeroshot/classnames.json"))
    dump({"seven": ["a photo of a {c}.", "a {c} thing"]}, str(tmp_path / "zeroshot/templates.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["zeroshot"])
    # red in "yellow": red 1 > yellow = magenta 0.707 (tie counted against it) -> rank 2; white in "blue": rank 6
    assert metrics_of(res, "seven") == {"acc1": 0.6, "acc5": 0.8, "mean_per_class_recall": pytest.approx(0.5)}
    three = metrics_of(res, "three")
    assert three["acc1"] == 1.0 and math.isnan(three["acc5"])
    path = [p for p in ev.write_results(res, str(tmp_path / "out"), "stub", "c.pt") if "three" in p][0]
    assert json.load(open(path))["metrics"]["acc5"] is None


def test_own_templates_replace_the_named_sets(enc, tmp_path):
    for cls in ("red", "green"):
        png(str(tmp_path / "zeroshot/two" / cls / "0.png"), cls)
    dump({"two": ["a photo of a {c}."]}, str(tmp_path / "zeroshot/templates.json"))

    class Spy:
        def __init__(self):
            self.prompts = []

        def texts(self, texts, desc=""):
            self.prompts += texts
            return enc.texts(texts, desc)

        def images(self, refs, desc=""):
            return enc.images(refs, desc)
    for choice, prompts in (("auto", ["a photo of a green.", "a photo of a red."]),
                            ("{c}| a {c} thing", ["green", "a green thing", "red", "a red thing"])):
        spy = Spy()
        res = ev.run_benchmarks(spy, str(tmp_path), ["zeroshot"], templates=choice)
        assert spy.prompts == prompts and metrics_of(res, "two")["acc1"] == 1.0
    assert ev.own_templates("openai") is None
    for bad in ("a {x}", "a {c} or {c}", "{c}|a photo {"):
        with pytest.raises(ev.UsageError, match="each prompt holds the class name once"):
            ev.own_templates(bad)


def test_world_evaluation_passes_the_templates_on(monkeypatch):
    import world
    from model import DualEncoder, WordTokenizer, model_config
    tok = WordTokenizer(world.world_vocabulary(), 16)
    torch.manual_seed(0)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    seen, real = [], ev.run_benchmarks

    def spy(enc, root, tasks, **options):
        seen.append(options.get("templates"))
        return real(enc, root, tasks, **options)
    monkeypatch.setattr(ev, "run_benchmarks", spy)
    ev.evaluate_world(model, tok, n_scenes=12, templates="a {c}")
    assert seen == ["a {c}"]


def test_templates_and_siglip_aliases():
    assert len(ev.OPENAI_TEMPLATES) == 80 and len(ev.SIGLIP_TEMPLATES) == 81 and ev.SIGLIP_TEMPLATES[-1] == "{}"
    assert ev.OPENAI_TEMPLATES[0] == "a bad photo of a {}." and ev.OPENAI_TEMPLATES[-1] == "a tattoo of the {}."

    class Recorder:
        seen = []

        def texts(self, texts, desc=""):
            self.seen += texts
            return torch.ones(len(texts), 2)
    rec = Recorder()
    w = ev.class_weights(rec, ["Tench, Tinca_tinca"], ["a photo of a {}.", "{}"], siglip=True)
    assert rec.seen == ["a photo of a tench", "tench", "a photo of a tinca tinca", "tinca tinca"]
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(1))

# -----------------------------------------------------------------------------
# retrieval


def brute_force_recalls(img, txt, owner, k):
    """sort every candidate list, ties placed before the true items; first true position < k"""
    i2t, t2i = [], []
    for i in range(len(img)):
        order = sorted(range(len(txt)), key=lambda j: (-(img[i] @ txt[j]).item(), owner[j] == i))
        i2t.append(min(p for p, j in enumerate(order) if owner[j] == i) < k)
    for j in range(len(txt)):
        order = sorted(range(len(img)), key=lambda i: (-(img[i] @ txt[j]).item(), i == owner[j]))
        t2i.append(order.index(owner[j]) < k)
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_recalls_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 3, (12, 4), generator=g).float()  # small integers: many exact ties
    owner = torch.randint(0, 12, (30,), generator=g)
    owner[:12] = torch.arange(12)  # every image has a caption
    txt = torch.randint(0, 3, (30, 4), generator=g).float()
    m = ev.retrieval_metrics(img, txt, owner, chunk=5)  # uneven chunks
    for k in (1, 5, 10):
        i2t, t2i = brute_force_recalls(img, txt, owner.tolist(), k)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)


def test_karpathy_and_list_form_identical(enc, tmp_path):
    colours = ["red", "green", "blue", "yellow", "cyan", "magenta"]
    sentences = lambda c: [f"a {c} cube", f"the {c} thing", f"a {c} ball", "a cube", f"a {c} and red ball", f"{c}"]
    images, blip = [], []
    for i, c in enumerate(colours):
        png(str(tmp_path / "coco/val2014" / f"COCO_val2014_{i:012d}.jpg"), c)
        sents = sentences(c)[: 3 + i % 4]  # 3 to 6 sentences: the 5-caption cap matters
        images.append({"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "imgid": i, "cocoid": i,
                       "split": "test", "sentids": list(range(len(sents))),
                       "sentences": [{"tokens": s.split(), "raw": s, "imgid": i, "sentid": j} for j, s in enumerate(sents)]})
        blip.append({"image": f"val2014/COCO_val2014_{i:012d}.jpg", "caption": sents})
    images.append({**images[0], "split": "train"})  # not in the test split
    dump({"dataset": "coco", "images": images}, str(tmp_path / "retrieval/dataset_coco.json"))
    dump(blip, str(tmp_path / "retrieval/coco_karpathy_test.json"))
    res = ev.run_benchmarks(enc, str(tmp_path), ["retrieval"], check_counts=True)
    karpathy, listed = metrics_of(res, "dataset_coco"), metrics_of(res, "coco_karpathy_test")
    assert karpathy == listed and set(karpathy) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert [r["protocol"]["captions"] for r in res] == [3 + 4 + 5 + 5 + 3 + 4] * 2
    refs, caps, owner = ev.read_karpathy(str(tmp_path / "retrieval/dataset_coco.json"), str(tmp_path / "coco"),
                                         max_captions=None)
    assert len(refs) == 6 and len(caps) == 3 + 4 + 5 + 6 + 3 + 4
    # by hand: "a blue and red ball" (blue's) ties magenta's own "a magenta cube" on the magenta image: I->T R@1 = 5/6
    assert karpathy["text_retrieval_recall@1"] == pytest.approx(5 / 6)
    assert karpathy["image_retrieval_recall@1"] < 1.0  # "a cube" embeds as zero: tied with every image

# -----------------------------------------------------------------------------
# errors


def test_errors_name_file_and_record(enc, tmp_path):
    png(str(tmp_path / "coco/val2017/red.png"), "red")
    path = str(tmp_path / "sugarcrepe/add_att.json")
    dump({"0": {"filename": "red.png", "caption": "a red cube", "negative_caption": "a blue cube"},
          "7": {"filename": "gone.png", "caption": "a red cube", "negative_caption": "a blue cube"}}, path)
    with pytest.raises(FileNotFoundError, match=r"add_att\.json: record 7: image not found: .*gone\.png"):
        ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    dump({"0": {"filename": "red.png", "caption": "a red cube"}}, path)
    with pytest.raises(KeyError, match=r"add_att\.json: record 0: missing field 'negative_caption'"):
        ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    open(path, "w").write("{not json")
    with pytest.raises(ValueError, match=r"add_att\.json: not valid JSON"):
        ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    (tmp_path / "coco/val2017/bad.png").write_bytes(b"not a png")
    dump({"3": {"filename": "bad.png", "caption": "a red cube", "negative_caption": "a blue cube"}}, path)
    with pytest.raises(OSError, match=r"add_att\.json: record 3: cannot read image .*bad\.png"):
        ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    with pytest.raises(FileNotFoundError, match=r"winoground.*examples\.jsonl: file not found"):
        ev.run_benchmarks(enc, str(tmp_path), ["winoground"])


def test_official_counts_checked_only_near_the_release(enc, tmp_path):
    png(str(tmp_path / "coco/val2017/red.png"), "red")
    rec = {"filename": "red.png", "caption": "a red cube", "negative_caption": "a blue cube"}
    dump({str(i): rec for i in range(244)}, str(tmp_path / "sugarcrepe/swap_obj.json"))  # official 245
    with pytest.raises(ValueError, match=r"swap_obj\.json: 244 records, the official release has 245"):
        ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])
    assert ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"], check_counts=False)[0]["n_records"] == 244
    dump({str(i): rec for i in range(20)}, str(tmp_path / "sugarcrepe/swap_obj.json"))  # a fixture: not checked
    assert ev.run_benchmarks(enc, str(tmp_path), ["sugarcrepe"])[0]["n_records"] == 20

# -----------------------------------------------------------------------------
# the world through the CLI and evaluate_world


def test_world_export_round_trip(tmp_path):
    import train
    tok = WordTokenizer(world.world_vocabulary(), 16)
    torch.manual_seed(0)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size, depth=1, text_depth=1))
    ckpt = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(ckpt, model, None, train.Config(), tok, 0)
    world.export_world(str(tmp_path / "world"), n_scenes=12, seed=3)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), f"--ckpt={ckpt}", "--task=all",
                          f"--root={tmp_path / 'world'}", f"--out={tmp_path / 'out'}"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    docs = {d["dataset"]: d for d in (json.load(open(tmp_path / "out" / f)) for f in os.listdir(tmp_path / "out"))}
    subsets = ["add_att", "add_obj", "replace_att", "replace_obj", "swap_att", "swap_obj"]
    assert set(docs) == {f"sugar_crepe/{s}" for s in subsets} | {
        "sugar_crepe", "binding/concept_binding", "world_shape", "world_colour_shape", "world"}
    for d in docs.values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in d["metrics"].values())
    assert docs["binding/concept_binding"]["n_records"] == 24 and docs["world_colour_shape"]["protocol"]["classes"] == 48
    # evaluate_world is the same path: its numbers are the CLI's
    res = ev.evaluate_world(model, tok, seed=3, n_scenes=12, image_size=32)
    assert list(res) == ["i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "i2t_R@10", "t2i_R@10", "zeroshot_shape",
                         "zeroshot_colour_shape", "concept_binding"] + ["swap_att", "swap_obj", "replace_att",
                                                                        "replace_obj", "add_att", "add_obj"]
    assert res["concept_binding"] == docs["binding/concept_binding"]["metrics"]["acc"]
    assert res["t2i_R@5"] == docs["world"]["metrics"]["image_retrieval_recall@5"]
    assert res["zeroshot_shape"] == docs["world_shape"]["metrics"]["acc1"]
    assert res["swap_att"] == docs["sugar_crepe/swap_att"]["metrics"]["acc"]


def test_encoder_encodes_each_distinct_text_once(enc, monkeypatch):
    # zero-shot prompts and benchmark captions repeat ("a photo of a red thing" in every template set, the same
    # caption across SugarCrepe subsets): each distinct string goes through the tower once per Encoder
    seen = []
    encode = enc.model.encode_text
    monkeypatch.setattr(enc.model, "encode_text", lambda tokens: seen.append(len(tokens)) or encode(tokens))
    texts = ["a red cube", "a blue ball", "a red cube", "a red cube", "the green thing"]
    first = enc.texts(texts)
    assert sum(seen) == 3 and torch.equal(first[0], first[2]) and torch.equal(first[0], first[3])
    w = ev.class_weights(enc, ["red", "blue"], ["a {c} cube", "a photo of a {c} thing"])
    assert sum(seen) == 3 + 3  # "a red cube" was already encoded; three new prompts
    torch.testing.assert_close(w[0], F.normalize(enc.texts(["a red cube", "a photo of a red thing"]).mean(0), dim=0))

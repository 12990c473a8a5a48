"""
Evaluate a checkpoint on the compositionality benchmarks, zero-shot classification and retrieval, each
read from its official local files and scored by its official protocol (METHOD.md §6).

    python evaluate.py --ckpt=runs/siglip/ckpt.pt --task=world                # built-in world, held-out scenes
    python evaluate.py --ckpt=runs/c2lip/ckpt.pt --task=sugarcrepe --root=/data/bench
    python evaluate.py --ckpt=runs/c2lip/ckpt.pt --task=all --root=/data/bench --out=results/

--task=all runs every benchmark found under --root, laid out as the official releases are:

    root/coco/val2017/                 COCO 2017 val images (SugarCrepe, SugarCrepe++, binding, VALSE plurals/relations)
    root/coco/val2014/                 COCO 2014 val images (COCO-Order, VALSE foil-it, COCO retrieval)
    root/flickr30k/flickr30k-images/   Flickr30k images (Flickr-Order, Flickr30k retrieval)
    root/sugarcrepe/<subset>.json      add_att, add_obj, replace_att, replace_obj, replace_rel, swap_att, swap_obj
    root/sugarcrepe++/<subset>.json    replace_att, replace_obj, replace_rel, swap_att, swap_obj
    root/binding/<name>.json           SugarCrepe-shaped tests of our own (the world's concept_binding)
    root/aro/visual_genome_relation.json, visual_genome_attribution.json, images/   (VG-Relation, VG-Attribution)
    root/retrieval/coco_karpathy_test.json, flickr30k_test.json   BLIP list form: COCO-Order, Flickr-Order, retrieval
    root/retrieval/dataset_coco.json, dataset_flickr30k.json      Karpathy form: retrieval
    root/retrieval/<other>.json        either form, image paths relative to root/retrieval/
    root/valse/<piece>.json            the 11 VALSE files; images per piece (VALSE_PIECES): root/visual7w/,
                                       root/coco/val2017/, root/swig/, root/visdial/, root/coco/val2014/
    root/winoground/examples.jsonl, images/ex_<id>_img_<k>.png
    root/zeroshot/<dataset>/<class_dir>/<image>, and optionally root/zeroshot/classnames.json and
                                       templates.json ({"<dataset>": [...]}; default names = folder names,
                                       default templates = the 80 OpenAI ImageNet ones)

One CLIP_benchmark-shaped JSON per (dataset, model) goes to --out (default: benchmarks/ beside the checkpoint),
values are fractions in [0, 1]; the printed table shows x100.

Every score is a cosine of unit embeddings (t and b change no ranking). Selection tests go through one
scorer, `selection`: positives first, and a tie is wrong (strict ">") everywhere, ARO-Order included (the
official ARO argmax would hand a tie to index 0, the true caption there, so a bag-of-words model unable to
tell a caption from its shuffles would score 100%; we count it as wrong, METHOD.md §6.2). Retrieval and zero-shot ranks also count ties against the
true item. Official record counts are asserted when a file looks like the full release: an official file
name whose count is within 10% of the official one must match it exactly (smaller or much larger files
are taken as fixtures or subsets; --check-counts=0 turns the check off).
"""

import json
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import data
import world
from cli import MissingFileError, UsageError
from model import canonicalize

# -----------------------------------------------------------------------------
# constants of the official protocols (METHOD.md §6.5, §6.8)

OPENAI_TEMPLATES = [t.strip() for t in """
a bad photo of a {}. | a photo of many {}. | a sculpture of a {}. | a photo of the hard to see {}.
a low resolution photo of the {}. | a rendering of a {}. | graffiti of a {}. | a bad photo of the {}.
a cropped photo of the {}. | a tattoo of a {}. | the embroidered {}. | a photo of a hard to see {}.
a bright photo of a {}. | a photo of a clean {}. | a photo of a dirty {}. | a dark photo of the {}.
a drawing of a {}. | a photo of my {}. | the plastic {}. | a photo of the cool {}. | a close-up photo of a {}.
a black and white photo of the {}. | a painting of the {}. | a painting of a {}. | a pixelated photo of the {}.
a sculpture of the {}. | a bright photo of the {}. | a cropped photo of a {}. | a plastic {}.
a photo of the dirty {}. | a jpeg corrupted photo of a {}. | a blurry photo of the {}. | a photo of the {}.
a good photo of the {}. | a rendering of the {}. | a {} in a video game. | a photo of one {}. | a doodle of a {}.
a close-up photo of the {}. | a photo of a {}. | the origami {}. | the {} in a video game. | a sketch of a {}.
a doodle of the {}. | a origami {}. | a low resolution photo of a {}. | the toy {}. | a rendition of the {}.
a photo of the clean {}. | a photo of a large {}. | a rendition of a {}. | a photo of a nice {}.
a photo of a weird {}. | a blurry photo of a {}. | a cartoon {}. | art of a {}. | a sketch of the {}.
a embroidered {}. | a pixelated photo of a {}. | itap of the {}. | a jpeg corrupted photo of the {}.
a good photo of a {}. | a plushie {}. | a photo of the nice {}. | a photo of the small {}. | a photo of the weird {}.
the cartoon {}. | art of the {}. | a drawing of the {}. | a photo of the large {}. | a black and white photo of a {}.
the plushie {}. | a dark photo of a {}. | itap of a {}. | graffiti of the {}. | a toy {}. | itap of my {}.
a photo of a cool {}. | a photo of a small {}. | a tattoo of the {}.
""".replace("\n", " | ").split("|") if t.strip()]
assert len(OPENAI_TEMPLATES) == 80
SIGLIP_TEMPLATES = OPENAI_TEMPLATES + ["{}"]  # big_vision's variant: the bare name as an 81st prompt

# VG-Relation relations left out of the official macro average
ARO_SYMMETRIC = set(r.strip() for r in """
adjusting; attached to; between; bigger than; biting; boarding; brushing; chewing; cleaning; climbing; close to;
coming from; coming out of; contain; crossing; dragging; draped over; drinking; drinking from; driving; driving down;
driving on; eating from; eating in; enclosing; exiting; facing; filled with; floating in; floating on; flying;
flying above; flying in; flying over; flying through; full of; going down; going into; going through; grazing in;
growing in; growing on; guiding; hanging from; hanging in; hanging off; hanging over; higher than; holding onto;
hugging; in between; jumping off; jumping on; jumping over; kept in; larger than; leading; leaning over; leaving;
licking; longer than; looking in; looking into; looking out; looking over; looking through; lying next to;
lying on top of; making; mixed with; mounted on; moving; on the back of; on the edge of; on the front of;
on the other side of; opening; painted on; parked at; parked beside; parked by; parked in; parked in front of;
parked near; parked next to; perched on; petting; piled on; playing; playing in; playing on; playing with; pouring;
reaching for; reading; reflected on; riding on; running in; running on; running through; seen through; sitting behind;
sitting beside; sitting by; sitting in front of; sitting near; sitting next to; sitting under; skiing down; skiing on;
sleeping in; sleeping on; smiling at; sniffing; splashing; sprinkled on; stacked on; standing against; standing around;
standing behind; standing beside; standing in front of; standing near; standing next to; staring at; stuck in;
surrounding; swimming in; swinging; talking to; topped with; touching; traveling down; traveling on; tying; typing on;
underneath; wading in; waiting for; walking across; walking by; walking down; walking next to; walking through;
working in; working on; worn on; wrapped around; wrapped in; by; of; near; next to; with; beside; on the side of;
around""".replace("\n", " ").split(";"))
assert len(ARO_SYMMETRIC) == 157

SUGARCREPE_COUNTS = dict(add_att=692, add_obj=2062, replace_att=788, replace_obj=1652, replace_rel=1406,
                         swap_att=666, swap_obj=245)
SUGARCREPE_GROUPS = dict(replace=["replace_obj", "replace_att", "replace_rel"], swap=["swap_obj", "swap_att"],
                         add=["add_obj", "add_att"])
SCPP_COUNTS = dict(replace_att=788, replace_obj=1652, replace_rel=1406, swap_att=666, swap_obj=245)
ARO_COUNTS = dict(visual_genome_relation=23937, visual_genome_attribution=28748)
ORDER_FILES = dict(coco_order=("coco_karpathy_test.json", "coco", 5000),  # file, image root, images
                   flickr_order=("flickr30k_test.json", "flickr30k", 1000))
# file -> (piece, phenomenon, image folder under root, raw records, records with mturk.caption >= 2)
VALSE_PIECES = {
    "existence": ("existence", "existence", "visual7w", 534, 505),
    "plurals": ("plurality", "plurality", "coco/val2017", 1000, 851),
    "counting-hard": ("counting balanced", "counting", "visual7w", 1000, 868),
    "counting-small-quant": ("counting small numbers", "counting", "visual7w", 1000, 900),
    "counting-adversarial": ("counting adversarial", "counting", "visual7w", 756, 691),
    "relations": ("spatial relations", "relations", "coco/val2017", 614, 535),
    "action-replacement": ("action replacement", "actions", "swig", 779, 648),
    "actant-swap": ("actant swap", "actions", "swig", 1042, 949),
    "coreference-standard": ("coreference standard", "coreference", "visdial", 916, 708),
    "coreference-hard": ("coreference clean", "coreference", "visdial", 141, 104),
    "foil-it": ("foil-it noun phrases", "foil-it", "coco/val2014", 1000, 943),
}
WINOGROUND_COUNT = 400
# retrieval files with a known image root (others resolve against root/retrieval/) and test-split image counts
RETRIEVAL_FILES = {"dataset_coco.json": ("coco", 5000), "dataset_flickr30k.json": ("flickr30k/flickr30k-images", 1000),
                   "coco_karpathy_test.json": ("coco", 5000), "flickr30k_test.json": ("flickr30k", 1000)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# -----------------------------------------------------------------------------
# reading files: every error names the file and the record


def load_json(path):
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from e


def load_jsonl(path):
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for line_num, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((f"line {line_num}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}: line {line_num}: not valid JSON ({e})") from e
    return out


def records_of(obj, path, shape):
    """a dict file (iterated by value, keyed by its own keys) or a list file (keyed by position) -> [(key, record)]"""
    if shape == "dict" and isinstance(obj, dict):
        items = list(obj.items())
    elif shape == "list" and isinstance(obj, list):
        items = [(f"index {i}", r) for i, r in enumerate(obj)]
    else:
        raise UsageError(f"{path}: expected a JSON {shape} of records, got {type(obj).__name__}")
    for key, rec in items:
        if not isinstance(rec, dict):
            raise UsageError(f"{path}: record {key}: expected an object, got {type(rec).__name__}")
    return items


def field(rec, name, path, key, kind=str):
    """rec[name], checked for type; a missing or malformed field names the file and the record"""
    if name not in rec:
        raise KeyError(f"{path}: record {key}: missing field {name!r}")
    value = rec[name]
    if kind is str and (not isinstance(value, str) or not value.strip()):
        raise UsageError(f"{path}: record {key}: field {name!r} must be a non-empty string, got {value!r}")
    if kind is not str and (not isinstance(value, kind) or isinstance(value, bool)):
        raise UsageError(f"{path}: record {key}: field {name!r} has type {type(value).__name__}")
    return value


def check_count(path, n, official, enabled=True, what="records"):
    """error only when the file looks like the full release (within 10% of the official count) but differs"""
    if enabled and official and 0.9 * official <= n <= 1.1 * official and n != official:
        raise UsageError(f"{path}: {n} {what}, the official release has {official}; a damaged copy? "
                         f"(--check-counts=0 scores it anyway)")


def ref(path, where, box=None):
    """an image to encode: its path, an optional crop box (x0, y0, x1, y1), and where it was named (for errors)"""
    return (path, box, where)

# -----------------------------------------------------------------------------
# encoding


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, refs, size):
        self.refs, self.size = refs, size

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        path, box, where = self.refs[i]
        try:
            img = data.load_image(path)
        except OSError as e:
            raise OSError(f"{where}: {e}") from e
        if box is not None:
            img = img.crop(box)  # ARO: the region the captions describe, before resizing
        return data.preprocess(img, self.size)


class Encoder:
    """batched unit embeddings of images (by path, optional crop) and texts, each distinct input encoded once"""

    def __init__(self, model, tokenizer, device="cpu", batch_size=256, workers=0, progress=True):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.image_size = model.cfg.image_size
        # bars only on a terminal: redirected to a file they would be one endless line
        self.batch_size, self.workers, self.progress = batch_size, workers, progress and sys.stderr.isatty()
        self.image_cache, self.text_cache = {}, {}

    @torch.no_grad()
    def images(self, refs, desc="images"):
        """list of ref(...) -> (n, d) float on the CPU"""
        new = {}
        for path, box, where in refs:
            if (path, box) not in self.image_cache and (path, box) not in new:
                if not os.path.isfile(path):
                    raise MissingFileError(f"{where}: image not found: {path}")
                new[(path, box)] = (path, box, where)
        if new:
            loader = torch.utils.data.DataLoader(_ImageFiles(list(new.values()), self.image_size),
                                                 batch_size=self.batch_size, num_workers=self.workers)
            out = []
            for batch in tqdm(loader, desc=desc, disable=not self.progress, leave=False):
                out.append(self.model.encode_image(batch.to(self.device))[0].float().cpu())
            self.image_cache.update(zip(new, torch.cat(out)))
        return torch.stack([self.image_cache[(p, b)] for p, b, _ in refs])

    @torch.no_grad()
    def texts(self, texts, desc="texts"):
        """list of str -> (n, d) float on the CPU; identical strings get the identical vector"""
        new = list(dict.fromkeys(t for t in texts if t not in self.text_cache))
        it = range(0, len(new), self.batch_size)
        for i in tqdm(it, desc=desc, disable=not self.progress or len(it) < 2, leave=False):
            chunk = new[i:i + self.batch_size]
            emb = self.model.encode_text(self.tokenizer.encode(chunk).to(self.device)).float().cpu()
            self.text_cache.update(zip(chunk, emb))
        return torch.stack([self.text_cache[t] for t in texts])

# -----------------------------------------------------------------------------
# the shared selection scorer


def selection(img, txt, strict=True, chunk=4096):
    """CLIP_benchmark's image_caption_selection with explicit ties.

    img (N, n_img, d), txt (N, n_cap, d), unit. Ground truth is positional: image i matches caption i for
    i < m = min(n_img, n_cap); the other captions (or images) are distractors. Returns per instance
    text_ok (N,): every image i < m scores its caption above every other caption, and image_ok (N,): every
    caption i < m scores its image above every other image. strict: a tie is wrong; strict=False gives a
    tie to the positive (ARO-Order, where the official argmax breaks ties toward index 0 = the true caption).
    """
    n_img, n_cap = img.shape[1], txt.shape[1]
    m = min(n_img, n_cap)
    beats = torch.gt if strict else torch.ge
    eye = torch.eye(n_img, n_cap, dtype=torch.bool)
    text_ok, image_ok = [], []
    for s0 in range(0, img.shape[0], chunk):
        # elementwise product + sum, not bmm: equal inputs give bitwise-equal scores, so ties are real ties
        s = (img[s0:s0 + chunk, :, None, :] * txt[s0:s0 + chunk, None, :, :]).sum(-1)  # (n, n_img, n_cap)
        pos = s.diagonal(dim1=1, dim2=2)  # (n, m)
        others = s.masked_fill(eye, float("-inf"))
        text_ok.append(beats(pos, others[:, :m, :].amax(2)).all(1))
        image_ok.append(beats(pos, others[:, :, :m].amax(1)).all(1))
    return torch.cat(text_ok), torch.cat(image_ok)


def selection_metrics(text_ok, image_ok):
    """CLIP_benchmark keys: acc = both directions right, text_acc = image->text, image_acc = text->image"""
    return {"acc": (text_ok & image_ok).double().mean().item(), "text_acc": text_ok.double().mean().item(),
            "image_acc": image_ok.double().mean().item()}


def result(dataset, task, metrics, n, **protocol):
    return {"dataset": dataset, "task": task, "metrics": metrics, "n_records": n, "protocol": protocol}


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")

# -----------------------------------------------------------------------------
# SugarCrepe (and SugarCrepe-shaped files: the world's binding test)


def score_sugarcrepe_file(enc, path, image_root, official=None, check_counts=True):
    """dict of {filename, caption, negative_caption}; correct iff cos(img, caption) > cos(img, negative)"""
    records = records_of(load_json(path), path, "dict")
    check_count(path, len(records), official, check_counts)
    refs, texts = [], []
    for key, r in records:
        refs.append(ref(os.path.join(image_root, field(r, "filename", path, key)), f"{path}: record {key}"))
        texts += [field(r, "caption", path, key), field(r, "negative_caption", path, key)]
    name = os.path.basename(path)
    img = enc.images(refs, desc=name)[:, None]  # (n, 1, d)
    txt = enc.texts(texts, desc=name).view(len(records), 2, -1)  # (n, [caption, negative], d)
    return selection_metrics(*selection(img, txt)), len(records)


def eval_sugarcrepe(enc, folder, image_root, check_counts=True, prefix="sugar_crepe"):
    """every <subset>.json in folder; groups and the overall mean over the official subsets present"""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    if not files:
        raise MissingFileError(f"{folder}: no SugarCrepe .json files")
    out, acc = [], {}
    for f in files:
        sub = f[:-5]
        metrics, n = score_sugarcrepe_file(enc, os.path.join(folder, f), image_root,
                                           SUGARCREPE_COUNTS.get(sub) if prefix == "sugar_crepe" else None, check_counts)
        acc[sub] = metrics["acc"]
        out.append(result(f"{prefix}/{sub}", "image_caption_selection", metrics, n, ties="wrong"))
    if prefix == "sugar_crepe":
        present = [s for s in SUGARCREPE_COUNTS if s in acc]
        if check_counts and len(present) < len(SUGARCREPE_COUNTS):
            print(f"warning: {folder}: only {len(present)} of the 7 SugarCrepe subsets present")
        groups = {g: [s for s in members if s in acc] for g, members in SUGARCREPE_GROUPS.items()}
        metrics = {g: mean(acc[s] for s in members) for g, members in groups.items() if members}
        if present:
            metrics["overall"] = mean(acc[s] for s in present)
        out.append(result("sugar_crepe", "image_caption_selection_summary", metrics, len(present),
                          groups={g: m for g, m in groups.items() if m},
                          overall=f"unweighted mean of the {len(present)} subset accuracies present (7 in the release)"))
    return out

# -----------------------------------------------------------------------------
# SugarCrepe++


def eval_sugarcrepe_pp(enc, folder, image_root, check_counts=True):
    """ITT, TOT and the auxiliary I-P1-N, I-P2-N per subset; 5-subset means and replace / swap group means"""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    if not files:
        raise MissingFileError(f"{folder}: no SugarCrepe++ .json files")
    out, per = [], {}
    for f in files:
        path, sub = os.path.join(folder, f), f[:-5]
        records = records_of(load_json(path), path, "list")
        check_count(path, len(records), SCPP_COUNTS.get(sub), check_counts)
        refs, texts = [], []
        for key, r in records:
            refs.append(ref(os.path.join(image_root, field(r, "filename", path, key)), f"{path}: record {key}"))
            texts += [field(r, "caption", path, key), field(r, "caption2", path, key),
                      field(r, "negative_caption", path, key)]
        img = enc.images(refs, desc=f)[:, None]
        p1, p2, neg = enc.texts(texts, desc=f).view(len(records), 3, -1).unbind(1)
        ip1 = selection(img, torch.stack([p1, neg], 1))[0]  # cos(I, P1) > cos(I, N)
        ip2 = selection(img, torch.stack([p2, neg], 1))[0]
        tot1 = selection(p1[:, None], torch.stack([p2, neg], 1))[0]  # cos(P1, P2) > cos(P1, N)
        tot2 = selection(p2[:, None], torch.stack([p1, neg], 1))[0]  # cos(P2, P1) > cos(P2, N)
        m = {"itt": (ip1 & ip2).double().mean().item(), "tot": (tot1 & tot2).double().mean().item(),
             "i_p1_n": ip1.double().mean().item(), "i_p2_n": ip2.double().mean().item()}
        per[sub] = m
        out.append(result(f"sugar_crepe_pp/{sub}", "image_caption_selection", m, len(records), ties="wrong"))
    summary = {}
    for k in ("itt", "tot", "i_p1_n", "i_p2_n"):
        summary[f"{k}_mean"] = mean(m[k] for m in per.values())
        for g in ("replace", "swap"):
            members = [s for s in per if s.startswith(g + "_")]
            if members:
                summary[f"{k}_{g}"] = mean(per[s][k] for s in members)
    out.append(result("sugar_crepe_pp", "image_caption_selection_summary", summary, len(per),
                      means="unweighted over the subsets present", subsets=sorted(per)))
    return out

# -----------------------------------------------------------------------------
# ARO: VG-Relation, VG-Attribution (macro, official) and COCO/Flickr-Order


def _grouped_accuracy(correct, groups, keep):
    """mean over groups g with keep(g, count) of the group's accuracy"""
    per = {}
    for ok, g in zip(correct.tolist(), groups):
        per.setdefault(g, []).append(ok)
    kept = {g: mean(v) for g, v in per.items() if keep(g, len(v))}
    return mean(kept.values()), len(kept)


def score_vg(enc, path, image_root, kind, min_count=25, check_counts=True):
    """kind 'relation' or 'attribution': options [false, true] on the bbox crop, correct iff true wins (ties wrong)"""
    records = records_of(load_json(path), path, "list")
    check_count(path, len(records), ARO_COUNTS[f"visual_genome_{kind}"], check_counts)
    refs, texts, groups = [], [], []
    for key, r in records:
        x, y, w, h = (field(r, k, path, key, (int, float)) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        refs.append(ref(os.path.join(image_root, field(r, "image_path", path, key)), f"{path}: record {key}",
                        (x, y, x + w, y + h)))
        texts += [field(r, "true_caption", path, key), field(r, "false_caption", path, key)]
        if kind == "relation":
            groups.append(field(r, "relation_name", path, key))
        else:
            a = field(r, "attributes", path, key, list)
            if len(a) != 2:
                raise UsageError(f"{path}: record {key}: 'attributes' must hold 2 strings, got {a!r}")
            groups.append(f"{a[0]}_{a[1]}")
    img = enc.images(refs, desc=f"vg-{kind}")[:, None]
    txt = enc.texts(texts, desc=f"vg-{kind}").view(len(records), 2, -1)  # positives first: [true, false]
    correct = selection(img, txt)[0]
    if kind == "relation":
        macro, k = _grouped_accuracy(correct, groups, lambda g, n: g not in ARO_SYMMETRIC)
        rule = f"mean over {k} relations of the per-relation accuracy, the 157 symmetric relations dropped"
    else:
        macro, k = _grouped_accuracy(correct, groups, lambda g, n: n >= min_count)
        rule = f"mean over {k} attribute pairs 'a0_a1' with >= {min_count} records"
    metrics = {"macro_acc": macro, "micro_acc": correct.double().mean().item()}
    return result(f"aro/vg_{kind}", "image_caption_selection", metrics, len(records), macro=rule, ties="wrong"), macro

# ARO-Order perturbations, our offline implementation of the official spaCy/NLTK ones

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_ORDER_PUNCT = re.compile(r'[.!"()*#:;~]')
NOUN_TAGS, ADJ_TAGS = {"NN", "NNS", "NNP", "NNPS"}, {"JJ", "JJR", "JJS"}
_tagger = None


def pos_tags(tokens):
    """PTB tags from textblob's offline pattern tagger (stand-in for spaCy en_core_web_sm)"""
    global _tagger
    if _tagger is None:
        from textblob.en.taggers import PatternTagger
        _tagger = PatternTagger()
    tags = [t for _, t in _tagger.tag(" ".join(tokens), tokenize=False)]
    if len(tags) != len(tokens):
        raise RuntimeError(f"tagger returned {len(tags)} tags for {len(tokens)} tokens: {tokens}")
    return tags


def pre_caption(caption, max_words=30):
    """ARO/BLIP cleaning: lowercase, listed punctuation -> space, collapse spaces, first max_words words"""
    caption = re.sub(r"\s+", " ", _ORDER_PUNCT.sub(" ", caption.lower())).strip()
    return " ".join(caption.split(" ")[:max_words])


def _permute_positions(tokens, positions, rng):
    out, values = list(tokens), [tokens[i] for i in positions]
    rng.shuffle(values)
    for i, v in zip(positions, values):
        out[i] = v
    return out


def _trigrams(tokens):
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def order_perturbations(caption, rng):
    """[f1..f4](caption): nouns/adjectives permuted among their positions; every other token among theirs;
    words shuffled inside consecutive trigrams; the trigrams' order shuffled"""
    tokens = _TOKEN.findall(caption)
    tags = pos_tags(tokens)
    nouns = [i for i, t in enumerate(tags) if t in NOUN_TAGS]
    adjs = [i for i, t in enumerate(tags) if t in ADJ_TAGS]
    rest = [i for i, t in enumerate(tags) if t not in NOUN_TAGS | ADJ_TAGS]
    f1 = _permute_positions(_permute_positions(tokens, nouns, rng), adjs, rng)
    f2 = _permute_positions(tokens, rest, rng)
    f3 = []
    for tri in _trigrams(tokens):
        tri = list(tri)
        rng.shuffle(tri)
        f3 += tri
    tris = _trigrams(tokens)
    rng.shuffle(tris)
    f4 = [w for tri in tris for w in tri]
    return [" ".join(f) for f in (f1, f2, f3, f4)]


def read_caption_list(path, image_root, max_captions=None):
    """BLIP list form [{"image": relative path, "caption": [str, ...]}] -> (refs, captions, caption -> image index)"""
    refs, captions, owner = [], [], []
    for key, r in records_of(load_json(path), path, "list"):
        caps = r.get("caption")
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise UsageError(f"{path}: record {key}: field 'caption' must be a non-empty list of strings")
        refs.append(ref(os.path.join(image_root, field(r, "image", path, key)), f"{path}: record {key}"))
        caps = caps[:max_captions] if max_captions else caps
        captions += caps
        owner += [len(refs) - 1] * len(caps)
    return refs, captions, owner


def score_order(enc, path, image_root, name, official_images=None, seed=1, check_counts=True):
    """one case per (image, caption): [pre(c), pre(f1(c)), ..., pre(f4(c))]; correct iff index 0 wins strictly"""
    refs, captions, owner = read_caption_list(path, image_root)
    check_count(path, len(refs), official_images, check_counts, "images")
    rng = random.Random(seed)  # seeded once per file, consumed in caption order
    options = []
    for c in tqdm(captions, desc=f"{name} perturbations", disable=not enc.progress, leave=False):
        options += [pre_caption(c)] + [pre_caption(f) for f in order_perturbations(c, rng)]
    img = enc.images([refs[i] for i in owner], desc=name)[:, None]
    txt = enc.texts(options, desc=name).view(len(captions), 5, -1)
    p1 = selection(img, txt)[0].double().mean().item()
    return result(f"aro/{name}", "image_caption_selection", {"precision@1": p1}, len(captions),
                  perturbations="ARO-Order protocol, our perturbation implementation (regex tokenizer, "
                                f"textblob PatternTagger PTB tags, random.Random({seed}))",
                  ties="wrong (strict >; the official argmax would give them to the true caption)"), p1


def eval_aro(enc, root, min_count=25, seed=1, check_counts=True):
    out, summary = [], {}
    aro = os.path.join(root, "aro")
    for kind, key in (("relation", "vg_relation_macro"), ("attribution", "vg_attribution_macro")):
        path = os.path.join(aro, f"visual_genome_{kind}.json")
        if os.path.isfile(path):
            r, summary[key] = score_vg(enc, path, os.path.join(aro, "images"), kind, min_count, check_counts)
            out.append(r)
    for name, (fname, image_dir, n_images) in ORDER_FILES.items():
        path = os.path.join(root, "retrieval", fname)
        if os.path.isfile(path):
            r, summary[name] = score_order(enc, path, os.path.join(root, image_dir), name, n_images, seed, check_counts)
            out.append(r)
    if not out:
        raise MissingFileError(f"{root}: no ARO files (aro/visual_genome_*.json, retrieval/coco_karpathy_test.json, "
                                f"retrieval/flickr30k_test.json)")
    summary["avg"] = mean(summary.values())
    out.append(result("aro", "image_caption_selection_summary", summary, len(summary) - 1,
                      avg=f"unweighted mean of the {len(summary) - 1} ARO scores present (4 in DeGLA's Avg.)"))
    return out

# -----------------------------------------------------------------------------
# VALSE


def eval_valse(enc, root, check_counts=True, image_roots=None):
    """pairwise accuracy acc_r on records with mturk.caption >= 2, per piece; mean of pieces and per phenomenon"""
    folder = os.path.join(root, "valse")
    image_roots = {**{f: os.path.join(root, p[2]) for f, p in VALSE_PIECES.items()}, **(image_roots or {})}
    files = [f for f in VALSE_PIECES if os.path.isfile(os.path.join(folder, f + ".json"))]
    if not files:
        raise MissingFileError(f"{folder}: none of the VALSE files ({', '.join(VALSE_PIECES)}.json)")
    out, acc = [], {}
    for f in files:
        path = os.path.join(folder, f + ".json")
        records = records_of(load_json(path), path, "dict")
        _, _, _, n_raw, n_valid = VALSE_PIECES[f]
        check_count(path, len(records), n_raw, check_counts)
        refs, texts = [], []
        for key, r in records:
            mturk = field(r, "mturk", path, key, dict)
            if not isinstance(mturk.get("caption"), (int, float)):
                raise UsageError(f"{path}: record {key}: mturk.caption must be a number, got {mturk.get('caption')!r}")
            if mturk["caption"] < 2:  # annotators did not confirm the caption: not scored
                continue
            refs.append(ref(os.path.join(image_roots[f], field(r, "image_file", path, key)), f"{path}: record {key}"))
            texts += [field(r, "caption", path, key), field(r, "foil", path, key)]
        if check_counts and len(records) == n_raw and len(refs) != n_valid:
            raise UsageError(f"{path}: {len(refs)} records with mturk.caption >= 2, the official release has {n_valid}")
        if not refs:
            raise UsageError(f"{path}: no record has mturk.caption >= 2")
        text_ok, _ = selection(enc.images(refs, desc=f)[:, None], enc.texts(texts, desc=f).view(len(refs), 2, -1))
        acc[f] = text_ok.double().mean().item()
        out.append(result(f"valse/{f}", "image_caption_selection", {"acc_r": acc[f]}, len(refs),
                          records_in_file=len(records), filter="mturk.caption >= 2", ties="wrong"))
    summary = {"mean": mean(acc.values())}
    for phen in dict.fromkeys(p[1] for p in VALSE_PIECES.values()):
        members = [f for f in acc if VALSE_PIECES[f][1] == phen]
        if members:
            summary[phen] = mean(acc[f] for f in members)
    out.append(result("valse", "image_caption_selection_summary", summary, len(acc),
                      mean=f"unweighted mean of the {len(acc)} pieces present (11 in the release)"))
    return out

# -----------------------------------------------------------------------------
# Winoground


def eval_winoground(enc, folder, check_counts=True):
    path = os.path.join(folder, "examples.jsonl")
    records = load_jsonl(path)
    check_count(path, len(records), WINOGROUND_COUNT, check_counts)
    refs, texts, tags = [], [], []
    for key, r in records:
        for k in (0, 1):
            stem = field(r, f"image_{k}", path, key)
            refs.append(ref(os.path.join(folder, "images", stem + ".png"), f"{path}: {key}"))
        texts += [field(r, "caption_0", path, key), field(r, "caption_1", path, key)]
        tags.append(r.get("collapsed_tag"))
    n = len(records)
    text_ok, image_ok = selection(enc.images(refs, desc="winoground").view(n, 2, -1),
                                  enc.texts(texts, desc="winoground").view(n, 2, -1))
    metrics = selection_metrics(text_ok, image_ok)  # text / image / group = text_acc / image_acc / acc
    for tag in sorted(set(t for t in tags if t)):
        mask = torch.tensor([t == tag for t in tags])
        for k, v in selection_metrics(text_ok[mask], image_ok[mask]).items():
            metrics[f"{k}/{tag}"] = v
    return [result("winoground", "image_caption_selection", metrics, n, ties="wrong")]

# -----------------------------------------------------------------------------
# zero-shot classification


def read_image_folder(folder):
    """ImageFolder: class index = position in the sorted list of sub-folders (empty ones count as classes)"""
    if not os.path.isdir(folder):
        raise MissingFileError(f"{folder}: image folder not found")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    refs, labels = [], []
    for c, cls in enumerate(classes):
        for dirpath, dirnames, files in sorted(os.walk(os.path.join(folder, cls))):
            dirnames.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    refs.append(ref(os.path.join(dirpath, f), f"{folder}: class {cls!r}"))
                    labels.append(c)
    if not refs:
        raise MissingFileError(f"{folder}: no images in class sub-folders")
    return classes, refs, torch.tensor(labels)


def fill(template, name):
    return template.replace("{c}", name).replace("{}", name)


def class_weights(enc, classnames, templates, siglip=False):
    """(C, d): per class, the mean of its unit prompt embeddings, re-normalised. siglip: prompts canonicalised
    and a comma-separated name split into aliases that are all prompted and averaged together."""
    prompts = []
    for name in classnames:
        if siglip:
            aliases = [a.strip() for a in name.split(",") if a.strip()]
            prompts.append([canonicalize(fill(t, a)) for a in aliases for t in templates])
        else:
            prompts.append([fill(t, name) for t in templates])
    emb = enc.texts([p for ps in prompts for p in ps], desc="class prompts")
    w, start = [], 0
    for ps in prompts:
        w.append(emb[start:start + len(ps)].mean(0))
        start += len(ps)
    return torch.nn.functional.normalize(torch.stack(w), dim=-1)


def classification_metrics(logits, labels):
    """top-1, top-5 (NaN below 5 classes) and mean per-class recall; a class tied with the true one ranks above it"""
    true = logits.gather(1, labels[:, None])
    rank = (logits >= true).sum(1) - 1  # other classes scoring at least as high
    recall = [(rank[labels == c] < 1).double().mean().item() for c in labels.unique().tolist()]
    return {"acc1": (rank < 1).double().mean().item(),
            "acc5": (rank < 5).double().mean().item() if logits.shape[1] >= 5 else float("nan"),
            "mean_per_class_recall": mean(recall)}


def score_zeroshot(enc, folder, classnames=None, templates=None, siglip=False, names_file="", dataset=None):
    """classnames: aligned with the sorted class folders (default: folder names, '_' -> space)"""
    classes, refs, labels = read_image_folder(folder)
    if classnames is None:
        classnames = [c.replace("_", " ") for c in classes]
    if len(classnames) != len(classes):
        raise UsageError(f"{names_file or folder}: {len(classnames)} class names for {len(classes)} class folders in {folder}")
    if siglip:
        templates = SIGLIP_TEMPLATES
    templates = templates or OPENAI_TEMPLATES
    w = class_weights(enc, classnames, templates, siglip)
    logits = 100.0 * enc.images(refs, desc=os.path.basename(folder)) @ w.T  # (n, C)
    return result(dataset or os.path.basename(os.path.normpath(folder)), "zeroshot_classification",
                  classification_metrics(logits, labels), len(refs), classes=len(classes), templates=len(templates),
                  prompts="siglip (81 templates, canonicalised, comma aliases)" if siglip else "as given",
                  ties="counted against the true class")


def own_templates(choice):
    """--templates given as prompts ("a {c}|a photo of a {c}") -> their list; a named set -> None"""
    if "{" not in choice:
        return None
    templates = [t.strip() for t in choice.split("|") if t.strip()]
    if not all(t.count("{") == 1 and ("{c}" in t or "{}" in t) for t in templates):
        raise UsageError(f"--templates={choice!r}: each prompt holds the class name once, as {{c}} or {{}}, "
                         f"prompts separated by | (e.g. --templates='a {{c}}|a photo of a {{c}}')")
    return templates


def eval_zeroshot(enc, folder, templates_choice="auto"):
    """every dataset folder under folder; names and templates from classnames.json / templates.json when present"""
    names_file, tmpl_file = os.path.join(folder, "classnames.json"), os.path.join(folder, "templates.json")
    names = load_json(names_file) if os.path.isfile(names_file) else {}
    tmpls = load_json(tmpl_file) if os.path.isfile(tmpl_file) else {}
    for path, d in ((names_file, names), (tmpl_file, tmpls)):
        if not isinstance(d, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in d.values()):
            raise UsageError(f"{path}: expected {{\"<dataset>\": [strings]}}")
    datasets = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if os.path.isdir(folder) else []
    if not datasets:
        raise MissingFileError(f"{folder}: no dataset folders")
    out = []
    for ds in datasets:
        t = own_templates(templates_choice) or {"auto": tmpls.get(ds), "openai": OPENAI_TEMPLATES,
                                                "siglip": None}[templates_choice]
        out.append(score_zeroshot(enc, os.path.join(folder, ds), names.get(ds), t, templates_choice == "siglip",
                                  names_file, dataset=ds))
    return out

# -----------------------------------------------------------------------------
# retrieval


def read_karpathy(path, image_root, split="test", max_captions=5):
    """Karpathy JSON -> (refs, captions, caption -> image index); text = raw; path = image_root/filepath/filename"""
    obj = load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise UsageError(f"{path}: expected {{\"dataset\": ..., \"images\": [...]}}")
    refs, captions, owner = [], [], []
    for i, im in enumerate(obj["images"]):
        key = f"images[{i}]"
        if not isinstance(im, dict):
            raise UsageError(f"{path}: record {key}: expected an object")
        if field(im, "split", path, key) != split:
            continue
        sentences = field(im, "sentences", path, key, list)
        if not sentences:
            raise UsageError(f"{path}: record {key}: no sentences")
        refs.append(ref(os.path.join(image_root, im.get("filepath", ""), field(im, "filename", path, key)),
                        f"{path}: record {key}"))
        for j, s in enumerate(sentences[:max_captions] if max_captions else sentences):
            if not isinstance(s, dict):
                raise UsageError(f"{path}: record {key}.sentences[{j}]: expected an object")
            captions.append(field(s, "raw", path, f"{key}.sentences[{j}]"))
            owner.append(len(refs) - 1)
    if not refs:
        raise UsageError(f"{path}: no images with split {split!r}")
    return refs, captions, owner


def retrieval_metrics(img, txt, owner, ks=(1, 5, 10), chunk=1024):
    """img (n_img, d), txt (n_txt, d), owner (n_txt,) = each caption's image index; ties ranked against the truth.

    text_retrieval_recall@K (image -> text): fraction of images with >= 1 of their captions in the top K;
    image_retrieval_recall@K (text -> image): fraction of captions whose image is in the top K.
    """
    owner = torch.as_tensor(owner)
    rank_i2t = torch.empty(img.shape[0], dtype=torch.long)
    for r0 in range(0, img.shape[0], chunk):
        s = img[r0:r0 + chunk] @ txt.T  # (c, n_txt)
        own = owner[None, :] == torch.arange(r0, r0 + s.shape[0])[:, None]
        best = s.masked_fill(~own, float("-inf")).amax(1)  # each image's best true caption
        rank_i2t[r0:r0 + chunk] = ((s >= best[:, None]) & ~own).sum(1)
    rank_t2i = torch.empty(txt.shape[0], dtype=torch.long)
    for c0 in range(0, txt.shape[0], chunk):
        s = txt[c0:c0 + chunk] @ img.T  # (c, n_img)
        true = s.gather(1, owner[c0:c0 + chunk, None])
        rank_t2i[c0:c0 + chunk] = (s >= true).sum(1) - 1
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (rank_t2i < k).double().mean().item()
        out[f"text_retrieval_recall@{k}"] = (rank_i2t < k).double().mean().item()
    return out


def score_retrieval(enc, path, image_root, max_captions=5, folds=1, check_counts=True, official_images=None):
    """Karpathy (dict with "images") or BLIP list form, told apart by content; folds=5 on COCO = the 1K protocol"""
    obj = load_json(path)
    if isinstance(obj, list):
        refs, captions, owner = read_caption_list(path, image_root, max_captions)
    else:
        refs, captions, owner = read_karpathy(path, image_root, "test", max_captions)
    check_count(path, len(refs), official_images, check_counts, "test images")
    name = os.path.basename(path)[:-5]
    img, txt, owner = enc.images(refs, desc=name), enc.texts(captions, desc=name), torch.as_tensor(owner)
    per_fold, size = [], math.ceil(len(refs) / folds)
    for f in range(folds):
        lo, hi = f * size, min((f + 1) * size, len(refs))
        sel = (owner >= lo) & (owner < hi)
        per_fold.append(retrieval_metrics(img[lo:hi], txt[sel], owner[sel] - lo))
    metrics = {k: mean(m[k] for m in per_fold) for k in per_fold[0]}
    return result(name, "zeroshot_retrieval", metrics, len(refs), captions=len(captions),
                  max_captions_per_image=max_captions, split="test",
                  folds=f"mean over {folds} folds of consecutive images" if folds > 1 else "all test images at once",
                  ties="counted against the true item")


def eval_retrieval(enc, root, max_captions=5, folds=1, check_counts=True):
    folder = os.path.join(root, "retrieval")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    if not files:
        raise MissingFileError(f"{folder}: no retrieval .json files")
    out = []
    for f in files:
        image_dir, n_images = RETRIEVAL_FILES.get(f, ("retrieval", None))
        out.append(score_retrieval(enc, os.path.join(folder, f), os.path.join(root, image_dir), max_captions, folds,
                                   check_counts, n_images))
    return out

# -----------------------------------------------------------------------------
# running benchmarks under a root

TASKS = ["sugarcrepe", "sugarcrepe++", "binding", "aro", "valse", "winoground", "zeroshot", "retrieval"]


def found(task, root):
    """is this task's data under root (the layout in the docstring)?"""
    j = lambda *p: os.path.join(root, *p)
    return {"sugarcrepe": os.path.isdir(j("sugarcrepe")), "sugarcrepe++": os.path.isdir(j("sugarcrepe++")),
            "binding": os.path.isdir(j("binding")),
            "aro": (os.path.isfile(j("aro", "visual_genome_relation.json")) or os.path.isfile(j("aro", "visual_genome_attribution.json"))
                    or any(os.path.isfile(j("retrieval", f)) for f, _, _ in ORDER_FILES.values())),
            "valse": os.path.isdir(j("valse")), "winoground": os.path.isfile(j("winoground", "examples.jsonl")),
            "zeroshot": os.path.isdir(j("zeroshot")), "retrieval": os.path.isdir(j("retrieval"))}[task]


def run_task(enc, task, root, check_counts=True, max_captions=5, folds=1, templates="auto", vga_min_count=25, seed=1):
    """one task on the official layout under root -> list of results"""
    coco17 = os.path.join(root, "coco", "val2017")
    if task == "sugarcrepe":
        return eval_sugarcrepe(enc, os.path.join(root, "sugarcrepe"), coco17, check_counts)
    if task == "sugarcrepe++":
        return eval_sugarcrepe_pp(enc, os.path.join(root, "sugarcrepe++"), coco17, check_counts)
    if task == "binding":
        return eval_sugarcrepe(enc, os.path.join(root, "binding"), coco17, check_counts, prefix="binding")
    if task == "aro":
        return eval_aro(enc, root, vga_min_count, seed, check_counts)
    if task == "valse":
        return eval_valse(enc, root, check_counts)
    if task == "winoground":
        return eval_winoground(enc, os.path.join(root, "winoground"), check_counts)
    if task == "zeroshot":
        return eval_zeroshot(enc, os.path.join(root, "zeroshot"), templates)
    if task == "retrieval":
        return eval_retrieval(enc, root, max_captions, folds, check_counts)
    raise ValueError(f"unknown task {task!r}; one of {TASKS}")


def run_benchmarks(enc, root, tasks, **options):
    """tasks that are not found under root are skipped when several are asked for, an error when one is"""
    if not os.path.isdir(root):
        raise MissingFileError(f"--root {root}: not a directory")
    out = []
    for task in tasks:
        if len(tasks) > 1 and not found(task, root):
            print(f"skipped {task}: not found under {root}")
            continue
        t0 = time.time()
        res = run_task(enc, task, root, **options)
        print(f"{task}: {len(res)} result(s) in {time.time() - t0:.1f}s", flush=True)
        out += res
    return out


def world_metrics(enc, root, n_scenes, seed, image_size, part="all", relations=False, templates="auto"):
    """one part of the world's held-out tests (world.PARTS), exported under root and scored -> {name: fraction};
    templates: the zero-shot prompts (auto = the world's three)"""
    world.export_world(root, n_scenes, seed, image_size, part, relations)
    res = run_benchmarks(enc, root, ["retrieval", "zeroshot", "binding", "sugarcrepe"], check_counts=False,
                         templates=templates)
    if relations:  # the relation tests go through the same SugarCrepe reader and selection scorer
        folder = world.export_world_relations(root, n_scenes, seed, image_size, part)
        res += eval_sugarcrepe(enc, folder, os.path.join(folder, "images"), False, prefix="relation")
    by = {r["dataset"]: r["metrics"] for r in res}
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_R@{k}"] = by["world"][f"text_retrieval_recall@{k}"]
        out[f"t2i_R@{k}"] = by["world"][f"image_retrieval_recall@{k}"]
    out["zeroshot_shape"] = by["world_shape"]["acc1"]
    out["zeroshot_colour_shape"] = by["world_colour_shape"]["acc1"]
    out["concept_binding"] = by["binding/concept_binding"]["acc"]
    for sub in ("swap_att", "swap_obj", "replace_att", "replace_obj", "add_att", "add_obj"):
        out[sub] = by[f"sugar_crepe/{sub}"]["acc"]
    if relations:
        for sub in ("swap_rel", "replace_rel"):
            out[sub] = by[f"relation/{sub}"]["acc"]
    return out


def evaluate_world(model, tokenizer, seed=0, n_scenes=1000, image_size=32, device="cpu", batch_size=256,
                   progress=False, world_split="default", relations=False, templates="auto"):
    """the built-in world's held-out tests, through the benchmark readers and scorers; returns {name: fraction}.

    world_split="compositional": every test twice, on seen and on unseen compositions ("seen/<name>",
    "unseen/<name>"; world.export_world and world.export_world_relations say which records each part holds).
    relations: adds the relation tests swap_rel and replace_rel. templates: as evaluate.py's --templates.
    """
    parts = ["seen", "unseen"] if world_split == "compositional" else ["all"]
    out = {}
    for part in parts:
        enc = Encoder(model, tokenizer, device, batch_size, progress=progress)  # its image cache is keyed by path
        with tempfile.TemporaryDirectory() as root:
            m = world_metrics(enc, root, n_scenes, seed, image_size, part, relations, templates)
        out.update(m if part == "all" else {f"{part}/{k}": v for k, v in m.items()})
    return out

# -----------------------------------------------------------------------------
# output

def final_eval(model, tokenizer, cfg, image_size, device, log=print):
    """the end of a training run: the built-in world's held-out tests for the world the run trained on
    (cfg: train.Config), printed and written to out_dir/eval.json"""
    t0 = time.time()
    log(f"evaluating on the held-out world ({cfg.eval_scenes} scenes per test) ...")
    model.eval()
    results = evaluate_world(model, tokenizer, seed=cfg.world_seed, n_scenes=cfg.eval_scenes, image_size=image_size,
                             device=device, world_split=cfg.world_split, relations=cfg.relations)
    print_table(results)
    with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    log(f"wrote {os.path.join(cfg.out_dir, 'eval.json')} (evaluation {time.time() - t0:.1f}s)")
    return results


def print_table(results, title="built-in world, held-out scenes"):
    """flat {metric: fraction} -> table of x100"""
    print(f"\n{title}")
    print(f"{'metric':28s} {'value':>8s}")
    for k, v in results.items():
        print(f"{k:28s} {100 * v:8.1f}")


def print_results(results):
    print(f"\n{'dataset':34s} {'metric':32s} {'value':>7s} {'n':>7s}")
    for r in results:
        for k, v in r["metrics"].items():
            print(f"{r['dataset']:34s} {k:32s} {100 * v:7.1f} {r['n_records']:7d}")


def write_results(results, out_dir, model_name, pretrained):
    """one CLIP_benchmark-shaped JSON per (dataset, model); NaN (top-5 below 5 classes) is written as null"""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(pretrained))[0]
    paths = []
    for r in results:
        doc = {"dataset": r["dataset"], "model": model_name, "pretrained": pretrained, "task": r["task"],
               "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r["metrics"].items()},
               "language": "en", "n_records": r["n_records"], "protocol": r["protocol"]}
        path = os.path.join(out_dir, f"{r['dataset'].replace('/', '__')}__{stem}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
        paths.append(path)
    return paths


@dataclass
class EvalConfig:
    # what to evaluate
    ckpt: str = ""                   # checkpoint to evaluate (ckpt.pt from train.py or convert.py); required
    task: str = "world"              # world | all | attention | one of TASKS (sugarcrepe, aro, ...)
    root: str = ""                   # benchmark root, laid out as above (not needed for --task=world)
    out: str = ""                    # output folder (default: benchmarks/ beside the checkpoint)
    # how
    batch_size: int = 256            # images or captions per forward
    workers: int = 0                 # image loading processes
    device: str = "auto"             # auto | cpu | cuda
    threads: int = 0                 # torch CPU threads (0 = one per core)
    # protocol
    check_counts: bool = True        # assert official record counts on full-size files
    max_captions: int = 5            # retrieval captions per image (0 = all)
    folds: int = 1                   # retrieval: 5 = COCO 1K protocol (mean over 5 folds)
    templates: str = "auto"          # zero-shot prompts: auto (templates.json entry, else the 80 OpenAI ones) | openai | siglip | your own, '|'-separated ("a {c}|a photo of a {c}")
    vga_min_count: int = 25          # ARO VG-Attribution: records per pair in the macro average
    order_seed: int = 1              # ARO-Order perturbation seed
    scenes: int = 1000               # world: held-out scenes per test
    seed: int = 0                    # world: seed of the held-out scenes
    image_head: str = "main"         # main | concept: a --concept_head run scored with its concept head's pooling
    # attention figure
    compare: str = ""                # a second checkpoint, drawn beside --ckpt with the difference
    temperature: float = 1.0         # lambda inside the patch softmax


def main(a):
    from checkpoint import load_checkpoint, model_from_checkpoint
    from cli import check_choice
    if not a.ckpt:
        raise UsageError("--ckpt is required: the checkpoint to evaluate, e.g. --ckpt=runs/siglip/ckpt.pt")
    check_choice("task", a.task, ["world", "all", "attention"] + TASKS)
    if own_templates(a.templates) is None:
        check_choice("templates", a.templates, ("auto", "openai", "siglip"))
    check_choice("device", a.device, ("auto", "cpu", "cuda"))
    if a.task not in ("world", "attention"):
        if not a.root:
            raise UsageError(f"--task={a.task} needs --root, the folder holding the benchmarks (layout: --help)")
        if not os.path.isdir(a.root):
            raise MissingFileError(f"--root={a.root}: not a directory; give the folder holding the benchmarks")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    torch.set_num_threads(a.threads or min(torch.get_num_threads(), os.cpu_count() or 1))
    ckpt = load_checkpoint(a.ckpt)
    model, tokenizer = model_from_checkpoint(ckpt)
    model.to(device)
    check_choice("image_head", a.image_head, ("main", "concept"))
    if a.image_head == "concept":
        if not model.cfg.concept_head:
            raise UsageError(f"--image_head=concept: {a.ckpt} has no concept head (train with --concept_head)")
        model.image_head = "concept"
    here = os.path.dirname(os.path.abspath(a.ckpt))
    out_dir = a.out or os.path.join(here, "benchmarks")
    if a.task == "attention":
        import figures
        models = [(os.path.basename(here), model)]
        if a.compare:
            other, other_tok = model_from_checkpoint(load_checkpoint(a.compare))
            if other_tok.state_dict() != tokenizer.state_dict():
                raise UsageError(f"--compare={a.compare} uses another tokenizer than --ckpt; compare runs of one vocabulary")
            models.append((os.path.basename(os.path.dirname(os.path.abspath(a.compare))), other.to(device)))
        path = a.out or os.path.join(here, "attention.png")
        figures.attention_figure(path, models, tokenizer, n_scenes=3, seed=a.seed, image_size=model.cfg.image_size,
                                 temperature=a.temperature)
        print(f"wrote {path}")
    elif a.task == "world":
        print(f"evaluating {a.ckpt} on the held-out world ({a.scenes} scenes per test) ...", flush=True)
        trained = ckpt.get("config", {})  # the world the checkpoint was trained on: its split and caption style
        res = evaluate_world(model, tokenizer, a.seed, a.scenes, model.cfg.image_size, device, a.batch_size, True,
                             trained.get("world_split", "default"), trained.get("relations", False), a.templates)
        print_table(res)
        os.makedirs(out_dir, exist_ok=True)
        name = "world" + ("_concept_head" if a.image_head == "concept" else "") \
            + ("_templates" if a.templates != "auto" else "") + ".json"
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump({"checkpoint": a.ckpt, "image_head": a.image_head, "templates": a.templates, "results": res}, f,
                      indent=2)
        print(f"wrote {os.path.join(out_dir, name)}")
    else:
        tasks = TASKS if a.task == "all" else [a.task]
        if not any(found(t, a.root) for t in tasks):
            raise MissingFileError(f"--root={a.root}: no benchmark found for --task={a.task}; "
                                   f"lay the files out as `python evaluate.py --help` shows")
        enc = Encoder(model, tokenizer, device, a.batch_size, a.workers)
        res = run_benchmarks(enc, a.root, tasks, check_counts=a.check_counts, max_captions=a.max_captions or None,
                             folds=a.folds, templates=a.templates, vga_min_count=a.vga_min_count, seed=a.order_seed)
        print_results(res)
        name = f"dual-encoder-{ckpt.get('config', {}).get('model', 'custom')}"
        paths = write_results(res, out_dir, name, a.ckpt)
        print(f"wrote {len(paths)} files to {out_dir}")


if __name__ == "__main__":
    from cli import run
    run(main, EvalConfig, doc=__doc__)

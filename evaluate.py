"""
Evaluate a checkpoint: retrieval, zero-shot classification and binding tests on held-out scenes of
the built-in world.

    python evaluate.py --ckpt=runs/default/ckpt.pt            # table on stdout, JSON beside the checkpoint

Scores are cosines of unit embeddings (t and b change no ranking). A selection test is correct only
if the true caption scores strictly higher than the false one: a tie counts as wrong.
"""

import argparse
import json
import os
import random

import torch

import data

# -----------------------------------------------------------------------------
# encoding


@torch.no_grad()
def encode_images(model, images, device="cpu", batch_size=256):
    """float images (n, 3, H, W) -> unit embeddings (n, d) on the CPU"""
    model.eval()
    out = [model.encode_image(images[i:i + batch_size].to(device))[0].float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, device="cpu", batch_size=1024):
    """list of str -> unit embeddings (n, d) on the CPU"""
    model.eval()
    out = [model.encode_text(tokenizer.encode(texts[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)

# -----------------------------------------------------------------------------
# metrics


def retrieval_recalls(img, txt, txt_image, ks=(1, 5, 10)):
    """img (n_img, d), txt (n_txt, d), txt_image (n_txt,) = index of each caption's image.

    image->text R@K: fraction of images with at least one of their captions in the top K;
    text->image R@K: fraction of captions whose image is in the top K. Ties go to the true item.
    """
    sim = img @ txt.T  # (n_img, n_txt)
    txt_image = torch.as_tensor(txt_image)
    own = txt_image[None, :] == torch.arange(img.shape[0])[:, None]  # (n_img, n_txt) true pairs
    best_true = sim.masked_fill(~own, float("-inf")).max(1).values  # each image's best true caption
    rank_i2t = (sim > best_true[:, None]).sum(1)  # captions strictly above it
    true_score = sim[txt_image, torch.arange(txt.shape[0])]
    rank_t2i = (sim > true_score[None, :]).sum(0)  # images strictly above each caption's own
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = (rank_i2t < k).float().mean().item()
        out[f"t2i_R@{k}"] = (rank_t2i < k).float().mean().item()
    return out


def selection_accuracy(img, pos, neg):
    """fraction where cos(image, true caption) > cos(image, false caption); ties are wrong"""
    return ((img * pos).sum(-1) > (img * neg).sum(-1)).float().mean().item()


def zeroshot_accuracy(img, labels, class_text):
    """class_text (C, d): per-class mean of template embeddings, re-normalised"""
    pred = (img @ class_text.T).argmax(1)
    return (pred == torch.as_tensor(labels)).float().mean().item()


def class_embeddings(model, tokenizer, classnames, templates, device="cpu"):
    emb = encode_texts(model, tokenizer, [t.format(c) for c in classnames for t in templates], device)
    emb = emb.view(len(classnames), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)

# -----------------------------------------------------------------------------
# the built-in world's held-out tests

SHAPE_TEMPLATES = ["a photo of a {}", "a {}", "a {} shape"]


def two_object_scenes(n, seed, image_size):
    """held-out scenes of exactly two objects with different colours and different shapes"""
    out, i = [], 0
    while len(out) < n:
        img, _, objs = data.make_scene(seed + data.TEST_SEED_OFFSET + 7, i, image_size, 2, 2)
        i += 1
        if objs[0]["colour"] != objs[1]["colour"] and objs[0]["shape"] != objs[1]["shape"]:
            out.append((img, objs))
    return out


def binding_cases(objs, rng):
    """(true, false) caption pairs for one two-object scene, per test"""
    a, b = objs
    ph = data.object_phrase
    two = lambda o1, o2: f"{ph(o1)} and {ph(o2)}"
    absent_colour = rng.choice([c for c in data.COLOURS if c not in (a["colour"], b["colour"])])
    absent_shape = rng.choice([s for s in data.SHAPES if s not in (a["shape"], b["shape"])])
    return {
        # the colour of the other object, on this object's shape
        "concept_binding": [(ph(a), ph({**a, "colour": b["colour"]})), (ph(b), ph({**b, "colour": a["colour"]}))],
        # "a red circle and a blue square" vs "a blue circle and a red square"
        "swap": [(two(a, b), two({**a, "colour": b["colour"]}, {**b, "colour": a["colour"]}))],
        "replace_att": [(two(a, b), two({**a, "colour": absent_colour}, b))],
        "replace_obj": [(two(a, b), two({**a, "shape": absent_shape}, b))],
    }


def evaluate_world(model, tokenizer, seed=0, n_scenes=1000, image_size=32, device="cpu"):
    """every world test on held-out scenes; returns {name: fraction}"""
    model.eval()
    results = {}
    # retrieval over long captions of held-out scenes
    images, captions, _ = data.make_world(n_scenes, seed, image_size, split="test")
    img = encode_images(model, torch.stack([data.to_tensor(im) for im in images]), device)
    txt = encode_texts(model, tokenizer, captions, device)
    results.update(retrieval_recalls(img, txt, torch.arange(n_scenes)))
    # zero-shot on single-object scenes: shape (6 classes) and colour + shape (48)
    single = [data.make_scene(seed + data.TEST_SEED_OFFSET + 3, i, image_size, 1, 1) for i in range(n_scenes)]
    img1 = encode_images(model, torch.stack([data.to_tensor(s[0]) for s in single]), device)
    shapes = [data.SHAPES.index(s[2][0]["shape"]) for s in single]
    results["zeroshot_shape"] = zeroshot_accuracy(
        img1, shapes, class_embeddings(model, tokenizer, data.SHAPES, SHAPE_TEMPLATES, device))
    pairs = [(c, s) for c in data.COLOURS for s in data.SHAPES]
    labels = [pairs.index((s[2][0]["colour"], s[2][0]["shape"])) for s in single]
    results["zeroshot_colour_shape"] = zeroshot_accuracy(
        img1, labels, class_embeddings(model, tokenizer, [f"{c} {s}" for c, s in pairs], SHAPE_TEMPLATES, device))
    # binding tests on two-object scenes
    scenes = two_object_scenes(n_scenes, seed, image_size)
    img2 = encode_images(model, torch.stack([data.to_tensor(im) for im, _ in scenes]), device)
    rng = random.Random(seed)
    cases = {}
    for i, (_, objs) in enumerate(scenes):
        for name, pairs_ in binding_cases(objs, rng).items():
            cases.setdefault(name, []).extend((i, p, n) for p, n in pairs_)
    for name, rows in cases.items():
        idx = torch.tensor([r[0] for r in rows])
        pos = encode_texts(model, tokenizer, [r[1] for r in rows], device)
        neg = encode_texts(model, tokenizer, [r[2] for r in rows], device)
        results[name] = selection_accuracy(img2[idx], pos, neg)
    return results


def print_table(results, title="built-in world, held-out scenes"):
    print(f"\n{title}")
    print(f"{'metric':28s} {'value':>8s}")
    for k, v in results.items():
        print(f"{k:28s} {100 * v:8.1f}")


if __name__ == "__main__":
    from train import load_checkpoint, model_from_checkpoint
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="", help="results JSON (default: eval.json beside the checkpoint)")
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    ckpt = load_checkpoint(a.ckpt)
    model, tokenizer = model_from_checkpoint(ckpt)
    model.to(a.device)
    res = evaluate_world(model, tokenizer, a.seed, a.scenes, model.cfg.image_size, a.device)
    print_table(res)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), "eval.json")
    with open(out, "w") as f:
        json.dump({"checkpoint": a.ckpt, "results": res}, f, indent=2)
    print(f"wrote {out}")

"""
Pictures of runs: training curves, and C2LIP's concept attention maps.

    python figures.py --runs=runs/siglip,runs/c2lip --out=curves.png     # loss terms, lr, t, b, evaluation
    python figures.py --runs=runs/s0,runs/s1 --seeds=true --out=seeds.png  # what each kept checkpoint reads
    python figures.py --runs=runs/a,runs/b --relations=true               # a table: how each run reads relations
    python evaluate.py --task=attention --ckpt=A/ckpt.pt --compare=B/ckpt.pt   # attention maps (drawn here)

Both draw with matplotlib (imported when a figure is drawn, so the rest of the project does not need it).
"""

import itertools
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

import data
import world
from cli import MissingFileError, UsageError


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    return plt

# -----------------------------------------------------------------------------
# training curves


def read_run(run_dir):
    """(metrics rows from metrics.jsonl, eval.json dict or None) of one run folder"""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: not found; --runs takes run folders written by train.py (its --out_dir)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{n}: not a JSON line ({e.msg}); was the file edited?") from None
    evals = None
    if os.path.isfile(os.path.join(run_dir, "eval.json")):
        with open(os.path.join(run_dir, "eval.json")) as f:
            evals = json.load(f)
    return rows, evals


NOT_TERMS = {"step", "loss", "lr", "t", "b", "img_s", "elapsed_s"}


def curves_figure(path, runs):
    """PNG of one or more runs: total loss, each loss term, lr, logit scale t and bias b against the step,
    and the final evaluation of each run as grouped bars. runs: [(name, run_dir)]"""
    plt = _pyplot()
    read = [(name, *read_run(d)) for name, d in runs]
    terms = sorted({k for _, rows, _ in read for r in rows for k in r if k not in NOT_TERMS})
    panels = ["loss"] + terms + ["lr", "t", "b"]
    has_eval = any(ev for _, _, ev in read)
    n = len(panels) + has_eval
    cols = 3
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.4 * ((n + cols - 1) // cols)),
                             squeeze=False)
    titles = {"loss": "total loss (weighted sum)", "lr": "learning rate", "t": "logit scale t = exp(t')",
              "b": "logit bias b"}
    for ax, key in zip(axes.flat, panels):
        for name, rows, _ in read:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(titles.get(key, f"loss term: {key}"))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if has_eval:
        ax = axes.flat[len(panels)]
        keys = [k for k in next(ev for _, _, ev in read if ev)]
        width = 0.8 / len(read)
        for j, (name, _, ev) in enumerate(read):
            if ev:
                ax.bar([i + j * width for i in range(len(keys))], [100 * ev.get(k, float("nan")) for k in keys],
                       width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys, rotation=70, fontsize=7)
        ax.set_ylabel("% on held-out scenes")
        ax.set_title("final evaluation (eval.json)")
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("training curves: " + ", ".join(name for name, _ in runs))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

# -----------------------------------------------------------------------------
# concept attention maps (C2LIP Figure 2 style)


@torch.no_grad()
def concept_attention(model, tokenizer, images, phrases, temperature=1.0):
    """C2LIP's parameter-free cross-modal attention of each phrase over its image's patches.

    images (n, 3, H, W), phrases n strings -> (n, gh, gw) weights summing to 1 per image:
    softmax over patches of temperature * cos(u_t, c), u_t the MAP value-path tokens (METHOD.md §2.4).
    """
    model.eval()
    _, tokens = model.encode_image(images, return_tokens=True)  # (n, T, d)
    c = model.encode_text(tokenizer.encode(phrases).to(images.device))  # (n, d)
    a = torch.softmax(temperature * torch.einsum("ntd,nd->nt", tokens.float(), c.float()), dim=-1)
    g = int(round(a.shape[1] ** 0.5))
    return a.view(-1, g, g).cpu()


def quadrant_mass(m, cell, grid=world.GRID):
    """the share of an attention map (gh, gw) that falls in the world's grid cell `cell`"""
    gh = m.shape[0] // grid
    row, col = divmod(cell, grid)
    return m[row * gh:(row + 1) * gh, col * gh:(col + 1) * gh].sum().item()


def attention_figure(path, models, tokenizer, n_scenes=3, seed=0, image_size=32, temperature=1.0):
    """PNG: held-out two-object scenes, one row per object phrase: the image with the named object's grid cell
    outlined, each model's attention map, and with two models their difference (first minus second).

    Every model map shares one colour scale (0 to the largest weight in the figure), and every difference
    shares one symmetric scale, so colours compare across rows and columns. Returns per row the phrase, each
    model's attention mass in the named object's cell, and the maps. models: [(name, model)], one tokenizer."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle
    scenes = list(itertools.islice(world.binding_scenes(seed + world.TEST_SEED_OFFSET + 11, image_size), n_scenes))
    rows = [(img, o) for img, objs in scenes for o in objs]
    images = torch.stack([data.to_tensor(img) for img, _ in rows])
    phrases = [world.object_phrase(o) for _, o in rows]
    maps = [concept_attention(m, tokenizer, images.to(next(m.parameters()).device), phrases, temperature)
            for _, m in models]
    diff = maps[0] - maps[1] if len(models) == 2 else None
    vmax = max(mp.max().item() for mp in maps)
    dlim = max(diff.abs().max().item(), 1e-9) if diff is not None else None
    cols = 1 + len(models) + (diff is not None)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols + 1.2, 2.3 * len(rows) + 0.9), squeeze=False)
    stats = []
    for r, (img, obj) in enumerate(rows):
        g = maps[0].shape[-1]
        row, col = divmod(obj["cell"], world.GRID)
        ax = axes[r, 0]
        ax.imshow(img)
        s = img.shape[0] / world.GRID
        ax.add_patch(Rectangle((col * s - 0.5, row * s - 0.5), s, s, fill=False, ec="lime", lw=2))
        ax.set_ylabel(f'"{phrases[r]}"', fontsize=9)
        for j, ((name, _), mp) in enumerate(zip(models, maps), 1):
            im_w = axes[r, j].imshow(mp[r].numpy(), cmap="magma", vmin=0, vmax=vmax)
            cs = g / world.GRID
            axes[r, j].add_patch(Rectangle((col * cs - 0.5, row * cs - 0.5), cs, cs, fill=False, ec="lime", lw=1.5))
            axes[r, j].set_xlabel(f"in box: {100 * quadrant_mass(mp[r], obj['cell']):.0f}%", fontsize=8)
        if diff is not None:
            im_d = axes[r, -1].imshow(diff[r].numpy(), cmap="RdBu_r", vmin=-dlim, vmax=dlim)
            axes[r, -1].add_patch(Rectangle((col * cs - 0.5, row * cs - 0.5), cs, cs, fill=False, ec="lime", lw=1.5))
            axes[r, -1].set_xlabel(f"in box: {100 * quadrant_mass(diff[r], obj['cell']):+.0f} points", fontsize=8)
        stats.append({"phrase": phrases[r], "cell": obj["cell"],
                      **{f"mass_in_cell/{n}": quadrant_mass(mp[r], obj["cell"]) for (n, _), mp in zip(models, maps)},
                      **{n: mp[r].tolist() for (n, _), mp in zip(models, maps)}})
    heads = ["image (box: the named object)"] + [n for n, _ in models] \
        + ([f"{models[0][0]} minus {models[1][0]}"] if diff is not None else [])
    for j, h in enumerate(heads):
        axes[0, j].set_title(h, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"concept attention over patches: softmax of {temperature:g} x cos(patch token, phrase)\n"
                 f"(uniform = {100 / maps[0][0].numel():.1f}% per patch; 'in box' = share of the weight on the named object's cell)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    cax = fig.add_axes((0.895, 0.55, 0.015, 0.33))
    fig.colorbar(im_w, cax=cax).set_label("attention weight (all maps)", fontsize=8)
    if diff is not None:
        cax = fig.add_axes((0.895, 0.12, 0.015, 0.33))
        fig.colorbar(im_d, cax=cax).set_label("difference (same units)", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return stats

# -----------------------------------------------------------------------------
# why a seed stalls: what the saved checkpoints of a run read, step by step (METHOD.md §11)


def binding_scores(model, tokenizer, n=300, seed=0, image_size=32):
    """on n held-out two-object scenes with two colours: text_swap_cos, the mean cosine between a caption's
    embedding and that of the caption with the two colours swapped (1 = the text tower reads a bag of words);
    swap_acc, how often the image prefers its caption to the swapped one; image_cos and caption_cos, the mean
    pairwise cosine among the images and among the captions (near 1 = everything embedded alike)"""
    scenes = list(itertools.islice(world.binding_scenes(world.TEST_SEED_OFFSET + seed + 7, image_size), n))
    caps = [f"{world.object_phrase(a)} and {world.object_phrase(b)}" for _, (a, b) in scenes]
    swapped = [f"{world.object_phrase({**a, 'colour': b['colour']})} and {world.object_phrase({**b, 'colour': a['colour']})}"
               for _, (a, b) in scenes]
    images = torch.stack([data.to_tensor(img) for img, _ in scenes])
    model.eval()
    with torch.no_grad():
        x = model.encode_image(images)[0]
        y, z = model.encode_text(tokenizer.encode(caps)), model.encode_text(tokenizer.encode(swapped))
    off = ~torch.eye(len(scenes), dtype=torch.bool)
    return {"text_swap_cos": (y * z).sum(-1).mean().item(), "swap_acc": ((x * y).sum(-1) > (x * z).sum(-1)).float().mean().item(),
            "image_cos": (x @ x.T)[off].mean().item(), "caption_cos": (y @ y.T)[off].mean().item()}


def relation_scores(model, tokenizer, folder):
    """on a folder of the world's relation tests (world.export_world_relations): text_swap_cos, the mean cosine
    between a relation caption and its swap ("a red circle left of a blue square" / "a blue square left of a red
    circle"; 1 = the text tower reads the phrases around the relation as a bag of words); image_mirror_cos, the
    mean cosine between a scene and its left-right mirror image (1 = the image tower cannot tell left from right);
    and swap_acc, how often the image prefers the true caption (ties wrong, as the benchmark's scorer counts them)"""
    with open(os.path.join(folder, "swap_rel.json")) as f:
        records = list(json.load(f).values())
    images = torch.stack([data.to_tensor(np.array(data.load_image(os.path.join(folder, "images", r["filename"]))))
                          for r in records])
    model.eval()
    with torch.no_grad():
        x, mirrored = model.encode_image(images)[0], model.encode_image(images.flip(-1))[0]
        y = model.encode_text(tokenizer.encode([r["caption"] for r in records]))
        z = model.encode_text(tokenizer.encode([r["negative_caption"] for r in records]))
    return {"text_swap_cos": (y * z).sum(-1).mean().item(), "image_mirror_cos": (x * mirrored).sum(-1).mean().item(),
            "swap_acc": ((x * y).sum(-1) > (x * z).sum(-1)).float().mean().item(), "records": len(records)}


def position_scores(model, tokenizer, n=500, seed=0):
    """for a model whose vocabulary has the position words (--position_concepts, --position_contrast): over the
    objects of n held-out relation scenes, how often the image prefers "<object> at the top left" (its true cell)
    to the same object in the mirrored column (left_right) and in the mirrored row (top_bottom); 50 = the image
    embedding does not say where objects are"""
    images, _, objects = world.make_world(n, seed, model.cfg.image_size, split="test", relations=True)
    model.eval()
    right = {"left_right": 0, "top_bottom": 0}
    with torch.no_grad():
        x = model.encode_image(torch.stack([data.to_tensor(im) for im in images]))[0]
        count = 0
        for xi, objs in zip(x, objects):
            for o in objs:
                row, col = divmod(o["cell"], world.GRID)
                moved = {"left_right": row * world.GRID + (world.GRID - 1 - col),
                         "top_bottom": (world.GRID - 1 - row) * world.GRID + col}
                texts = [world.position_phrase(o)] + [world.position_phrase({**o, "cell": c}) for c in moved.values()]
                s = model.encode_text(tokenizer.encode(texts)) @ xi
                for j, key in enumerate(moved, 1):
                    right[key] += (s[0] > s[j]).item()
                count += 1
    return {key: v / count for key, v in right.items()} | {"objects": count}


def relations_table(runs, root, n=1000, seed=0):
    """relation_scores of each run's ckpt.pt on the seen and on the unseen relation tests of the compositional
    world (exported under root at the model's image size), printed and written to <run>/relation_scores.json.
    runs: [(name, run_dir)]"""
    from checkpoint import load_checkpoint, model_from_checkpoint
    width, folders = max(len(name) for name, _ in runs) + 2, {}
    print(f"{'run':{width}s} text_swap_cos seen / unseen   image_mirror_cos seen / unseen   swap_acc seen / unseen")
    for name, run_dir in runs:
        model, tok = model_from_checkpoint(load_checkpoint(os.path.join(run_dir, "ckpt.pt")))
        size = model.cfg.image_size
        for part in ("seen", "unseen"):
            if (part, size) not in folders:
                folders[part, size] = world.export_world_relations(os.path.join(root, f"{part}_{size}"), n, seed, size, part)
        scores = {part: relation_scores(model, tok, folders[part, size]) for part in ("seen", "unseen")}
        if all(w in getattr(tok, "stoi", {}) for w in ("top", "bottom", "left", "right")):  # trained with position phrases
            scores["position"] = position_scores(model, tok)
        with open(os.path.join(run_dir, "relation_scores.json"), "w") as f:
            json.dump(scores, f, indent=1)
        print(f"{name:{width}s} {scores['seen']['text_swap_cos']:18.3f} / {scores['unseen']['text_swap_cos']:.3f}"
              f" {scores['seen']['image_mirror_cos']:21.3f} / {scores['unseen']['image_mirror_cos']:.3f}"
              f" {100 * scores['seen']['swap_acc']:17.1f} / {100 * scores['unseen']['swap_acc']:.1f}")
        if "position" in scores:
            p = scores["position"]
            print(f"{'':{width}s} position of an object: left/right {100 * p['left_right']:.1f}, "
                  f"top/bottom {100 * p['top_bottom']:.1f} over {p['objects']} held-out objects (chance 50)")


def checkpoint_steps(run_dir):
    """{step: path} of the run's kept ckpt_<step>.pt files (train.py --ckpt_every, --keep_ckpts)"""
    out = {}
    for name in os.listdir(run_dir):
        stem = name[len("ckpt_"):-len(".pt")] if name.startswith("ckpt_") and name.endswith(".pt") else ""
        if stem.isdigit():
            out[int(stem)] = os.path.join(run_dir, name)
    return dict(sorted(out.items()))


def seeds_figure(path, runs, n=300):
    """PNG: loss, t and b from metrics.jsonl, and binding_scores at every kept checkpoint, for each run;
    the scores also go to <run>/binding_scores.json. runs: [(name, run_dir)]"""
    from checkpoint import load_checkpoint, model_from_checkpoint
    plt = _pyplot()
    keys = ["loss", "t", "b", "text_swap_cos", "swap_acc", "image_cos", "caption_cos"]
    fig, axes = plt.subplots(2, 4, figsize=(20, 7), squeeze=False)
    for name, run_dir in runs:
        rows, _ = read_run(run_dir)
        scores = []
        for step, ckpt in checkpoint_steps(run_dir).items():
            model, tok = model_from_checkpoint(load_checkpoint(ckpt))
            scores.append({"step": step, **binding_scores(model, tok, n, image_size=model.cfg.image_size)})
        with open(os.path.join(run_dir, "binding_scores.json"), "w") as f:
            json.dump(scores, f, indent=1)
        for ax, key in zip(axes.flat, keys):
            pts = [(r["step"], r[key]) for r in (rows if key in ("loss", "t", "b") else scores) if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name, marker="" if key in ("loss", "t", "b") else "o")
    for ax, key in zip(axes.flat, keys):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -----------------------------------------------------------------------------
# command line


@dataclass
class CurvesConfig:
    runs: str = ""                   # comma-separated run folders (each train.py's --out_dir); required
    names: str = ""                  # comma-separated legend names (default: the folder names)
    out: str = "curves.png"          # the PNG to write
    seeds: bool = False              # instead: loss, t, b and what every kept checkpoint reads (figures.seeds_figure)
    relations: bool = False          # instead: print how each run's ckpt.pt reads the relation swap (figures.relations_table)


def main(cfg):
    dirs = [d for d in cfg.runs.split(",") if d]
    if not dirs:
        raise UsageError("--runs is required: comma-separated run folders, e.g. --runs=runs/siglip,runs/c2lip")
    names = cfg.names.split(",") if cfg.names else [os.path.basename(os.path.normpath(d)) for d in dirs]
    if len(names) != len(dirs):
        raise UsageError(f"--names has {len(names)} names for {len(dirs)} runs; give one per run")
    if cfg.relations:
        import tempfile
        with tempfile.TemporaryDirectory() as root:
            return relations_table(list(zip(names, dirs)), root)
    (seeds_figure if cfg.seeds else curves_figure)(cfg.out, list(zip(names, dirs)))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    from cli import run
    run(main, CurvesConfig, doc=__doc__)

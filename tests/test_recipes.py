"""The recipe files in configs/: every one loads into a valid Config, the papers' numbers are the ones the
files claim, the world ones train a step, and flags given beside a file override it."""
import dataclasses
import glob
import json
import math
import os
import subprocess
import sys

import pytest

import runtime
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml")))
WORLD = [p for p in RECIPES if os.path.basename(p).startswith("world_")]


def load(path, *flags):
    return train.parse_args([f"--config={path}", *flags])


def test_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"c2lip_cc3m.toml", "degla_coco.toml", "world_siglip.toml"} <= names
    assert len(WORLD) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_every_recipe_is_a_valid_config(path):
    cfg = load(path)
    assert cfg.config == path
    # the papers' recipes name weights and caches the user makes first; everything else must pass the checks
    runtime.check_config(dataclasses.replace(cfg, init="", concepts="", negatives=""), 8, train.LOSSES)


def test_paper_recipes():
    c2 = load(os.path.join(ROOT, "configs", "c2lip_cc3m.toml"))
    assert (c2.loss, c2.model, c2.batch_size, c2.lr, c2.logit_lr_mult, c2.xac_weight, c2.npc_weight) == \
        ("c2lip", "B/16", 8 * 96, 1e-5, 1.0, 0.01, 1.0)
    assert c2.resampled and c2.steps == math.ceil(5 * c2.samples_per_epoch / c2.batch_size)  # 5 epochs
    dg = load(os.path.join(ROOT, "configs", "degla_coco.toml"))
    assert (dg.loss, dg.batch_size, dg.num_negatives, dg.ema_decay, dg.lr) == ("degla", 8 * 32, 4, 0.9996, 1e-6)
    assert (dg.igc_weight, dg.tgc_weight, dg.distill_weight) == (0.1, 0.1, 0.005)


def test_world_siglip_recipe_is_the_default_run():
    fields = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in ("config", "out_dir")}  # noqa: E731
    assert fields(load(os.path.join(ROOT, "configs", "world_siglip.toml"))) == fields(train.Config())


def test_flags_override_the_file():
    path = os.path.join(ROOT, "configs", "world_c2lip.toml")
    assert load(path).xac_weight == 0.01
    cfg = load(path, "--xac_weight=1.0", "--steps=7")
    assert (cfg.xac_weight, cfg.steps, cfg.loss) == (1.0, 7, "c2lip")
    # the flag wins wherever it stands relative to --config
    assert train.parse_args(["--steps=7", f"--config={path}"]).steps == 7


@pytest.mark.parametrize("path", WORLD, ids=os.path.basename)
def test_world_recipes_train_a_step(path, tmp_path):
    cfg = load(path, f"--out_dir={tmp_path / 'run'}", "--steps=1", "--world_scenes=128", "--batch_size=16",
               "--eval=false", "--ckpt_every=1")
    train.main(cfg)
    with open(tmp_path / "run" / "config.json") as f:
        saved = json.load(f)
    assert saved["config"]["config"] == path and saved["config"]["loss"] == cfg.loss  # the run records the file it came from
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1]


@pytest.mark.parametrize("text, error", [
    ('stpes = 3\n', "unknown key 'stpes'; did you mean steps?"),
    ('steps = "many"\n', "steps = 'many': expected int"),
    ('steps = 3\n[optim]\nlr = 1.0\n', "unknown key 'optim'"),
    ('steps = \n', "not valid TOML"),
])
def test_bad_recipe_is_one_line(tmp_path, text, error):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.toml: " + error.replace("(", r"\(").replace("?", r"\?")):
        load(str(path))


def test_bad_recipe_from_the_command_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("stpes = 3\n")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--config={path}"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "unknown key 'stpes'" in p.stderr
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config=nope.toml"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 2 and "--config=nope.toml: no such file" in p.stderr


def test_relations_recipe_is_the_best_row_of_the_relations_table():
    """configs/world_relations.toml and the reproduce.py row its numbers come from name the same run"""
    import reproduce
    fields = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in ("config", "out_dir")}  # noqa: E731
    rows = dict(reproduce.RELATION_ROWS)
    best = rows["C2LIP + relation concepts + negative concepts, image positions 0.4, position contrast 5.0 -> 1.0, "
                "L_xac 2.0"]
    row = train.parse_args(best.split() + reproduce.COMPOSITIONAL_FLAGS.split())
    assert fields(load(os.path.join(ROOT, "configs", "world_relations.toml"))) == fields(row)

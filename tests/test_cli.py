"""Help, 'did you mean', one-line errors and runs that do not clobber each other.

One subprocess per entry point checks what a user sees (a single `error: ...` line, exit status 2, no
traceback); the other mistakes are checked in-process through the same cli.run wrapper.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

import cli
import evaluate
import figures
import reproduce
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--world_scenes=64", "--batch_size=16", "--steps=2", "--warmup=1", "--log_every=1", "--eval=false"]


def one_line_error(argv, capsys, main=train.main, cls=train.Config, code=2):
    """run an entry point's main through cli.run -> its single stderr line"""
    with pytest.raises(SystemExit) as e:
        cli.run(main, cls, argv=argv)
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: " if code == 2 else "stopped: ")
    assert "Traceback" not in err[0]
    return err[0]


def subprocess_error(script, args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]

# -----------------------------------------------------------------------------
# what a user sees, per entry point (subprocesses)


@pytest.mark.parametrize("script, args, expected", [
    ("train.py", ["--stepz=3"], "did you mean --steps?"),
    ("evaluate.py", ["--ckpt=nowhere/ckpt.pt"], "checkpoint not found: nowhere/ckpt.pt"),
    ("reproduce.py", ["--seedz=0"], "did you mean --seeds?"),
    ("figures.py", ["--runs=nowhere"], "nowhere/metrics.jsonl: not found"),
    ("concepts.py", ["extract", "--data=missing.jsonl", "--out=x.jsonl"], "--data=missing.jsonl: no such file"),
    ("convert.py", ["exprot", "--ckpt=x.pt"], "did you mean export?"),
    ("bench_train.py", ["--modle=tiny"], "did you mean --model?"),
    ("bench_data.py", ["--sizez=3"], "did you mean --sizes?"),
])
def test_entry_points_print_one_line(script, args, expected):
    assert expected in subprocess_error(script, args)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "reproduce.py", "figures.py"])
def test_help_lists_every_flag_with_type_default_and_meaning(script):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cls = {"train.py": train.Config, "evaluate.py": evaluate.EvalConfig, "reproduce.py": reproduce.Settings,
           "figures.py": figures.CurvesConfig}[script]
    from dataclasses import fields
    for f in fields(cls):
        assert f"--{f.name}=" in p.stdout, f.name
    if script == "train.py":
        line = next(x for x in p.stdout.splitlines() if "--batch_size=" in x)
        assert "INT" in line and "128" in line and "global batch" in line

# -----------------------------------------------------------------------------
# train.py mistakes (in-process, same wrapper)


def test_train_mistakes_are_one_line(tmp_path, capsys):
    out = f"--out_dir={tmp_path / 'r'}"
    assert "--loss=clip: expected one of siglip, c2lip, degla" in one_line_error(["--loss=clip", out], capsys)
    assert "--data=missing.jsonl: no such file" in one_line_error(["--data=missing.jsonl", out], capsys)
    assert "--steps: expected int, got 'many'" in one_line_error(["--steps=many"], capsys)
    # the dash spelling reaches the same option (an unknown-option error would name --batch-size)
    assert "--batch_size: expected int, got 'x'" in one_line_error(["--batch-size=x"], capsys)
    assert "--model=L/14: unknown preset" in one_line_error(["--model=L/14", out], capsys)
    for bad in (["--max_objects=5"], ["--min_objects=0"], ["--min_objects=3", "--max_objects=2"],
                ["--min_objects=1", "--relations"]):
        assert "objects per scene" in one_line_error(bad + [out], capsys), bad
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert "cannot load checkpoint" in one_line_error([f"--init={junk}", out], capsys)


def test_wrong_image_paths_stop_with_the_first_bad_records_shown(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"image": f"img/missing_{i}.png", "caption": f"a red circle {i}"}) + "\n")
    msg = one_line_error([f"--data={path}", f"--out_dir={tmp_path / 'r'}", "--batch_size=8", "--steps=2", "--eval=false"],
                         capsys, code=3)
    assert "max_skip_fraction" in msg and "missing_" in msg and "bad_records.jsonl" in msg

# -----------------------------------------------------------------------------
# runs do not clobber each other


def test_second_run_in_the_same_out_dir_is_refused(tmp_path, capsys):
    out = f"--out_dir={tmp_path / 'r'}"
    train.main(train.parse_args(SMALL + [out]))
    before = open(tmp_path / "r" / "metrics.jsonl").read()
    msg = one_line_error(SMALL + [out, "--loss=c2lip"], capsys)
    assert "holds another run" in msg and "--overwrite" in msg
    assert open(tmp_path / "r" / "metrics.jsonl").read() == before  # nothing touched
    # --overwrite replaces it: a fresh metrics.jsonl, not the old one with new lines appended
    train.main(train.parse_args(SMALL + [out, "--overwrite", "--steps=1"]))
    steps = [json.loads(x)["step"] for x in open(tmp_path / "r" / "metrics.jsonl")]
    assert steps == [1]


def test_resume_says_whether_it_found_a_checkpoint(tmp_path, capsys):
    train.main(train.parse_args(SMALL + [f"--out_dir={tmp_path / 'typo'}", "--resume"]))
    assert f"no checkpoint in {tmp_path / 'typo'}, starting at step 0" in capsys.readouterr().out
    train.main(train.parse_args(SMALL + [f"--out_dir={tmp_path / 'typo'}", "--resume", "--steps=3"]))
    out = capsys.readouterr().out
    assert "resume: found" in out and "resumed at step 2" in out
    # the resumed log keeps steps 1-2 once and continues at 3
    assert [json.loads(x)["step"] for x in open(tmp_path / "typo" / "metrics.jsonl")] == [1, 2, 3]

# -----------------------------------------------------------------------------
# evaluate.py mistakes


def test_evaluate_mistakes_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "r" / "ckpt.pt"
    train.main(train.parse_args(SMALL + [f"--out_dir={tmp_path / 'r'}", "--steps=1"]))
    run = lambda args: one_line_error(args, capsys, evaluate.main, evaluate.EvalConfig)  # noqa: E731
    assert "needs --root" in run([f"--ckpt={ckpt}", "--task=all"])
    assert "not a directory" in run([f"--ckpt={ckpt}", "--task=sugarcrepe", f"--root={tmp_path / 'nowhere'}"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no benchmark found" in run([f"--ckpt={ckpt}", "--task=all", f"--root={empty}"])
    js = tmp_path / "x.json"
    js.write_text('{"not": "a checkpoint"}')
    msg = run([f"--ckpt={js}"])
    assert "cannot load checkpoint" in msg and "weights_only=False" not in msg
    assert "did you mean --batch_size?" in run([f"--ckpt={ckpt}", "--batch_sise=3"])


def test_parse_args_did_you_mean_and_booleans():
    @dataclass
    class C:
        steps: int = 3         # how many
        flag: bool = False     # a switch
    assert cli.parse_args(["--steps=4", "--flag"], C) == C(4, True)
    with pytest.raises(cli.UsageError, match="did you mean --steps"):
        cli.parse_args(["--stpes=4"], C)
    with pytest.raises(cli.UsageError, match="expected a boolean"):
        cli.parse_args(["--flag=maybe"], C)
    assert "how many" in cli.help_text(C, "x.py") and "a switch" in cli.help_text(C, "x.py")


def test_curves_and_attention_figures(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(train.parse_args(SMALL + [f"--out_dir={a}", "--steps=3"]))
    train.main(train.parse_args(SMALL + [f"--out_dir={b}", "--steps=3", "--loss=c2lip", "--seed=1"]))
    figures.main(figures.CurvesConfig(runs=f"{a},{b}", out=str(tmp_path / "curves.png")))
    assert Image.open(tmp_path / "curves.png").size[0] > 500
    from checkpoint import load_checkpoint, model_from_checkpoint
    ma, tok = model_from_checkpoint(load_checkpoint(str(a / "ckpt.pt")))
    mb, _ = model_from_checkpoint(load_checkpoint(str(b / "ckpt.pt")))
    stats = figures.attention_figure(str(tmp_path / "att.png"), [("a", ma), ("b", mb)], tok, n_scenes=1)
    assert len(stats) == 2 and Image.open(tmp_path / "att.png").size[0] > 300
    for s in stats:  # the in-cell share is a share of a distribution over all patches
        for name in ("a", "b"):
            m = torch.tensor(s[name])
            assert m.sum().item() == pytest.approx(1.0, abs=1e-5)
            assert 0.0 <= s[f"mass_in_cell/{name}"] <= 1.0

"""Exact resume after a kill, atomic checkpoints, bad data, non-finite losses, safe loading."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import losses
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), world_scenes=256, batch_size=32, steps=6, warmup=2, log_every=1,
                ckpt_every=2, eval=False)
    base.update(kw)
    return train.Config(**base)


def last_losses(out_dir):
    """step -> loss, the last logged value of each step (a resumed run logs some steps twice)"""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def run_train(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + args, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def kill_after_lines(p, out_dir, n):
    """SIGKILL (no clean-up) the training process p once its metrics.jsonl holds n lines"""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= n:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_killed_run_resumes_with_identical_losses(tmp_path):
    common = ["--world_scenes=256", "--batch_size=32", "--steps=30", "--warmup=3", "--log_every=1",
              "--ckpt_every=4", "--eval=false", "--threads=1"]
    ref = run_train(common + [f"--out_dir={tmp_path / 'ref'}"])
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    # the same run, killed (SIGKILL: no clean-up) somewhere after its third checkpoint, then resumed
    out = str(tmp_path / "killed")
    kill_after_lines(run_train(common + [f"--out_dir={out}"]), out, 13)
    killed_at = max(last_losses(out))
    assert killed_at < 30, "the run finished before it could be killed"
    ckpt_step = train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"]
    assert ckpt_step % 4 == 0 and ckpt_step <= killed_at
    r = run_train(common + [f"--out_dir={out}", "--resume"])
    assert r.wait(timeout=300) == 0, r.stderr.read().decode()
    a, b = last_losses(str(tmp_path / "ref")), last_losses(out)
    assert sorted(b) == list(range(1, 31))
    for step in range(ckpt_step + 1, 31):  # every step recomputed after the resume
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = small(tmp_path, steps=2)
    train.main(cfg)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkp")  # a partial file (checkpoint.py hands torch.save an open file), then "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.main(small(tmp_path, steps=4, resume=True))
    monkeypatch.setattr(torch, "save", real_save)
    assert train.load_checkpoint(path)["step"] == 2


def make_dirty_data(tmp_path):
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    lines = []
    for i in range(24):
        Image.new("RGB", (12, 12), ((i * 40) % 255, 90, 200 - i * 5)).save(d / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": f"a red circle and a blue square {i % 3}"}))
    (d / "img" / "corrupt.png").write_bytes(b"\x89PNG not really")
    bad = [
        json.dumps({"image": "img/missing.png", "caption": "a missing image"}),   # unreadable at train time
        json.dumps({"image": "img/corrupt.png", "caption": "a corrupt image"}),   # unreadable at train time
        json.dumps({"image": "img/0.png", "caption": "   "}),                     # whitespace caption
        json.dumps({"image": "img/0.png", "caption": ""}),                        # empty caption
        '{"image": "img/0.png", "caption": "broken',                              # malformed JSON
        json.dumps({"image": "img/0.png"}),                                       # missing key
        json.dumps({"image": "img/1.png", "caption": " ".join(["long"] * 80)}),   # longer than the context
    ]
    text = "\n".join(lines[:10] + bad + lines[10:]) + "\n"
    raw = text.encode() + b'{"image": "img/2.png", "caption": "bad \xff\xfe bytes"}\n'  # invalid UTF-8
    (d / "data.jsonl").write_bytes(raw)
    return str(d / "data.jsonl")


def read_report(out_dir):
    with open(os.path.join(out_dir, "bad_records.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_bad_data_is_skipped_and_reported(tmp_path):
    path = make_dirty_data(tmp_path)
    cfg = small(tmp_path, data=path, batch_size=8, steps=8, max_skip_fraction=0.5, ckpt_every=100)
    train.main(cfg)
    rep = read_report(cfg.out_dir)
    reasons = " | ".join(r["reason"] for r in rep)
    for line in (13, 14, 15, 16, 32):  # whitespace, empty, malformed JSON, missing key, invalid UTF-8
        assert f"data.jsonl:{line}" in reasons
    assert "empty caption" in reasons and "not valid JSON" in reasons and "not valid UTF-8" in reasons
    assert any(r["action"] == "truncated" for r in rep)
    skipped_images = [r for r in rep if "reason" in r and ("missing.png" in r["reason"] or "corrupt.png" in r["reason"])]
    assert skipped_images, "unreadable images were used or dropped silently"
    assert train.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["step"] == 8


def test_bad_data_error_mode_names_file_and_line(tmp_path):
    path = make_dirty_data(tmp_path)
    with pytest.raises(ValueError, match=r"data.jsonl:13: empty caption"):
        train.main(small(tmp_path, data=path, batch_size=8, bad_data="error"))


def test_too_much_bad_data_stops_the_run(tmp_path):
    path = make_dirty_data(tmp_path)
    with pytest.raises(RuntimeError, match="max_skip_fraction"):
        train.main(small(tmp_path, data=path, batch_size=8, max_skip_fraction=0.05))


def test_concept_cache_that_does_not_match_is_an_error(tmp_path):
    cache = tmp_path / "concepts.jsonl"
    cache.write_text(json.dumps({"i": 0, "caption": "something else", "concepts": ["x"]}) + "\n")
    with pytest.raises(ValueError, match="concepts.jsonl"):
        train.main(small(tmp_path, loss="c2lip", concepts=str(cache)))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = losses.siglip_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 4 else out  # step 4 goes bad

    monkeypatch.setattr(losses, "siglip_loss", flaky)
    cfg = small(tmp_path, steps=6, ckpt_every=2)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 4"):
        train.main(cfg)
    assert train.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["step"] == 2
    # skip mode: the bad step is skipped and the run finishes
    calls["n"] = 0
    cfg2 = small(tmp_path / "skip", steps=6, nonfinite="skip")
    train.main(cfg2)
    ck = train.load_checkpoint(os.path.join(cfg2.out_dir, "ckpt.pt"))
    assert ck["step"] == 6 and all(torch.isfinite(v).all() for v in ck["model"].values())


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_loading(tmp_path):
    cfg = small(tmp_path, steps=2)
    train.main(cfg)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    blob = open(path, "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        train.load_checkpoint(str(truncated))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "c2lip-degla-ckpt/1", "x": Evil()}, evil)
    with pytest.raises(ValueError, match="safe loader refuses") as err:
        train.load_checkpoint(str(evil))
    assert "weights_only=False" not in str(err.value)  # never advise turning safe loading off
    # resuming with settings that change the run is refused, naming what differs
    with pytest.raises(ValueError, match="batch_size: 32 -> 64"):
        train.main(small(tmp_path, steps=4, resume=True, batch_size=64))
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        train.main(small(tmp_path / "b", init=path, image_size=64))


def test_malformed_csv_rows_are_skipped_or_named(tmp_path):
    import data
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    p = tmp_path / "d.csv"
    p.write_text('image,caption\na.png,a red square\na.png\na.png,"ok, quoted"\na.png,  \n')
    records, problems = data.read_records(str(p), on_error="skip")
    assert [c for _, _, c in records] == ["a red square", "ok, quoted"]
    assert [pr["line"] for pr in problems] == [3, 5]
    assert "wrong number of CSV fields" in problems[0]["reason"] and "empty caption" in problems[1]["reason"]
    with pytest.raises(ValueError, match=r"d.csv:3: wrong number of CSV fields"):
        data.read_records(str(p))

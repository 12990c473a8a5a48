"""Claims the README's numbers rest on that nothing else exercised: the logit-scale clamp, the shard index after
a shard is rewritten in place, and reproduce.py's tables (mean ± std over seeds, which metric lands in which
column) built from fake per-run scores."""
import json
import math
import os
import re
import statistics

import pytest
import torch

import reproduce
import shards
import train
from model import DualEncoder, model_config
from test_shards import sample, write_tar


# ----------------------------------------------------------------------------- the logit-scale clamp
def test_finish_step_clamps_t_above_the_bound():
    model = DualEncoder(model_config("tiny", vocab_size=30, depth=1, text_depth=1))
    cfg = train.Config()
    opt = train.configure_optimizer(model, cfg, log=lambda *a: None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(300.0))  # t = 300 > 100
    model.logit_scale.grad = torch.zeros(())
    train.finish_step(model, None, opt, cfg)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-7)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)  # t < 1: the lower bound is log t = 0
    train.finish_step(model, None, opt, cfg)
    assert model.logit_scale.item() == 0.0


def test_training_run_keeps_t_at_its_bound(tmp_path):
    # the tiny model starts at t = 10; a bound of 5 must hold after every step of a real run (metrics and checkpoint)
    bound = math.log(5.0)
    cfg = train.Config(out_dir=str(tmp_path / "run"), world_scenes=64, batch_size=16, steps=3, warmup=1,
                       log_every=1, ckpt_every=3, eval=False, max_logit_scale=bound)
    train.main(cfg)
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        ts = [json.loads(line)["t"] for line in f]
    assert len(ts) == 3 and all(t == pytest.approx(5.0, rel=1e-6) for t in ts)
    ckpt = torch.load(os.path.join(cfg.out_dir, "ckpt.pt"), weights_only=True)
    assert ckpt["model"]["logit_scale"].item() == pytest.approx(bound, abs=1e-7)


# ----------------------------------------------------------------------------- the shard index cache
def test_shard_index_rebuilt_after_a_rewrite_under_the_same_name(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    path = str(root / "000.tar")
    write_tar(path, [sample(i, caption="a red circle") for i in range(5)])
    assert shards.load_index(str(root)).captions == ["a red circle"] * 5
    st = os.stat(path)
    # new captions of the same length, then the old mtime put back (as `cp -p`, rsync -t or a tar extract do):
    # size and mtime both match the cached index
    write_tar(path, [sample(i, caption="a blue square") for i in range(5)])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert shards.load_index(str(root)).captions == ["a blue square"] * 5


# ----------------------------------------------------------------------------- reproduce.py's tables
def fake_run(out_dir, metrics):
    """a finished run as reproduce.py sees it: train.py's eval.json and run_jobs' timing.json"""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(out_dir, "timing.json"), "w") as f:
        json.dump({"wall_s": 60.0, "cpu_s": 55.0, "returncode": 0}, f)


def metric_value(loss_i, seed, part_i, col_i):
    """a distinct, irregular value per (loss, seed, part, column), in [0, 1]"""
    return ((loss_i * 7 + seed * 13 + part_i * 29 + col_i * 3) % 37 + 0.25 * seed * seed) / 40.0


def read_tables(md):
    """{section: {row: {header: cell}}} from markdown tables under '## ' headings"""
    out, section, head = {}, None, None
    for line in md.splitlines():
        if line.startswith("#"):
            section, head = line.lstrip("#").strip(), None
            out[section] = {}
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if head is None:
                head = cells[1:]
            else:
                out[section][cells[0]] = dict(zip(head, cells[1:]))
    return out


# what each table header means, written out here: a header over another metric's numbers must fail
HEADER_OF = {"i2t_R@1": "I→T R@1", "t2i_R@1": "T→I R@1", "zeroshot_shape": "ZS shape",
             "zeroshot_colour_shape": "ZS colour+shape", "replace_att": "repl-att", "replace_obj": "repl-obj",
             "add_att": "add-att", "add_obj": "add-obj", "swap_att": "swap-att", "concept_binding": "concept binding",
             "swap_rel": "swap-rel", "replace_rel": "replace-rel"}


def test_headers_name_their_metrics():
    for columns in (reproduce.COLUMNS, reproduce.SPLIT_COLUMNS, reproduce.STUDY_COLUMNS):
        assert all(HEADER_OF[key] == header for key, header in columns)
    assert {k for k, _ in reproduce.SPLIT_COLUMNS} >= {"swap_rel", "replace_rel", "concept_binding", "i2t_R@1"}


def test_compositional_table_from_fake_scores(tmp_path):
    s = reproduce.Settings(out_dir=str(tmp_path), scratch_steps=7, scratch_seeds="0,1,2", eval_scenes=11, train=False)
    expected = {}
    for li, (name, _) in enumerate(reproduce.COMPOSITIONAL_ROWS):
        for seed in (0, 1, 2):
            if name == "DeGLA" and seed == 2:
                continue  # an unfinished run: left out, and the row says so
            metrics = {f"{part}/{key}": metric_value(li, seed, pi, ci)
                       for pi, part in enumerate(("seen", "unseen")) for ci, (key, _) in enumerate(reproduce.SPLIT_COLUMNS)}
            fake_run(os.path.join(s.out_dir, f"compositional_{reproduce.slug(name)}_s{seed}"), metrics)
            expected.setdefault(name, []).append(metrics)
    reproduce.compositional(s)
    with open(os.path.join(s.out_dir, "results_compositional.md")) as f:
        tables = read_tables(f.read())
    assert set(tables) == {"The compositional world, from scratch", "Seen compositions", "Unseen compositions",
                           "Wall and CPU time of each run"}
    for part in ("seen", "unseen"):
        rows = tables[f"{part.capitalize()} compositions"]
        assert set(rows) == {"SigLIP", "C2LIP", "DeGLA (2 of 3 seeds: 0, 1)", "C2LIP+DeGLA"}
        for name, per_seed in expected.items():
            row = rows[name if name != "DeGLA" else "DeGLA (2 of 3 seeds: 0, 1)"]
            assert len(row) == len(reproduce.SPLIT_COLUMNS) >= 8
            for header in row:
                key = next(k for k, h in HEADER_OF.items() if h == header)
                vals = [100 * m[f"{part}/{key}"] for m in per_seed]
                mean, std = re.fullmatch(r"(\S+) ± (\S+)", row[header]).groups()
                assert float(mean) == pytest.approx(sum(vals) / len(vals), abs=0.051), (name, header)
                # the sample standard deviation (n - 1), as the tables' "± std over seeds" says
                sd = math.sqrt(sum((v - sum(vals) / len(vals)) ** 2 for v in vals) / (len(vals) - 1))
                assert float(std) == pytest.approx(sd, abs=0.051), (name, header)
    with open(os.path.join(s.out_dir, "results_compositional.json")) as f:
        saved = json.load(f)["runs"]
    assert [r["metrics"] for r in saved["C2LIP"]] == expected["C2LIP"]
    assert [r["metrics"] for r in saved["DeGLA"]] == expected["DeGLA"] and [r["seed"] for r in saved["DeGLA"]] == [0, 1]


def test_table_single_run_and_column_order():
    cols = [("b", "B"), ("a", "A")]
    md = reproduce.table([("one", [{"a": 0.5, "b": 0.25}]), ("two", [{"a": 0.1, "b": 0.2}, {"a": 0.3, "b": 0.6}])],
                         [0, 1], cols)
    rows = read_tables("## t\n" + md)["t"]
    assert rows["one"] == {"B": "25.0", "A": "50.0"}  # one run: the value alone
    assert rows["two"] == {"B": f"40.0 ± {100 * statistics.stdev([0.2, 0.6]):.1f}",
                           "A": f"20.0 ± {100 * statistics.stdev([0.1, 0.3]):.1f}"}
    assert rows["two"]["B"] == "40.0 ± 28.3"


# ----------------------------------------------------------------------------- peer tests are never skipped silently
def test_peer_skips_are_listed_and_fail_under_require_peers(tmp_path):
    import shutil
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "conftest.py"), tmp_path / "conftest.py")
    shutil.copy(os.path.join(here, "..", "pytest.ini"), tmp_path / "pytest.ini")
    (tmp_path / "pytest.ini").write_text((tmp_path / "pytest.ini").read_text().replace("testpaths = tests", ""))
    (tmp_path / "test_peer.py").write_text(
        "import pytest\n\n@pytest.mark.peer\ndef test_a():\n    pytest.importorskip('no_such_peer_pkg', reason='peer missing')\n\n"
        "def test_b():\n    pytest.skip('an ordinary skip')\n")

    def run(require):
        env = {k: v for k, v in os.environ.items() if k != "REQUIRE_PEERS"}
        env.update({"REQUIRE_PEERS": "1"} if require else {})
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    plain = run(False)
    assert plain.returncode == 0, plain.stdout
    assert "peer tests SKIPPED: 1" in plain.stdout and "test_peer.py::test_a: Skipped: peer missing" in plain.stdout
    assert "test_b" not in plain.stdout.split("peer tests SKIPPED")[1]  # only peer tests are listed
    strict = run(True)
    assert strict.returncode == 1 and "1 failed, 1 skipped" in strict.stdout, strict.stdout

import json
import math
import os
import resource

import pytest

import data
import train
from model import WordTokenizer, model_config


def build(init_ckpt=None, **kw):
    cfg = train.Config(**kw)
    tok = WordTokenizer(data.world_vocabulary(), 16)
    model, _ = train.build_model(cfg, model_config("tiny"), tok, None, init_ckpt, "cpu", log=lambda *a: None)
    return model


@pytest.mark.parametrize("bias, batch, want", [(-10.0, 128, -10.0), (-3.5, 128, -3.5), (0.0, 64, -math.log(64))])
def test_init_logit_bias_from_scratch(bias, batch, want):
    assert build(init_logit_bias=bias, batch_size=batch).logit_bias.item() == pytest.approx(want)


def test_init_logit_bias_leaves_a_checkpoint_alone():
    src = build(init_logit_bias=-2.0)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    m = build(init_ckpt={"model": state}, init_logit_bias=-7.0)
    assert m.logit_bias.item() == pytest.approx(-2.0)


def test_default_recipe_warmup():
    # the longer warm-up is what keeps seeds from stalling at the all-equal solution (METHOD.md §11)
    assert train.Config().warmup == 200


TINY = "--steps=3 --warmup=1 --world_scenes=64 --batch_size=16 --eval_scenes=16 --log_every=1 --ckpt_every=3"


def reproduce_default(tmp_path, seeds, jobs, train_=True):
    import reproduce
    s = reproduce.Settings(out_dir=str(tmp_path), parts="default", default_seeds=seeds, default_args=TINY,
                           jobs=jobs, train=train_)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reproduce.main(s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reproduce_default.children_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with open(tmp_path / "results_default.json") as f:
        return json.load(f), (tmp_path / "results_default.md").read_text()


def test_default_part_runs_in_parallel_with_timing_and_mean_std(tmp_path):
    res, md = reproduce_default(tmp_path, "0,1", jobs=2)
    assert res["seeds"] == [0, 1]
    t = [res["timing"][k] for k in ("0", "1")]
    for one in t:
        assert one["returncode"] == 0 and 0 < one["cpu_s"] <= one["wall_s"] + 2
    # each run's own CPU time: together they are the CPU time of all children, not more
    assert sum(one["cpu_s"] for one in t) == pytest.approx(reproduce_default.children_cpu, abs=0.2)
    assert t[0]["started"] < t[1]["ended"] and t[1]["started"] < t[0]["ended"]  # both ran at once
    # each cell of the table: mean and sample std over the seeds, computed here
    import reproduce
    for key, _ in reproduce.COLUMNS:
        vals = [100 * m[key] for m in res["metrics"]]
        mean, std = sum(vals) / 2, abs(vals[0] - vals[1]) / math.sqrt(2)
        assert f"{mean:.1f} ± {std:.1f}" in md
    assert "| 0 |" in md and "| 1 |" in md
    # the same call again reuses both runs (no new timing)
    before = os.path.getmtime(tmp_path / "default_s0" / "timing.json")
    res2, _ = reproduce_default(tmp_path, "0,1,2", jobs=2, train_=False)
    assert res2["seeds"] == [0, 1] and os.path.getmtime(tmp_path / "default_s0" / "timing.json") == before


def test_default_part_one_job_runs_one_at_a_time(tmp_path):
    res, md = reproduce_default(tmp_path, "0,1", jobs=1)
    a, b = res["timing"]["0"], res["timing"]["1"]
    assert a["ended"] <= b["started"]


def test_mean_std_cell():
    import reproduce
    # mean 23.33, sample std sqrt(((10-23.33)^2 + (20-23.33)^2 + (40-23.33)^2) / 2) = 15.28
    assert reproduce.fmt([0.1, 0.2, 0.4]) == "23.3 ± 15.3"

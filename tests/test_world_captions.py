"""--world_bare, --world_partial, --world_bare_all: training captions that say less, and only true things"""
import itertools
import re

import numpy as np
import pytest

import runtime
import train
import world

PHRASE = re.compile(r"^an? (?:(%s) )?(%s)$" % ("|".join(world.COLOURS), "|".join(world.SHAPES)))


def split_phrases(caption):
    """"a, b and c" -> [a, b, c]"""
    head, _, last = caption.rpartition(" and ")
    return (head.split(", ") if head else []) + [last]


def named(caption, objects):
    """(how many objects the caption names, how many of its phrases are bare); fails unless its phrases name
    distinct objects of the scene, each by its shape and, where it gives one, its colour"""
    parsed = []
    for p in split_phrases(caption):
        m = PHRASE.match(p)
        assert m, f"{p!r} is no object phrase ({caption!r})"
        parsed.append(m.groups())
    fits = lambda ph, o: o["shape"] == ph[1] and ph[0] in (None, o["colour"])  # noqa: E731
    assert any(all(fits(ph, objects[i]) for ph, i in zip(parsed, perm))
               for perm in itertools.permutations(range(len(objects)), len(parsed))), \
        f"{caption!r} is not true of the scene {objects}"
    return len(parsed), sum(colour is None for colour, _ in parsed)


def test_no_variation_keeps_the_world():
    plain = world.WorldDataset(64, 0)
    same = world.WorldDataset(64, 0, bare=0.0, partial=0.0, bare_all=0.0)
    assert same.captions == plain.captions


@pytest.mark.parametrize("kw", [dict(bare=0.3), dict(partial=0.4), dict(bare_all=0.25), dict(bare=0.2, partial=0.2)])
def test_varied_captions_are_true_and_vary_as_asked(kw):
    n = 3000
    plain, ds = world.WorldDataset(n, 0), world.WorldDataset(n, 0, **kw)
    assert np.array_equal(ds.images, plain.images)  # the scenes are those of the plain world
    phrases = bare_phrases = shorter = all_bare = 0
    for cap, objs in zip(ds.captions, ds.objects):
        count, bare = named(cap, objs)
        assert 1 <= count <= len(objs)
        phrases += count
        bare_phrases += bare
        shorter += count < len(objs)
        all_bare += bare == count
    rate = lambda x, total: x / total  # noqa: E731
    assert rate(shorter, n) == pytest.approx(kw.get("partial", 0.0), abs=0.03)
    if "bare_all" in kw:  # whole captions without colours, and no caption half bare
        assert rate(all_bare, n) == pytest.approx(kw["bare_all"], abs=0.03)
        assert bare_phrases == sum(named(c, o)[0] for c, o in zip(ds.captions, ds.objects) if named(c, o)[1])
    else:
        assert rate(bare_phrases, phrases) == pytest.approx(kw.get("bare", 0.0), abs=0.03)


def test_varied_captions_reach_training(tmp_path):
    cfg = train.Config(world_scenes=200, world_bare=0.5, world_partial=0.5, out_dir=str(tmp_path))
    mcfg = runtime.load_start(cfg, log=lambda *a: None)[2]
    ds, _ = train.build_data(cfg, mcfg, log=lambda *a: None)
    assert ds.captions == world.vary_captions(world.make_world(200, 0)[2], 0, 0.5, 0.5)
    assert ds.captions != world.WorldDataset(200, 0).captions


@pytest.mark.parametrize("flags,message", [
    (["--world_bare=1.5"], "--world_bare=1.5: a probability"),
    (["--world_partial=-0.1"], "--world_partial=-0.1: a probability"),
    (["--world_bare_all=0.2", "--relations"], "--world_bare_all: relation captions are kept whole"),
])
def test_bad_caption_flags_are_one_line(flags, message, capsys, tmp_path):
    from test_cli import SMALL, one_line_error
    assert message in one_line_error(flags + SMALL + [f"--out_dir={tmp_path}"], capsys)

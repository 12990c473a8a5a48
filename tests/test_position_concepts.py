"""--position_concepts: object phrases that say where the object is, as concepts of the world's images"""
import pytest

import runtime
import train
import world


def test_position_phrase_names_the_cell():
    obj = lambda cell: dict(colour="red", shape="circle", cell=cell)  # noqa: E731
    assert [world.position_phrase(obj(c)) for c in range(4)] == [
        "a red circle at the top left", "a red circle at the top right",
        "a red circle at the bottom left", "a red circle at the bottom right"]
    assert world.GRID == 2  # the phrases above cover the grid


def test_add_and_only():
    objs = [dict(colour="red", shape="circle", cell=0), dict(colour="orange", shape="star", cell=3)]
    cons = [["a red circle", "an orange star", "a red circle left of an orange star"]]
    where = ["a red circle at the top left", "an orange star at the bottom right"]
    assert world.with_position_concepts(cons, [objs]) == [cons[0] + where]
    assert world.with_position_concepts(cons, [objs], only=True) == [["a red circle left of an orange star"] + where]


def test_default_vocabulary_unchanged():
    assert world.world_vocabulary() == world.world_vocabulary(positions=False)
    assert world.world_vocabulary(True, True)[:len(world.world_vocabulary(True))] == world.world_vocabulary(True)
    assert {"at", "top", "bottom", "left", "right"} <= set(world.world_vocabulary(positions=True))


@pytest.mark.parametrize("mode", ["add", "only"])
def test_position_concepts_reach_training(tmp_path, mode):
    cfg = train.Config(loss="c2lip", world_scenes=200, position_concepts=mode, out_dir=str(tmp_path))
    mcfg = runtime.load_start(cfg, log=lambda *a: None)[2]
    ds, tok = train.build_data(cfg, mcfg, log=lambda *a: None)
    for cons, objs in zip(ds.annotations["concepts"], ds.dataset.objects):
        where = {world.position_phrase(o) for o in objs}
        assert where <= set(cons)
        assert any(world.object_phrase(o) in cons for o in objs) == (mode == "add")
        for c in cons:  # every concept is made of words the tokenizer knows
            assert tok.UNK not in tok.encode([c])[0].tolist(), c


@pytest.mark.parametrize("flags,message", [
    (["--position_concepts=add"], "--position_concepts adds to the concept losses; use it with --loss=c2lip"),
    (["--position_concepts=both", "--loss=c2lip"], "--position_concepts=both: expected one of"),
])
def test_bad_position_flags_are_one_line(flags, message, capsys, tmp_path):
    from test_cli import SMALL, one_line_error
    assert message in one_line_error(flags + SMALL + [f"--out_dir={tmp_path}"], capsys)

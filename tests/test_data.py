import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
import world
from model import WordTokenizer


def test_world_is_deterministic_and_splits_differ():
    a = world.make_world(20, seed=5)
    b = world.make_world(20, seed=5)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    test = world.make_world(20, seed=5, split="test")
    assert not np.array_equal(a[0], test[0])
    other = world.make_world(20, seed=6)
    assert a[1] != other[1]


def test_world_captions_list_every_object():
    images, captions, objects = world.make_world(50, seed=0)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8
    for cap, objs in zip(captions, objects):
        assert 2 <= len(objs) <= 3
        assert len({o["cell"] for o in objs}) == len(objs)  # distinct cells
        assert len({(o["colour"], o["shape"]) for o in objs}) == len(objs)
        phrases = cap.replace(" and ", ", ").split(", ")
        assert sorted(phrases) == sorted(world.object_phrase(o) for o in objs)


def test_world_object_pixels_have_their_colour():
    # a single-object scene: the brightest-object pixels are near the named colour
    img, cap, objs = world.make_scene(0, 3, image_size=32, min_objects=1, max_objects=1)
    ref = np.array(world.COLOURS[objs[0]["colour"]], dtype=np.float32)
    dist = np.abs(img.astype(np.float32) - ref).sum(-1)
    assert (dist < 60).sum() >= 20  # a large object, drawn in its colour


def _fixture(tmp_path, fmt):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (20, 12), colour).save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "caption": f"caption number {i}"})
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_caption_file_dataset(tmp_path, fmt):
    ds = data.CaptionFileDataset(str(_fixture(tmp_path, fmt)), image_size=16, train=False)
    assert len(ds) == 3 and ds.captions[1] == "caption number 1"
    item = ds[0]
    assert item["image"].shape == (3, 16, 16)
    torch.testing.assert_close(item["image"][0], torch.ones(16, 16))  # red -> +1 after (x/255 - 0.5)/0.5
    torch.testing.assert_close(item["image"][2], -torch.ones(16, 16))
    train_ds = data.CaptionFileDataset(str(tmp_path / f"data.{fmt}"), image_size=16, train=True)
    assert train_ds[1]["image"].shape == (3, 16, 16)


def test_caption_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"image": "a.png", "caption": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        data.read_records(str(p))
    p.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        data.read_records(str(p))
    c = tmp_path / "bad.csv"
    c.write_text("path,text\na.png,hello\n")
    with pytest.raises(ValueError, match="no column 'image'"):
        data.read_records(str(c))


def test_corrupt_image_error_names_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match="x.png"):
        data.load_image(str(tmp_path / "x.png"))


def test_collate_concepts_and_negatives():
    tok = WordTokenizer(world.world_vocabulary(), 8)
    ds = data.Annotated(world.WorldDataset(3, seed=0), concepts=[["a red circle"], ["a", "b"], ["c", "d", "e"]],
                        negatives=[["n0", "n1"], ["n2", "n3"], ["n4", "n5"]])
    collate = data.Collate(tok, 32, ("concepts", "negatives"))
    batch = collate([ds[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 32, 32) and batch["texts"]["captions"].shape == (3, 8)
    assert batch["owner"]["concepts"].tolist() == [0, 1, 1, 2, 2, 2]
    assert batch["owner"]["negatives"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["rows"]["concepts"].shape == batch["rows"]["negatives"].shape == (6,)
    torch.testing.assert_close(batch["texts"]["concepts"][batch["rows"]["concepts"]][1:3], tok.encode(["a", "b"]))
    # a rank whose items were all unreadable still gets every group, with zero rows
    empty = collate([{"skip": "unreadable", "index": 0}])
    assert empty["images"].shape == (0, 3, 32, 32) and empty["skipped"][0]["reason"] == "unreadable"
    assert {k: tuple(v.shape) for k, v in empty["texts"].items()} == {k: (0, 8) for k in ("captions", "concepts", "negatives")}
    assert {k: tuple(v.shape) for k, v in empty["rows"].items()} == {k: (0,) for k in ("captions", "concepts", "negatives")}
    with pytest.raises(ValueError, match="concepts"):
        data.Annotated(world.WorldDataset(3, seed=0), concepts=[["x"]])


def test_sampler_skip_resumes_the_same_order():
    ds = world.WorldDataset(40, seed=0)
    full = data.make_loader(ds, 4, data.Collate(WordTokenizer(world.world_vocabulary(), 8), 32), seed=1)
    full.sampler.set_epoch(2)
    order = [i for b in full for i in b["index"].tolist()]
    part = data.make_loader(ds, 4, data.Collate(WordTokenizer(world.world_vocabulary(), 8), 32), seed=1)
    part.sampler.set_epoch(2)
    part.sampler.skip = 12
    assert [i for b in part for i in b["index"].tolist()] == order[12:]


def test_worker_processes_see_the_epoch_of_the_loop(tmp_path):
    # crops are a function of (seed, epoch, index); worker processes must crop with the epoch the loop set,
    # so that --workers changes nothing, across epochs and across a resume
    import train
    rng = np.random.default_rng(0)
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": f"a red circle {i}"}) + "\n")
    ds = data.CaptionFileDataset(str(tmp_path / "d.jsonl"), 16, train=True)
    tok = WordTokenizer.build(ds.captions, 8)

    def images(workers, start_step):
        loader = data.make_loader(ds, 4, data.Collate(tok, 32), workers=workers)
        it = data.epoch_batches(loader, ds, start_step, 4)
        return [next(it)["images"] for _ in range(6 - start_step)]  # 3 epochs of 2 steps

    ref = images(0, 0)
    assert not torch.equal(ref[0], ref[2])  # epochs crop differently
    for got, want in zip(images(2, 0), ref):
        assert torch.equal(got, want)
    for got, want in zip(images(2, 3), ref[3:]):  # resumed in the middle of epoch 1
        assert torch.equal(got, want)

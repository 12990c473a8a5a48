"""A training batch's concepts and negatives belong to that batch's captions and images.

Built the way train.py builds a c2lip+degla run on the compositional world with relation captions; the
generator is made to leave some captions short of K negatives, so DeGLA drops them and the re-indexing of
captions, concepts and negatives is exercised. Every image of a batch is checked against its scene, drawn here
again from its index; every concept (through `owner`) must be a phrase of its own caption naming an object of
its own scene; every negative (row i*K + k) must be an edit of its own caption and differ from it."""
import zlib
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import concepts
import runtime
import train
from model import model_config

import data
import world

K = 4


def short_of_negatives(caption):
    """a fixed quarter of the captions, picked by their text"""
    return zlib.crc32(caption.encode()) % 4 == 0


@pytest.fixture(scope="module")
def run():
    mp = pytest.MonkeyPatch()
    real = concepts.hard_negatives

    def fewer_for_some(caption, k, seed, vocab=None, relations=False):
        negs = real(caption, k, seed, vocab, relations)
        return negs[: k - 1] if short_of_negatives(caption) else negs

    mp.setattr(concepts, "hard_negatives", fewer_for_some)
    try:
        cfg = train.Config(loss="c2lip+degla", world_split="compositional", relations=True, world_scenes=240,
                           batch_size=24, num_negatives=K, seed=3)
        mcfg = model_config("tiny", vocab_size=64)
        dataset, tokenizer = train.build_data(cfg, mcfg, log=lambda *a: None)
    finally:
        mp.undo()
    env = SimpleNamespace(world=1, rank=0, use_cuda=False)
    batches, _ = runtime.make_batches(cfg, mcfg, dataset, tokenizer, env, 0,
                                      train.text_groups(cfg.loss, cfg.concept_negatives))
    return cfg, mcfg, dataset, tokenizer, [next(batches) for _ in range(4)]


def decode(tokenizer, rows):
    return [tokenizer.decode(r.tolist()) for r in rows]


def test_some_captions_were_dropped(run):
    cfg, _, dataset, _, batches = run
    assert 100 < len(dataset) < cfg.world_scenes  # the Subset path is in use
    indices = torch.cat([b["index"] for b in batches]).tolist()
    dropped = [i for i in range(cfg.world_scenes) if i not in set(indices)]
    assert dropped and max(indices) > min(dropped)  # batches hold records that sit after a dropped one


def test_images_and_captions_are_their_scenes(run):
    cfg, mcfg, _, _, batches = run
    for b in batches:
        for img, cap, i in zip(b["images"], b["captions"], b["index"].tolist()):
            scene_img, scene_cap, _ = world.make_scene(cfg.world_seed, i, mcfg.image_size, 2, 3, keep=world.seen_only,
                                                       relations=True)
            assert cap == scene_cap
            assert torch.equal(img, data.to_tensor(scene_img))


def test_concepts_belong_to_their_own_caption_and_scene(run):
    cfg, mcfg, _, tokenizer, batches = run
    checked = 0
    for b in batches:
        phrases = decode(tokenizer, b["texts"]["concepts"][b["rows"]["concepts"]])
        owner = b["owner"]["concepts"].tolist()
        assert owner == sorted(owner) and len(owner) == len(phrases)
        for i, (cap, idx) in enumerate(zip(b["captions"], b["index"].tolist())):
            own = [p for p, o in zip(phrases, owner) if o == i]
            _, _, objects = world.make_scene(cfg.world_seed, idx, mcfg.image_size, 2, 3, keep=world.seen_only,
                                             relations=True)
            cap_words = " ".join(cap.replace(",", "").split())
            for p in own:
                assert f" {p} " in f" {cap_words} ", (p, cap)  # a phrase of its own caption
            # one concept per object of the scene: "a <colour> <shape>"
            assert sorted(own) == sorted(f"{world.article(o['colour'])} {o['colour']} {o['shape']}" for o in objects)
            checked += len(own)
    assert checked > 150


def test_negatives_belong_to_their_own_caption(run):
    _, _, _, tokenizer, batches = run
    checked = 0
    for b in batches:
        negs = decode(tokenizer, b["texts"]["negatives"][b["rows"]["negatives"]])
        assert len(negs) == K * len(b["captions"])
        for i, cap in enumerate(b["captions"]):
            cap_words = cap.replace(",", "").split()
            own = negs[i * K:(i + 1) * K]
            assert len(set(own)) == K
            for n in own:
                # an edit of this caption: the same number of words, at most two of them changed (a reshuffle or
                # a swap keeps every word; a replacement changes one, two with its article)
                diff = Counter(cap_words) - Counter(n.split())
                assert n != " ".join(cap_words) and len(n.split()) == len(cap_words), (n, cap)
                assert sum(diff.values()) <= 2, (n, cap)
                checked += 1
    assert checked > 300

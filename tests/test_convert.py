"""convert.py against transformers' SiglipModel and SiglipTokenizer, built here from random weights and a
SentencePiece model trained on a toy corpus: nothing is downloaded. Needs requirements-test.txt."""
import io
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("safetensors")

import convert
from model import (DualEncoder, GemmaTokenizer, ModelConfig, SentencePieceTokenizer, canonicalize, model_config,
                   preset_name, tokenizer_from_state_dict)
from checkpoint import load_checkpoint, model_from_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = ["a red circle next to a blue square", "two dogs playing in the park at noon",
          "a man riding a horse on the beach", "the quick brown fox jumps over the lazy dog",
          "a woman wearing a red dress sits next to a fireplace", "three green triangles and one yellow star"]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """a tiny T5-style SentencePiece model (pad 0, eos 1, unk 2, no bos), as SigLIP's spiece.model"""
    path = tmp_path_factory.mktemp("sp") / "spiece.model"
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 10), model_writer=buf, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return str(path)


def vocab_of(spiece):
    return spm.SentencePieceProcessor(model_file=spiece).get_piece_size()


def hf_model(vocab, act="gelu_pytorch_tanh", seed=0):
    # text narrower than vision (24 -> projection 32) and a MLP ratio of 2: nothing relies on B/16's equal sizes
    cfg = transformers.SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=8, hidden_act=act, projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4, hidden_act=act))
    torch.manual_seed(seed)
    model = transformers.SiglipModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # every tensor random (LN gains, biases, t, b too): a swapped name shows
            p.normal_(0, 0.3)
    return model


def hf_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def our_model(hf):
    cfg = convert.model_config_from_hf(hf.config.to_dict())
    model = DualEncoder(cfg).eval()
    model.load_state_dict(convert.from_hf(hf_state(hf), cfg))
    return model


def inputs(vocab, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, 16, 16, generator=gen), torch.randint(0, vocab, (5, 8), generator=gen)


def assert_same_outputs(ours, hf, images, tokens):
    with torch.no_grad():
        ref = hf(input_ids=tokens, pixel_values=images)
        x, y = ours.encode_image(images)[0], ours.encode_text(tokens)
        logits = ours.logit_scale.exp() * x @ y.T + ours.logit_bias
    torch.testing.assert_close(x, ref.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, ref.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-5, rtol=1e-5)


def assert_equal_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k

# -----------------------------------------------------------------------------
# HF layout


def test_hf_defaults_are_transformers_defaults():
    t, v = transformers.SiglipTextConfig(), transformers.SiglipVisionConfig()
    for k, val in convert.HF_TEXT_DEFAULTS.items():
        assert getattr(t, k) == (val if val is not None else t.hidden_size), k
    for k, val in convert.HF_VISION_DEFAULTS.items():
        assert getattr(v, k, val) == val, k  # transformers 4.x has no vision_use_head attribute (always a head)


def test_b16_config_from_defaults():
    # google/siglip-base-patch16-224's config.json leaves almost everything at transformers' defaults
    cfg = convert.model_config_from_hf({"model_type": "siglip", "text_config": {}, "vision_config": {}})
    ref = model_config("B/16", act="gelu_tanh")
    assert cfg == ref


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "gelu"])
def test_hf_outputs_match(act):
    hf = hf_model(60, act)
    ours = our_model(hf)
    assert ours.cfg.vision_act == ours.cfg.text_act == {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}[act]
    assert_same_outputs(ours, hf, *inputs(60))


def test_hf_round_trip_is_exact():
    hf = hf_model(60)
    cfg = convert.model_config_from_hf(hf.config.to_dict())
    assert_equal_state(convert.to_hf(convert.from_hf(hf_state(hf), cfg), cfg), hf_state(hf))


def test_import_export_files_and_from_pretrained(spiece, tmp_path):
    vocab = vocab_of(spiece)
    hf = hf_model(vocab)
    hf.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors, as on the hub
    ckpt = str(tmp_path / "siglip.pt")
    convert.import_checkpoint(str(tmp_path / "hf"), "hf", ckpt, tokenizer=spiece)

    # an ordinary project checkpoint: weights-only load, tokenizer inside, same outputs as HF
    model, tok = model_from_checkpoint(load_checkpoint(ckpt))
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == vocab and tok.context_length == 8
    images, tokens = inputs(vocab)
    assert_same_outputs(model.eval(), hf, images, tokens)

    convert.export_checkpoint(ckpt, "hf", str(tmp_path / "out"))
    assert_equal_state(convert._safetensors().load_file(str(tmp_path / "out" / "model.safetensors")), hf_state(hf))
    back, info = transformers.SiglipModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_equal_state(hf_state(back), hf_state(hf))
    assert_same_outputs(model, back.eval(), images, tokens)
    # the exported directory also carries a tokenizer transformers can load
    hf_tok = transformers.SiglipTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = hf_tok(CORPUS[:2], padding="max_length", truncation=True, max_length=8, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, tok.encode(CORPUS[:2]))

def test_concept_head_is_left_out_of_an_export(spiece, tmp_path, capsys):
    """a run trained with --concept_head exports the model evaluation uses: the same files as without the head"""
    import checkpoint
    import train
    hf = hf_model(vocab_of(spiece))
    hf.save_pretrained(tmp_path / "hf")
    plain = str(tmp_path / "plain.pt")
    convert.import_checkpoint(str(tmp_path / "hf"), "hf", plain, tokenizer=spiece)
    model, tok = model_from_checkpoint(load_checkpoint(plain))
    cfg = ModelConfig(**{**asdict(model.cfg), "concept_head": True})
    headed = DualEncoder(cfg)
    missing, _ = headed.load_state_dict(model.state_dict(), strict=False)
    assert missing and all(k.startswith("visual.concept_pool.") for k in missing)
    checkpoint.save_checkpoint(str(tmp_path / "headed.pt"), headed, None, train.Config(), tok, 0)
    for name, path in (("a", plain), ("b", str(tmp_path / "headed.pt"))):
        convert.export_checkpoint(path, "hf", str(tmp_path / name))
    assert "exported without it" in capsys.readouterr().err
    assert_equal_state(convert._safetensors().load_file(str(tmp_path / "b" / "model.safetensors")),
                       convert._safetensors().load_file(str(tmp_path / "a" / "model.safetensors")))

# -----------------------------------------------------------------------------
# OpenCLIP layout


def test_openclip_names_are_the_documented_list():
    hf = hf_model(60)
    oc = convert.to_openclip(our_model(hf).state_dict())
    blocks = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    resblocks = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    pool = ["latent", "q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight", "proj.bias", "norm.weight",
            "norm.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    want = (["visual.trunk.patch_embed.proj.weight", "visual.trunk.patch_embed.proj.bias", "visual.trunk.pos_embed",
             "visual.trunk.norm.weight", "visual.trunk.norm.bias"]
            + [f"visual.trunk.blocks.{i}.{n}" for i in range(2) for n in blocks]
            + [f"visual.trunk.attn_pool.{n}" for n in pool]
            + ["text.token_embedding.weight", "text.positional_embedding", "text.ln_final.weight", "text.ln_final.bias",
               "text.text_projection.weight", "text.text_projection.bias", "logit_scale", "logit_bias"]
            + [f"text.transformer.resblocks.{i}.{n}" for i in range(2) for n in resblocks])
    assert sorted(oc) == sorted(want)
    assert oc["logit_scale"].shape == () and oc["visual.trunk.pos_embed"].shape == (1, 16, 32)
    assert oc["text.positional_embedding"].shape == (8, 24)


def test_openclip_text_block_is_multihead_attention():
    # OpenCLIP's text blocks are nn.MultiheadAttention + c_fc/c_proj: rebuild one from the exported names
    hf = hf_model(60, act="gelu")
    ours = our_model(hf)
    oc = convert.to_openclip(ours.state_dict())
    p = "text.transformer.resblocks.1."
    mha = nn.MultiheadAttention(24, 2, batch_first=True)
    mha.load_state_dict({k[len(p + "attn."):]: v for k, v in oc.items() if k.startswith(p + "attn.")})
    ln1, ln2 = nn.LayerNorm(24, eps=1e-6), nn.LayerNorm(24, eps=1e-6)
    ln1.load_state_dict({"weight": oc[p + "ln_1.weight"], "bias": oc[p + "ln_1.bias"]})
    ln2.load_state_dict({"weight": oc[p + "ln_2.weight"], "bias": oc[p + "ln_2.bias"]})
    h = torch.randn(3, 8, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ln1(h)
        r = h + mha(a, a, a, need_weights=False)[0]
        fc = nn.functional.linear(ln2(r), oc[p + "mlp.c_fc.weight"], oc[p + "mlp.c_fc.bias"])
        ref = r + nn.functional.linear(nn.functional.gelu(fc), oc[p + "mlp.c_proj.weight"], oc[p + "mlp.c_proj.bias"])
        torch.testing.assert_close(ours.text.blocks[1](h), ref, atol=1e-5, rtol=1e-5)


def test_openclip_round_trip_and_file_import(spiece, tmp_path):
    vocab = vocab_of(spiece)
    hf = hf_model(vocab, act="gelu")  # OpenCLIP's SigLIP uses exact GELU
    ours = our_model(hf)
    oc = convert.to_openclip(ours.state_dict())
    assert_equal_state(convert.to_openclip(convert.from_openclip(oc, ours.cfg)), oc)
    # HF -> ours -> OpenCLIP -> ours -> HF is the identity
    cfg = convert.model_config_from_openclip(oc, heads=2, text_heads=2)
    assert cfg == ours.cfg
    assert_equal_state(convert.to_hf(convert.from_openclip(oc, cfg), cfg), hf_state(hf))

    torch.save(oc, tmp_path / "open_clip_pytorch_model.bin")
    ckpt = str(tmp_path / "oc.pt")
    convert.import_checkpoint(str(tmp_path / "open_clip_pytorch_model.bin"), "openclip", ckpt, spiece, 2, 2)
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    assert_same_outputs(model.eval(), hf, *inputs(vocab))
    convert.export_checkpoint(ckpt, "openclip", str(tmp_path / "out"))
    assert_equal_state(convert._safetensors().load_file(str(tmp_path / "out" / "open_clip_model.safetensors")), oc)
    # the exported directory imports again, tokenizer found beside the weights
    convert.import_checkpoint(str(tmp_path / "out"), "openclip", str(tmp_path / "again.pt"), heads=2, text_heads=2)
    assert_equal_state(load_checkpoint(str(tmp_path / "again.pt"))["model"], load_checkpoint(ckpt)["model"])

# -----------------------------------------------------------------------------
# SentencePiece tokenizer


TEXTS = ["A red circle, next to a blue square!", "Two DOGS.", "  leading space", "...dots first", "",
         "tabs\tand\nnewlines", "it's a dog's life", "zebra café É", "a man riding a horse on the beach at sunset"]


def test_sentencepiece_matches_siglip_tokenizer(spiece):
    ours = SentencePieceTokenizer.from_file(spiece, context_length=8)
    hf = transformers.SiglipTokenizer(spiece, model_max_length=8)
    ref = hf(TEXTS, padding="max_length", truncation=True, max_length=8, return_tensors="pt")["input_ids"]
    assert torch.equal(ours.encode(TEXTS), ref)
    assert ours.EOS == ours.PAD == hf.eos_token_id == hf.pad_token_id == 1
    ids = ours.encode(["a man riding a horse on the beach at sunset", "two dogs"])
    assert ids[0, -1] == 1 and (ids[0, :-1] != 1).all()  # truncated, EOS kept last
    assert ids[1].tolist() == ours.sp.encode("two dogs") + [1] * (8 - len(ours.sp.encode("two dogs")))
    # counts are taken before truncation and do not count padding (pad = EOS = 1 here)
    assert ours.token_counts(["two dogs", "a man riding a horse on the beach at sunset"]) == \
        [len(ours.sp.encode("two dogs")), len(ours.sp.encode("a man riding a horse on the beach at sunset"))]
    assert ours.token_counts(["two dogs"])[0] < 7 < ours.token_counts(["a man riding a horse on the beach at sunset"])[0]
    # the one documented difference: HF deletes '_', big_vision/OpenCLIP (and we) make it a space
    assert canonicalize("hot_dog stand") == "hot dog stand"
    ref = hf(["hot_dog stand"], padding="max_length", truncation=True, max_length=8, return_tensors="pt")["input_ids"]
    assert torch.equal(ours.encode(["hotdog stand"]), ref)


def test_sentencepiece_state_dict_survives_weights_only_load(spiece, tmp_path):
    tok = SentencePieceTokenizer.from_file(spiece, context_length=8)
    torch.save({"tokenizer": tok.state_dict()}, tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)["tokenizer"]
    assert state["kind"] == "sentencepiece" and state["model"].dtype == torch.uint8
    tok2 = tokenizer_from_state_dict(state)
    assert torch.equal(tok2.encode(TEXTS), tok.encode(TEXTS)) and tok2.proto == tok.proto

# -----------------------------------------------------------------------------
# errors


def test_clear_errors(spiece, tmp_path):
    hf = hf_model(vocab_of(spiece))
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    data = weights.read_bytes()
    # wrong vocabulary for the tokenizer
    bigger = hf_model(vocab_of(spiece) + 4)
    bigger.save_pretrained(tmp_path / "big")
    with pytest.raises(ValueError, match="pieces but the model's vocabulary"):
        convert.import_checkpoint(str(tmp_path / "big"), "hf", str(tmp_path / "x.pt"), spiece)
    # no tokenizer anywhere
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        convert.import_checkpoint(str(tmp_path / "hf"), "hf", str(tmp_path / "x.pt"))
    # truncated weights
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        convert.load_foreign(str(tmp_path / "hf"), "hf")
    # foreign files: a text file, another model's state dict, the wrong format flag
    (tmp_path / "notes.bin").write_text("not weights")
    with pytest.raises(ValueError, match="cannot read"):
        convert.load_foreign(str(tmp_path / "notes.bin"), "openclip")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="not an OpenCLIP SigLIP state dict"):
        convert.load_foreign(str(tmp_path / "other.bin"), "openclip")
    with pytest.raises(ValueError, match="expects a model directory"):
        convert.load_foreign(str(tmp_path / "other.bin"), "hf")
    weights.write_bytes(data)
    oc = convert.to_openclip(our_model(hf).state_dict())
    torch.save(oc, tmp_path / "oc.bin")
    with pytest.raises(ValueError, match="--heads"):  # width 32 is no released SigLIP size
        convert.load_foreign(str(tmp_path / "oc.bin"), "openclip", evidence=[("--arch", "siglip")])
    with pytest.raises(ValueError, match="pass --arch"):  # a bare state dict of no released size, no tokenizer
        convert.load_foreign(str(tmp_path / "oc.bin"), "openclip", heads=2, text_heads=2)
    with pytest.raises(ValueError, match="not a SentencePiece model|not a valid SentencePiece"):
        SentencePieceTokenizer(b"garbage", 8)


def test_cli(spiece, tmp_path, capsys):
    # the command line: import writes a checkpoint train.py/evaluate.py read; bad input exits with "error:"
    hf = hf_model(vocab_of(spiece))
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "spiece.model").write_bytes(open(spiece, "rb").read())  # found beside the weights
    run = lambda *a: subprocess.run([sys.executable, "convert.py", *a], cwd=REPO, capture_output=True, text=True)
    r = run("import", f"--src={tmp_path / 'hf'}", "--format=hf", f"--out={tmp_path / 'c.pt'}")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(str(tmp_path / "c.pt"))["step"] == 0
    # errors exit with a message, no traceback and no file (in-process: a second interpreter costs seconds)
    def error(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            convert.main(argv)
        assert e.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]
    assert "expects a model directory" in error(["import", f"--src={tmp_path / 'nowhere'}", "--format=hf",
                                                 f"--out={tmp_path / 'd.pt'}"])
    assert not os.path.exists(tmp_path / "d.pt")
    assert "unknown option --bogus" in error(["export", "--ckpt=x.pt", "--format=hf", "--bogus=1"])
    assert error(["import", f"--src={tmp_path / 'hf'}", "--format=hf", "--out=x.pt", "--arch=siglip3"]) \
        .endswith("--arch=siglip3: expected siglip or siglip2")
    assert "missing --out" in error(["export", "--ckpt=x.pt", "--format=hf"])
    assert "did you mean export" in error(["exprot", "--ckpt=x.pt"])


def test_imported_checkpoint_fine_tunes_and_evaluates(spiece, tmp_path):
    # `train.py --init=` and evaluation on an imported checkpoint, in-process and a few steps long
    import train
    hf = hf_model(vocab_of(spiece))
    hf.save_pretrained(tmp_path / "hf")
    ckpt = str(tmp_path / "siglip.pt")
    convert.import_checkpoint(str(tmp_path / "hf"), "hf", ckpt, tokenizer=spiece)
    cfg = train.Config(init=ckpt, out_dir=str(tmp_path / "run"), steps=2, batch_size=4, world_scenes=16, log_every=1,
                       eval_scenes=12, device="cpu")
    train.main(cfg)
    tuned = load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert tuned["step"] == 2 and tuned["tokenizer"]["kind"] == "sentencepiece"
    # the imported label travels on through fine-tuning (evaluate.py names its results after it)
    assert load_checkpoint(ckpt)["config"]["model"] == tuned["config"]["model"] == "siglip-" + preset_name(
        ModelConfig(**tuned["model_config"]))
    assert os.path.exists(tmp_path / "run" / "eval.json")
    before = load_checkpoint(ckpt)["model"]
    assert not torch.equal(tuned["model"]["text.token_embedding.weight"], before["text.token_embedding.weight"])


@pytest.mark.parametrize("name,text,vision", [
    ("B/16", {}, {}),  # google/siglip-base-patch16-224: transformers' defaults
    ("so400m/14@384", dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
     dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
          patch_size=14)),
])
def test_full_size_names_and_shapes(name, text, vision):
    # released sizes on the meta device (no memory, no download): every HF tensor has its place, shapes agree
    hf_cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
    with torch.device("meta"):
        hf_shapes = {k: v.shape for k, v in transformers.SiglipModel(hf_cfg).state_dict().items()}
        cfg = convert.model_config_from_hf(hf_cfg.to_dict())
        ours = DualEncoder(cfg).state_dict()
    mapped = convert.to_hf(ours, cfg)
    assert {k: v.shape for k, v in mapped.items()} == hf_shapes
    oc = convert.to_openclip(ours)
    # a bare OpenCLIP state dict knows the patch grid, not the pixels: 27 x 14 = 378 for so400m's 384
    grid_pixels = cfg.image_size // cfg.patch_size * cfg.patch_size
    want = ModelConfig(**{**asdict(cfg), "vision_act": "gelu", "text_act": "gelu"})  # OpenCLIP's SigLIP: exact GELU
    assert convert.model_config_from_openclip(oc) == ModelConfig(**{**asdict(want), "image_size": grid_pixels})
    assert convert.model_config_from_openclip(oc, image_size=cfg.image_size) == want
    if name == "B/16":  # the shapes the README and METHOD.md state for SigLIP B/16
        assert oc["visual.trunk.pos_embed"].shape == (1, 196, 768)
        assert oc["text.positional_embedding"].shape == (64, 768)
        assert oc["text.transformer.resblocks.0.attn.in_proj_weight"].shape == (2304, 768)
        assert oc["visual.trunk.attn_pool.kv.weight"].shape == (1536, 768) and oc["logit_scale"].shape == ()

# -----------------------------------------------------------------------------
# SigLIP 2: Gemma tokenizer, per-tower activations, the generation told apart


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """a tiny Gemma-style SentencePiece model: BPE, byte fallback, no dummy prefix, ids pad 0 eos 1 bos 2 unk 3"""
    path = tmp_path_factory.mktemp("gemma") / "tokenizer.model"
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10), model_writer=buf, vocab_size=300, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>"], add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", byte_fallback=True, split_digits=True, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return str(path)


# strings where cleaning, casing, whitespace, bytes and truncation can go wrong
AWKWARD = ["A red circle, next to a blue square!", "Two  DOGS.", "  leading space", "trailing ", "", "x",
           "tabs\tand\nnewlines", "zebra café É ΟΔΟΣ", "İstanbul ß", "emoji 🐶 dog", "a\u00a0nbsp", "digits 12345 9",
           "hot_dog stand", "the <mask> token", "ALL CAPS SENTENCE THAT IS LONG ENOUGH TO BE TRUNCATED FOR SURE"]


def siglip2_hf_dir(gemma, path, seed=0):
    """an HF folder as google/siglip2-*-patch16-224 ships: a SiglipModel (tanh GELU) and the Gemma tokenizer"""
    hf = hf_model(vocab_of(gemma), seed=seed)
    hf.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(open(gemma, "rb").read())
    (path / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    return hf


def test_gemma_tokenizer_matches_transformers(gemma, tmp_path):
    # transformers' Siglip2Tokenizer (Gemma + lowercasing), set up as SigLIP 2 is used: no BOS, EOS, pad right
    if not hasattr(transformers, "Siglip2Tokenizer"):
        pytest.skip("this transformers has no Siglip2Tokenizer (added in 5.0): Gemma tokenizer parity skipped")
    (tmp_path / "tokenizer.model").write_bytes(open(gemma, "rb").read())
    ref_tok = transformers.Siglip2Tokenizer.from_pretrained(str(tmp_path), add_bos_token=False, add_eos_token=True,
                                                           padding_side="right")
    ours = GemmaTokenizer.from_file(gemma, context_length=10, clean="lower")
    ref = ref_tok(AWKWARD, padding="max_length", truncation=True, max_length=10, return_tensors="pt")["input_ids"]
    assert torch.equal(ours.encode(AWKWARD), ref)
    assert (ours.PAD, ours.EOS) == (ref_tok.pad_token_id, ref_tok.eos_token_id) == (0, 1)
    ids = ours.encode(["x", AWKWARD[-1]])
    assert ids[0].tolist()[:2] == [ours.sp.piece_to_id("x"), 1] and set(ids[0, 2:].tolist()) == {0}  # EOS, pad 0
    assert ids[1, -1] == 1  # truncated, EOS kept last
    # the one difference: a control token written in the text stays characters here
    ref = ref_tok(["<eos> dog"], padding="max_length", truncation=True, max_length=10, return_tensors="pt")["input_ids"]
    assert ref[0, 0] == 1 and ours.encode(["<eos> dog"])[0, 0] != 1
    # weights-only round trip keeps the cleaning
    torch.save({"t": ours.state_dict()}, tmp_path / "t.pt")
    back = tokenizer_from_state_dict(torch.load(tmp_path / "t.pt", weights_only=True)["t"])
    assert isinstance(back, GemmaTokenizer) and back.clean_mode == "lower"
    assert torch.equal(back.encode(AWKWARD), ours.encode(AWKWARD))
    with pytest.raises(ValueError, match="not a Gemma SentencePiece model"):
        GemmaTokenizer.from_file(spiece_t5(tmp_path), 10)


def spiece_t5(tmp_path):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 10), model_writer=buf, vocab_size=60, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(buf.getvalue())
    return str(tmp_path / "spiece.model")


@pytest.mark.peer
def test_gemma_tokenizer_matches_openclip(gemma, tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed: OpenCLIP tokenizer parity skipped")
    (tmp_path / "tokenizer.model").write_bytes(open(gemma, "rb").read())
    hf = transformers.GemmaTokenizer.from_pretrained(str(tmp_path), add_bos_token=False, add_eos_token=True,
                                                     padding_side="right")
    hf.save_pretrained(str(tmp_path / "oc"))  # what OpenCLIP's hub folders hold, read by its HFTokenizer
    ref_tok = open_clip.tokenizer.HFTokenizer(str(tmp_path / "oc"), context_length=10, clean="canonicalize")
    ours = GemmaTokenizer.from_file(gemma, context_length=10, clean="canonicalize")
    assert torch.equal(ours.encode(AWKWARD), ref_tok(AWKWARD))
    # OpenCLIP runs ftfy and html.unescape before canonicalising; we do not (documented difference)
    assert not torch.equal(ours.encode(["&amp; ﬁne"]), ref_tok(["&amp; ﬁne"]))


@pytest.mark.parametrize("text_act", ["gelu_pytorch_tanh", "gelu"])
def test_siglip2_hf_import_export(gemma, tmp_path, text_act):
    hf = siglip2_hf_dir(gemma, tmp_path / "hf")
    if text_act == "gelu":  # towers with different activations, as HF configs may state
        hf.config.text_config.hidden_act = "gelu"
        hf = transformers.SiglipModel(hf.config).eval()
        hf.load_state_dict(hf_state(transformers.SiglipModel.from_pretrained(str(tmp_path / "hf"))))
        hf.save_pretrained(tmp_path / "hf")
    ckpt = str(tmp_path / "s2.pt")
    convert.import_checkpoint(str(tmp_path / "hf"), "hf", ckpt)  # tokenizer.model found beside the weights
    loaded = load_checkpoint(ckpt)
    model, tok = model_from_checkpoint(loaded)
    assert isinstance(tok, GemmaTokenizer) and tok.clean_mode == "lower" and tok.vocab_size == vocab_of(gemma)
    assert (model.cfg.vision_act, model.cfg.text_act) == ("gelu_tanh", convert.HF_ACTS[text_act])
    assert loaded["config"]["model"] == "siglip2-" + preset_name(model.cfg)
    assert loaded["config"]["model"].startswith("siglip2-custom-vit32x2h2-p4@16-text24x2h2-ctx8")
    images, _ = inputs(vocab_of(gemma))
    assert_same_outputs(model.eval(), hf, images, tok.encode(AWKWARD[:5]))

    convert.export_checkpoint(ckpt, "hf", str(tmp_path / "out"))
    assert_equal_state(convert._safetensors().load_file(str(tmp_path / "out" / "model.safetensors")), hf_state(hf))
    back, info = transformers.SiglipModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert back.config.text_config.hidden_act == text_act and back.config.text_config.pad_token_id == 0
    # the exported folder's tokenizer loads in transformers (5.0 on: Siglip2Tokenizer) and gives our ids
    if not hasattr(transformers, "Siglip2Tokenizer"):
        return
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = hf_tok(AWKWARD, padding="max_length", truncation=True, max_length=8, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, tok.encode(AWKWARD))


def siglip2_openclip_state(gemma, seed=0):
    """an OpenCLIP ViT-*-SigLIP2-shaped state dict: exact GELU in the image tower, tanh GELU in the text tower"""
    hf = hf_model(vocab_of(gemma), seed=seed)
    cfg = ModelConfig(**{**asdict(convert.model_config_from_hf(hf.config.to_dict())), "vision_act": "gelu"})
    ours = DualEncoder(cfg).eval()
    ours.load_state_dict(convert.from_hf(hf_state(hf), ours.cfg))
    return ours, convert.to_openclip(ours.state_dict())


def test_siglip2_openclip_import_export(gemma, tmp_path):
    ours, oc = siglip2_openclip_state(gemma)
    torch.save(oc, tmp_path / "open_clip_pytorch_model.bin")
    ckpt = str(tmp_path / "s2.pt")
    convert.import_checkpoint(str(tmp_path / "open_clip_pytorch_model.bin"), "openclip", ckpt, gemma, 2, 2)
    model, tok = model_from_checkpoint(load_checkpoint(ckpt))
    assert (model.cfg.vision_act, model.cfg.text_act) == ("gelu", "gelu_tanh")  # told by the Gemma tokenizer
    assert isinstance(tok, GemmaTokenizer) and tok.clean_mode == "canonicalize"
    assert_equal_state(model.state_dict(), ours.state_dict())
    convert.export_checkpoint(ckpt, "openclip", str(tmp_path / "out"))
    assert_equal_state(convert._safetensors().load_file(str(tmp_path / "out" / "open_clip_model.safetensors")), oc)
    assert os.path.isfile(tmp_path / "out" / "tokenizer.model")


def openclip_reference(oc_sd, open_clip, timm):
    """OpenCLIP's own SigLIP 2 model (ViT-B-16-SigLIP2's config), narrowed to the test sizes, with oc_sd loaded"""
    import json as _json
    cfg_file = os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "ViT-B-16-SigLIP2.json")
    mc = _json.load(open(cfg_file))
    mc["text_cfg"].update(width=24, heads=2, layers=2, context_length=8, mlp_ratio=2.0,
                          vocab_size=oc_sd["text.token_embedding.weight"].shape[0])
    # the image tower: timm's vit_base_patch16_siglip_224 builder and defaults, narrowed (see below)
    mc["vision_cfg"].update(timm_model_name=register_tiny_timm_siglip(timm), image_size=16)
    mc["embed_dim"] = 32
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in mc.items() if k != "custom_text"})
    model.load_state_dict(oc_sd, strict=True)
    return model.eval()


@pytest.mark.peer
def test_siglip2_openclip_matches_reference(gemma, tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed: OpenCLIP reference parity skipped")
    timm = pytest.importorskip("timm")
    _, oc = siglip2_openclip_state(gemma, seed=3)
    ref = openclip_reference(oc, open_clip, timm)
    torch.save(oc, tmp_path / "w.bin")
    convert.import_checkpoint(str(tmp_path / "w.bin"), "openclip", str(tmp_path / "c.pt"), gemma, 2, 2)
    model, tok = model_from_checkpoint(load_checkpoint(str(tmp_path / "c.pt")))
    images, _ = inputs(vocab_of(gemma))
    tokens = tok.encode(AWKWARD[:6])
    with torch.no_grad():
        x_ref, y_ref, scale, bias = ref(images, tokens)
        x, y = model.eval().encode_image(images)[0], model.encode_text(tokens)
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.logit_scale.exp() * x @ y.T + model.logit_bias, scale * x_ref @ y_ref.T + bias,
                               atol=1e-5, rtol=1e-5)
    # the same weights read as SigLIP (exact GELU in the text tower) are measurably another model
    wrong = DualEncoder(ModelConfig(**{**asdict(model.cfg), "text_act": "gelu"})).eval()
    wrong.load_state_dict(model.state_dict())
    assert (wrong.encode_text(tokens) - y_ref).abs().max() > 1e-5  # outside the tolerance above
    # and the export loads back into OpenCLIP's model with strict key checks
    convert.export_checkpoint(str(tmp_path / "c.pt"), "openclip", str(tmp_path / "out"))
    openclip_reference(convert._safetensors().load_file(str(tmp_path / "out" / "open_clip_model.safetensors")),
                       open_clip, timm)


def one_line_error(fn, match):
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_generation_mismatch_refused(gemma, tmp_path):
    t5 = spiece_t5(tmp_path)
    _, oc = siglip2_openclip_state(gemma)
    torch.save(oc, tmp_path / "s2.bin")
    # SigLIP 2 weights offered as SigLIP: the flag against the Gemma tokenizer
    one_line_error(lambda: convert.import_checkpoint(str(tmp_path / "s2.bin"), "openclip", str(tmp_path / "x.pt"),
                                                     gemma, 2, 2, arch="siglip"),
                   "--arch says SigLIP but the tokenizer tokenizer.model says SigLIP 2")
    # ... or with an OpenCLIP config that names SigLIP 2, next to SigLIP's tokenizer
    os.makedirs(tmp_path / "oc")
    torch.save(oc, tmp_path / "oc" / "open_clip_pytorch_model.bin")
    (tmp_path / "oc" / "open_clip_config.json").write_text(
        '{"model_cfg": {"text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP2"}}}')
    one_line_error(lambda: convert.import_checkpoint(str(tmp_path / "oc"), "openclip", str(tmp_path / "x.pt"),
                                                     t5, 2, 2),
                   "SigLIP but open_clip_config.json's hf_tokenizer_name says SigLIP 2")
    # SigLIP weights in an HF folder offered as SigLIP 2 (flag), or with a Gemma tokenizer_config
    hf_model(vocab_of(t5)).save_pretrained(tmp_path / "s1")
    one_line_error(lambda: convert.import_checkpoint(str(tmp_path / "s1"), "hf", str(tmp_path / "x.pt"), t5,
                                                     arch="siglip2"), "--arch says SigLIP 2 but the tokenizer")
    (tmp_path / "s1" / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    one_line_error(lambda: convert.import_checkpoint(str(tmp_path / "s1"), "hf", str(tmp_path / "x.pt"), t5),
                   "tokenizer_class says SigLIP 2")
    # released vocabulary sizes are a signal too
    assert convert.resolve_arch([("t", "siglip")], "s") == "siglip"
    one_line_error(lambda: convert.resolve_arch([("the tokenizer", "siglip"), ("the vocabulary size 256000",
                                                 convert.RELEASED_VOCABS[256000])], "src"), "says SigLIP 2")
    assert not os.path.exists(tmp_path / "x.pt")


def test_unrepresentable_facts_refused(gemma, tmp_path):
    base = {"model_type": "siglip", "text_config": {}, "vision_config": {}}
    one_line_error(lambda: convert.model_config_from_hf({**base, "model_type": "siglip2"}), "NaFlex")
    one_line_error(lambda: convert.model_config_from_hf({**base, "text_config": {"hidden_act": "relu"}}),
                   "text_config.hidden_act = 'relu'")
    one_line_error(lambda: convert.model_config_from_hf({**base, "text_config": {"layer_norm_eps": 1e-5}}),
                   "text_config.layer_norm_eps")
    one_line_error(lambda: convert.model_config_from_hf({**base, "vision_config": {"vision_use_head": False}}),
                   "vision_use_head")
    one_line_error(lambda: convert.model_config_from_hf({**base, "text_config": {"projection_size": 512}}),
                   "projection_size")
    good = json_of_openclip_config()
    assert convert.check_openclip_config(good, "c.json") == ("gelu", "gelu_tanh", "canonicalize", 12)
    for part, key, value, where in [("vision_cfg", "timm_model_name", "vit_base_patch16_siglip_gap_224", "timm_model"),
                                    ("vision_cfg", "timm_pool", "avg", "vision_cfg.timm_pool"),
                                    ("text_cfg", "pool_type", "argmax", "text_cfg.pool_type"),
                                    ("text_cfg", "no_causal_mask", False, "text_cfg.no_causal_mask"),
                                    ("text_cfg", "norm_kwargs", {"eps": 1e-5}, "text_cfg.norm_kwargs.eps"),
                                    ("text_cfg", "act_kwargs", {"approximate": "sigmoid"}, "act_kwargs")]:
        bad = json_of_openclip_config()
        bad[part][key] = value
        one_line_error(lambda: convert.check_openclip_config(bad, "c.json"), where)
    _, oc = siglip2_openclip_state(gemma)
    one_line_error(lambda: convert.model_config_from_openclip({**oc, "visual.trunk.cls_token": torch.zeros(1)}, 2, 2),
                   "cls_token")


def json_of_openclip_config():
    import json as _json
    return _json.loads('''{"embed_dim": 768, "init_logit_bias": -10, "custom_text": true,
      "vision_cfg": {"image_size": 224, "timm_model_name": "vit_base_patch16_siglip_224",
                     "timm_model_pretrained": false, "timm_pool": "map", "timm_proj": "none"},
      "text_cfg": {"context_length": 64, "vocab_size": 256000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2",
                   "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 768, "heads": 12, "layers": 12,
                   "no_causal_mask": true, "proj_bias": true, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                   "act_kwargs": {"approximate": "tanh"}}}''')


@pytest.mark.peer
def test_released_openclip_configs_pass_the_checks():
    # every ViT-*-SigLIP(2) config OpenCLIP ships is read as the activations we expect, nothing refused
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed: its shipped configs not checked")
    import glob
    import json as _json
    files = glob.glob(os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "ViT-*-SigLIP*.json"))
    assert files
    for f in files:
        mc = _json.load(open(f))
        if mc["text_cfg"].get("proj_type") == "none":  # SO400M-16 i18n: no text projection, which model.py has
            one_line_error(lambda: convert.check_openclip_config(mc, f), "proj_type")
            continue
        arch = convert.arch_of_openclip_config(mc)
        assert arch == ("siglip2" if "SigLIP2" in f else "siglip"), f
        vision_act, text_act, clean, _ = convert.check_openclip_config(mc, f)
        assert (vision_act, text_act) == convert.OPENCLIP_ACTS[arch] and clean == "canonicalize", f


def test_siglip2_b16_label_and_shapes():
    # google/siglip2-base-patch16-224's sizes on the meta device: B/16 with the Gemma vocabulary
    hf_cfg = transformers.SiglipConfig(text_config=dict(vocab_size=256000), vision_config={})
    cfg = convert.model_config_from_hf(hf_cfg.to_dict())
    assert convert.model_label(cfg, "siglip2") == "siglip2-B/16" and cfg.vocab_size == 256000
    with torch.device("meta"):
        hf_shapes = {k: v.shape for k, v in transformers.SiglipModel(hf_cfg).state_dict().items()}
        ours = DualEncoder(cfg).state_dict()
    assert {k: v.shape for k, v in convert.to_hf(ours, cfg).items()} == hf_shapes

# -----------------------------------------------------------------------------
# CLIP_benchmark on an export (the README recipe), fully local


def register_tiny_timm_siglip(timm):
    """a timm SigLIP ViT of the test's sizes under a name convert.openclip_config can write (OpenCLIP builds
    its image towers only from named timm models)"""
    name = "vit_c2liptest_patch4_siglip_16"
    if name not in timm.list_models(name):
        def vit_c2liptest_patch4_siglip_16(pretrained=False, **kwargs):
            return timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=16, patch_size=4,
                                     embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, **kwargs)
        vit_c2liptest_patch4_siglip_16.__module__ = "timm.models.vision_transformer"
        timm.models.register_model(vit_c2liptest_patch4_siglip_16)
    return name


def sugar_crepe_folder(root, n=12, seed=0):
    """CLIP_benchmark's sugar_crepe/<task> layout: val2017/ images and <task>.json with caption, negative_caption"""
    from PIL import Image
    gen = torch.Generator().manual_seed(seed)
    os.makedirs(root / "val2017")
    colors = ["red", "blue", "green", "yellow"]
    ann = {}
    for i in range(n):
        pixels = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "val2017" / f"{i}.png")
        a, b = colors[i % 4], colors[(i + 1) % 4]
        ann[str(i)] = {"filename": f"{i}.png", "caption": f"a {a} circle and a {b} square",
                       "negative_caption": f"a {b} circle and a {a} square"}
    (root / "swap_att.json").write_text(__import__("json").dumps(ann))
    return ann


@pytest.mark.peer
def test_clip_benchmark_on_export(gemma, tmp_path, monkeypatch):
    cb_cli = pytest.importorskip("clip_benchmark.cli", reason="clip_benchmark not installed: recipe test skipped")
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed: recipe test skipped")
    timm = pytest.importorskip("timm")
    import json as _json
    monkeypatch.setitem(convert.TIMM_SIZES, (32, 2), "c2liptest")
    monkeypatch.setitem(convert.SIGLIP_HEADS, 32, 2)
    register_tiny_timm_siglip(timm)
    _, oc = siglip2_openclip_state(gemma, seed=5)
    torch.save(oc, tmp_path / "w.bin")
    ckpt = str(tmp_path / "c.pt")
    convert.import_checkpoint(str(tmp_path / "w.bin"), "openclip", ckpt, gemma, 2, 2)
    out = tmp_path / "export"
    convert.export_checkpoint(ckpt, "openclip", str(out))
    assert os.path.isfile(out / "open_clip_config.json")

    # the export loads in OpenCLIP from the folder alone: model, preprocessing and tokenizer
    ref, _, transform = open_clip.create_model_and_transforms(f"local-dir:{out}")
    ref_tok = open_clip.get_tokenizer(f"local-dir:{out}")
    model, tok = model_from_checkpoint(load_checkpoint(ckpt))
    model.eval()
    ann = sugar_crepe_folder(tmp_path / "sc")
    texts = [t for a in ann.values() for t in (a["caption"], a["negative_caption"])]
    assert torch.equal(ref_tok(texts), tok.encode(texts))
    from PIL import Image
    images = torch.stack([transform(Image.open(tmp_path / "sc" / "val2017" / a["filename"])) for a in ann.values()])
    with torch.no_grad():
        x, y = model.encode_image(images)[0], model.encode_text(tok.encode(texts))
        torch.testing.assert_close(x, ref.eval().encode_image(images, normalize=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, ref.encode_text(ref_tok(texts), normalize=True), atol=1e-5, rtol=1e-5)
    s = (x[:, None] * y.view(len(ann), 2, -1)).sum(-1)  # (images, [positive, negative])
    ours = (s[:, 0] > s[:, 1]).float().mean().item()

    # CLIP_benchmark's own command line, in fp32 (--no_amp): the comparable setting
    result = tmp_path / "cb.json"
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", "--model_type=open_clip", f"--model=local-dir:{out}",
                                      "--pretrained=export", "--dataset=sugar_crepe/swap_att",
                                      f"--dataset_root={tmp_path / 'sc'}", "--no_amp", "--num_workers=0",
                                      "--batch_size=4", f"--output={result}", "--quiet"])
    cb_cli.main()
    metrics = _json.loads(result.read_text())["metrics"]
    assert metrics["text_acc"] == pytest.approx(ours, abs=1e-6)


def test_imported_siglip2_fine_tunes(gemma, tmp_path):
    # the Gemma tokenizer (pad 0 != EOS) through train.py --init, and the label carried on
    import train
    siglip2_hf_dir(gemma, tmp_path / "hf")
    ckpt = str(tmp_path / "s2.pt")
    convert.import_checkpoint(str(tmp_path / "hf"), "hf", ckpt)
    train.main(train.Config(init=ckpt, out_dir=str(tmp_path / "run"), steps=2, batch_size=4, world_scenes=16,
                            log_every=1, eval_scenes=12, device="cpu"))
    tuned = load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert tuned["tokenizer"]["kind"] == "gemma" and tuned["config"]["model"].startswith("siglip2-custom-")
    assert tuned["config"]["model"] == load_checkpoint(ckpt)["config"]["model"]
    # a restart that leaves out --init resumes under the same label
    train.main(train.Config(out_dir=str(tmp_path / "run"), resume=True, steps=3, batch_size=4, world_scenes=16,
                            log_every=1, eval=False, device="cpu"))
    resumed = load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert resumed["step"] == 3 and resumed["config"]["model"] == tuned["config"]["model"]


@pytest.mark.peer
def test_siglip_openclip_export_loads_in_openclip(spiece, tmp_path, monkeypatch):
    # SigLIP (T5 tokenizer, pad = EOS): the exported folder's tokenizer and model agree with ours in OpenCLIP
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed: OpenCLIP load of the export skipped")
    timm = pytest.importorskip("timm")
    monkeypatch.setitem(convert.TIMM_SIZES, (32, 2), "c2liptest")
    monkeypatch.setitem(convert.SIGLIP_HEADS, 32, 2)
    register_tiny_timm_siglip(timm)
    ours = our_model(hf_model(vocab_of(spiece), act="gelu"))
    torch.save(convert.to_openclip(ours.state_dict()), tmp_path / "w.bin")
    convert.import_checkpoint(str(tmp_path / "w.bin"), "openclip", str(tmp_path / "c.pt"), spiece, 2, 2)
    convert.export_checkpoint(str(tmp_path / "c.pt"), "openclip", str(tmp_path / "out"))
    ref = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
    ref_tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'out'}")
    model, tok = model_from_checkpoint(load_checkpoint(str(tmp_path / "c.pt")))
    assert torch.equal(ref_tok(TEXTS), tok.encode(TEXTS))
    images, _ = inputs(vocab_of(spiece))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(images)[0], ref.encode_image(images, normalize=True),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(tok.encode(TEXTS)),
                                   ref.encode_text(ref_tok(TEXTS), normalize=True), atol=1e-5, rtol=1e-5)

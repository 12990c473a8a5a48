import torch

from model import DualEncoder, WordTokenizer, model_config, tokenizer_from_state_dict


def tiny(**kw):
    torch.manual_seed(0)
    return DualEncoder(model_config("tiny", vocab_size=40, **kw))


def test_shapes_and_unit_norm():
    m = tiny()
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(0, 40, (5, 16))
    x, u = m.encode_image(images, return_tokens=True)
    y = m.encode_text(tokens)
    assert x.shape == (3, 128) and u.shape == (3, 16, 128) and y.shape == (5, 128)
    for e in (x, u, y):
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(e.shape[:-1]))
    assert m.encode_image(images)[1] is None
    torch.testing.assert_close(m.logit_scale.exp(), torch.tensor(10.0))
    assert m.logit_bias.item() == -10.0


def test_forward_dict_matches_separate_encoders():
    m = tiny()
    images, tokens, extra = torch.randn(2, 3, 32, 32), torch.randint(0, 40, (2, 16)), torch.randint(0, 40, (3, 16))
    rows = {"captions": torch.tensor([1, 0, 1]), "concepts": torch.tensor([2, 2, 0, 1])}  # repeats, any order
    out = m(images, {"captions": tokens, "concepts": extra}, rows, return_tokens=True)
    torch.testing.assert_close(out["image"], m.encode_image(images)[0])
    torch.testing.assert_close(out["text"]["captions"], m.encode_text(tokens[rows["captions"]]))
    torch.testing.assert_close(out["text"]["concepts"], m.encode_text(extra[rows["concepts"]]))
    assert set(out) == {"image", "patch_tokens", "text", "logit_scale", "logit_bias"}
    assert list(out["text"]) == ["captions", "concepts"]


def test_value_path_is_map_head_with_identity_attention():
    # with one patch the MAP attention weight is exactly 1, so the pooled output is that patch's value-path token
    m = tiny(image_size=8, patch_size=8)
    x, u = m.encode_image(torch.randn(4, 3, 8, 8), return_tokens=True)
    torch.testing.assert_close(u[:, 0], x, atol=1e-5, rtol=1e-5)


def test_value_path_by_hand():
    m = tiny()
    head = m.visual.attn_pool
    h = torch.randn(2, 16, 128)
    _, tokens = head(h, return_tokens=True)
    v = h @ head.kv.weight[128:].T + head.kv.bias[128:]  # value half of the kv projection
    o = head.proj(v)
    torch.testing.assert_close(tokens, o + head.mlp(head.norm(o)))


def test_text_pools_last_position_and_sees_word_order():
    m = tiny()
    a = torch.tensor([[5, 6, 7, 1] + [0] * 12])
    b = torch.tensor([[7, 6, 5, 1] + [0] * 12])
    assert not torch.allclose(m.encode_text(a), m.encode_text(b))


def test_tokenizer():
    tok = WordTokenizer(["a", "red", "circle", "and", "blue", "square"], context_length=6)
    ids = tok.encode(["A red circle, and a blue square!", "red"])
    assert ids.shape == (2, 6)
    # truncated to context - 1 words, then EOS
    assert ids[0].tolist() == [tok.stoi["a"], tok.stoi["red"], tok.stoi["circle"], tok.stoi["and"], tok.stoi["a"], tok.EOS]
    assert ids[1].tolist() == [tok.stoi["red"], tok.EOS, 0, 0, 0, 0]
    assert tok.encode(["zebra"])[0, 0].item() == tok.UNK
    tok2 = tokenizer_from_state_dict(tok.state_dict())
    assert torch.equal(tok2.encode(["a blue square"]), tok.encode(["a blue square"]))


def test_tokenizer_build_is_deterministic():
    texts = ["b a", "a c", "a b"]
    assert WordTokenizer.build(texts, 8).itos == WordTokenizer.build(list(reversed(texts)), 8).itos
    assert WordTokenizer.build(texts, 8, min_count=2).itos[3:] == ["a", "b"]


def test_token_counts_before_truncation():
    tok = WordTokenizer(["a", "red", "circle"], context_length=4)
    assert tok.token_counts(["A red, circle!", "", "a a a a a"]) == [3, 0, 5]
    # a caption is cut exactly when its count exceeds context - 1
    assert tok.encode(["a a a"])[0].tolist()[-1] == tok.EOS and tok.token_counts(["a a a"])[0] == 3


def test_old_checkpoint_single_activation_loads():
    # model_config dicts saved before the per-tower activations carry one `act`; it sets both towers
    from dataclasses import asdict
    from model import ModelConfig
    old = {k: v for k, v in asdict(model_config("tiny", vocab_size=40)).items() if k not in ("vision_act", "text_act")}
    cfg = ModelConfig(**{**old, "act": "gelu_tanh"})
    assert (cfg.vision_act, cfg.text_act, cfg.act) == ("gelu_tanh", "gelu_tanh", "")
    assert ModelConfig(**asdict(cfg)) == cfg  # saved again, it reloads as itself
    m = DualEncoder(cfg)
    assert m.visual.blocks[0].mlp.approximate == m.visual.attn_pool.mlp.approximate == "tanh"
    assert m.text.blocks[0].mlp.approximate == "tanh"


def test_activation_per_tower():
    m = tiny(vision_act="gelu", text_act="gelu_tanh")
    assert m.visual.blocks[0].mlp.approximate == m.visual.attn_pool.mlp.approximate == "none"
    assert m.text.blocks[-1].mlp.approximate == "tanh"
    tokens = torch.randint(0, 40, (2, 16))
    same = tiny(vision_act="gelu", text_act="gelu")  # same seed, same weights: only the text activation differs
    assert not torch.equal(m.encode_text(tokens), same.encode_text(tokens))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(m.encode_image(images)[0], same.encode_image(images)[0])


def test_preset_name():
    from model import PRESETS, preset_name
    for name in PRESETS:
        assert preset_name(model_config(name, vocab_size=7, text_act="gelu_tanh", ln_eps=1e-5)) == name
    label = preset_name(model_config("B/16", context_length=77))
    assert label.startswith("custom-vit768x12h12-p16@224-text768x12h12-ctx77")

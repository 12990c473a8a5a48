"""
Import pretrained SigLIP weights into model.py's DualEncoder, and export a project checkpoint back.

Two foreign layouts, both of the same network (../shared/METHOD.md 1.2):
  hf        transformers' SiglipModel: a directory with config.json and model.safetensors (or
            pytorch_model.bin, or shards listed in *.index.json), e.g. google/siglip-base-patch16-224
  openclip  OpenCLIP's ViT-B-16-SigLIP state dict (a timm ViT under visual.trunk.), one .bin/.pt/.pth/
            .safetensors file, or a directory holding open_clip_model.safetensors / open_clip_pytorch_model.bin

    python convert.py import --src=siglip-base-patch16-224 --format=hf --out=siglip_b16.pt
    python convert.py import --src=open_clip_pytorch_model.bin --format=openclip --tokenizer=spiece.model \
        --out=siglip_b16.pt
    python convert.py export --ckpt=runs/default/ckpt.pt --format=hf --out=exported_hf
    python convert.py export --ckpt=runs/default/ckpt.pt --format=openclip --out=exported_openclip

The imported checkpoint is an ordinary project checkpoint (step 0, no optimizer state), so
`python train.py --init=siglip_b16.pt` fine-tunes it and `python evaluate.py --ckpt=siglip_b16.pt` scores it.
It carries SigLIP's SentencePiece tokenizer (spiece.model: found in an HF directory, else --tokenizer=).

Most tensors map one to one by name; the few that do not are written out explicitly: HF keeps q, k, v
apart where we fuse them, HF's MAP head is an nn.MultiheadAttention whose in_proj stacks q, k, v where we
have q and kv, HF's vision position embedding is an nn.Embedding (T, W) where ours is (1, T, W), and HF's
logit scalars have shape (1,). Splits and concatenations copy values, so import then export is bit-exact.

Needs `safetensors` for .safetensors files and exports, `sentencepiece` for the tokenizer;
transformers itself is not needed (only the tests use it).
"""

import json
import math
import os
import re
import sys
from dataclasses import asdict

import torch

from cli import MissingFileError, UsageError
from model import DualEncoder, ModelConfig, SentencePieceTokenizer, tokenizer_from_state_dict

# -----------------------------------------------------------------------------
# reading and writing state dicts


def _safetensors():
    try:
        import safetensors.torch
        return safetensors.torch
    except ImportError:
        raise ImportError("reading or writing .safetensors needs: pip install safetensors") from None


def read_tensor_file(path):
    """one weights file -> flat {name: tensor}; clear errors for truncated or foreign files"""
    if not os.path.isfile(path):
        raise MissingFileError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            sd = _safetensors().load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)  # weights only: no code runs from the file
    except ImportError:
        raise
    except Exception as e:
        raise UsageError(f"cannot read weights from {path} (truncated, corrupt or not a state dict): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # an OpenCLIP training checkpoint rather than a bare state dict
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{path} does not hold a flat state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from a DDP-wrapped model
    return sd


def read_hf_weights(directory):
    """the state dict of an HF model directory: single file or shards"""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(directory, name)):
            return read_tensor_file(os.path.join(directory, name))
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(directory, name)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(read_tensor_file(os.path.join(directory, shard)))
            return sd
    raise MissingFileError(f"no model.safetensors, pytorch_model.bin or shard index in {directory}")

# -----------------------------------------------------------------------------
# HF transformers layout (SiglipModel)

# transformers' SiglipTextConfig / SiglipVisionConfig defaults: config.json files written by
# transformers leave out every value equal to its default, google/siglip-base-patch16-224 included
HF_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                        layer_norm_eps=1e-6, projection_size=None)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                          layer_norm_eps=1e-6, vision_use_head=True)
HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}  # HF name -> ModelConfig.act
HF_ACT_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}  # and back


def _square(value, what):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UsageError(f"non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def model_config_from_hf(hf):
    """HF SiglipConfig (the dict of config.json) -> ModelConfig; only what our model can express"""
    if hf.get("model_type") != "siglip":
        raise UsageError(f"expected an HF SiglipModel config (model_type 'siglip'), got {hf.get('model_type')!r}")
    t = {**HF_TEXT_DEFAULTS, **{k: v for k, v in (hf.get("text_config") or {}).items() if v is not None}}
    v = {**HF_VISION_DEFAULTS, **{k: v for k, v in (hf.get("vision_config") or {}).items() if v is not None}}
    # one mlp_ratio, eps and activation serve both towers here
    mlp_ratio = v["intermediate_size"] / v["hidden_size"]
    problems = []
    if t["intermediate_size"] != round(t["hidden_size"] * mlp_ratio):
        problems.append(f"text MLP {t['intermediate_size']} vs vision ratio {mlp_ratio}")
    if t["layer_norm_eps"] != v["layer_norm_eps"]:
        problems.append(f"layer-norm eps text {t['layer_norm_eps']} vs vision {v['layer_norm_eps']}")
    if t["hidden_act"] != v["hidden_act"] or t["hidden_act"] not in HF_ACTS:
        problems.append(f"activations text {t['hidden_act']!r}, vision {v['hidden_act']!r} "
                        f"(need one of {list(HF_ACTS)})")
    if not v["vision_use_head"]:
        problems.append("vision_use_head is false (no MAP head)")
    if v["num_channels"] != 3:
        problems.append(f"{v['num_channels']} input channels")
    projection = t["projection_size"] or t["hidden_size"]
    if projection != v["hidden_size"]:
        problems.append(f"text projection {projection} != vision width {v['hidden_size']}")
    if problems:
        raise UsageError("this SigLIP config does not fit model.py: " + "; ".join(problems))
    return ModelConfig(
        image_size=_square(v["image_size"], "image size"), patch_size=_square(v["patch_size"], "patch size"),
        width=v["hidden_size"], depth=v["num_hidden_layers"], heads=v["num_attention_heads"],
        text_width=t["hidden_size"], text_depth=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
        context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], embed_dim=v["hidden_size"],
        mlp_ratio=mlp_ratio, ln_eps=v["layer_norm_eps"], act=HF_ACTS[v["hidden_act"]])


def hf_config_from_model_config(cfg):
    """ModelConfig -> the dict of an HF SiglipModel config.json (every field written out)"""
    act = HF_ACT_NAMES[cfg.act]
    text = dict(model_type="siglip_text_model", vocab_size=cfg.vocab_size, hidden_size=cfg.text_width,
                intermediate_size=round(cfg.text_width * cfg.mlp_ratio), num_hidden_layers=cfg.text_depth,
                num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.context_length, hidden_act=act,
                layer_norm_eps=cfg.ln_eps, projection_size=cfg.embed_dim,
                pad_token_id=1, bos_token_id=None, eos_token_id=1)  # SigLIP's ids (the model does not read them)
    vision = dict(model_type="siglip_vision_model", hidden_size=cfg.width,
                  intermediate_size=round(cfg.width * cfg.mlp_ratio), num_hidden_layers=cfg.depth,
                  num_attention_heads=cfg.heads, num_channels=3, image_size=cfg.image_size,
                  patch_size=cfg.patch_size, hidden_act=act, layer_norm_eps=cfg.ln_eps, vision_use_head=True)
    return dict(architectures=["SiglipModel"], model_type="siglip", text_config=text, vision_config=vision,
                initializer_factor=1.0)


HF_TOWER = {"visual": "vision_model", "text": "text_model"}
HF_BLOCK = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # attn.qkv is split, below
HF_MODULE = {
    "visual.patch_embed": "vision_model.embeddings.patch_embedding",
    "visual.norm": "vision_model.post_layernorm",
    "visual.attn_pool.latent": "vision_model.head.probe",
    "visual.attn_pool.proj": "vision_model.head.attention.out_proj",
    "visual.attn_pool.norm": "vision_model.head.layernorm",
    "visual.attn_pool.mlp.fc1": "vision_model.head.mlp.fc1",
    "visual.attn_pool.mlp.fc2": "vision_model.head.mlp.fc2",
    "text.token_embedding": "text_model.embeddings.token_embedding",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final": "text_model.final_layer_norm",
    "text.text_projection": "text_model.head",
}  # visual.pos_embed, attn_pool.q/kv and the logit scalars are reshaped or split, below


def hf_name(key):
    """our parameter name -> the HF name, for tensors that map one to one; None for the others"""
    m = re.fullmatch(r"(visual|text)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        tower, i, module, suffix = m.groups()
        return f"{HF_TOWER[tower]}.encoder.layers.{i}.{HF_BLOCK[module]}.{suffix}" if module in HF_BLOCK else None
    if key in HF_MODULE:
        return HF_MODULE[key]
    module, _, suffix = key.rpartition(".")
    return f"{HF_MODULE[module]}.{suffix}" if module in HF_MODULE else None


def to_hf(sd, cfg):
    """our state dict -> HF SiglipModel's"""
    out = {hf_name(k): v for k, v in sd.items() if hf_name(k)}
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.pos_embed"][0]  # (1, T, W) -> (T, W)
    for tower, depth in (("visual", cfg.depth), ("text", cfg.text_depth)):
        for i in range(depth):
            for s in ("weight", "bias"):
                for name, part in zip("qkv", sd[f"{tower}.blocks.{i}.attn.qkv.{s}"].chunk(3)):
                    out[f"{HF_TOWER[tower]}.encoder.layers.{i}.self_attn.{name}_proj.{s}"] = part
    for s in ("weight", "bias"):  # MultiheadAttention's in_proj stacks q, k, v; our kv holds k then v
        out[f"vision_model.head.attention.in_proj_{s}"] = torch.cat([sd[f"visual.attn_pool.q.{s}"],
                                                                     sd[f"visual.attn_pool.kv.{s}"]])
    out["logit_scale"] = sd["logit_scale"].reshape(1)
    out["logit_bias"] = sd["logit_bias"].reshape(1)
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(hf_sd, cfg):
    """HF SiglipModel's state dict -> ours; every HF tensor must be used (position_ids buffers aside)"""
    left = {k: v for k, v in hf_sd.items() if not k.endswith("position_ids")}  # non-persistent in new transformers

    def take(name):
        if name not in left:
            raise KeyError(f"HF state dict lacks {name!r}: not a complete SiglipModel of this config")
        return left.pop(name)

    out = {}
    for key in _our_shapes(cfg):
        if hf_name(key):
            out[key] = take(hf_name(key))
    out["visual.pos_embed"] = take("vision_model.embeddings.position_embedding.weight")[None]
    for tower, depth in (("visual", cfg.depth), ("text", cfg.text_depth)):
        for i in range(depth):
            for s in ("weight", "bias"):
                out[f"{tower}.blocks.{i}.attn.qkv.{s}"] = torch.cat(
                    [take(f"{HF_TOWER[tower]}.encoder.layers.{i}.self_attn.{n}_proj.{s}") for n in "qkv"])
    for s in ("weight", "bias"):
        out[f"visual.attn_pool.q.{s}"], out[f"visual.attn_pool.kv.{s}"] = \
            take(f"vision_model.head.attention.in_proj_{s}").split([cfg.width, 2 * cfg.width])
    out["logit_scale"] = take("logit_scale").reshape(())
    out["logit_bias"] = take("logit_bias").reshape(())
    if left:
        raise UsageError(f"{len(left)} HF tensors have no place in model.py, e.g. {sorted(left)[:3]}")
    return {k: v.contiguous() for k, v in out.items()}

# -----------------------------------------------------------------------------
# OpenCLIP layout (ViT-B-16-SigLIP: timm trunk, OpenCLIP text transformer)

OPENCLIP_TEXT_BLOCK = {"norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
                       "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
SIGLIP_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 16}  # width -> heads of the released SigLIP sizes


def openclip_name(key):
    """our parameter name -> OpenCLIP's; every tensor maps one to one"""
    if key.startswith("visual.patch_embed."):
        return "visual.trunk.patch_embed.proj." + key[len("visual.patch_embed."):]  # timm wraps the conv
    if key.startswith("visual."):
        return "visual.trunk." + key[len("visual."):]  # the rest of our image tower uses timm's names
    m = re.fullmatch(r"text\.blocks\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        for ours, theirs in OPENCLIP_TEXT_BLOCK.items():
            if rest == ours or rest.startswith(ours + "."):
                return f"text.transformer.resblocks.{i}.{theirs}{rest[len(ours):]}"
        raise KeyError(key)
    return key  # token_embedding, positional_embedding, ln_final, text_projection, logit_scale, logit_bias


def to_openclip(sd):
    return {openclip_name(k): v.contiguous() for k, v in sd.items()}


def from_openclip(oc_sd, cfg):
    left = dict(oc_sd)
    out = {}
    for key in _our_shapes(cfg):
        name = openclip_name(key)
        if name not in left:
            raise KeyError(f"OpenCLIP state dict lacks {name!r}: not a SigLIP model with a MAP head of this size")
        out[key] = left.pop(name)
    if left:
        raise UsageError(f"{len(left)} OpenCLIP tensors have no place in model.py, e.g. {sorted(left)[:3]}")
    return out


def model_config_from_openclip(sd, heads=0, text_heads=0, image_size=0):
    """a bare state dict carries no config: sizes from the shapes; head counts from SIGLIP_HEADS or given;
    image_size only when the patch grid does not fill it (so400m/14: 27 x 14 = 378 of 384 pixels)"""
    need = ["visual.trunk.pos_embed", "visual.trunk.patch_embed.proj.weight", "visual.trunk.blocks.0.mlp.fc1.weight",
            "text.positional_embedding", "text.token_embedding.weight", "text.text_projection.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise UsageError(f"not an OpenCLIP SigLIP state dict: missing {missing}")
    _, T, width = sd["visual.trunk.pos_embed"].shape
    patch = sd["visual.trunk.patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(T)
    if grid * grid != T:
        raise UsageError(f"{T} position embeddings do not form a square grid (a class token?)")
    context, text_width = sd["text.positional_embedding"].shape
    depth = len({m.group(1) for k in sd for m in [re.match(r"visual\.trunk\.blocks\.(\d+)\.", k)] if m})
    text_depth = len({m.group(1) for k in sd for m in [re.match(r"text\.transformer\.resblocks\.(\d+)\.", k)] if m})
    if image_size and image_size // patch != grid:
        raise UsageError(f"--image_size={image_size} does not give the weights' {grid} x {grid} patch grid")
    heads = heads or SIGLIP_HEADS.get(width)
    text_heads = text_heads or SIGLIP_HEADS.get(text_width)
    if not heads or not text_heads:
        raise UsageError(f"cannot tell the head counts of widths {width}/{text_width} from the weights: "
                         f"pass --heads= and --text_heads=")
    return ModelConfig(
        image_size=image_size or grid * patch, patch_size=patch, width=width, depth=depth, heads=heads,
        text_width=text_width, text_depth=text_depth, text_heads=text_heads, context_length=context,
        vocab_size=sd["text.token_embedding.weight"].shape[0], embed_dim=sd["text.text_projection.weight"].shape[0],
        mlp_ratio=sd["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0] / width,
        ln_eps=1e-6, act="gelu")  # timm and OpenCLIP SigLIP: LayerNorm eps 1e-6, exact GELU

# -----------------------------------------------------------------------------
# checkpoint-level import / export


def _our_shapes(cfg):
    """{name: shape} of model.py's state dict for cfg, without allocating it"""
    with torch.device("meta"):
        return {k: v.shape for k, v in DualEncoder(cfg).state_dict().items()}


def _check_shapes(sd, cfg, source):
    want = _our_shapes(cfg)
    bad = [f"{k}: {tuple(sd[k].shape)} != {tuple(s)}" for k, s in want.items() if sd[k].shape != s]
    if bad:
        raise UsageError(f"{source}: tensor shapes disagree with its config ({len(bad)}), e.g. {bad[:3]}")


def load_foreign(src, fmt, heads=0, text_heads=0, image_size=0):
    """a foreign checkpoint -> (our state dict in float32, ModelConfig)"""
    if fmt == "hf":
        if not os.path.isdir(src):
            raise UsageError(f"--format=hf expects a model directory (config.json + weights), got {src}")
        with open(os.path.join(src, "config.json")) as f:
            cfg = model_config_from_hf(json.load(f))
        sd = from_hf(read_hf_weights(src), cfg)
    elif fmt == "openclip":
        path = src
        if os.path.isdir(src):
            names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            found = [os.path.join(src, n) for n in names if os.path.isfile(os.path.join(src, n))]
            if not found:
                raise MissingFileError(f"no {' or '.join(names)} in {src}")
            path = found[0]
        oc = read_tensor_file(path)
        cfg = model_config_from_openclip(oc, heads, text_heads, image_size)
        sd = from_openclip(oc, cfg)
    else:
        raise UsageError(f"--format={fmt}: expected hf or openclip")
    _check_shapes(sd, cfg, src)
    return {k: v.float() for k, v in sd.items()}, cfg  # fp32 master weights, whatever the file's dtype


def find_tokenizer(src, tokenizer):
    if tokenizer:
        return tokenizer
    directory = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    if os.path.isfile(os.path.join(directory, "spiece.model")):
        return os.path.join(directory, "spiece.model")
    raise MissingFileError(f"no spiece.model beside {src}: pass --tokenizer=PATH/spiece.model "
                            f"(SigLIP's SentencePiece model, e.g. from google/siglip-base-patch16-224)")


def import_checkpoint(src, fmt, out, tokenizer="", heads=0, text_heads=0, image_size=0):
    """foreign weights (+ spiece.model) -> a project checkpoint at out; returns (model, tokenizer)"""
    from train import Config, save_checkpoint  # here, so the mapping functions above import without train's deps
    sd, cfg = load_foreign(src, fmt, heads, text_heads, image_size)
    tok = SentencePieceTokenizer.from_file(find_tokenizer(src, tokenizer), cfg.context_length)
    if tok.vocab_size != cfg.vocab_size:
        raise UsageError(f"tokenizer has {tok.vocab_size} pieces but the model's vocabulary is {cfg.vocab_size}")
    model = DualEncoder(cfg)
    model.load_state_dict(sd)  # strict: every parameter comes from the file
    save_checkpoint(out, model, None, Config(), tok, 0,
                    extra={"converted_from": {"src": os.path.abspath(src), "format": fmt}})
    return model, tok


def export_checkpoint(ckpt_path, fmt, out_dir):
    """a project checkpoint -> out_dir in the HF (config.json + model.safetensors) or OpenCLIP layout"""
    from train import load_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    cfg = ModelConfig(**ckpt["model_config"])
    sd = {k: v.detach().cpu() for k, v in ckpt["model"].items()}
    os.makedirs(out_dir, exist_ok=True)
    if fmt == "hf":
        if cfg.embed_dim != cfg.width:
            raise UsageError("HF SigLIP has no image projection: embed_dim must equal width")
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hf_config_from_model_config(cfg), f, indent=2)
        _safetensors().save_file(to_hf(sd, cfg), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "openclip":
        _safetensors().save_file(to_openclip(sd), os.path.join(out_dir, "open_clip_model.safetensors"))
    else:
        raise UsageError(f"--format={fmt}: expected hf or openclip")
    tok = tokenizer_from_state_dict(ckpt["tokenizer"])
    if isinstance(tok, SentencePieceTokenizer):  # with it the directory loads in SiglipTokenizer too
        with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
            f.write(tok.proto)
        if fmt == "hf":
            with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
                json.dump({"tokenizer_class": "SiglipTokenizer", "model_max_length": cfg.context_length,
                           "do_lower_case": True}, f, indent=2)
    else:
        print(f"note: {ckpt_path} uses a {ckpt['tokenizer']['kind']} tokenizer, which has no HF/OpenCLIP form; "
              f"weights only", file=sys.stderr)
    return cfg

# -----------------------------------------------------------------------------
# command line


USAGE = """usage:
  python convert.py import --src=DIR_OR_FILE --format=hf|openclip --out=ckpt.pt [--tokenizer=spiece.model]
                           [--heads=N --text_heads=N]   (openclip: widths outside the released sizes)
                           [--image_size=N]             (openclip: when the patch grid leaves pixels over)
  python convert.py export --ckpt=ckpt.pt --format=hf|openclip --out=DIR"""


def main(argv):
    if not argv or argv[0] not in ("import", "export"):
        sys.exit(USAGE)
    known = {"import": {"src", "format", "out", "tokenizer", "heads", "text_heads", "image_size"},
             "export": {"ckpt", "format", "out"}}[argv[0]]
    opts = {}
    for arg in argv[1:]:
        key, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or not eq or key not in known:
            sys.exit(f"error: bad argument {arg!r}\n{USAGE}")
        opts[key] = value
    required = {"import": ("src", "format", "out"), "export": ("ckpt", "format", "out")}[argv[0]]
    missing = [k for k in required if k not in opts]
    if missing:
        sys.exit(f"error: missing {', '.join('--' + k for k in missing)}\n{USAGE}")
    torch.set_num_threads(1)
    try:
        if argv[0] == "import":
            model, tok = import_checkpoint(opts["src"], opts["format"], opts["out"], opts.get("tokenizer", ""),
                                           int(opts.get("heads", 0)), int(opts.get("text_heads", 0)),
                                           int(opts.get("image_size", 0)))
            print(f"wrote {opts['out']}: {model.num_params() / 1e6:.2f}M parameters, "
                  f"t = {model.logit_scale.exp().item():.3f}, b = {model.logit_bias.item():.3f}, "
                  f"vocab {tok.vocab_size}, context {tok.context_length}")
            print("config:", json.dumps(asdict(model.cfg)))
        else:
            export_checkpoint(opts["ckpt"], opts["format"], opts["out"])
            print(f"wrote {opts['format']} layout to {opts['out']}")
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""
Import pretrained SigLIP and SigLIP 2 weights into model.py's DualEncoder, and export a project checkpoint back.

Two foreign layouts, each for both generations (fixed resolution only):
  hf        transformers' SiglipModel: a directory with config.json and model.safetensors (or
            pytorch_model.bin, or shards listed in *.index.json), e.g. google/siglip-base-patch16-224 or
            google/siglip2-base-patch16-224 (transformers loads fixed-resolution SigLIP 2 as a SiglipModel;
            its Siglip2Model is the NaFlex variable-resolution one, refused here)
  openclip  OpenCLIP's ViT-*-SigLIP / ViT-*-SigLIP2 state dict (a timm ViT under visual.trunk.), one .bin/.pt/
            .pth/.safetensors file, or a directory holding open_clip_model.safetensors / open_clip_pytorch_model.bin
            (and open_clip_config.json, read when present)

    python convert.py import --src=siglip2-base-patch16-224 --format=hf --out=siglip2_b16.pt
    python convert.py import --src=open_clip_pytorch_model.bin --format=openclip --tokenizer=spiece.model \
        --out=siglip_b16.pt
    python convert.py export --ckpt=runs/default/ckpt.pt --format=hf --out=exported_hf
    python convert.py export --ckpt=runs/default/ckpt.pt --format=openclip --out=exported_openclip

The imported checkpoint is an ordinary project checkpoint (step 0, no optimizer state), so
`python train.py --init=siglip2_b16.pt` fine-tunes it and `python evaluate.py --ckpt=siglip2_b16.pt` scores it.
Its config records the preset its sizes match ("siglip2-B/16") or "custom-..." with the sizes.

Which generation: SigLIP and SigLIP 2 share every tensor name in both layouts, so the weights cannot tell.
The tokenizer can, and an import always needs one: a T5-style SentencePiece model (eos 1, no bos; SigLIP's
spiece.model) means SigLIP, a Gemma one (pad 0, eos 1, bos 2, unk 3; SigLIP 2's tokenizer.model) means SigLIP 2.
Every other signal present must agree with it, or the import stops: --arch=siglip|siglip2, a released
vocabulary size (32000 and 250000 are SigLIP's, 256000 SigLIP 2's), OpenCLIP's open_clip_config.json
(hf_tokenizer_name) and HF's tokenizer_config.json (tokenizer_class). The generation decides the tokenizer and,
for OpenCLIP files without a config, the activations: OpenCLIP's SigLIP uses the exact GELU in both towers,
its SigLIP 2 the exact GELU in the image tower and the tanh GELU in the text tower. HF configs state theirs.

What model.py cannot hold is refused with one line naming the field (an activation it lacks, two layer-norm
eps, no MAP head, another pooling, a causal text mask, a class token, a non-square grid, a tokenizer whose
size is not the vocabulary, ...), never imported as a silently different model.

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
from dataclasses import asdict, dataclass

import torch

import cli
from cli import MissingFileError, UsageError
from model import (DualEncoder, GemmaTokenizer, ModelConfig, SentencePieceTokenizer, preset_name,
                   tokenizer_from_state_dict)


class Unsupported(UsageError):
    """a source checkpoint model.py cannot represent, or contradicting signals about what it is (one line)"""


ARCHS = {"siglip": "SigLIP", "siglip2": "SigLIP 2"}
RELEASED_VOCABS = {32000: "siglip", 250000: "siglip", 256000: "siglip2"}  # c4-en, mc4 (i18n), Gemma


def tokenizer_arch(proto):
    """which generation a SentencePiece model belongs to, from its special ids"""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids = (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id())
    if ids == (0, 1, 2, 3):
        return "siglip2"  # Gemma
    if sp.eos_id() == 1 and sp.bos_id() < 0:
        return "siglip"  # T5: pad 0, eos 1, unk 2, no bos
    raise Unsupported(f"tokenizer: special ids pad/eos/bos/unk {ids} are neither SigLIP's T5 layout (eos 1, no bos) "
                      f"nor SigLIP 2's Gemma layout (0, 1, 2, 3); pass the model's own tokenizer file")


def resolve_arch(evidence, source):
    """[(where, arch or None)] -> the one generation every present signal names; a disagreement is an error"""
    named = [(w, a) for w, a in evidence if a]
    if not named:
        raise Unsupported(f"{source}: nothing tells SigLIP from SigLIP 2; pass --arch=siglip or --arch=siglip2")
    first_where, first = named[0]
    for where, arch in named[1:]:
        if arch != first:
            raise Unsupported(f"{source}: {first_where} says {ARCHS[first]} but {where} says {ARCHS[arch]}; "
                              f"SigLIP and SigLIP 2 differ in tokenizer and activations, so pass matching files")
    return first


def require(source, field, value, allowed):
    """one architecture fact of the source against what model.py can hold"""
    if value not in allowed:
        raise Unsupported(f"{source}: {field} = {value!r}, model.py holds only {' or '.join(map(repr, allowed))}")

# -----------------------------------------------------------------------------
# reading and writing state dicts


def _safetensors():
    try:
        import safetensors.torch
        return safetensors.torch
    except ImportError:
        raise UsageError("reading or writing .safetensors needs the safetensors package: pip install safetensors") from None


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
HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}  # HF name -> ours
HF_ACT_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}  # and back


def _square(value, what):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise Unsupported(f"non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def model_config_from_hf(hf, source="config.json"):
    """HF SiglipConfig (the dict of config.json) -> ModelConfig; every fact model.py cannot hold is refused"""
    if hf.get("model_type") == "siglip2":
        raise Unsupported(f"{source}: model_type 'siglip2' is SigLIP 2's NaFlex (variable resolution) model, which "
                          f"model.py does not hold; use a fixed-resolution checkpoint (siglip2-*-patch16-224 style)")
    require(source, "model_type", hf.get("model_type"), ["siglip"])
    t = {**HF_TEXT_DEFAULTS, **{k: v for k, v in (hf.get("text_config") or {}).items() if v is not None}}
    v = {**HF_VISION_DEFAULTS, **{k: v for k, v in (hf.get("vision_config") or {}).items() if v is not None}}
    require(source, "text_config.hidden_act", t["hidden_act"], list(HF_ACTS))
    require(source, "vision_config.hidden_act", v["hidden_act"], list(HF_ACTS))
    require(source, "vision_config.vision_use_head (MAP head)", v["vision_use_head"], [True])
    require(source, "vision_config.num_channels", v["num_channels"], [3])
    # one mlp_ratio and one eps serve both towers here
    mlp_ratio = v["intermediate_size"] / v["hidden_size"]
    require(source, "text_config.intermediate_size", t["intermediate_size"], [round(t["hidden_size"] * mlp_ratio)])
    require(source, "text_config.layer_norm_eps", t["layer_norm_eps"], [v["layer_norm_eps"]])
    require(source, "text_config.projection_size", t["projection_size"] or t["hidden_size"], [v["hidden_size"]])
    return ModelConfig(
        image_size=_square(v["image_size"], "image size"), patch_size=_square(v["patch_size"], "patch size"),
        width=v["hidden_size"], depth=v["num_hidden_layers"], heads=v["num_attention_heads"],
        text_width=t["hidden_size"], text_depth=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
        context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], embed_dim=v["hidden_size"],
        mlp_ratio=mlp_ratio, ln_eps=v["layer_norm_eps"], vision_act=HF_ACTS[v["hidden_act"]],
        text_act=HF_ACTS[t["hidden_act"]])


def hf_config_from_model_config(cfg, arch="siglip"):
    """ModelConfig -> the dict of an HF SiglipModel config.json (every field written out)"""
    # the ids of the generation's tokenizer (the model does not read them)
    ids = dict(pad_token_id=1, bos_token_id=None, eos_token_id=1) if arch == "siglip" else \
        dict(pad_token_id=0, bos_token_id=2, eos_token_id=1)
    text = dict(model_type="siglip_text_model", vocab_size=cfg.vocab_size, hidden_size=cfg.text_width,
                intermediate_size=round(cfg.text_width * cfg.mlp_ratio), num_hidden_layers=cfg.text_depth,
                num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.context_length,
                hidden_act=HF_ACT_NAMES[cfg.text_act], layer_norm_eps=cfg.ln_eps, projection_size=cfg.embed_dim, **ids)
    vision = dict(model_type="siglip_vision_model", hidden_size=cfg.width,
                  intermediate_size=round(cfg.width * cfg.mlp_ratio), num_hidden_layers=cfg.depth,
                  num_attention_heads=cfg.heads, num_channels=3, image_size=cfg.image_size,
                  patch_size=cfg.patch_size, hidden_act=HF_ACT_NAMES[cfg.vision_act], layer_norm_eps=cfg.ln_eps,
                  vision_use_head=True)
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
            raise Unsupported(f"HF state dict lacks {name!r}: not a complete SiglipModel of this config")
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
        raise Unsupported(f"{len(left)} HF tensors have no place in model.py, e.g. {sorted(left)[:3]}")
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
            raise Unsupported(f"OpenCLIP state dict lacks {name!r}: not a SigLIP model with a MAP head of this size")
        out[key] = left.pop(name)
    if left:
        raise Unsupported(f"{len(left)} OpenCLIP tensors have no place in model.py, e.g. {sorted(left)[:3]}")
    return out


# OpenCLIP's activations when no open_clip_config.json says: timm's SigLIP ViTs use the exact GELU; OpenCLIP's
# ViT-*-SigLIP2 configs set the tanh GELU in the text tower (act_kwargs), its ViT-*-SigLIP configs do not
OPENCLIP_ACTS = {"siglip": ("gelu", "gelu"), "siglip2": ("gelu", "gelu_tanh")}  # (vision, text)
TIMM_SIGLIP = re.compile(r"vit_\w+_patch\d+_siglip_\d+")  # MAP-pooled SigLIP ViTs (not the *_gap_* ones)


def arch_of_openclip_config(oc_cfg):
    name = ((oc_cfg or {}).get("text_cfg") or {}).get("hf_tokenizer_name") or ""
    return "siglip2" if "siglip2" in name.lower() else "siglip" if "siglip" in name.lower() else None


def check_openclip_config(oc_cfg, source):
    """the facts of an open_clip_config.json model.py must match -> (vision act, text act, clean, heads, text heads)"""
    v, t = oc_cfg.get("vision_cfg") or {}, oc_cfg.get("text_cfg") or {}
    require(source, "vision_cfg.timm_model_name (a timm SigLIP ViT with a MAP head)",
            bool(TIMM_SIGLIP.fullmatch(v.get("timm_model_name") or "")), [True])
    require(source, "vision_cfg.timm_pool", v.get("timm_pool"), ["map"])
    require(source, "vision_cfg.timm_proj", v.get("timm_proj"), ["none"])
    require(source, "custom_text", oc_cfg.get("custom_text"), [True])
    require(source, "quick_gelu", oc_cfg.get("quick_gelu", False), [False])
    require(source, "text_cfg.pool_type", t.get("pool_type"), ["last"])
    require(source, "text_cfg.no_causal_mask", t.get("no_causal_mask"), [True])
    require(source, "text_cfg.proj_type (text projection)", t.get("proj_type", "linear"), ["linear"])
    require(source, "text_cfg.proj_bias", t.get("proj_bias"), [True])
    require(source, "text_cfg.embed_cls", t.get("embed_cls", False), [False])
    require(source, "text_cfg.norm_kwargs.eps", (t.get("norm_kwargs") or {}).get("eps"), [1e-6])
    text_act = {None: "gelu", "tanh": "gelu_tanh", "none": "gelu"}
    approx = (t.get("act_kwargs") or {}).get("approximate")
    require(source, "text_cfg.act_kwargs.approximate", approx, list(text_act))
    require(source, "text_cfg.act_kwargs", sorted(t.get("act_kwargs") or {}), [[], ["approximate"]])
    clean = (t.get("tokenizer_kwargs") or {}).get("clean", "canonicalize")
    require(source, "text_cfg.tokenizer_kwargs.clean", clean, ["canonicalize", "lower"])
    require(source, "text_cfg.tokenizer_mode", t.get("tokenizer_mode"), [None])
    return "gelu", text_act[approx], clean, t.get("heads")


def check_openclip_state(sd):
    need = ["visual.trunk.pos_embed", "visual.trunk.patch_embed.proj.weight", "visual.trunk.blocks.0.mlp.fc1.weight",
            "text.positional_embedding", "text.token_embedding.weight", "text.text_projection.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise Unsupported(f"not an OpenCLIP SigLIP state dict: missing {missing}")


def model_config_from_openclip(sd, heads=0, text_heads=0, image_size=0, acts=("gelu", "gelu")):
    """a bare state dict carries no config: sizes from the shapes; head counts from SIGLIP_HEADS or given;
    image_size only when the patch grid does not fill it (so400m/14: 27 x 14 = 378 of 384 pixels)"""
    check_openclip_state(sd)
    # the facts a bare state dict shows: pooling, class or register tokens, projection bias
    for name, what in (("visual.trunk.cls_token", "a class token"), ("visual.trunk.reg_token", "register tokens"),
                       ("text.cls_emb", "a text class token")):
        require("OpenCLIP state dict", f"{name} ({what})", name in sd, [False])
    require("OpenCLIP state dict", "visual.trunk.attn_pool.latent (MAP head)", "visual.trunk.attn_pool.latent" in sd,
            [True])
    require("OpenCLIP state dict", "text.text_projection.bias", "text.text_projection.bias" in sd, [True])
    _, T, width = sd["visual.trunk.pos_embed"].shape
    patch = sd["visual.trunk.patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(T)
    if grid * grid != T:
        raise Unsupported(f"visual.trunk.pos_embed: {T} positions do not form a square grid (a class token?)")
    context, text_width = sd["text.positional_embedding"].shape
    depth = len({m.group(1) for k in sd for m in [re.match(r"visual\.trunk\.blocks\.(\d+)\.", k)] if m})
    text_depth = len({m.group(1) for k in sd for m in [re.match(r"text\.transformer\.resblocks\.(\d+)\.", k)] if m})
    if image_size and image_size // patch != grid:
        raise Unsupported(f"--image_size={image_size} does not give the weights' {grid} x {grid} patch grid")
    heads = heads or SIGLIP_HEADS.get(width)
    text_heads = text_heads or SIGLIP_HEADS.get(text_width)
    if not heads or not text_heads:
        raise Unsupported(f"cannot tell the head counts of widths {width}/{text_width} from the weights: "
                          f"pass --heads= and --text_heads=")
    return ModelConfig(
        image_size=image_size or grid * patch, patch_size=patch, width=width, depth=depth, heads=heads,
        text_width=text_width, text_depth=text_depth, text_heads=text_heads, context_length=context,
        vocab_size=sd["text.token_embedding.weight"].shape[0], embed_dim=sd["text.text_projection.weight"].shape[0],
        mlp_ratio=sd["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0] / width,
        ln_eps=1e-6, vision_act=acts[0], text_act=acts[1])  # timm and OpenCLIP SigLIP: LayerNorm eps 1e-6

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
        raise Unsupported(f"{source}: tensor shapes disagree with its config ({len(bad)}), e.g. {bad[:3]}")


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


HF_TOKENIZER_ARCH = {"SiglipTokenizer": "siglip", "SiglipTokenizerFast": "siglip", "GemmaTokenizer": "siglip2",
                     "GemmaTokenizerFast": "siglip2", "Siglip2Tokenizer": "siglip2"}


def check_source(src, fmt):
    if fmt not in ("hf", "openclip"):
        raise Unsupported(f"--format={fmt}: expected hf or openclip")
    if fmt == "hf" and not os.path.isdir(src):
        raise Unsupported(f"--format=hf expects a model directory (config.json + weights), got {src}")
    if not os.path.exists(src):
        raise MissingFileError(f"--src={src} does not exist")


def load_foreign(src, fmt, heads=0, text_heads=0, image_size=0, evidence=()):
    """a foreign checkpoint -> (our state dict in float32, ModelConfig, arch, text cleaning of a Gemma tokenizer)

    evidence: [(where, arch)] from outside the files (the tokenizer, --arch); the files add theirs
    """
    evidence = list(evidence)
    check_source(src, fmt)
    if fmt == "hf":
        hf = _read_json(os.path.join(src, "config.json"))
        if hf is None:
            raise MissingFileError(f"no config.json in {src}")
        cfg = model_config_from_hf(hf, os.path.join(src, "config.json"))
        tok_cfg = _read_json(os.path.join(src, "tokenizer_config.json")) or {}
        tok_class = tok_cfg.get("tokenizer_class")
        evidence.append(("tokenizer_config.json's tokenizer_class", HF_TOKENIZER_ARCH.get(tok_class)))
        evidence.append((f"the vocabulary size {cfg.vocab_size}", RELEASED_VOCABS.get(cfg.vocab_size)))
        arch = resolve_arch(evidence, src) if any(a for _, a in evidence) else "siglip"
        sd, clean = from_hf(read_hf_weights(src), cfg), "lower"  # transformers' Siglip2Tokenizer lowercases only
    elif fmt == "openclip":
        path, oc_cfg = src, None
        if os.path.isdir(src):
            names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            found = [os.path.join(src, n) for n in names if os.path.isfile(os.path.join(src, n))]
            if not found:
                raise MissingFileError(f"no {' or '.join(names)} in {src}")
            path = found[0]
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "open_clip_config.json")
        oc_cfg = (_read_json(cfg_path) or {}).get("model_cfg")
        oc = read_tensor_file(path)
        check_openclip_state(oc)
        vocab = oc["text.token_embedding.weight"].shape[0]
        evidence.append((f"the vocabulary size {vocab}", RELEASED_VOCABS.get(vocab)))
        evidence.append(("open_clip_config.json's hf_tokenizer_name", arch_of_openclip_config(oc_cfg)))
        arch = resolve_arch(evidence, src)
        acts, clean = OPENCLIP_ACTS[arch], "canonicalize"
        if oc_cfg is not None:
            vision_act, text_act, clean, cfg_text_heads = check_openclip_config(oc_cfg, cfg_path)
            acts, text_heads = (vision_act, text_act), text_heads or cfg_text_heads or 0
        cfg = model_config_from_openclip(oc, heads, text_heads, image_size, acts)
        sd = from_openclip(oc, cfg)
        if arch == "siglip":
            require(cfg_path, "text_cfg.tokenizer_kwargs.clean (SigLIP)", clean, ["canonicalize"])
    else:
        raise Unsupported(f"--format={fmt}: expected hf or openclip")
    _check_shapes(sd, cfg, src)
    return {k: v.float() for k, v in sd.items()}, cfg, arch, clean  # fp32 master weights, whatever the file's dtype


# SigLIP's, SigLIP 2's (HF folders), big_vision's name for SigLIP 2's
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "gemma_tokenizer.model")


def find_tokenizer(src, tokenizer):
    if tokenizer:
        return tokenizer
    directory = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise MissingFileError(f"no {', '.join(TOKENIZER_FILES)} beside {src}: pass --tokenizer=PATH (SigLIP's "
                            f"spiece.model or SigLIP 2's Gemma tokenizer.model, from the model's HF folder)")


def model_label(cfg, arch):
    """the name an imported checkpoint carries: the generation and the preset its sizes match, or custom sizes"""
    return f"{arch}-{preset_name(cfg)}"


def import_checkpoint(src, fmt, out, tokenizer="", heads=0, text_heads=0, image_size=0, arch=""):
    """foreign weights + tokenizer -> a project checkpoint at out; returns (model, tokenizer)"""
    from checkpoint import save_checkpoint
    from train import Config  # here, so the mapping functions above import without train's deps
    if arch and arch not in ARCHS:
        raise Unsupported(f"--arch={arch}: expected siglip or siglip2")
    check_source(src, fmt)
    tok_path = find_tokenizer(src, tokenizer)
    try:
        with open(tok_path, "rb") as f:
            proto = f.read()
        tok_arch = tokenizer_arch(proto)
    except OSError as e:
        raise MissingFileError(f"cannot read tokenizer {tok_path}: {e}") from None
    except Unsupported:
        raise
    except Exception as e:
        raise Unsupported(f"{tok_path} is not a valid SentencePiece model: {e}") from None
    evidence = [("--arch", arch or None), (f"the tokenizer {os.path.basename(tok_path)}", tok_arch)]
    sd, cfg, arch, clean = load_foreign(src, fmt, heads, text_heads, image_size, evidence)
    tok = (GemmaTokenizer(proto, cfg.context_length, clean) if arch == "siglip2"
           else SentencePieceTokenizer(proto, cfg.context_length))
    if tok.vocab_size != cfg.vocab_size:
        raise Unsupported(f"tokenizer has {tok.vocab_size} pieces but the model's vocabulary is {cfg.vocab_size}")
    model = DualEncoder(cfg)
    model.load_state_dict(sd)  # strict: every parameter comes from the file
    save_checkpoint(out, model, None, Config(model=model_label(cfg, arch)), tok, 0,
                    extra={"converted_from": {"src": os.path.abspath(src), "format": fmt, "arch": arch}})
    return model, tok


# timm's names of the released SigLIP image towers, by (width, depth); an OpenCLIP config needs one
TIMM_SIZES = {(768, 12): "base", (1024, 24): "large", (1152, 27): "so400m", (1536, 40): "giantopt"}


def openclip_config(cfg, arch, clean):
    """open_clip_config.json for an export (so open_clip and CLIP_benchmark load it from `local-dir:`), or None
    where no timm model has these sizes: OpenCLIP builds SigLIP image towers only from timm's named ViTs"""
    size = TIMM_SIZES.get((cfg.width, cfg.depth))
    if size is None or cfg.vision_act != "gelu" or cfg.heads != SIGLIP_HEADS.get(cfg.width):
        return None
    text = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, hf_tokenizer_name=f"local-{arch}",
                tokenizer_kwargs={"clean": clean}, width=cfg.text_width, heads=cfg.text_heads, layers=cfg.text_depth,
                mlp_ratio=cfg.mlp_ratio, no_causal_mask=True, proj_bias=True, pool_type="last",
                norm_kwargs={"eps": cfg.ln_eps})
    if cfg.text_act == "gelu_tanh":
        text["act_kwargs"] = {"approximate": "tanh"}
    name = f"vit_{size}_patch{cfg.patch_size}_siglip_{cfg.image_size}"
    try:
        import timm
        if not timm.list_models(name):
            return None  # e.g. a resolution timm has no SigLIP model for
    except ImportError:
        pass  # written anyway; OpenCLIP needs timm to read it
    vision = dict(image_size=cfg.image_size, timm_model_name=name, timm_model_pretrained=False, timm_pool="map",
                  timm_proj="none")
    model_cfg = dict(embed_dim=cfg.embed_dim, init_logit_bias=-10, custom_text=True, vision_cfg=vision, text_cfg=text)
    # SigLIP's preprocessing: squash-resize, mean = std = 0.5
    preprocess = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], interpolation="bicubic", resize_mode="squash")
    return dict(model_cfg=model_cfg, preprocess_cfg=preprocess)


def write_tokenizer(tok, out_dir, fmt):
    """the tokenizer file and a tokenizer_config.json transformers' AutoTokenizer (and so OpenCLIP) loads"""
    if isinstance(tok, GemmaTokenizer):
        name = "tokenizer.model"
        # transformers' Siglip2Tokenizer lowercases; for canonicalised text (OpenCLIP) the plain Gemma one
        cls = "Siglip2Tokenizer" if tok.clean_mode == "lower" and fmt == "hf" else "GemmaTokenizer"
        config = {"tokenizer_class": cls, "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
                  "model_max_length": tok.context_length, "pad_token": "<pad>", "eos_token": "<eos>",
                  "bos_token": "<bos>", "unk_token": "<unk>"}
    else:
        name = "spiece.model"
        config = {"tokenizer_class": "SiglipTokenizer", "model_max_length": tok.context_length, "do_lower_case": True}
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(tok.proto)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def export_checkpoint(ckpt_path, fmt, out_dir):
    """a project checkpoint -> out_dir in the HF (config.json + model.safetensors) or OpenCLIP layout"""
    from checkpoint import load_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    cfg = ModelConfig(**ckpt["model_config"])
    sd = {k: v.detach().cpu() for k, v in ckpt["model"].items()}
    if cfg.concept_head:  # training-only: the exported model is the one the caption losses and evaluation use
        sd = {k: v for k, v in sd.items() if not k.startswith("visual.concept_pool.")}
        print(f"note: {ckpt_path} has a concept head (--concept_head), used only by the concept losses in "
              f"training; exported without it", file=sys.stderr)
    tok = tokenizer_from_state_dict(ckpt["tokenizer"])
    arch = "siglip2" if isinstance(tok, GemmaTokenizer) else "siglip"
    if fmt not in ("hf", "openclip"):
        raise Unsupported(f"--format={fmt}: expected hf or openclip")
    os.makedirs(out_dir, exist_ok=True)
    if fmt == "hf":
        if cfg.embed_dim != cfg.width:
            raise Unsupported("HF SigLIP has no image projection: embed_dim must equal width")
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hf_config_from_model_config(cfg, arch), f, indent=2)
        _safetensors().save_file(to_hf(sd, cfg), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        _safetensors().save_file(to_openclip(sd), os.path.join(out_dir, "open_clip_model.safetensors"))
    if isinstance(tok, SentencePieceTokenizer):
        write_tokenizer(tok, out_dir, fmt)
        if fmt == "openclip":
            oc_cfg = openclip_config(cfg, arch, getattr(tok, "clean_mode", "canonicalize"))
            if oc_cfg is None:
                print(f"note: no timm SigLIP ViT has this image tower ({preset_name(cfg)}, {cfg.vision_act}); "
                      f"weights and tokenizer only, no open_clip_config.json", file=sys.stderr)
            else:
                with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
                    json.dump(oc_cfg, f, indent=2)
    else:
        print(f"note: {ckpt_path} uses a {ckpt['tokenizer']['kind']} tokenizer, which has no HF/OpenCLIP form; "
              f"weights only", file=sys.stderr)
    return cfg

# -----------------------------------------------------------------------------
# command line


@dataclass
class ImportConfig:
    src: str = ""                    # HF model directory, or an OpenCLIP weights file (.bin/.safetensors); required
    format: str = ""                 # hf | openclip; required
    out: str = ""                    # the checkpoint to write (ckpt.pt); required
    tokenizer: str = ""              # SentencePiece model (default: spiece.model / tokenizer.model beside --src)
    arch: str = ""                   # siglip | siglip2 (optional; checked against the tokenizer and the files)
    heads: int = 0                   # openclip: image-tower heads, for widths outside the released sizes
    text_heads: int = 0              # openclip: text-tower heads, likewise
    image_size: int = 0              # openclip: when the patch grid leaves pixels over


@dataclass
class ExportConfig:
    ckpt: str = ""                   # a checkpoint of this project; required
    format: str = ""                 # hf | openclip; required
    out: str = ""                    # the folder to write; required


def required(cfg, *names):
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise UsageError(f"missing {', '.join('--' + n for n in missing)}; see --help")


def import_main(cfg):
    required(cfg, "src", "format", "out")
    torch.set_num_threads(1)
    try:
        model, tok = import_checkpoint(cfg.src, cfg.format, cfg.out, cfg.tokenizer, cfg.heads, cfg.text_heads,
                                       cfg.image_size, cfg.arch)
    except ImportError as e:  # sentencepiece is only needed here
        raise UsageError(f"{e}; the converter needs: pip install sentencepiece safetensors") from None
    print(f"wrote {cfg.out}: {model.num_params() / 1e6:.2f}M parameters, "
          f"t = {model.logit_scale.exp().item():.3f}, b = {model.logit_bias.item():.3f}, "
          f"vocab {tok.vocab_size}, context {tok.context_length}")
    print("config:", json.dumps(asdict(model.cfg)))
    print("label:", model_label(model.cfg, "siglip2" if isinstance(tok, GemmaTokenizer) else "siglip"))


def export_main(cfg):
    required(cfg, "ckpt", "format", "out")
    torch.set_num_threads(1)
    export_checkpoint(cfg.ckpt, cfg.format, cfg.out)
    print(f"wrote {cfg.format} layout to {cfg.out}")


COMMANDS = {"import": (import_main, ImportConfig, "a SigLIP / SigLIP 2 checkpoint (HF or OpenCLIP layout) -> ckpt.pt"),
            "export": (export_main, ExportConfig, "ckpt.pt -> the HF or OpenCLIP layout")}


def main(argv):
    cli.run_command(COMMANDS, doc=__doc__, argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])

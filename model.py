"""
A SigLIP-style dual encoder, written from scratch.

  image tower: patchify conv -> + learned pos-embed -> pre-LN blocks -> final LN -> MAP head
  text tower:  token + pos embeddings -> pre-LN blocks (no masks) -> final LN -> last position -> Linear
  match logit: exp(logit_scale) * <x, y> + logit_bias, with x, y L2-normalised

No CLS token, no projection after the MAP head (SigLIP ViT-B/16; METHOD.md §1.1).
`encode_image(..., return_tokens=True)` also returns the per-patch tokens through the MAP head's
value path (METHOD.md §2.3), which the C2LIP losses pool per concept.

The tokenizer lives here too: a word-level tokenizer whose vocabulary is built from the training
captions and saved inside every checkpoint, so nothing is downloaded. Anything with the same small
interface (`encode`, `vocab_size`, `context_length`, `state_dict`) can replace it; the SentencePiece
tokenizers of pretrained SigLIP (T5-style) and SigLIP 2 (Gemma), imported by convert.py, are the others.

    python model.py             # prints the parameter count of every preset
"""

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import UsageError

# -----------------------------------------------------------------------------
# config and size presets


@dataclass
class ModelConfig:
    image_size: int = 32       # input resolution (square)
    patch_size: int = 8        # 32 / 8 -> 16 patch tokens
    width: int = 128           # image tower width; also the MAP head width
    depth: int = 4             # image tower blocks
    heads: int = 4             # image tower heads (the MAP head uses the same count)
    text_width: int = 128
    text_depth: int = 3
    text_heads: int = 4
    context_length: int = 32   # text tokens, captions and concepts alike
    vocab_size: int = 512      # set from the tokenizer at build time
    embed_dim: int = 128       # joint space; must equal width (no projection after the MAP head)
    mlp_ratio: float = 4.0     # MLP hidden = round(width * mlp_ratio), both towers and the MAP head
    ln_eps: float = 1e-6
    vision_act: str = "gelu"   # image tower and MAP head: "gelu" (exact: timm/OpenCLIP) or "gelu_tanh" (HF, big_vision)
    text_act: str = "gelu"     # text tower; OpenCLIP's SigLIP 2 pairs gelu_tanh here with gelu in the image tower
    act: str = ""              # old checkpoints' one activation for both towers; when set, it sets the two above
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    image_pos_std: float = 0.02  # init std of the image tower's position embeddings (from scratch; METHOD.md §12)
    text_pos_std: float = 0.02   # init std of the text tower's position embeddings (from scratch; METHOD.md §11)
    concept_head: bool = False   # a second MAP head pools the image for C2LIP's concept losses (METHOD.md §12)

    def __post_init__(self):
        if self.act:  # a model_config dict saved before the per-tower activations
            self.vision_act = self.text_act = self.act
            self.act = ""


# named sizes; "tiny" trains on a 2-core CPU in minutes, "B/16" is SigLIP ViT-B/16 (webli)
PRESETS = {
    "tiny": dict(image_size=32, patch_size=8, width=128, depth=4, heads=4,
                 text_width=128, text_depth=3, text_heads=4, context_length=16, embed_dim=128),
    "S/16": dict(image_size=224, patch_size=16, width=384, depth=12, heads=6,
                 text_width=384, text_depth=12, text_heads=6, context_length=64, embed_dim=384),
    "B/16": dict(image_size=224, patch_size=16, width=768, depth=12, heads=12,
                 text_width=768, text_depth=12, text_heads=12, context_length=64, embed_dim=768,
                 vocab_size=32000),
}


def model_config(preset="tiny", **overrides):
    cfg = dict(PRESETS[preset])
    cfg.update(overrides)
    return ModelConfig(**cfg)


# what a preset fixes; vocabulary, activations and eps vary between checkpoints of one size
PRESET_KEYS = ("image_size", "patch_size", "width", "depth", "heads", "text_width", "text_depth", "text_heads",
               "context_length", "embed_dim", "mlp_ratio")


def preset_name(cfg):
    """the preset whose sizes cfg has ("B/16"), else "custom" with the sizes spelled out"""
    for name in PRESETS:
        ref = model_config(name)
        if all(getattr(cfg, k) == getattr(ref, k) for k in PRESET_KEYS):
            return name
    return (f"custom-vit{cfg.width}x{cfg.depth}h{cfg.heads}-p{cfg.patch_size}@{cfg.image_size}"
            f"-text{cfg.text_width}x{cfg.text_depth}h{cfg.text_heads}-ctx{cfg.context_length}"
            f"-mlp{cfg.mlp_ratio:g}-d{cfg.embed_dim}")

# -----------------------------------------------------------------------------
# tokenizer


def canonicalize(text):
    """SigLIP's text cleaning: '_' -> space, drop ASCII punctuation, lowercase, collapse spaces."""
    text = text.replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text.lower()).strip()


class WordTokenizer:
    """Canonicalised words -> ids, then EOS, then padding to the context length.

    ids: 0 = pad, 1 = eos, 2 = unknown word. Captions longer than the context are truncated and
    keep their EOS as the last token (the text tower pools the last position).
    """
    PAD, EOS, UNK = 0, 1, 2
    SPECIALS = ["<pad>", "<eos>", "<unk>"]

    def __init__(self, words, context_length):
        self.itos = self.SPECIALS + [w for w in words if w not in self.SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.context_length = context_length

    @classmethod
    def build(cls, texts, context_length, min_count=1, max_size=None):
        counts = Counter(w for t in texts for w in canonicalize(t).split())
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size else words, context_length)

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, texts):
        """list of str -> LongTensor (n, context_length)"""
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.stoi.get(w, self.UNK) for w in canonicalize(t).split()]
            ids = ids[: self.context_length - 1] + [self.EOS]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def token_counts(self, texts):
        """tokens of each text before truncation, EOS excluded (a text is cut when this exceeds context - 1)"""
        return [len(canonicalize(t).split()) for t in texts]

    def decode(self, ids):
        return " ".join(self.itos[i] for i in ids if i not in (self.PAD, self.EOS))

    def state_dict(self):
        return {"kind": "word", "itos": self.itos, "context_length": self.context_length}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["itos"], state["context_length"])


class SentencePieceTokenizer:
    """SigLIP's tokenizer (T5-style SentencePiece, e.g. c4-en 32k): canonicalise, encode, EOS, pad with EOS.

    pad id = EOS id (1 in SigLIP's spiece.model), as HF's SiglipTokenizer with padding="max_length";
    truncation keeps the EOS last, like the word tokenizer. The serialized model travels in the
    checkpoint as a uint8 tensor, so weights-only loading needs no tokenizer file. Needs `pip install
    sentencepiece`. One known difference from HF: '_' becomes a space here (big_vision, OpenCLIP)
    while HF's canonicalisation deletes it.
    """
    kind = "sentencepiece"

    def __init__(self, model_proto, context_length):
        try:
            import sentencepiece as spm
        except ImportError:
            raise ImportError("this checkpoint uses a SentencePiece tokenizer: pip install sentencepiece") from None
        self.proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except Exception as e:
            raise UsageError(f"not a valid SentencePiece model ({len(self.proto)} bytes): {e}") from None
        self.EOS = self.PAD = self.sp.eos_id()
        if self.EOS < 0:
            raise UsageError("this SentencePiece model defines no EOS piece")
        self.context_length = context_length

    @classmethod
    def from_file(cls, path, context_length, **kw):
        with open(path, "rb") as f:
            return cls(f.read(), context_length, **kw)

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def clean(self, text):
        return canonicalize(text)

    def encode(self, texts):
        """list of str -> LongTensor (n, context_length)"""
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for i, ids in enumerate(self.sp.encode([self.clean(t) for t in texts])):
            ids = ids[: self.context_length - 1] + [self.EOS]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def token_counts(self, texts):
        """pieces of each text before truncation, EOS excluded"""
        return [len(ids) for ids in self.sp.encode([self.clean(t) for t in texts])]

    def decode(self, ids):
        return self.sp.decode([i for i in ids if i not in (self.PAD, self.EOS)])

    def state_dict(self):
        # a tensor, not bytes: loads under torch.load(weights_only=True) on every torch version we support
        return {"kind": self.kind, "model": torch.frombuffer(bytearray(self.proto), dtype=torch.uint8),
                "context_length": self.context_length}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["model"].numpy().tobytes(), state["context_length"])


# how SigLIP 2's text is cleaned before the Gemma model sees it: OpenCLIP canonicalises (as for SigLIP);
# transformers' Siglip2Tokenizer only lowercases (its model card: "trained with lowercased text")
GEMMA_CLEAN = {"canonicalize": canonicalize, "lower": str.lower}


class GemmaTokenizer(SentencePieceTokenizer):
    """SigLIP 2's tokenizer (Gemma SentencePiece, 256k pieces): clean, encode (no BOS), EOS, pad with id 0.

    Ids as in Gemma: pad 0, eos 1, bos 2, unk 3; unlike SigLIP, pad is not EOS, so the last position the text
    tower pools is a pad for short captions, as in the reference models. Truncation keeps the EOS last, as HF's
    tokenizers with add_eos_token=True do. `clean` is "canonicalize" (OpenCLIP's ViT-*-SigLIP2 configs) or
    "lower" (transformers). Text is encoded literally: "<eos>" written in a caption stays characters, where
    transformers' tokenizers would turn it into the control id (canonicalising removes the brackets anyway).
    """
    kind = "gemma"
    IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}

    def __init__(self, model_proto, context_length, clean="canonicalize"):
        super().__init__(model_proto, context_length)
        found = {"pad": self.sp.pad_id(), "eos": self.sp.eos_id(), "bos": self.sp.bos_id(), "unk": self.sp.unk_id()}
        if found != self.IDS:
            raise UsageError(f"not a Gemma SentencePiece model: special ids {found}, expected {self.IDS}")
        if clean not in GEMMA_CLEAN:
            raise ValueError(f"unknown text cleaning {clean!r}; known: {', '.join(GEMMA_CLEAN)}")
        self.PAD, self.EOS, self.clean_mode = self.IDS["pad"], self.IDS["eos"], clean

    def clean(self, text):
        return GEMMA_CLEAN[self.clean_mode](text)

    def state_dict(self):
        return {**super().state_dict(), "clean": self.clean_mode}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["model"].numpy().tobytes(), state["context_length"], state["clean"])


def tokenizer_from_state_dict(state):
    """rebuild whichever tokenizer a checkpoint carries"""
    kinds = {"word": WordTokenizer, "sentencepiece": SentencePieceTokenizer, "gemma": GemmaTokenizer}
    if state.get("kind") not in kinds:
        raise UsageError(f"unknown tokenizer kind {state.get('kind')!r} in checkpoint")
    return kinds[state["kind"]].from_state_dict(state)

# -----------------------------------------------------------------------------
# building blocks (shared by both towers)


ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # name -> F.gelu's `approximate`


class MLP(nn.Module):
    def __init__(self, dim, hidden, act="gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        self.approximate = ACTIVATIONS[act]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        # the SigLIP ports differ here: timm/OpenCLIP exact, HF and big_vision tanh, OpenCLIP SigLIP 2 tanh in text only
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, h, L, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # no mask in either tower
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, eps, act="gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), act)  # round: so400m's 4304 / 1152 is not exact in floats

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAPHead(nn.Module):
    """Multihead attention pooling: one learned latent query attends over all patch tokens."""

    def __init__(self, dim, heads, mlp_ratio, eps, act="gelu"):
        super().__init__()
        self.heads = heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # first half keys, second half values
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), act)

    def forward(self, h, return_tokens=False):
        B, T, D = h.shape
        hd = D // self.heads
        q = self.q(self.latent).expand(B, -1, -1).view(B, 1, self.heads, hd).transpose(1, 2)  # (B, h, 1, hd)
        k, v = self.kv(h).split(D, dim=-1)  # (B, T, D) each
        k = k.view(B, T, self.heads, hd).transpose(1, 2)
        vh = v.view(B, T, self.heads, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, vh).transpose(1, 2).reshape(B, 1, D)
        o = self.proj(o)
        pooled = (o + self.mlp(self.norm(o)))[:, 0]  # (B, D)
        if not return_tokens:
            return pooled, None
        # value path: the same head with its attention replaced by identity, applied per token
        u = self.proj(v)
        tokens = u + self.mlp(self.norm(u))  # (B, T, D)
        return pooled, tokens

# -----------------------------------------------------------------------------
# the two towers


class VisionTower(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        # the stride-P conv drops a remainder, as timm and HF do (so400m/14 at 384 px: 27 x 27 patches)
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, cfg.width))
        self.blocks = nn.ModuleList([Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps, cfg.vision_act)
                                     for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn_pool = MAPHead(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps, cfg.vision_act)
        if cfg.concept_head:
            self.concept_pool = MAPHead(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps, cfg.vision_act)

    def trunk(self, images):
        """images -> normed patch tokens (B, T, width), what the MAP heads pool"""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, T, width)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images, return_tokens=False):
        return self.attn_pool(self.trunk(images), return_tokens)


class TextTower(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList([Block(cfg.text_width, cfg.text_heads, cfg.mlp_ratio, cfg.ln_eps, cfg.text_act)
                                     for _ in range(cfg.text_depth)])
        self.ln_final = nn.LayerNorm(cfg.text_width, eps=cfg.ln_eps)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (n, C, width)
        for block in self.blocks:
            x = block(x)  # pads attend and are attended to, as in SigLIP
        return self.text_projection(self.ln_final(x)[:, -1])  # last position

# -----------------------------------------------------------------------------
# the dual encoder


class DualEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.embed_dim == cfg.width, "SigLIP has no projection after the MAP head: embed_dim must equal width"
        self.cfg = cfg
        self.visual = VisionTower(cfg)
        self.text = TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        self.logit_bias = nn.Parameter(torch.tensor(cfg.init_logit_bias))
        self.image_head = "main"  # which MAP head encode_image pools with: main, or concept (evaluate --image_head)
        self.apply(self._init_weights)
        # named special cases: small text embeddings, or the tower ignores word order; position embeddings as
        # large as the token ones (CLIP's 0.01 left some seeds reading captions as bags of words, METHOD.md §11)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.positional_embedding, std=cfg.text_pos_std)
        nn.init.normal_(self.visual.pos_embed, std=cfg.image_pos_std)
        nn.init.normal_(self.visual.attn_pool.latent, std=cfg.width ** -0.5)
        if cfg.concept_head:
            nn.init.normal_(self.visual.concept_pool.latent, std=cfg.width ** -0.5)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            # std 1/sqrt(fan_in): at small widths a fixed 0.02 makes all embeddings nearly equal at init, and
            # the sigmoid loss then collapses every image and caption onto one point (measured on the world)
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def encode_image(self, images, return_tokens=False):
        """images (B, 3, H, W) -> unit x (B, d), and unit per-patch tokens (B, T, d) or None. With
        self.image_head = "concept" (evaluate.py --image_head) a --concept_head model pools with its concept head"""
        pool = self.visual.concept_pool if self.image_head == "concept" else self.visual.attn_pool
        return self._pool(pool, self.visual.trunk(images), return_tokens)

    @staticmethod
    def _pool(pool, h, return_tokens):
        """a MAP head over trunk tokens h -> unit pooled embedding, and unit per-patch tokens or None"""
        pooled, tokens = pool(h, return_tokens)
        return F.normalize(pooled, dim=-1), (F.normalize(tokens, dim=-1) if tokens is not None else None)

    def encode_text(self, tokens):
        """token ids (n, C) -> unit y (n, d)"""
        return F.normalize(self.text(tokens), dim=-1)

    def encode_texts(self, texts, rows):
        """named groups of token ids {name: (u, C)} and each text's row {name: (n,)} -> {name: unit (n, d)}.

        All groups share one pass of the tower over their rows; a text that repeats in a group is one row
        (data.Collate), and indexing by rows hands every text its embedding (the gradient of a repeated text
        sums over its uses, as it would with one row each)."""
        names = list(texts)
        y = self.encode_text(torch.cat([texts[k] for k in names]))
        y = y.split([texts[k].shape[0] for k in names])
        return {k: y_k[rows[k]] for k, y_k in zip(names, y)}

    def forward(self, images, texts, rows, return_tokens=False):
        """one call for everything a training step needs (DDP wraps this forward).

        texts, rows: named groups of texts as data.Collate gives them, e.g. {"captions": ..., "concepts": ...,
        "negatives": ...}: the distinct token ids of each group and the row of each text. Returns {"image",
        "patch_tokens" (None unless return_tokens), "text": {name: embeddings, one per text}, "logit_scale",
        "logit_bias"}; with cfg.concept_head also "concept_image", the second head's pooling, and the patch
        tokens come through that head's value path.
        """
        if not self.cfg.concept_head:
            x, patch_tokens = self.encode_image(images, return_tokens)
            out = {}
        else:  # one trunk, two poolings: the concept losses read only the concept head
            h = self.visual.trunk(images)
            x = self._pool(self.visual.attn_pool, h, False)[0]
            concept, patch_tokens = self._pool(self.visual.concept_pool, h, return_tokens)
            out = {"concept_image": concept}
        return {"image": x, "patch_tokens": patch_tokens, "text": self.encode_texts(texts, rows),
                "logit_scale": self.logit_scale, "logit_bias": self.logit_bias, **out}

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


if __name__ == "__main__":
    for name in PRESETS:
        cfg = model_config(name)
        with torch.device("meta"):
            m = DualEncoder(cfg)
        n_img = sum(p.numel() for p in m.visual.parameters())
        n_txt = sum(p.numel() for p in m.text.parameters())
        print(f"{name:5s} params {m.num_params() / 1e6:8.2f}M  image {n_img / 1e6:7.2f}M  text {n_txt / 1e6:7.2f}M"
              f"  patches {m.visual.num_patches}  context {cfg.context_length}  vocab {cfg.vocab_size}")

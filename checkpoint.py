"""
Checkpoint I/O shared by every entry point (train.py, evaluate.py, convert.py, reproduce.py).

A checkpoint is one `torch.save`d dict, loaded with `weights_only=True`, so no code runs from the file:

    format        "c2lip-degla-ckpt/1"
    model         the DualEncoder state dict
    model_config  asdict(ModelConfig): everything needed to rebuild the network
    config        asdict(train.Config) of the run that wrote it
    tokenizer     the tokenizer's state dict (word vocabulary or SentencePiece model bytes)
    step          optimizer steps taken
    optimizer     AdamW state (None for imported or exported weights)
    teacher       DeGLA's EMA teacher (only under --loss=degla)
"""

import os

import torch

from cli import UsageError
from model import DualEncoder, ModelConfig, tokenizer_from_state_dict

FORMAT = "c2lip-degla-ckpt/1"


def save_checkpoint(path, model, optimizer, cfg, tokenizer, step, extra=None):
    """write to a temporary file, then rename: a crash mid-save leaves the previous checkpoint intact"""
    from dataclasses import asdict
    ckpt = {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": asdict(model.cfg),
        "config": asdict(cfg),
        "tokenizer": tokenizer.state_dict(),
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        # no RNG state: data order, crops and negatives are functions of (seed, epoch, index), so a resumed
        # run only needs the step
    }
    ckpt.update(extra or {})
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """safe load (weights_only: no code runs from the file); one-line errors for missing, truncated or foreign files"""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}; give the path of a ckpt.pt written by train.py or convert.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # torch's own message ends by suggesting weights_only=False, which would let the file run code: never
        why = ("it holds Python objects beyond tensors and plain containers, which the safe loader refuses"
               if "Weights only load failed" in str(e) else
               f"truncated, corrupt or not a torch file: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}")
        raise UsageError(f"cannot load checkpoint {path} ({why}); use a ckpt.pt written by train.py, "
                         f"or import foreign weights with convert.py") from e
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("c2lip-degla-ckpt/"):
        raise UsageError(f"{path} is not a checkpoint of this project (no 'format' key); "
                         f"import foreign checkpoints with convert.py")
    return ckpt


def model_from_checkpoint(ckpt):
    """(model, tokenizer) from a loaded checkpoint dict"""
    model = DualEncoder(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model, tokenizer_from_state_dict(ckpt["tokenizer"])

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

A training run keeps a history of its last K checkpoints in out_dir (`save_to_history`):

    ckpt.pt           the newest checkpoint: what users, evaluate.py and convert.py load
    ckpt_<step>.pt    the last K checkpoints (--keep_ckpts); the newest is the same file as ckpt.pt (a hard
                      link, so no extra space; a copy where the filesystem has no hard links)
    ckpt_<step>.json  its manifest: {"file", "step", "size", "sha256"}, written after the file is complete

Every file is written under a temporary name, flushed to disk and renamed, so a crash or a full disk
never leaves a half-written file under a checkpoint's name. `--resume` takes the newest checkpoint whose
size, checksum and contents check out, and says which ones it passed over and why (`find_resumable`).
"""

import errno
import hashlib
import json
import os
import re
import shutil

import torch

from cli import Stopped, UsageError
from model import DualEncoder, ModelConfig, tokenizer_from_state_dict

FORMAT = "c2lip-degla-ckpt/1"
NEWEST = "ckpt.pt"


class SaveFailed(Stopped):
    """a checkpoint could not be written (full disk, read-only or vanished out_dir): one line, exit status 3"""


def checkpoint_dict(model, optimizer, cfg, tokenizer, step, extra=None):
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
    return ckpt


def _fsync_dir(folder):
    """make a rename durable (a crash right after it must not bring the old name back)"""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories; the rename itself is still atomic
    finally:
        os.close(fd)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class _Writer:
    """a file that keeps its first write error (torch.save's zip writer swallows it and later reports only
    'unexpected pos ...', which does not say the disk is full) and hashes what it writes (the writes are
    sequential: torch.save never seeks this object), so a manifest needs no second read of the file"""

    def __init__(self, f):
        self.f, self.error, self.sha256 = f, None, hashlib.sha256()

    def write(self, b):
        try:
            n = self.f.write(b)
            self.sha256.update(memoryview(b)[:n])
            return n
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()


def _write_atomic(path, write):
    """write(file object) into path + ".tmp", flush it to disk, rename it to path; returns the SHA-256 of
    what was written. If anything fails (or the process is interrupted) the temporary file is removed and
    path is left as it was; a full disk or a refused write comes out as the OSError that says so"""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as raw:  # a Python file, so that write errors are Python errors
            f = _Writer(raw)
            try:
                write(f)
            except RuntimeError:
                if f.error is not None:
                    raise f.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())  # a full disk or a quota may only show here
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path))
    return f.sha256.hexdigest()


def _explain(e):
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


def save_checkpoint(path, model, optimizer, cfg, tokenizer, step, extra=None):
    """one checkpoint file, written atomically: a crash or a full disk mid-save leaves the previous one intact"""
    ckpt = checkpoint_dict(model, optimizer, cfg, tokenizer, step, extra)
    try:
        _write_atomic(path, lambda f: torch.save(ckpt, f))
    except OSError as e:
        raise SaveFailed(f"cannot write checkpoint {path}: {_explain(e)}; nothing was written under that name; "
                         f"free disk space or choose a writable path") from None


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def history(out_dir):
    """[(step, manifest path)] of the checkpoints in out_dir, newest first"""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    found = [(int(m.group(1)), os.path.join(out_dir, n)) for n in names if (m := re.fullmatch(r"ckpt_(\d+)\.json", n))]
    return sorted(found, reverse=True)


def history_files(out_dir):
    """every file the checkpoint history may have left in out_dir (for --overwrite)"""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    return sorted(n for n in names if re.fullmatch(r"ckpt(_\d+)?\.(pt|json)(\.tmp)?|ckpt\.pt\.tmp", n))


def save_to_history(out_dir, ckpt, keep=2):
    """write ckpt as out_dir/ckpt_<step>.pt with its manifest, make it ckpt.pt, keep the newest `keep`.

    Order matters for a crash at any point: the data file is complete before its manifest exists, and the
    manifest exists before ckpt.pt points at it; older checkpoints are removed last. A failed write
    (full disk, read-only folder) raises SaveFailed, leaving every earlier checkpoint as it was.
    """
    step = ckpt["step"]
    name = f"ckpt_{step}.pt"
    path, newest = os.path.join(out_dir, name), os.path.join(out_dir, NEWEST)
    previous = [os.path.basename(m)[:-5] + ".pt" for s, m in history(out_dir) if s < step][:1]
    existed = os.path.exists(path)
    try:
        digest = _write_atomic(path, lambda f: torch.save(ckpt, f))
        manifest = {"file": name, "step": step, "size": os.path.getsize(path), "sha256": digest}
        _write_atomic(path[:-3] + ".json", lambda f: f.write((json.dumps(manifest) + "\n").encode()))
        tmp = newest + ".tmp"
        _remove(tmp)
        try:
            os.link(path, tmp)  # same file under the name everyone loads; no second copy on disk
            os.replace(tmp, newest)
            _fsync_dir(out_dir)
        except OSError:  # a filesystem without hard links: a copy, written like any checkpoint
            _remove(tmp)
            with open(path, "rb") as src:
                _write_atomic(newest, lambda f: shutil.copyfileobj(src, f, 1 << 22))
    except OSError as e:
        if not existed:  # no half-made entry in the history: a file without a manifest or the reverse
            _remove(path)
            _remove(path[:-3] + ".json")
        _remove(newest + ".tmp")
        kept = f"the previous checkpoint {previous[0]} is intact" if previous else "no earlier checkpoint exists"
        raise SaveFailed(f"cannot write checkpoint {name} in {out_dir}: {_explain(e)}; {kept}; free disk space "
                         f"(or make the folder writable) and rerun the same command with --resume") from None
    # newer steps than this one were left by a run that resumed from an earlier checkpoint (they were
    # unusable): that future was abandoned
    entries = [e for e in history(out_dir) if e[0] <= step]
    for old_step, manifest_path in [e for e in history(out_dir) if e[0] > step] + entries[max(1, keep):]:
        _remove(os.path.join(out_dir, f"ckpt_{old_step}.pt"))
        _remove(manifest_path)
    listed = {os.path.basename(m)[:-5] + ".pt" for _, m in history(out_dir)}
    for orphan in [n for n in history_files(out_dir) if re.fullmatch(r"ckpt_\d+\.pt", n) and n not in listed]:
        _remove(os.path.join(out_dir, orphan))  # its manifest was never written (a crash mid-save)
    return path


def check_against_manifest(manifest_path):
    """(checkpoint dict, None) if the file a manifest names is complete and loads, else (None, why not)"""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        path = os.path.join(os.path.dirname(manifest_path), manifest["file"])
        step, size, digest = manifest["step"], manifest["size"], manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable manifest ({type(e).__name__})"
    if not os.path.isfile(path):
        return None, "file missing"
    if os.path.getsize(path) != size:
        return None, f"{os.path.getsize(path)} bytes where its manifest says {size} (truncated or partly copied?)"
    if sha256_of(path) != digest:
        return None, "checksum differs from its manifest (the file changed after it was written)"
    try:
        ckpt = load_checkpoint(path)
    except UsageError as e:
        return None, str(e).split(";")[0]
    if ckpt.get("step") != step:
        return None, f"holds step {ckpt.get('step')}, its manifest says {step}"
    return ckpt, None


def find_resumable(out_dir, log=print):
    """(checkpoint dict, path) of the newest usable checkpoint in out_dir, or (None, None) if there is none.

    Each one passed over is reported with why. Checkpoints present but none usable is an error: starting
    over silently would throw away the run. An out_dir from before the history (ckpt.pt, no manifests)
    resumes from its ckpt.pt.
    """
    entries = history(out_dir)
    newest = os.path.join(out_dir, NEWEST)
    if not entries:
        return (load_checkpoint(newest), newest) if os.path.isfile(newest) else (None, None)
    problems = []
    for step, manifest_path in entries:
        path = manifest_path[:-5] + ".pt"
        ckpt, why = check_against_manifest(manifest_path)
        if ckpt is not None:
            if problems:
                log(f"warning: resume: passed over {'; '.join(problems)}; using {path} (step {step})")
            return ckpt, path
        problems.append(f"{os.path.basename(path)} ({why})")
    raise UsageError(f"--resume: no usable checkpoint in {out_dir}: {'; '.join(problems)}; restore one from a "
                     f"copy, or start again without --resume (--overwrite)")


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

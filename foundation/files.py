"""Files every stage writes and reads: atomic writes, JSON, hashes, and the one checkpoint format.

A checkpoint is a plain dict of tensors and Python values (loadable with `weights_only=True`):
`{"format_version", "stage", "config": dict, "model": state_dict, ...extra}`.
"""

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from foundation.cli import UserError

FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes private files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder) -> None:
    """Delete temporaries left in `folder` by a run that was killed mid-write."""
    for leftover in Path(folder).glob(TMP_PREFIX + "*"):
        leftover.unlink(missing_ok=True)


def write_json(path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line (metrics logs)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_json(path, what: str) -> dict:
    """Read a JSON file, or a UserError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {what} is not valid JSON ({err})") from None


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path, stage: str, config: dict, model_state: dict, **extra) -> None:
    """Save one checkpoint atomically (written beside `path`, then renamed)."""
    payload = {"format_version": FORMAT_VERSION, "stage": stage, "config": config, "model": model_state}
    payload.update(extra)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:  # a full disk, a vanished folder: the previous file at `path` is intact
        raise UserError(f"could not write {path}: {err}") from None


def load_checkpoint(path, stage: str, map_location="cpu") -> dict:
    """Load a checkpoint of `stage` safely (no pickled code runs), or a UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # garbage bytes make the unpickler warn before it fails
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
        raise UserError(f"{path}: refused to load, it is not a plain checkpoint ({first_line})") from None
    except Exception as err:  # corrupt bytes surface as many types (EOFError, KeyError, IndexError, ...)
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or "stage" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {ckpt.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    if ckpt["stage"] != stage:
        raise UserError(f"{path}: this is a '{ckpt['stage']}' checkpoint, expected a '{stage}' checkpoint")
    return ckpt


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def code_dtype(codebook_size: int):
    """Smallest unsigned integer dtype that holds indices in [0, codebook_size)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.int64

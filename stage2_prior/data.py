"""Encoded code maps for stage 2, checked against the meta.json that stage 1 wrote beside them.

Every problem (missing file, wrong dtype, shape or value range, count mismatch) becomes a UserError
that names the file, never a traceback or a silently wrong model. Code folders written before the
validation split existed have no val.npy: `load_splits` then carves one from the train maps.
"""

from pathlib import Path

import numpy as np
import torch

from tools.cli import UserError
from tools.files import read_json
from tools.splits import describe_split, split_validation, validation_count

META_KEYS = ("codebook_size", "grid_shape", "counts", "num_classes", "stage1_sha256")


def read_meta(codes_dir) -> dict:
    """meta.json of an encoded dataset, checked for the keys stage 2 needs."""
    path = Path(codes_dir) / "meta.json"
    meta = read_json(path, "code metadata (run stage1_vqvae.encode first)")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; re-run stage1_vqvae.encode")
    return meta


def _load_array(path: Path) -> np.ndarray:
    """np.load without pickles, or a UserError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run stage1_vqvae.encode first)") from None
    except ValueError as err:  # object arrays need pickles, which are refused
        raise UserError(f"{path}: not a plain numeric .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npy file ({err})") from None


def check_codes(codes: np.ndarray, meta: dict, path) -> None:
    """Raise a UserError unless `codes` are integer maps of meta's grid shape with values in [0, K)."""
    k, grid = meta["codebook_size"], tuple(meta["grid_shape"])
    if codes.dtype.kind not in "iu":
        raise UserError(f"{path}: codes must be integers, got dtype {codes.dtype}")
    if codes.ndim != 3 or codes.shape[1:] != grid:
        raise UserError(f"{path}: expected shape (N, {grid[0]}, {grid[1]}) from meta.json, got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise UserError(f"{path}: code values must lie in [0, {k}), found [{codes.min()}, {codes.max()}]")


def load_codes(codes_dir, split: str, meta: dict):
    """(codes (N, H, W) long, labels (N,) long) of one split, validated against `meta`."""
    codes_dir = Path(codes_dir)
    path, labels_path = codes_dir / f"{split}.npy", codes_dir / f"{split}_labels.npy"
    codes = _load_array(path)
    check_codes(codes, meta, path)
    expected = meta["counts"].get(split)
    if expected is not None and codes.shape[0] != expected:
        raise UserError(f"{path}: {codes.shape[0]} maps, but meta.json says {expected}; re-run stage1_vqvae.encode")
    labels = _load_array(labels_path)
    if labels.dtype.kind not in "iu" or labels.shape != (codes.shape[0],):
        raise UserError(f"{labels_path}: expected {codes.shape[0]} integer labels, got {labels.dtype} {labels.shape}")
    return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))


def load_splits(codes_dir, meta: dict, val_size: float) -> tuple:
    """({split: (codes, labels)} for train, val and test; a note when val had to be carved from train)."""
    splits = {split: load_codes(codes_dir, split, meta) for split in ("train", "test")}
    if (Path(codes_dir) / "val.npy").exists():
        splits["val"] = load_codes(codes_dir, "val", meta)
        return splits, ""
    if meta.get("train_mirrored"):
        raise UserError(f"{codes_dir}: val.npy is missing and the train maps are mirrored; re-run stage1_vqvae.encode")
    codes, labels = splits["train"]
    validation_count(val_size, codes.shape[0], required=True)
    train_idx, val_idx = split_validation(labels, val_size)
    splits["train"], splits["val"] = (codes[train_idx], labels[train_idx]), (codes[val_idx], labels[val_idx])
    note = (f"{codes_dir} has no val.npy (encoded by an older version): validating on "
            f"{describe_split(val_idx, codes.shape[0])}")
    return splits, note

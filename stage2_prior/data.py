"""Encoded code maps for stage 2, checked against the meta.json that stage 1 wrote beside them.

Every problem (missing file, wrong dtype, shape or value range, count mismatch) becomes a UserError
that names the file, never a traceback or a silently wrong model. Code folders written before the
validation split existed have no val.npy: `load_splits` then carves one from the train maps.
"""

from pathlib import Path

import numpy as np
import torch

from foundation.cli import UserError
from foundation.files import read_json
from foundation.levels import count, take
from foundation.splits import describe_split, split_validation, validation_count

META_KEYS = ("counts", "num_classes", "stage1_sha256")
LEVEL_KEYS = ("codebook_size", "grid_shape")


def read_meta(codes_dir) -> dict:
    """meta.json of an encoded dataset, checked for the keys stage 2 needs."""
    path = Path(codes_dir) / "meta.json"
    meta = read_json(path, "code metadata (run stage1_vqvae.encode first)")
    missing = [k for k in META_KEYS if k not in meta]
    missing += [k for spec in level_specs(meta) for k in (*LEVEL_KEYS, "files") if k not in spec]
    if missing:
        raise UserError(f"{path}: missing {', '.join(sorted(set(missing)))}; re-run stage1_vqvae.encode")
    return meta


def level_specs(meta: dict) -> list:
    """Each level's {name, codebook_size, grid_shape, files}, top level first.

    meta.json written before levels existed describes its one level with top-level keys and split.npy files.
    """
    if "levels" in meta:
        return meta["levels"]
    spec = {"name": "codes", "files": {split: f"{split}.npy" for split in ("train", "val", "test")}}
    return [{**spec, **{k: meta[k] for k in LEVEL_KEYS if k in meta}}]


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


def check_codes(codes: np.ndarray, spec: dict, path) -> None:
    """Raise a UserError unless `codes` are integer maps of the level's grid shape with values in [0, K)."""
    k, grid = spec["codebook_size"], tuple(spec["grid_shape"])
    if codes.dtype.kind not in "iu":
        raise UserError(f"{path}: codes must be integers, got dtype {codes.dtype}")
    if codes.ndim != 3 or codes.shape[1:] != grid:
        raise UserError(f"{path}: expected shape (N, {grid[0]}, {grid[1]}) from meta.json, got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise UserError(f"{path}: code values must lie in [0, {k}), found [{codes.min()}, {codes.max()}]")


def load_level(codes_dir: Path, split: str, spec: dict, expected: int | None) -> torch.Tensor:
    """One level's maps of one split, (N, H, W) long, validated against its description in meta.json."""
    path = codes_dir / spec["files"][split]
    codes = _load_array(path)
    check_codes(codes, spec, path)
    if expected is not None and codes.shape[0] != expected:
        raise UserError(f"{path}: {codes.shape[0]} maps, but meta.json says {expected}; re-run stage1_vqvae.encode")
    return torch.from_numpy(codes.astype(np.int64))


def load_codes(codes_dir, split: str, meta: dict):
    """(codes, labels (N,) long) of one split: codes are a tuple of (N, H, W) long maps, one per level, top first."""
    codes_dir = Path(codes_dir)
    levels = [load_level(codes_dir, split, spec, meta["counts"].get(split)) for spec in level_specs(meta)]
    n = levels[0].shape[0]
    if any(level.shape[0] != n for level in levels):
        raise UserError(f"{codes_dir}: the levels of the {split} split hold different numbers of maps; re-run stage1_vqvae.encode")
    labels_path = codes_dir / f"{split}_labels.npy"
    labels = _load_array(labels_path)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise UserError(f"{labels_path}: expected {n} integer labels, got {labels.dtype} {labels.shape}")
    return tuple(levels), torch.from_numpy(labels.astype(np.int64))


def load_splits(codes_dir, meta: dict, val_size: float) -> tuple:
    """({split: (codes, labels)} for train, val and test; a note when val had to be carved from train)."""
    splits = {split: load_codes(codes_dir, split, meta) for split in ("train", "test")}
    if (Path(codes_dir) / level_specs(meta)[0]["files"].get("val", "val.npy")).exists():
        splits["val"] = load_codes(codes_dir, "val", meta)
        return splits, ""
    if meta.get("train_mirrored") or len(level_specs(meta)) > 1:
        why = "the train maps are mirrored" if meta.get("train_mirrored") else "it has two levels"
        raise UserError(f"{codes_dir}: the validation codes are missing and {why}; re-run stage1_vqvae.encode")
    codes, labels = splits["train"]
    validation_count(val_size, count(codes), required=True)
    train_idx, val_idx = split_validation(labels, val_size)
    splits["train"], splits["val"] = (take(codes, train_idx), labels[train_idx]), (take(codes, val_idx), labels[val_idx])
    note = (f"{codes_dir} has no val.npy (encoded by an older version): validating on "
            f"{describe_split(val_idx, count(codes))}")
    return splits, note

"""Datasets as resident uint8 tensors, and batches made from them on the training device.

Each dataset is decoded once into `images` (N, 3, 32, 32) uint8 and `labels` (N,) int64. Training
batches are index slices of a shuffled permutation; the flip and the scaling to [-1, 1] happen on the
device, a whole batch at a time (no per-image Python work, no worker processes).

- `cifar10`: torchvision's CIFAR-10, downloaded into DATA_DIR when missing.
- `folder`: `<class>/<image>` folders; DATA_DIR/train and DATA_DIR/test when both exist, otherwise a
  deterministic 10% of each class is held out as the test split. Images are resized and center-cropped to 32x32;
  files that cannot be decoded are skipped with a warning that names them. The decoded tensors are
  cached in DATA_DIR/.cache (or ~/.cache/vqvae-pixelcnn when DATA_DIR is read-only) and reused
  while the files' names, sizes and modification times are unchanged.
- `shapes`: procedural coloured shapes, generated from a seed (works offline, used by the demo).

Splits are `train`, `val` and `test`. For cifar10 and folder the validation split is carved from the
training images (`tools.splits`: seeded, stratified by class, `val_size` of them); shapes generate
their own validation images from a third seed. Test images are never part of train or val.
"""

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tools.cli import UserError
from tools.distributed import my_batches
from tools.files import atomic_path
from tools.splits import describe_split, split_validation, validation_count

IMAGE_SIZE = 32
SHAPE_CLASSES = ["circle", "square", "triangle", "ring", "cross", "diamond"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list
    note: str = ""  # how a validation split was made (saved in config.json and meta.json)

    def __len__(self):
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor, note: str = "") -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, note)


SPLITS = ("train", "val", "test")
SHAPES_SEEDS = {"train": 0, "test": 1, "val": 2}


def load_splits(dataset: str, data_dir: str, splits=SPLITS, shapes_counts=(10000, 1000), val_size: float = 0.1) -> dict:
    """{split: ImageSet} for the named splits of `dataset`; the training images are decoded once."""
    if dataset not in ("cifar10", "folder", "shapes"):
        raise UserError(f"unknown dataset {dataset!r} (choose cifar10, folder or shapes)")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
    if dataset == "shapes":
        return {split: _shapes_split(split, shapes_counts, val_size) for split in splits}
    loaded = {}
    if "test" in splits:
        loaded["test"] = _load_raw(dataset, Path(data_dir), "test")
    if "train" in splits or "val" in splits:
        pool = _load_raw(dataset, Path(data_dir), "train")
        validation_count(val_size, len(pool), required="val" in splits)
        train_idx, val_idx = split_validation(pool.labels, val_size)
        loaded["train"] = pool.subset(train_idx)
        loaded["val"] = pool.subset(val_idx, describe_split(val_idx, len(pool)))
    return {split: loaded[split] for split in splits}


def load_split(dataset: str, data_dir: str, split: str, shapes_counts=(10000, 1000), val_size: float = 0.1) -> ImageSet:
    """One split ('train', 'val' or 'test') of `dataset` as an ImageSet."""
    return load_splits(dataset, data_dir, (split,), shapes_counts, val_size)[split]


def _load_raw(dataset: str, root: Path, split: str) -> ImageSet:
    """The dataset's own train or test part, before the validation images are taken out of train."""
    return _load_cifar10(root, split) if dataset == "cifar10" else _load_folder(root, split)


def _shapes_split(split: str, shapes_counts, val_size: float) -> ImageSet:
    """Shapes generate each split from its own seed; validation counts relative to the train count."""
    if split == "val":
        count = validation_count(val_size, shapes_counts[0], required=True)
        note = f"{count} generated shapes, seed {SHAPES_SEEDS['val']}"
        return dataclasses.replace(make_shapes(count, SHAPES_SEEDS["val"]), note=note)
    return make_shapes(shapes_counts[0] if split == "train" else shapes_counts[1], seed=SHAPES_SEEDS[split])


# ---------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, split: str) -> ImageSet:
    from torchvision.datasets import CIFAR10

    extracted = (root / "cifar-10-batches-py").is_dir()
    try:
        ds = CIFAR10(str(root), train=split == "train", download=not extracted)
    except Exception as err:  # offline, refused, corrupt archive: all end the same way for the user
        raise UserError(
            f"could not get CIFAR-10 into '{root}' ({type(err).__name__}: {err}). If this machine is offline, "
            f"download {CIFAR_URL} elsewhere and put cifar-10-python.tar.gz in '{root}/', then run again. "
            "DATASET=shapes (built in) and DATASET=folder DATA_DIR=<images> work offline."
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))


# ---------------------------------------------------------------- image folders


def _list_class_files(root: Path) -> dict:
    """{class name: sorted image paths} for a `<class>/<image>` folder."""
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    files = {name: paths for name, paths in files.items() if paths}
    if not files:
        raise UserError(f"no images found in '{root}': expected <class>/<image> sub-folders (png, jpg, ...)")
    return files


def _decode_image(path: Path) -> np.ndarray:
    """One file -> (32, 32, 3) uint8: RGB, shorter side resized to 32, center-cropped."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop, resize

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            img = center_crop(resize(img, IMAGE_SIZE, antialias=True), IMAGE_SIZE)
        return np.asarray(img, dtype=np.uint8)


def _decode_files(paths: list, labels: list, class_names: list) -> tuple:
    """Decode image files into an ImageSet; also returns the paths that could not be decoded."""
    from tqdm import tqdm

    from tools.runtime import progress_disabled

    arrays, kept_labels, failed = [], [], []
    bar = tqdm(paths, desc="decoding images", unit="img", leave=False, disable=progress_disabled())
    for path, label in zip(bar, labels):
        try:
            arrays.append(_decode_image(path))
            kept_labels.append(label)
        except Exception:  # PIL raises several types for broken files
            failed.append(str(path))
    if not arrays:
        raise UserError(f"none of the {len(paths)} images could be decoded (first: {paths[0]})")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(kept_labels, dtype=torch.int64), class_names), failed


def _warn_undecodable(failed: list) -> None:
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"warning: skipped {len(failed)} image(s) that could not be decoded: {shown}", file=sys.stderr)


def _cache_files(root: Path, split: str, paths: list, class_names: list) -> list:
    """Candidate cache files (beside the data, then in the user's cache) keyed by the files' identity."""
    digest = hashlib.sha256(f"{IMAGE_SIZE}|{class_names}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    name = f"folder-{split}-{digest.hexdigest()[:20]}.pt"
    home = Path.home() / ".cache" / "vqvae-pixelcnn" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / ".cache" / name, home / name]


def _decode_cached(root: Path, split: str, paths: list, labels: list, class_names: list) -> ImageSet:
    """Decoded images from the cache when the files are unchanged; decode and cache them otherwise."""
    candidates = _cache_files(root, split, paths, class_names)
    for cache in candidates:
        if cache.is_file():
            try:
                saved = torch.load(cache, weights_only=True)
                _warn_undecodable(saved["failed"])
                return ImageSet(saved["images"], saved["labels"], class_names)
            except Exception:  # an unreadable cache is only a missed shortcut: decode again
                pass
    data, failed = _decode_files(paths, labels, class_names)
    _warn_undecodable(failed)
    for cache in candidates:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            if os.access(cache.parent, os.W_OK):
                with atomic_path(cache) as tmp:
                    torch.save({"images": data.images, "labels": data.labels, "failed": failed}, tmp)
                break
        except OSError:
            continue
    return data


def _load_folder(root: Path, split: str) -> ImageSet:
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_names = sorted(_list_class_files(root / "train"))
        files = _list_class_files(root / split)
        unknown = sorted(set(files) - set(class_names))
        if unknown:
            raise UserError(f"'{root / split}' has classes that '{root / 'train'}' lacks: {', '.join(unknown)}")
        chosen = {name: paths for name, paths in files.items()}
    else:
        files = _list_class_files(root)
        class_names = sorted(files)
        # Every 10th file of each class (sorted by path) is the held-out split: deterministic, stratified.
        held_out = split == "test"
        chosen = {name: [p for i, p in enumerate(paths) if (i % 10 == 9) == held_out] for name, paths in files.items()}
    paths, labels = [], []
    for name, class_paths in chosen.items():
        paths += class_paths
        labels += [class_names.index(name)] * len(class_paths)
    if not paths:
        raise UserError(f"no {split} images in '{root}' (a folder needs at least 10 images per class to hold out a test split)")
    return _decode_cached(root, split, paths, labels, class_names)


# ---------------------------------------------------------------- procedural shapes


def _shape_masks(kind: np.ndarray, cx, cy, r) -> np.ndarray:
    """(N, 32, 32) bool masks of shape `kind[i]` centred at (cx, cy) with radius r (arrays of N)."""
    coords = np.arange(IMAGE_SIZE, dtype=np.float32)
    dx = coords[None, None, :] - cx[:, None, None]
    dy = coords[None, :, None] - cy[:, None, None]
    r = r[:, None, None]
    dist = np.sqrt(dx**2 + dy**2)
    masks = [
        dist <= r,  # circle
        (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r),  # square
        (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2),  # triangle, point up
        (dist <= r) & (dist >= 0.55 * r),  # ring
        ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)),  # cross
        np.abs(dx) + np.abs(dy) <= r,  # diamond
    ]
    return np.choose(kind[:, None, None], masks)


SHAPE_COLOURS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
], dtype=np.float32) / 255
BACKGROUND_COLOURS = np.array([
    [25, 25, 35], [40, 60, 90], [50, 90, 60], [128, 128, 128], [225, 215, 190], [245, 245, 245],
], dtype=np.float32) / 255


def make_shapes(count: int, seed: int = 0) -> ImageSet:
    """`count` 32x32 images of one bright shape on a muted plain or gradient background, label = shape class.

    Colours come from small palettes, so the data is varied yet learnable in a short demo run.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(len(SHAPE_CLASSES), size=count)
    r = rng.uniform(7, 12, count).astype(np.float32)
    cx = rng.uniform(r, IMAGE_SIZE - 1 - r).astype(np.float32)
    cy = rng.uniform(r, IMAGE_SIZE - 1 - r).astype(np.float32)
    fg = SHAPE_COLOURS[rng.integers(len(SHAPE_COLOURS), size=count)]
    bg = BACKGROUND_COLOURS[rng.integers(len(BACKGROUND_COLOURS), size=count)]
    bg_end = np.where(rng.random((count, 1)) < 0.5, bg, 0.6 * bg + 0.4 * (1 - bg))  # half shade across
    ramp = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)
    vertical = rng.random(count) < 0.5
    t = np.where(vertical[:, None, None], ramp[None, :, None], ramp[None, None, :])  # (N, 32, 32)
    background = bg[:, :, None, None] * (1 - t[:, None]) + bg_end[:, :, None, None] * t[:, None]  # (N, 3, 32, 32)
    mask = _shape_masks(kind, cx, cy, r)[:, None]  # (N, 1, 32, 32)
    images = np.where(mask, fg[:, :, None, None], background)
    images = torch.from_numpy(np.round(images * 255).astype(np.uint8))
    return ImageSet(images, torch.from_numpy(kind.astype(np.int64)), list(SHAPE_CLASSES))


# ---------------------------------------------------------------- batches


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], i.e. (x - 0.5) / 0.5 on the [0, 1] scale."""
    return images_u8.float().div_(127.5).sub_(1.0)


def hflip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of (B, C, H, W) where the bool mask `flip` (B,) is set."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def train_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, augment: bool = True,
                  start_batch: int = 0):
    """Yield shuffled float batches in [-1, 1] covering every image once, with random flips on the device.

    The epoch's order and flips are drawn up front, so a resumed epoch can start at `start_batch` and
    see exactly the batches an uninterrupted one would. Under torchrun each rank yields its own slice
    of every global batch (`batch_size` images per rank).
    """
    n = images.shape[0]
    order = torch.randperm(n, generator=generator, device=generator.device).to(images.device)
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(images.device)
    for start, stop in my_batches(n, batch_size, start_batch):
        picked = order[start:stop]
        batch = to_model_range(images[picked])
        yield hflip_where(batch, flips[picked]) if augment else batch


def eval_batches(images: torch.Tensor, batch_size: int, device: torch.device):
    """Yield float batches in [-1, 1] in dataset order, no augmentation, moved to `device`."""
    for start in range(0, images.shape[0], batch_size):
        yield to_model_range(images[start : start + batch_size].to(device, non_blocking=True))

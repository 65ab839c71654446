"""Where images come from: CIFAR-10 (downloaded) and folders of image files (decoded once, cached).

- `cifar10`: torchvision's CIFAR-10, downloaded into DATA_DIR when missing; 32 px only.
- `folder`: `<class>/<image>` folders; DATA_DIR/train and DATA_DIR/test when both exist, otherwise every
  10th file of each class is the test split. Images are resized (shorter side) and center-cropped to the
  image size; files that cannot be decoded are skipped with a warning that names them. The decoded
  tensors are cached in DATA_DIR/.cache (or ~/.cache/vqvae-pixelcnn when DATA_DIR is read-only), keyed
  on the image size and the files' names, sizes and modification times.
"""

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foundation.cli import UserError
from foundation.files import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list
    note: str = ""  # how a validation split was made (saved in config.json and meta.json)

    def __len__(self):
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor, note: str = "") -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, note)


def load_cifar10(root: Path, split: str) -> ImageSet:
    """CIFAR-10's train or test images (32 px), downloaded into `root` when missing."""
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


def _decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> (size, size, 3) uint8: RGB, shorter side resized to `size`, center-cropped."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop, resize

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = center_crop(resize(img, size, antialias=True), size)
        return np.asarray(img, dtype=np.uint8)


def _decode_files(paths: list, labels: list, class_names: list, size: int) -> tuple:
    """Decode image files into an ImageSet; also returns the paths that could not be decoded."""
    from tqdm import tqdm

    from foundation.runtime import progress_disabled

    arrays, kept_labels, failed = [], [], []
    bar = tqdm(paths, desc="decoding images", unit="img", leave=False, disable=progress_disabled())
    for path, label in zip(bar, labels):
        try:
            arrays.append(_decode_image(path, size))
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


def _cache_files(root: Path, split: str, paths: list, class_names: list, size: int) -> list:
    """Candidate cache files (beside the data, then in the user's cache) keyed by the files' identity."""
    digest = hashlib.sha256(f"{size}|{class_names}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    name = f"folder-{split}-{digest.hexdigest()[:20]}.pt"
    home = Path.home() / ".cache" / "vqvae-pixelcnn" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / ".cache" / name, home / name]


def _decode_cached(root: Path, split: str, paths: list, labels: list, class_names: list, size: int) -> ImageSet:
    """Decoded images from the cache when the files are unchanged; decode and cache them otherwise."""
    candidates = _cache_files(root, split, paths, class_names, size)
    for cache in candidates:
        if cache.is_file():
            try:
                saved = torch.load(cache, weights_only=True)
                _warn_undecodable(saved["failed"])
                return ImageSet(saved["images"], saved["labels"], class_names)
            except Exception:  # an unreadable cache is only a missed shortcut: decode again
                pass
    data, failed = _decode_files(paths, labels, class_names, size)
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


def load_folder(root: Path, split: str, size: int = 32) -> ImageSet:
    """The train or test images of a `<class>/<image>` folder at size x size pixels."""
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
    return _decode_cached(root, split, paths, labels, class_names, size)

"""Datasets as resident uint8 tensors, and batches made from them on the training device.

Each dataset is decoded once into `images` (N, 3, S, S) uint8 (S = the image size, 32 by default) and
`labels` (N,) int64. Training batches are index slices of a shuffled permutation; the flip and the
scaling to [-1, 1] happen on the device, a whole batch at a time (no per-image Python work, no workers).

Sources: `cifar10` and `folder` (`stage1_vqvae.sources`), `shapes` (`stage1_vqvae.shapes`, generated
from a seed at any size; works offline, used by the demos).

Splits are `train`, `val` and `test`. For cifar10 and folder the validation split is carved from the
training images (`foundation.splits`: seeded, stratified by class, `val_size` of them); shapes generate
their own validation images from a third seed. Test images are never part of train or val.
"""

import dataclasses
from pathlib import Path

import torch

from foundation.cli import UserError
from foundation.distributed import my_batches
from foundation.splits import describe_split, split_validation, validation_count
from stage1_vqvae.shapes import SHAPE_CLASSES, make_shapes
from stage1_vqvae.sources import ImageSet, load_cifar10, load_folder

__all__ = ["ImageSet", "SHAPE_CLASSES", "SPLITS", "load_splits", "load_split", "make_shapes", "pick_per_class",
           "shuffled_batches", "spread_over_classes", "train_batches", "eval_batches", "to_model_range"]
CIFAR_SIZE = 32


SPLITS = ("train", "val", "test")
SHAPES_SEEDS = {"train": 0, "test": 1, "val": 2}


def load_splits(dataset: str, data_dir: str, splits=SPLITS, shapes_counts=(10000, 1000), val_size: float = 0.1,
                image_size: int = 32) -> dict:
    """{split: ImageSet} for the named splits of `dataset` at `image_size` px; train images are decoded once."""
    if dataset not in ("cifar10", "folder", "shapes"):
        raise UserError(f"unknown dataset {dataset!r} (choose cifar10, folder or shapes)")
    if dataset == "cifar10" and image_size != CIFAR_SIZE:
        raise UserError(f"cifar10 images are {CIFAR_SIZE} px: --image-size {image_size} needs --dataset folder or shapes")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
    if dataset == "shapes":
        return {split: _shapes_split(split, shapes_counts, val_size, image_size) for split in splits}
    loaded = {}
    if "test" in splits:
        loaded["test"] = _load_raw(dataset, Path(data_dir), "test", image_size)
    if "train" in splits or "val" in splits:
        pool = _load_raw(dataset, Path(data_dir), "train", image_size)
        validation_count(val_size, len(pool), required="val" in splits)
        train_idx, val_idx = split_validation(pool.labels, val_size)
        loaded["train"] = pool.subset(train_idx)
        loaded["val"] = pool.subset(val_idx, describe_split(val_idx, len(pool)))
    return {split: loaded[split] for split in splits}


def load_split(dataset: str, data_dir: str, split: str, shapes_counts=(10000, 1000), val_size: float = 0.1,
               image_size: int = 32) -> ImageSet:
    """One split ('train', 'val' or 'test') of `dataset` as an ImageSet."""
    return load_splits(dataset, data_dir, (split,), shapes_counts, val_size, image_size)[split]


def _load_raw(dataset: str, root: Path, split: str, image_size: int) -> ImageSet:
    """The dataset's own train or test part, before the validation images are taken out of train."""
    return load_cifar10(root, split) if dataset == "cifar10" else load_folder(root, split, image_size)


def _shapes_split(split: str, shapes_counts, val_size: float, size: int) -> ImageSet:
    """Shapes generate each split from its own seed; validation counts relative to the train count."""
    if split == "val":
        count = validation_count(val_size, shapes_counts[0], required=True)
        note = f"{count} generated shapes, seed {SHAPES_SEEDS['val']}"
        return dataclasses.replace(make_shapes(count, SHAPES_SEEDS["val"], size), note=note)
    return make_shapes(shapes_counts[0] if split == "train" else shapes_counts[1], SHAPES_SEEDS[split], size)


# ---------------------------------------------------------------- batches


def pick_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first `per_class` items of every class, interleaved: one of each class, then the next..."""
    chosen = [torch.nonzero(labels == c).flatten()[:per_class] for c in torch.unique(labels)]
    rounds = [[items[r] for items in chosen if r < len(items)] for r in range(per_class)]
    return torch.stack([index for items in rounds for index in items])


def spread_over_classes(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` items (fewer if there are fewer) taken round-robin over the classes, in a fixed order."""
    return pick_per_class(labels, count)[:count]


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], i.e. (x - 0.5) / 0.5 on the [0, 1] scale (the memory layout is kept)."""
    return images_u8.float().div_(127.5).sub_(1.0)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) laid out as (B, H, W, C) in memory: channels-last convolutions (oneDNN on CPU, cuDNN's
    tensor cores) need no layout reorders, 1.2x the stage-1 training step on a 2-core AVX512-BF16 CPU."""
    return images.contiguous(memory_format=torch.channels_last)


def hflip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of (B, C, H, W) where the bool mask `flip` (B,) is set."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device, start_batch: int = 0):
    """Yield (indices, flip mask) on `device` of each batch of one epoch over n items: every item once.

    The epoch's order and flips are drawn up front, so a resumed epoch can start at `start_batch` and
    see exactly the batches an uninterrupted one would. Under torchrun each rank yields its own slice
    of every global batch (`batch_size` items per rank).
    """
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(device)
    for start, stop in my_batches(n, batch_size, start_batch):
        picked = order[start:stop]
        yield picked, flips[picked]


def train_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, augment: bool = True,
                  start_batch: int = 0):
    """Yield shuffled float batches in [-1, 1] covering every image once, with random flips on the device
    (`shuffled_batches`)."""
    for picked, flips in shuffled_batches(images.shape[0], batch_size, generator, images.device, start_batch):
        batch = to_model_range(channels_last(images[picked]))
        yield hflip_where(batch, flips) if augment else batch


def eval_batches(images: torch.Tensor, batch_size: int, device: torch.device):
    """Yield float batches in [-1, 1] in dataset order, no augmentation, moved to `device`."""
    for start in range(0, images.shape[0], batch_size):
        yield to_model_range(channels_last(images[start : start + batch_size].to(device, non_blocking=True)))

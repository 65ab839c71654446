"""The validation split: carved from the training items, seeded, stratified by class, never augmented.

Both stages select their best epoch on it and report the separate test split. The same
(labels, size) always gives the same split, so stage 1, encoding, stage 2 and resumed runs agree.
"""

import hashlib

import torch

from foundation.cli import UserError

SPLIT_SEED = 0  # fixed, not the training --seed: runs with different seeds are selected on the same images


def validation_count(size: float, n: int, required: bool = False) -> int:
    """How many of `n` training items `size` asks for: a fraction when below 1, else a count.

    With `required`, a size that gives no validation item at all is an error too.
    """
    if size < 0:
        raise UserError(f"--val-size must be >= 0, got {size}")
    count = round(size * n) if size < 1 else int(size)
    if count >= n:
        raise UserError(f"--val-size {size} leaves no training items (only {n} available)")
    if required and count < 1:
        raise UserError(f"--val-size {size} gives no validation items out of {n}")
    return count


def split_validation(labels: torch.Tensor, size: float) -> tuple:
    """(train indices, val indices) of items with class `labels` (N,), both sorted.

    Each class gives its share of the validation items (rounded so the total is exact), chosen by
    a seeded permutation, so the split is deterministic and keeps the class balance.
    """
    n = labels.shape[0]
    count = validation_count(size, n)
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(n, generator=generator)
    # Stable sort of the shuffled items by class: each class's items in seeded random order.
    by_class = order[torch.sort(labels[order], stable=True).indices]
    classes, class_sizes = torch.unique(labels, return_counts=True)
    quotas = _largest_remainder(class_sizes, count)
    picked, start = [], 0
    for size_c, quota in zip(class_sizes.tolist(), quotas):
        picked.append(by_class[start : start + quota])
        start += size_c
    val = torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def _largest_remainder(class_sizes: torch.Tensor, count: int) -> list:
    """Integer per-class quotas proportional to the class sizes that add up to `count` exactly."""
    exact = class_sizes.double() * count / class_sizes.sum()
    quotas = exact.floor().long()
    short = count - int(quotas.sum())
    if short:
        quotas[torch.argsort(exact - quotas, descending=True, stable=True)[:short]] += 1
    return quotas.tolist()


def describe_split(val: torch.Tensor, n: int) -> str:
    """A one-line record of a split, with a fingerprint of its indices (saved in config.json and meta.json)."""
    digest = hashlib.sha256(val.numpy().astype("int64").tobytes()).hexdigest()[:12]
    return f"{val.shape[0]} of {n} train items, stratified by class, seed {SPLIT_SEED}, indices sha256 {digest}"

"""Procedural coloured shapes at any image size, generated from a seed (offline; used by the demos)."""

import numpy as np
import torch

from stage1_vqvae.sources import ImageSet

SHAPE_CLASSES = ["circle", "square", "triangle", "ring", "cross", "diamond"]


def _shape_masks(kind: np.ndarray, cx, cy, r, size: int) -> np.ndarray:
    """(N, size, size) bool masks of shape `kind[i]` centred at (cx, cy) with radius r (arrays of N)."""
    coords = np.arange(size, dtype=np.float32)
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


def make_shapes(count: int, seed: int = 0, size: int = 32) -> ImageSet:
    """`count` size x size images of one bright shape on a muted plain or gradient background, label = shape class.

    Colours come from small palettes, so the data is varied yet learnable in a short demo run.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(len(SHAPE_CLASSES), size=count)
    r = (rng.uniform(7, 12, count) * size / 32).astype(np.float32)  # same layout at every size
    cx = rng.uniform(r, size - 1 - r).astype(np.float32)
    cy = rng.uniform(r, size - 1 - r).astype(np.float32)
    fg = SHAPE_COLOURS[rng.integers(len(SHAPE_COLOURS), size=count)]
    bg = BACKGROUND_COLOURS[rng.integers(len(BACKGROUND_COLOURS), size=count)]
    bg_end = np.where(rng.random((count, 1)) < 0.5, bg, 0.6 * bg + 0.4 * (1 - bg))  # half shade across
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    vertical = rng.random(count) < 0.5
    t = np.where(vertical[:, None, None], ramp[None, :, None], ramp[None, None, :])  # (N, size, size)
    background = bg[:, :, None, None] * (1 - t[:, None]) + bg_end[:, :, None, None] * t[:, None]  # (N, 3, size, size)
    mask = _shape_masks(kind, cx, cy, r, size)[:, None]  # (N, 1, size, size)
    images = np.where(mask, fg[:, :, None, None], background)
    images = torch.from_numpy(np.round(images * 255).astype(np.uint8))
    return ImageSet(images, torch.from_numpy(kind.astype(np.int64)), list(SHAPE_CLASSES))

"""Image grids saved as PNG (images live in [-1, 1] everywhere in this project)."""

import math

import torch
from torchvision.utils import make_grid
from torchvision.transforms.functional import to_pil_image

from tools.common.files import atomic_path


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    """Save (B, 3, H, W) images in [-1, 1] as one PNG grid, atomically."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    grid = make_grid(to_unit_range(images.detach().cpu()), nrow=nrow, padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil_image(grid).save(tmp, format="PNG")


def save_comparison(inputs: torch.Tensor, reconstructions: torch.Tensor, path) -> None:
    """Save rows of inputs above rows of their reconstructions (same count, up to 8 per row)."""
    per_row = min(8, inputs.shape[0])
    rows = []
    for start in range(0, inputs.shape[0], per_row):
        rows += [inputs[start : start + per_row], reconstructions[start : start + per_row]]
    save_grid(torch.cat(rows), path, nrow=per_row)

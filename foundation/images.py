"""Image grids saved as PNG (images live in [-1, 1] everywhere in this project)."""

import math

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid
from torchvision.transforms.functional import to_pil_image

from foundation.files import atomic_path

PADDING = 2
LABEL_MARGIN = 6  # pixels of white around a row's label


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255] (the inverse of the stages' scaling)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def grid_of(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> one (3, H', W') grid in [0, 1], `nrow` images per row (default: square)."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(to_unit_range(images.detach().cpu()), nrow=nrow, padding=PADDING, pad_value=1.0)


def save_png(picture, path) -> None:
    """Save a (3, H, W) tensor in [0, 1] or a PIL image as PNG, atomically."""
    picture = to_pil_image(picture) if isinstance(picture, torch.Tensor) else picture
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    """Save (B, 3, H, W) images in [-1, 1] as one PNG grid, atomically."""
    save_png(grid_of(images, nrow), path)


def comparison_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of inputs above rows of their reconstructions (same count, up to `per_row` per row), in [0, 1]."""
    per_row = min(per_row, inputs.shape[0])
    rows = []
    for start in range(0, inputs.shape[0], per_row):
        rows += [inputs[start : start + per_row], reconstructions[start : start + per_row]]
    return grid_of(torch.cat(rows), nrow=per_row)


def save_comparison(inputs: torch.Tensor, reconstructions: torch.Tensor, path, per_row: int = 8) -> torch.Tensor:
    """Save `comparison_grid` as PNG; returns the grid (e.g. for TensorBoard)."""
    grid = comparison_grid(inputs, reconstructions, per_row)
    save_png(grid, path)
    return grid


def labelled_rows(rows: list, names: list) -> Image.Image:
    """One row of images per name (each (n, 3, H, W) in [-1, 1], same n), its name written on the left."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = max(int(probe.textlength(name, font=font)) for name in names) + 2 * LABEL_MARGIN
    strips = [to_pil_image(grid_of(row, nrow=row.shape[0])) for row in rows]
    row_height = strips[0].height - PADDING  # neighbouring strips share one padding line
    canvas = Image.new("RGB", (margin + strips[0].width, row_height * len(rows) + PADDING), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (name, strip) in enumerate(zip(names, strips)):
        top = index * row_height
        canvas.paste(strip, (margin, top))
        text_height = draw.textbbox((0, 0), name, font=font)[3]
        draw.text((LABEL_MARGIN, top + (strip.height - text_height) // 2), name, fill="black", font=font)
    return canvas

"""Code maps of one or two levels, in the one form the project passes around: a tuple, top level first.

Each level is an (N, H, W) tensor of code indices; one level is a 1-tuple. Only the public model
methods (`VQVAE.encode` and `decode_indices`, a one-level prior's `sample`, `complete` and `log_prob`)
take or give a bare tensor for one level, as users expect.
"""

import torch

LEVEL_NAMES = ("top", "bottom")
ONE_LEVEL = "codes"  # the name of the only level of a one-level model (meta.json, logs)


def level_names(levels: int) -> tuple:
    """Names of the levels, top first: ('codes',) for one level, ('top', 'bottom') for two."""
    return LEVEL_NAMES if _checked(levels) == 2 else (ONE_LEVEL,)


def top_first(top, bottom, levels: int) -> tuple:
    """A value per level, top first: (top, bottom) for two levels, (bottom,) for one (its only level is the bottom)."""
    return (top, bottom) if _checked(levels) == 2 else (bottom,)


def _checked(levels: int) -> int:
    if levels not in (1, 2):
        raise ValueError(f"models have 1 or 2 levels of codes, not {levels}")
    return levels


def name_suffix(name: str) -> str:
    """'' for the only level of a one-level model, '_top' or '_bottom' otherwise (file names, metric keys)."""
    return "" if name == ONE_LEVEL else f"_{name}"


def take(levels: tuple, index) -> tuple:
    """Rows `index` of every level."""
    return tuple(level[index] for level in levels)


def count(levels: tuple) -> int:
    """Number of maps (of images) in `levels`."""
    return levels[0].shape[0]


def to_device(levels: tuple, device) -> tuple:
    return tuple(level.to(device) for level in levels)


def concatenate(chunks: list) -> tuple:
    """Chunks of maps (each a tuple of levels) -> one tuple of levels."""
    return tuple(torch.cat(level) for level in zip(*chunks))

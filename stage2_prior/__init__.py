"""Stage 2: a gated PixelCNN prior over the 8x8 code maps that stage 1 produces.

    python -m stage2_prior.train     # train on train.npy, report test bits per code every epoch
"""

from stage2_prior.checkpoint import load_prior
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN

__all__ = ["load_prior", "GatedPixelCNN", "PriorConfig"]

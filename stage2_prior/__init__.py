"""Stage 2: a gated PixelCNN prior over the code maps that stage 1 produces (one prior per level).

    python -m stage2_prior.train     # train on the code maps, choose the epoch on validation bits per code
"""

from stage2_prior.checkpoint import load_prior
from stage2_prior.config import PriorConfig
from stage2_prior.hierarchy import HierarchicalPrior, build_prior
from stage2_prior.model import GatedPixelCNN

__all__ = ["GatedPixelCNN", "HierarchicalPrior", "PriorConfig", "build_prior", "load_prior"]

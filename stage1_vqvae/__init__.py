"""Stage 1: a VQ-VAE that turns 32x32 images into 8x8 maps of codebook indices.

    python -m stage1_vqvae.train     # train, keep the best checkpoint by validation loss
    python -m stage1_vqvae.encode    # dump the dataset's code maps for stage 2
"""

from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE

__all__ = ["load_vqvae", "VQVAE", "VQVAEConfig"]

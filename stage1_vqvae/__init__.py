"""Stage 1: a VQ-VAE that turns images into maps of codebook indices (one or two levels).

    python -m stage1_vqvae.train     # train, keep the best checkpoint by validation reconstruction
    python -m stage1_vqvae.encode    # dump the dataset's code maps for stage 2
    python -m stage1_vqvae.vectors   # the quantizers on any (N, D) embedding vectors

The quantizers are layers for any vectors: `VectorQuantizer`, `EMAVectorQuantizer`, `GroupedQuantizer`,
`ResidualQuantizer`, or `build_quantizer` for any of them; and from recent work `RotationQuantizer` (rotation
trick), `FactorizedQuantizer` (factorised l2-normalised codes), `FiniteScalarQuantizer` (FSQ) and
`StochasticQuantizer` (SQ-VAE's stochastic quantization).
"""

from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage1_vqvae.modern_quantizers import FactorizedQuantizer, FiniteScalarQuantizer, RotationQuantizer
from stage1_vqvae.multi_quantizer import GroupedQuantizer, ResidualQuantizer, build_quantizer
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer
from stage1_vqvae.stochastic_quantizer import StochasticQuantizer
from stage1_vqvae.vectors import load_quantizer

__all__ = ["VQVAE", "VQVAEConfig", "load_vqvae", "VectorQuantizer", "EMAVectorQuantizer", "GroupedQuantizer",
           "ResidualQuantizer", "build_quantizer", "load_quantizer", "RotationQuantizer", "FactorizedQuantizer",
           "FiniteScalarQuantizer", "StochasticQuantizer"]

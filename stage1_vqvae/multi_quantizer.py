"""Codes of several indices per vector: grouped (product) and residual quantization.

- `GroupedQuantizer`: D is split into G groups of D/G, each quantized against its own codebook; the
  code of a vector is G indices (K^G possible vectors from G codebooks of K). The sound form of the
  source tutorial's reshaping trick (SPEC.md, "Embedding vectors").
- `ResidualQuantizer`: N stages with a codebook each; stage 1 quantizes the vector, stage i what the
  stages before it left; the vector is the sum of its N code vectors (the "semantic IDs" of TIGER,
  arXiv:2305.05065).

Both are built from `VectorQuantizer` or `EMAVectorQuantizer` (data initialisation, dead-code
re-seeding, fp32 statistics and DDP synchronisation come with them), grouped ones also from the quantizers
of `stage1_vqvae.modern_quantizers`, and keep their contract:
`forward(z) -> (straight-through quantized z, loss, indices)`, with one more trailing axis on the
indices for the G or N codes: (B, D, H, W) -> (B, H, W, G) with dim=1, (..., D) -> (..., G) with dim=-1.
`usage(indices)` gives codes used and perplexity per group or stage. No I/O here.

    rq = ResidualQuantizer(codebook_size=256, embed_dim=64, stages=4, dim=-1)
    quantized, loss, codes = rq(vectors)   # (N, 64) -> (N, 64), scalar, long (N, 4)
"""

import torch
import torch.nn as nn

from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer, code_usage


class _MultiCodebook(nn.Module):
    """G or N quantizers of the same kind, each on (..., size) channels-last vectors."""

    def __init__(self, count: int, codebook_size: int, embed_dim: int, size: int, quantizer: type, dim: int, **kwargs):
        super().__init__()
        if count < 1:
            raise ValueError(f"need at least one codebook, got {count}")
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.dim = dim
        self.quantizers = nn.ModuleList(quantizer(codebook_size, size, dim=-1, **kwargs) for _ in range(count))

    @property
    def num_codebooks(self) -> int:
        return len(self.quantizers)

    def forward(self, z_e: torch.Tensor):
        if z_e.shape[self.dim] != self.embed_dim:
            raise ValueError(f"expected vectors of size {self.embed_dim} along dim {self.dim}, got shape {tuple(z_e.shape)}")
        quantized, loss, indices = self._quantize(z_e.movedim(self.dim, -1))  # (..., D), scalar, (..., count)
        return quantized.movedim(-1, self.dim).contiguous(), loss, indices

    def _quantize(self, z: torch.Tensor):
        raise NotImplementedError

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (..., G or N) -> the vectors they stand for (..., D)."""
        raise NotImplementedError

    def usage(self, indices: torch.Tensor) -> list:
        """Codes used and perplexity of each codebook, for codes (..., G or N) as forward returns them."""
        return [code_usage(indices[..., i], self.codebook_size) for i in range(self.num_codebooks)]


class GroupedQuantizer(_MultiCodebook):
    """Product quantization: D split into `groups` equal groups, each with its own codebook of K codes.

    The loss is the mean of the groups' losses, so it is on the scale of one quantizer's over all D.
    """

    def __init__(self, codebook_size: int, embed_dim: int, groups: int, quantizer: type = EMAVectorQuantizer,
                 dim: int = 1, **kwargs):
        if groups < 1 or embed_dim % groups:
            raise ValueError(f"embed_dim {embed_dim} cannot be split into {groups} equal groups")
        super().__init__(groups, codebook_size, embed_dim, embed_dim // groups, quantizer, dim, **kwargs)

    def _quantize(self, z):
        parts = [q(chunk) for q, chunk in zip(self.quantizers, z.chunk(self.num_codebooks, dim=-1))]
        quantized, losses, indices = zip(*parts)
        return torch.cat(quantized, -1), torch.stack(losses).mean(), torch.stack(indices, -1)

    def embed_code(self, indices):
        return torch.cat([q.embed_code(indices[..., i]) for i, q in enumerate(self.quantizers)], -1)


class ResidualQuantizer(_MultiCodebook):
    """Residual quantization: `stages` codebooks of K full-size codes; each codes what the ones before left.

    The loss is the sum of the stages' losses (each stage's commitment pulls the residual it sees).
    """

    def __init__(self, codebook_size: int, embed_dim: int, stages: int, quantizer: type = EMAVectorQuantizer,
                 dim: int = 1, **kwargs):
        super().__init__(stages, codebook_size, embed_dim, embed_dim, quantizer, dim, **kwargs)

    def _quantize(self, z):
        with torch.autocast(device_type=z.device.type, enabled=False):  # the stages and the residual in fp32
            z = z.float()
            residual, total, losses, indices = z, torch.zeros_like(z), [], []
            for q in self.quantizers:
                code, loss, stage_indices = q.quantize(residual)  # the code its search chose, before any update
                residual = residual - code.detach()  # the next stage sees what this one left
                total = total + code.detach()
                losses.append(loss)
                indices.append(stage_indices)
            quantized = z + (total - z).detach()  # straight-through for the sum, so the gradient is not counted N times
        return quantized, torch.stack(losses).sum(), torch.stack(indices, -1)

    def embed_code(self, indices):
        return sum(q.embed_code(indices[..., i]) for i, q in enumerate(self.quantizers))


def build_quantizer(codebook_size: int, embed_dim: int, groups: int = 1, stages: int = 1, ema: bool = True,
                    dim: int = 1, quantizer: type | None = None, **kwargs) -> _MultiCodebook:
    """A grouped (groups > 1), residual (stages > 1) or plain (both 1) quantizer whose codes are (..., G or N).

    Plain is one group: the same as `VectorQuantizer`/`EMAVectorQuantizer`, with codes shaped (..., 1).
    `quantizer`, a class of `stage1_vqvae.modern_quantizers` for instance, replaces the one `ema` chooses; residual
    stages take only the two plain ones (they pass one straight-through gradient for the sum of the stages' codes).
    `kwargs` go to every codebook's quantizer (beta, dead_code_threshold, and decay/eps when `ema`).
    """
    if groups > 1 and stages > 1:
        raise ValueError("choose grouped (groups > 1) or residual (stages > 1) quantization, not both")
    if stages > 1 and quantizer not in (None, EMAVectorQuantizer, VectorQuantizer):
        name = getattr(quantizer, "__name__", quantizer)
        raise ValueError(f"residual stages take EMAVectorQuantizer or VectorQuantizer, not {name}")
    quantizer = quantizer or (EMAVectorQuantizer if ema else VectorQuantizer)
    if stages > 1:
        return ResidualQuantizer(codebook_size, embed_dim, stages, quantizer, dim, **kwargs)
    return GroupedQuantizer(codebook_size, embed_dim, groups, quantizer, dim, **kwargs)

"""Quantizers from recent work, layers beside `VectorQuantizer` and `EMAVectorQuantizer` for any vectors.

- `RotationQuantizer` (Fifty et al., ICLR 2025, arXiv:2410.06424): the EMA codebook, but the gradient reaches the
  input by the rotation trick instead of the straight-through copy: q~ = sg(lambda R) z, with R the rotation taking
  z's direction onto its code's and lambda = |q| / |z|. The forward value is the code. `rotate_to` is the trick alone.
- `FactorizedQuantizer` (Yu et al., ViT-VQGAN, arXiv:2110.04627): vectors are projected down to `factorized_dim`
  dimensions and l2-normalised, the code with the largest cosine similarity among l2-normalised codes is chosen,
  and projected back up. The codebook learns by EMA on the sphere (the l2-normalised EMA means: spherical k-means),
  so it keeps the EMA quantizer's data initialisation, dead-code re-seeding and DDP sums and needs no learning rate
  of its own; the projections learn from the model's loss (the decoder's gradient, and the commitment term).
- `FiniteScalarQuantizer` (Mentzer et al., arXiv:2309.15505): no codebook. Vectors are projected to len(levels)
  channels, channel i is bounded by a tanh to L_i levels and rounded (straight-through), and projected back. The
  code is the mixed-radix integer of the channels' levels, prod(levels) codes in all; the loss is 0, and with no
  codebook there is nothing to collapse or re-seed.

All keep the contract of `stage1_vqvae.quantizer`: `forward(z_e)` with the D features on axis `dim` -> (quantized,
same shape; scalar loss; long indices with that axis removed), `embed_code(indices)`, `nearest_codes(flat)`,
`codebook_size`, `embed_dim`, fp32 arithmetic under autocast, and no host synchronisation of their own.
`named_quantizer(cfg)` gives the class and options a config's `--quantizer` names. No I/O here.

    q = FiniteScalarQuantizer(512, 64, levels=(8, 8, 8), dim=-1)
    quantized, loss, indices = q(vectors)   # (..., 64) -> (..., 64), 0, long (...) in [0, 512)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage1_vqvae.config import fsq_levels
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer, in_layout
from stage1_vqvae.stochastic_quantizer import StochasticQuantizer

EPS = 1e-6  # the smallest norm divided by: a zero vector gets a finite direction (zero)


def rotate_to(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """`codes` (..., D) in the forward pass; in the backward pass z gets (lambda R)^T g, the rotation trick's gradient.

    R z = z - 2 r (r.z) + 2 q^ (z^.z), with z^ and q^ the unit vectors and r = (z^ + q^) / |z^ + q^|, is the
    Householder-style rotation I - 2 r r^T + 2 q^ z^T taking z^ onto q^, applied without forming a D x D matrix
    (opposite vectors give r = 0 and still -z). R and lambda = |q| / |z| are constants to autograd. The last line
    pins the forward value to the codes, where rounding or a zero z would move it, without touching the gradient.
    """
    with torch.no_grad():
        z_norm, q_norm = z.norm(dim=-1, keepdim=True), codes.norm(dim=-1, keepdim=True)  # (..., 1)
        z_unit, q_unit = z / z_norm.clamp_min(EPS), codes / q_norm.clamp_min(EPS)  # (..., D)
        r = F.normalize(z_unit + q_unit, dim=-1, eps=EPS)  # (..., D)
        scale = q_norm / z_norm.clamp_min(EPS)  # lambda, (..., 1)
    rotated = scale * (z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * q_unit * (z_unit * z).sum(-1, keepdim=True))
    return rotated + (codes - rotated).detach()


class RotationQuantizer(EMAVectorQuantizer):
    """EMA codebook whose gradient reaches the input by the rotation trick instead of the straight-through copy."""

    def forward(self, z_e: torch.Tensor):
        return in_layout(self, z_e, self._quantize_rotated)

    def _quantize_rotated(self, z: torch.Tensor):
        """fp32 (..., D) -> (codes with the rotation trick's gradient, loss, indices)."""
        codes, loss, indices = self.quantize(z)
        return rotate_to(z, codes), loss, indices


class SphericalEMAQuantizer(EMAVectorQuantizer):
    """EMA codebook read on the unit sphere: the codes are the l2-normalised EMA means (spherical k-means).

    On unit vectors the base class's |z|^2 + |e|^2 - 2 z.e is 2 - 2 cos, so its nearest code is the most similar one.
    """

    @property
    def codebook(self) -> torch.Tensor:  # (K, D)
        return F.normalize(self.embedding, dim=1, eps=EPS)


class FactorizedQuantizer(nn.Module):
    """Cosine-similarity lookup among l2-normalised codes of `factorized_dim` dimensions, projected back to D."""

    def __init__(self, codebook_size: int, embed_dim: int, factorized_dim: int = 16, beta: float = 0.25,
                 dead_code_threshold: float = 1.0, decay: float = 0.99, eps: float = 1e-5, dim: int = 1):
        super().__init__()
        if factorized_dim < 1:
            raise ValueError(f"factorized_dim must be at least 1, got {factorized_dim}")
        self.codebook_size, self.embed_dim, self.dim = codebook_size, embed_dim, dim
        self.factorized_dim = factorized_dim
        self.project_in = nn.Linear(embed_dim, factorized_dim)
        self.project_out = nn.Linear(factorized_dim, embed_dim)
        self.lookup = SphericalEMAQuantizer(codebook_size, factorized_dim, beta, dead_code_threshold, decay, eps,
                                            dim=-1)

    @property
    def codebook(self) -> torch.Tensor:  # (K, D): the vector each code stands for
        return self.embed_code(torch.arange(self.codebook_size, device=self.project_out.weight.device))

    def down(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., factorized_dim) on the unit sphere."""
        return F.normalize(self.project_in(z), dim=-1, eps=EPS)

    def forward(self, z_e: torch.Tensor):
        return in_layout(self, z_e, self._quantize)

    def _quantize(self, z: torch.Tensor):
        """fp32 (..., D) -> (projected-up codes with a straight-through gradient, loss, indices)."""
        u = self.down(z)  # (..., d)
        codes, loss, indices = self.lookup.quantize(u)  # the commitment term pulls u (and project_in) to its code
        return self.project_out(u + (codes - u).detach()), loss, indices

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the most similar code for each row of `flat` (N, D), in fp32."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return self.lookup.nearest_codes(self.down(flat.float()))

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Integer indices (...,) -> the vectors they stand for (..., D), fp32."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.project_out(self.lookup.embed_code(indices))


class FiniteScalarQuantizer(nn.Module):
    """No codebook: each of len(levels) projected channels is bounded to L_i levels and rounded, straight-through."""

    def __init__(self, codebook_size: int, embed_dim: int, levels=(8, 8, 8), dim: int = 1, bound_eps: float = 1e-3):
        super().__init__()
        levels = tuple(int(n) for n in levels)
        if not levels or min(levels) < 2 or math.prod(levels) != codebook_size:
            raise ValueError(f"levels {levels} must be at least 2 each, with a product equal to codebook_size "
                             f"{codebook_size}")
        self.codebook_size, self.embed_dim, self.dim, self.levels = codebook_size, embed_dim, dim, levels
        self.project_in = nn.Linear(embed_dim, len(levels))
        self.project_out = nn.Linear(len(levels), embed_dim)
        radix = torch.tensor(levels)  # (C,) L_i
        half_l = (radix - 1) * (1 - bound_eps) / 2  # just under half the span, so no channel reaches a level beyond L_i
        offset = (radix % 2 == 0).float() / 2  # even L_i: levels sit at half-steps, shifted onto the integers
        constants = {"radix": radix, "basis": torch.cumprod(torch.tensor((1,) + levels[:-1]), 0),
                     "half_width": radix // 2, "half_l": half_l, "offset": offset,
                     "shift": torch.tan(offset / half_l)}  # as the paper's code: tanh(shift) * half_l ~ offset
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)  # rebuilt from `levels`; the state dict keeps weights

    @property
    def codebook(self) -> torch.Tensor:  # (K, D): the implicit codebook, every code's vector
        return self.embed_code(torch.arange(self.codebook_size, device=self.radix.device))

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> channel i in (-L_i / 2, L_i / 2), so rounding gives one of L_i integers."""
        return torch.tanh(h + self.shift) * self.half_l - self.offset

    def forward(self, z_e: torch.Tensor):
        return in_layout(self, z_e, self._quantize)

    def _quantize(self, z: torch.Tensor):
        """fp32 (..., D) -> (projected-up levels with a straight-through rounding, loss 0, indices)."""
        bounded = self.bound(self.project_in(z))  # (..., C)
        rounded = bounded.round()  # integers in [-L_i // 2, L_i - 1 - L_i // 2]
        levels = bounded + (rounded - bounded).detach()
        return self.project_out(levels / self.half_width), z.new_zeros(()), self._index(rounded)

    def _index(self, rounded: torch.Tensor) -> torch.Tensor:
        """Rounded channels (..., C) -> the mixed-radix integer of their levels (...,), long."""
        return ((rounded.long() + self.half_width) * self.basis).sum(-1)

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """The code of each row of `flat` (N, D), in fp32."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return self._index(self.bound(self.project_in(flat.float())).round())

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Integer indices (...,) -> the vectors they stand for (..., D), fp32."""
        digits = indices.long().unsqueeze(-1) // self.basis % self.radix  # (..., C) in [0, L_i)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.project_out((digits - self.half_width) / self.half_width)


def named_quantizer(cfg) -> tuple:
    """(class, keyword options) of the quantizer `cfg.quantizer` names (`stochastic`: SQ-VAE's,
    `stage1_vqvae.stochastic_quantizer`); the options come from cfg's beta, sq_temperature_decay,
    dead_code_threshold, ema_decay, factorized_dim and fsq_levels (stage 1's and the vectors command's configs)."""
    if cfg.quantizer == "fsq":
        return FiniteScalarQuantizer, {"levels": fsq_levels(cfg.fsq_levels)}
    if cfg.quantizer == "stochastic":
        return StochasticQuantizer, {"temperature_decay": cfg.sq_temperature_decay}
    common = dict(beta=cfg.beta, dead_code_threshold=cfg.dead_code_threshold)
    ema = dict(common, decay=cfg.ema_decay)
    named = {"ema": (EMAVectorQuantizer, ema), "codebook": (VectorQuantizer, common),
             "rotation": (RotationQuantizer, ema),
             "factorized": (FactorizedQuantizer, dict(ema, factorized_dim=cfg.factorized_dim))}
    if cfg.quantizer not in named:
        raise ValueError(f"unknown quantizer {cfg.quantizer!r}")
    return named[cfg.quantizer]

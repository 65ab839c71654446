"""Vector quantizers: nearest-code lookup with a straight-through gradient.

Two ways to learn the codebook (SPEC.md):
- `VectorQuantizer`: codebook loss |sg[z] - e|^2 moves the codes, commitment beta |z - sg[e]|^2 the encoder.
- `EMAVectorQuantizer`: codes are exponential moving averages of the vectors assigned to them
  (training mode only); only the commitment term is a loss.
Both initialise the codebook from the first training batch and re-seed codes that stop being used,
so the codebook does not collapse to a few codes. Distances and EMA statistics are always fp32.
A training step never waits for the device: counts, dead codes and their replacements are computed
with fixed shapes (every code gets a candidate row each step; only the dead ones take it).
Under data-parallel training, counts and sums are summed over ranks and replacement codes are drawn
from the encoder outputs of all ranks by rank 0, which sends its draw to the others, so every rank keeps
the same codebook (the one a single process would keep for the whole global batch, up to float rounding).

Any tensor of vectors works: `dim` names the axis that holds the D features, 1 by default, which
covers (B, D, H, W) feature maps and (N, D) embeddings alike; `dim=-1` takes channels-last (..., D).
Grouped (product) and residual quantizers built from these two live in `stage1_vqvae.multi_quantizer`.

    q = EMAVectorQuantizer(codebook_size=256, embed_dim=64, dim=-1)
    quantized, loss, indices = q(vectors)   # (..., 64) -> (..., 64), scalar, long (...)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation.distributed import all_gather_rows, all_reduce_sum_, broadcast_, is_main
from foundation.runtime import full_fp32_matmul


class _QuantizerBase(nn.Module):
    """Nearest-code search, data initialisation and dead-code re-seeding shared by both quantizers."""

    def __init__(self, codebook_size: int, embed_dim: int, beta: float, dead_code_threshold: float, dim: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.dim = dim  # the input axis that holds the D features
        self.beta = beta
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("usage", torch.zeros(codebook_size))  # EMA of times chosen per batch
        self.known_initialized = False  # `initialized` as the host last read it: read once, not every step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.known_initialized = False  # the loaded buffer decides, at the next training step

    @property
    def codebook(self) -> torch.Tensor:  # (K, D)
        raise NotImplementedError

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        """Codes where the bool mask `which` (K,) is set become the rows of `vectors` (K, D) at the same places."""
        raise NotImplementedError

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` (N, D), in full fp32: |z|^2 + |e|^2 - 2 z.e.

        The expansion cancels badly, so neither autocast nor the TF32 matmuls training enables may touch it.
        """
        with torch.autocast(device_type=flat.device.type, enabled=False), full_fp32_matmul():
            flat, codebook = flat.float(), self.codebook.float()
            distances = torch.addmm(
                flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1), flat, codebook.t(), alpha=-2.0
            )  # (N, K)
        return distances.argmin(1)

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer indices (...,) -> (..., D)."""
        return F.embedding(indices, self.codebook)

    def _random_rows(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        """`count` rows drawn from the encoder outputs of all ranks (without replacement when there are enough).

        Rank 0 draws and sends its draw to the others: ranks' generators need not agree (each GPU has its own).
        """
        flat = all_gather_rows(flat)
        picks = torch.empty(count, dtype=torch.long, device=flat.device)
        if is_main():
            if flat.shape[0] >= count:
                picks = torch.randperm(flat.shape[0], device=flat.device)[:count]
            else:
                picks = torch.randint(flat.shape[0], (count,), device=flat.device)
        return flat[broadcast_(picks)]

    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor) -> None:
        """Start every code at an encoder output, so all codes begin inside the data."""
        self._set_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=flat.device),
                        self._random_rows(flat, self.codebook_size))
        self.usage.fill_(self._grace_usage())
        self.initialized.fill_(True)

    @torch.no_grad()
    def _track_usage_and_reseed(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Update the usage EMA; move codes used less than the threshold, and not at all in this batch, onto
        current encoder outputs (`counts` are summed over ranks, so every rank finds the same dead codes)."""
        self.usage.mul_(0.99).add_(counts, alpha=0.01)
        if self.dead_code_threshold <= 0:
            return
        dead = (self.usage < self.dead_code_threshold) & (counts == 0)  # (K,)
        self._set_codes(dead, self._random_rows(flat, self.codebook_size))
        self.usage.masked_fill_(dead, self._grace_usage())

    def _grace_usage(self) -> float:
        """Usage given to a new code: never chosen, it decays below the threshold in about 20 steps."""
        return 1.25 * self.dead_code_threshold

    def _codebook_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Hook for the EMA update (training mode only)."""

    def _vq_loss(self, z: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, z_e: torch.Tensor):
        """Vectors along `self.dim` -> (straight-through quantized, same shape; vq loss; indices, that axis removed).

        (B, D, H, W) -> (B, D, H, W), loss, (B, H, W) with dim=1; (..., D) -> (..., D), loss, (...) with dim=-1.
        """
        if z_e.shape[self.dim] != self.embed_dim:
            raise ValueError(f"expected vectors of size {self.embed_dim} along dim {self.dim}, got shape {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float().movedim(self.dim, -1)  # (..., D)
            codes, loss, indices = self.quantize(z)
            quantized = z + (codes - z).detach()  # straight-through: decoder gradient reaches the encoder
        return quantized.movedim(-1, self.dim).contiguous(), loss, indices

    def quantize(self, z: torch.Tensor):
        """fp32 channels-last vectors (..., D) -> (their codes (..., D), vq loss, indices (...)), no straight-through.

        The codes come from the codebook the search used: in training mode the codebook moves afterwards.
        """
        flat = z.reshape(-1, self.embed_dim)  # (N, D)
        if self.training and not self.known_initialized:
            if not bool(self.initialized):  # once per process: the first step, or the first after loading
                self._init_from_data(flat.detach())
            self.known_initialized = True
        indices = self.nearest_codes(flat.detach())  # (N,)
        codes = self.embed_code(indices).view(z.shape)
        if self.training:
            counts = all_reduce_sum_(code_counts(indices, self.codebook_size))
            self._codebook_update(flat.detach(), indices, counts)
            self._track_usage_and_reseed(flat.detach(), counts)
        return codes, self._vq_loss(z, codes), indices.view(z.shape[:-1])


class VectorQuantizer(_QuantizerBase):
    """Codebook learned by gradient descent on the codebook loss."""

    def __init__(self, codebook_size: int, embed_dim: int, beta: float = 0.25, dead_code_threshold: float = 1.0,
                 dim: int = 1):
        super().__init__(codebook_size, embed_dim, beta, dead_code_threshold, dim)
        self.embedding = nn.Parameter(torch.empty(codebook_size, embed_dim).uniform_(-1 / codebook_size, 1 / codebook_size))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    def _set_codes(self, which, vectors):
        self.embedding.data.copy_(torch.where(which[:, None], vectors, self.embedding.data))

    def _vq_loss(self, z, quantized):
        codebook_loss = F.mse_loss(quantized, z.detach())  # moves the codes (gradient reaches the codebook)
        commitment = F.mse_loss(z, quantized.detach())  # moves the encoder
        return codebook_loss + self.beta * commitment


class EMAVectorQuantizer(_QuantizerBase):
    """Codebook learned as EMA of assigned encoder outputs, with Laplace-smoothed counts."""

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        beta: float = 0.25,
        dead_code_threshold: float = 1.0,
        decay: float = 0.99,
        eps: float = 1e-5,
        dim: int = 1,
    ):
        super().__init__(codebook_size, embed_dim, beta, dead_code_threshold, dim)
        self.decay = decay
        self.eps = eps
        embedding = torch.randn(codebook_size, embed_dim)
        self.register_buffer("embedding", embedding)  # (K, D)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # N_k
        self.register_buffer("embed_sum", embedding.clone())  # m_k

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    def _set_codes(self, which, vectors):
        self.embedding.copy_(torch.where(which[:, None], vectors, self.embedding))
        self.embed_sum.copy_(torch.where(which[:, None], vectors, self.embed_sum))
        self.cluster_size.masked_fill_(which, 1.0)

    @torch.no_grad()
    def _codebook_update(self, flat, indices, counts):
        sums = all_reduce_sum_(torch.zeros_like(self.embed_sum).index_add_(0, indices, flat))  # (K, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))

    def _vq_loss(self, z, quantized):
        return self.beta * F.mse_loss(z, quantized.detach())


def in_layout(module: nn.Module, z_e: torch.Tensor, quantize):
    """`quantize` on z_e's vectors as fp32 channels-last (..., D) with autocast off; its results in z_e's layout."""
    if z_e.shape[module.dim] != module.embed_dim:
        raise ValueError(f"expected vectors of size {module.embed_dim} along dim {module.dim}, "
                         f"got shape {tuple(z_e.shape)}")
    with torch.autocast(device_type=z_e.device.type, enabled=False):
        quantized, loss, indices = quantize(z_e.float().movedim(module.dim, -1))  # (..., D), scalar, (...)
    return quantized.movedim(-1, module.dim).contiguous(), loss, indices


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code appears in `indices`, as floats (K,): `bincount` without its read of the largest index."""
    return torch.zeros(codebook_size, device=indices.device).index_add_(
        0, indices.flatten(), torch.ones(indices.numel(), device=indices.device))


def code_usage(indices: torch.Tensor, codebook_size: int) -> dict:
    """Distinct codes used and perplexity exp(-sum p log p) of a set of code indices (any shape)."""
    return count_usage(torch.bincount(indices.flatten().long(), minlength=codebook_size))


def count_usage(counts: torch.Tensor) -> dict:
    """Distinct codes used and perplexity of a histogram of code counts."""
    p = counts[counts > 0].double() / counts.sum()
    return {"codes_used": int(p.numel()), "perplexity": float(torch.exp(-(p * p.log()).sum()))}

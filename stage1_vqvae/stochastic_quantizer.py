"""SQ-VAE's stochastic quantization (Takida et al., ICML 2022, arXiv:2205.07547), Gaussian form with one learned variance.

Training draws each vector's code softly instead of snapping it to the nearest: with logits
-|z - e_k|^2 / (2 s^2) over the K codes, the output is the Gumbel-softmax mixture softmax((logits + g) / tau) @ E,
so the encoder, the codebook and the variance s^2 all learn from the reconstruction, with no straight-through copy,
no commitment weight and no EMA. The latent loss, in nats per vector, is

    sum_k p_k log p_k  +  |z - z_q|^2 / (2 s^2)          (p = softmax(logits); z_q the output)

(the discrete KL to a uniform prior, up to log K, and the continuous one). Against it, the reconstruction term is
the Gaussian log-likelihood at its best variance, 0.5 log(MSE) per dimension (`gaussian_reconstruction`,
`--recon-loss gaussian`), so s^2 shrinks as the reconstructions improve: the paper's self-annealing. The temperature
falls as tau = exp(-decay * step) and the variance is 1 + exp(a) with a learned, as in the authors' CIFAR-10 setting
(`gaussian_1`: a starts at log 20, decay 1e-5 per step).

In eval mode the output is the nearest code, the one `nearest_codes` and `encode` give. `loss_scale` converts the
loss to the reconstruction term's unit: by default nats per vector dimension (1 / D); stage 1 passes vectors per
image sub-pixel. Same contract as `stage1_vqvae.quantizer`; fp32 under autocast; no host synchronisation. No I/O.

    q = StochasticQuantizer(512, 64, dim=-1)
    quantized, loss, indices = q(vectors)   # (..., 64) -> (..., 64), scalar, long (...) in [0, 512)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation.runtime import full_fp32_matmul
from stage1_vqvae.quantizer import in_layout

TINY = torch.finfo(torch.float32).tiny
MIN_TEMPERATURE = 1e-2  # exp(-decay * step) would reach denormals after enough steps; the mixture is one-hot long before


def gaussian_reconstruction(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """0.5 log(mean squared error): the Gaussian negative log-likelihood per dimension at its maximum-likelihood
    variance, up to a constant (Lin et al., arXiv:2102.08663, as SQ-VAE trains): the MSE's gradient over 2 MSE."""
    return 0.5 * torch.log(F.mse_loss(x_hat.float(), x.float()))


class StochasticQuantizer(nn.Module):
    """Gumbel-softmax draws over a learned codebook with a learned variance (SQ-VAE); the nearest code at eval."""

    def __init__(self, codebook_size: int, embed_dim: int, dim: int = 1, variance_init: float = 20.0,
                 temperature_decay: float = 1e-5, loss_scale: float | None = None):
        super().__init__()
        if variance_init <= 0 or temperature_decay < 0:
            raise ValueError(f"variance_init must be > 0 and temperature_decay >= 0, got {variance_init}, "
                             f"{temperature_decay}")
        self.codebook_size, self.embed_dim, self.dim = codebook_size, embed_dim, dim
        self.temperature_decay = temperature_decay
        self.loss_scale = 1 / embed_dim if loss_scale is None else loss_scale
        self.embedding = nn.Parameter(torch.randn(codebook_size, embed_dim))  # (K, D), the paper's initialisation
        self.log_extra_variance = nn.Parameter(torch.tensor(math.log(variance_init)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps taken: sets the temperature

    @property
    def codebook(self) -> torch.Tensor:  # (K, D)
        return self.embedding

    @property
    def variance(self) -> torch.Tensor:
        """s^2 = 1 + exp(a): the authors' gaussian_1 form, a floor of 1 plus the learned part."""
        return 1 + self.log_extra_variance.exp()

    @property
    def temperature(self) -> torch.Tensor:
        return torch.exp(-self.temperature_decay * self.steps.float()).clamp_min(MIN_TEMPERATURE)

    def forward(self, z_e: torch.Tensor):
        return in_layout(self, z_e, self._quantize)

    def _quantize(self, z: torch.Tensor):
        """fp32 (..., D) -> (the soft draw when training, else the nearest code; latent loss; nearest indices)."""
        flat = z.reshape(-1, self.embed_dim)  # (N, D)
        precision = 1 / self.variance
        # -|x - e|^2 / (2 s^2) = (x.e - |e|^2 / 2) / s^2 - |x|^2 / (2 s^2); the last term is the same for every code
        logits = torch.addmm(self.embedding.pow(2).sum(1) * (-0.5), flat, self.embedding.t()) * precision  # (N, K)
        log_probs = F.log_softmax(logits, dim=-1)
        indices = self.nearest_codes(flat.detach())  # (N,): the most likely code, searched as `encode` searches
        if self.training:
            exponential = torch.empty_like(logits).exponential_().clamp_min_(TINY)  # a draw of 0 would give +inf
            gumbel = -exponential.log()  # -log of an Exp(1) draw is Gumbel(0, 1)
            quantized = F.softmax((logits + gumbel) / self.temperature, dim=-1) @ self.embedding  # (N, D)
            with torch.no_grad():
                self.steps += 1
        else:
            quantized = F.embedding(indices, self.embedding)
        discrete = (log_probs.exp() * log_probs).sum(-1).mean()
        continuous = (flat - quantized).pow(2).sum(-1).mean() * precision / 2
        loss = (discrete + continuous) * self.loss_scale
        return quantized.view_as(z), loss, indices.view(z.shape[:-1])

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (the most likely, whatever the variance) for each row of `flat` (N, D), in full
        fp32: the expansion of the distance cancels badly, so neither autocast nor TF32 may touch it."""
        with torch.no_grad(), torch.autocast(device_type=flat.device.type, enabled=False), full_fp32_matmul():
            return squared_distances(flat.float(), self.embedding.float()).argmin(dim=-1)

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Integer indices (...,) -> code vectors (..., D), fp32."""
        return F.embedding(indices.long(), self.embedding.float())


def squared_distances(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """|x_n - e_k|^2 for rows x_n of `flat` (N, D) and e_k of `codebook` (K, D): (N, K)."""
    return flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()

"""The VQ-VAE: conv encoder -> vector quantizer -> conv decoder (32x32 images <-> 8x8 code maps).

No I/O here: tensors in, tensors and losses out. Images are float in [-1, 1].
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


def make_encoder(cfg: VQVAEConfig) -> nn.Sequential:
    """(B, 3, 32, 32) -> (B, D, 8, 8)."""
    c = cfg.hidden_channels
    return nn.Sequential(
        nn.Conv2d(3, c // 2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c // 2, c, 4, stride=2, padding=1),
        nn.ReLU(),
        *[ResidualBlock(c) for _ in range(cfg.res_blocks)],
        nn.ReLU(),
        nn.Conv2d(c, cfg.embed_dim, 1),
    )


def make_decoder(cfg: VQVAEConfig) -> nn.Sequential:
    """(B, D, 8, 8) -> (B, 3, 32, 32) in [-1, 1]."""
    c = cfg.hidden_channels
    return nn.Sequential(
        nn.Conv2d(cfg.embed_dim, c, 3, padding=1),
        *[ResidualBlock(c) for _ in range(cfg.res_blocks)],
        nn.ReLU(),
        nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(c // 2, 3, 4, stride=2, padding=1),
        nn.Tanh(),
    )


def make_quantizer(cfg: VQVAEConfig) -> nn.Module:
    """The quantizer named by `cfg.quantizer`."""
    common = dict(beta=cfg.beta, dead_code_threshold=cfg.dead_code_threshold)
    if cfg.quantizer == "ema":
        return EMAVectorQuantizer(cfg.codebook_size, cfg.embed_dim, decay=cfg.ema_decay, **common)
    if cfg.quantizer == "codebook":
        return VectorQuantizer(cfg.codebook_size, cfg.embed_dim, **common)
    raise ValueError(f"unknown quantizer {cfg.quantizer!r}")


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_encoder(cfg)
        self.quantizer = make_quantizer(cfg)
        self.decoder = make_decoder(cfg)

    def forward(self, x: torch.Tensor):
        """(B, 3, 32, 32) -> (reconstruction, total loss, {"recon", "vq", "indices"})."""
        quantized, vq_loss, indices = self.quantizer(self.encoder(x))
        x_hat = self.decoder(quantized)
        recon = reconstruction_loss(x_hat.float(), x.float(), self.cfg.recon_loss)
        return x_hat, recon + vq_loss, {"recon": recon, "vq": vq_loss, "indices": indices}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 32, 32) in [-1, 1] -> code indices (B, 8, 8), long."""
        z_e = self.encoder(x)  # (B, D, 8, 8)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
            indices = self.quantizer.nearest_codes(flat)
        return indices.view(z_e.shape[0], z_e.shape[2], z_e.shape[3])

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 8, 8) -> images (B, 3, 32, 32) in [-1, 1]."""
        quantized = self.quantizer.embed_code(indices.long()).permute(0, 3, 1, 2)  # (B, D, 8, 8)
        return self.decoder(quantized.contiguous()).float()


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 (sharper) or L2 distance between images."""
    return F.l1_loss(x_hat, x) if kind == "l1" else F.mse_loss(x_hat, x)

"""The VQ-VAE: conv encoder -> vector quantizer -> conv decoder, with one or two levels of codes.

One level: S x S images <-> one (S/d) x (S/d) map of codes (d = `downsample`, 4 or 8).
Two levels (VQ-VAE-2, arXiv:1906.00446): the bottom encoder's features are encoded once more to a top
grid at half the side; the top is quantized first and decoded back to the bottom grid; the bottom
quantizer then codes the bottom features minus the decoded top (`top_join="residual"`, the default:
the top must carry the coarse content) or both joined by a 1x1 convolution (`"concat"`, VQ-VAE-2's
form, which at 32 px leaves the top unused for long). The decoder sees both quantized levels.

The decoder outputs an image, or with `--recon-loss categorical` 256 logits per sub-pixel
(`stage1_vqvae.likelihood`); `forward` and `decode_indices` always return images.

No I/O here: tensors in, tensors and losses out. Images are float in [-1, 1]. Code maps are long
tensors (B, H, W); with two levels, a tuple (top, bottom).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage1_vqvae import likelihood
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.modern_quantizers import named_quantizer
from stage1_vqvae.stochastic_quantizer import StochasticQuantizer


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class AttentionBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(C)) v) over every position of the grid: VQGAN's single-head mid-level block.

    `proj` starts at zero, so a new block begins as the identity and the network it joins trains as before.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(32, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)  # (B, 1, HW, C) each
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(-1, -2).reshape(b, c, h, w))


def bottleneck_blocks(cfg: VQVAEConfig) -> list:
    """The residual blocks, then the attention blocks, that run at the code grid's resolution."""
    c = cfg.hidden_channels
    return [ResidualBlock(c) for _ in range(cfg.res_blocks)] + [AttentionBlock(c) for _ in range(cfg.attention_blocks)]


def make_encoder(cfg: VQVAEConfig) -> nn.Sequential:
    """(B, 3, S, S) -> (B, D, S/d, S/d): log2(d) stride-2 convolutions, then residual and attention blocks."""
    c = cfg.hidden_channels
    widths = [3, c // 2] + [c] * (int(math.log2(cfg.downsample)) - 1)
    down = [m for i in range(len(widths) - 1) for m in (nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1), nn.ReLU())]
    return nn.Sequential(*down, *bottleneck_blocks(cfg), nn.ReLU(), nn.Conv2d(c, cfg.embed_dim, 1))


def make_decoder(cfg: VQVAEConfig, in_channels: int) -> nn.Sequential:
    """(B, in_channels, S/d, S/d) -> (B, 3, S, S) in [-1, 1], or (B, 3 * 256, S, S) logits for a categorical decoder.

    The categorical decoder's last upsampling stays c/2 wide and a 1x1 convolution makes the logits:
    768 channels out of a 4x4 transposed convolution would cost several times the rest of the model.
    """
    c = cfg.hidden_channels
    categorical = likelihood.models_likelihood(cfg.recon_loss)
    widths = [c] * (int(math.log2(cfg.downsample)) - 1) + [c // 2, c // 2 if categorical else 3]
    up = [m for i in range(len(widths) - 1) for m in (nn.ReLU(), nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1))]
    out = [nn.ReLU(), nn.Conv2d(c // 2, likelihood.output_channels(cfg.recon_loss), 1)] if categorical else [nn.Tanh()]
    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), *bottleneck_blocks(cfg),
                         *up, *out)


def make_quantizer(cfg: VQVAEConfig, codebook_size: int, downsample: int) -> nn.Module:
    """The quantizer named by `cfg.quantizer` (`stage1_vqvae.modern_quantizers.named_quantizer`) for a grid of one
    code per downsample x downsample pixels. SQ-VAE's latent loss is in nats per code vector: scaled to nats per
    image sub-pixel, the unit of its Gaussian reconstruction term, it weighs as in the paper's per-image sum."""
    quantizer, options = named_quantizer(cfg)
    if quantizer is StochasticQuantizer:
        options = dict(options, loss_scale=1 / (3 * downsample ** 2))
    return quantizer(codebook_size, cfg.embed_dim, **options)


class TopLevel(nn.Module):
    """The top level of a two-level VQ-VAE: encode bottom features to the half-size grid, quantize, decode back."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        c, d = cfg.hidden_channels, cfg.embed_dim
        blocks = lambda: [ResidualBlock(c) for _ in range(cfg.res_blocks)]  # noqa: E731
        self.encoder = nn.Sequential(nn.Conv2d(d, c, 4, 2, 1), *blocks(), nn.ReLU(), nn.Conv2d(c, d, 1))
        self.quantizer = make_quantizer(cfg, cfg.top_codebook_size, 2 * cfg.downsample)
        self.decoder = nn.Sequential(nn.Conv2d(d, c, 3, padding=1), *blocks(), nn.ReLU(), nn.ConvTranspose2d(c, d, 4, 2, 1))
        self.residual = cfg.top_join == "residual"
        self.join = None if self.residual else nn.Conv2d(2 * d, d, 1)  # bottom features + decoded top
        self.upsample = nn.ConvTranspose2d(d, d, 4, 2, 1)  # quantized top -> bottom grid, for the image decoder

    def bottom_input(self, features: torch.Tensor, top_quantized: torch.Tensor) -> torch.Tensor:
        """What the bottom quantizer sees: what the top level left unsaid, or the features joined to it."""
        if self.residual:
            return features - self.decoder(top_quantized)
        return self.join(torch.cat([features, self.decoder(top_quantized)], dim=1))


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = cfg.levels
        self.encoder = make_encoder(cfg)
        self.quantizer = make_quantizer(cfg, cfg.codebook_size, cfg.downsample)  # the bottom level's with two levels
        self.top = TopLevel(cfg) if cfg.levels == 2 else None
        self.decoder = make_decoder(cfg, cfg.embed_dim * cfg.levels)

    @property
    def last_decoder_weight(self) -> torch.nn.Parameter:
        """The weight of the decoder's last layer, where the adversarial loss is weighed against the reconstruction's."""
        return [m for m in self.decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1].weight

    @property
    def quantizers(self) -> list:
        """Each level's quantizer, top level first."""
        return [self.quantizer] if self.top is None else [self.top.quantizer, self.quantizer]

    def forward(self, x: torch.Tensor):
        """(B, 3, S, S) -> (reconstruction, total loss, {"recon", "vq", "indices", "level_indices"}).

        "recon" is the reconstruction loss (for a categorical decoder the mean negative log-likelihood in nats
        per sub-pixel); "indices" are the bottom level's; "level_indices" has every level's, top level first.
        """
        features = self.encoder(x)
        if self.top is None:
            quantized, vq_loss, indices = self.quantizer(features)
            level_indices, level_quantized = (indices,), (quantized,)
        else:
            top_q, top_loss, top_indices = self.top.quantizer(self.top.encoder(features))
            quantized, bottom_loss, indices = self.quantizer(self.top.bottom_input(features, top_q))
            vq_loss, level_indices, level_quantized = top_loss + bottom_loss, (top_indices, indices), (top_q, quantized)
        x_hat, recon = likelihood.image_and_loss(self.decode_quantized(level_quantized), x.float(), self.cfg.recon_loss)
        return x_hat, recon + vq_loss, {"recon": recon, "vq": vq_loss, "indices": indices, "level_indices": level_indices}

    @torch.no_grad()
    def encode(self, x: torch.Tensor):
        """Images (B, 3, S, S) in [-1, 1] -> code map (B, H, W), long; with two levels a tuple (top, bottom)."""
        levels = self.encode_levels(x)
        return levels[0] if self.levels == 1 else levels

    @torch.no_grad()
    def encode_levels(self, x: torch.Tensor) -> tuple:
        """Images (B, 3, S, S) in [-1, 1] -> the code maps of every level, (B, H, W) long each, top level first."""
        features = self.encoder(x)
        if self.top is None:
            return (nearest_code_map(self.quantizer, features),)
        top = nearest_code_map(self.top.quantizer, self.top.encoder(features))
        top_q = self.top.quantizer.embed_code(top).permute(0, 3, 1, 2).to(features.dtype)
        return top, nearest_code_map(self.quantizer, self.top.bottom_input(features, top_q))

    @torch.no_grad()
    def decode_indices(self, codes) -> torch.Tensor:
        """Code map (B, H, W), or the tuple (top, bottom) with two levels -> images (B, 3, S, S) in [-1, 1]."""
        return likelihood.to_image(self.decode_codes(codes), self.cfg.recon_loss).float()

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, codes) -> torch.Tensor:
        """log p(x | z) of images x (B, 3, S, S) in [-1, 1] given their code maps z, in nats: (B,).

        Only a categorical decoder (`--recon-loss categorical`) defines it; others raise a ValueError.
        """
        if not likelihood.models_likelihood(self.cfg.recon_loss):
            raise ValueError(f"a decoder trained with --recon-loss {self.cfg.recon_loss} gives no likelihood "
                             "(train with --recon-loss categorical)")
        return likelihood.log_likelihood(self.decode_codes(codes), x)

    def decode_codes(self, codes) -> torch.Tensor:
        """Code maps (one, or a tuple top first) -> the decoder's raw output (an image or logits)."""
        codes = check_levels(codes, self.levels)
        quantized = [q.embed_code(c.long()).permute(0, 3, 1, 2).contiguous() for q, c in zip(self.quantizers, codes)]
        return self.decode_quantized(quantized)

    def decode_quantized(self, quantized) -> torch.Tensor:
        """Quantized code vectors of each level (B, D, H, W), top level first -> the decoder's raw output."""
        if self.top is None:
            return self.decoder(quantized[0])
        top, bottom = quantized
        return self.decoder(torch.cat([bottom, self.top.upsample(top)], dim=1))


def check_levels(codes, levels: int) -> tuple:
    """`codes` as a tuple of one map per level, or a ValueError that says which form this model takes."""
    if levels == 1:
        if isinstance(codes, (tuple, list)):
            if len(codes) != 1:
                raise ValueError("this VQ-VAE has one level: pass one (B, H, W) code map")
            return tuple(codes)
        return (codes,)
    if not isinstance(codes, (tuple, list)) or len(codes) != levels:
        raise ValueError(f"this VQ-VAE has {levels} levels: pass a tuple of {levels} code maps, top level first")
    return tuple(codes)


def nearest_code_map(quantizer, z: torch.Tensor) -> torch.Tensor:
    """Encoder output (B, D, H, W) -> nearest code indices (B, H, W) (`nearest_codes` computes in full fp32)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return quantizer.nearest_codes(flat).view(z.shape[0], z.shape[2], z.shape[3])


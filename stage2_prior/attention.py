"""Causal multi-head self-attention for the gated PixelCNN (PixelSNAIL, Chen et al. 2017, arXiv:1712.09763).

A block reads the horizontal stack's features h (B, C, H, W), which at position p depend only on the
codes before p, and adds its output to them. Its keys and values at p come from h at p and from the
embedded code one step earlier in raster order (zeros at the first position): neither holds the code
at p, so a query may attend over the positions up to and including its own, and through the shifted
codes it sees every earlier code directly, whatever the grid and the convolutions' reach. A learned
2-D positional embedding is added to h before the projections.

`KeyValueCache` keeps the keys and values of the positions computed so far, so that the cached sampler
(`stage2_prior.sampling`) computes one query per position.
No I/O here: tensors in, tensors out.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage2_prior.layers import Dropout


def attention_after(layers: int, blocks: int) -> tuple:
    """The 0-based indices of the gated layers the blocks follow: after every layers / (blocks + 1)-th one."""
    return tuple(-(-(b + 1) * layers // (blocks + 1)) - 1 for b in range(blocks))


def shifted_codes(x: torch.Tensor) -> torch.Tensor:
    """Embedded codes (B, C, H, W) -> at each position the code one step earlier in raster order: (B, C, H*W)."""
    return F.pad(x.flatten(2), (1, 0))[..., :-1]


class CausalAttention(nn.Module):
    def __init__(self, channels: int, attention_channels: int, heads: int, grid: tuple, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.position = nn.Parameter(0.02 * torch.randn(channels, *grid))
        self.query = nn.Linear(channels, attention_channels)
        self.key_value = nn.Linear(2 * channels, 2 * attention_channels)  # from [features, previous code]
        self.out = nn.Linear(attention_channels, channels)
        self.dropout = Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, A) -> (B, heads, N, A / heads)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, h: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """h (B, C, H, W) and `shifted_codes` (B, C, H*W) -> h plus what each position reads from those up to it."""
        features = (h.flatten(2) + self.position.flatten(1)).transpose(1, 2)  # (B, N, C)
        keys, values = self.key_value(torch.cat([features, previous.transpose(1, 2)], -1)).chunk(2, -1)
        read = F.scaled_dot_product_attention(self._heads(self.query(features)), self._heads(keys),
                                              self._heads(values), is_causal=True)  # (B, heads, N, d)
        out = self.out(read.transpose(1, 2).flatten(2)).transpose(1, 2)  # (B, C, N)
        return h + self.dropout(out.reshape(h.shape))


class KeyValueCache:
    """One block's keys and values at the positions computed so far: (n, heads, H*W, d) each."""

    def __init__(self, block: CausalAttention, n: int, like: torch.Tensor):
        self.block = block
        width = block.query.out_features // block.heads
        positions = block.position[0].numel()
        self.keys = like.new_zeros(n, block.heads, positions, width)
        self.values = like.new_zeros(n, block.heads, positions, width)

    def step(self, h: torch.Tensor, previous: torch.Tensor, p: int) -> torch.Tensor:
        """h (n, C) at raster position p and the embedded code before it (n, C) -> h plus the block's output."""
        block = self.block
        features = h + block.position.flatten(1)[:, p]
        keys, values = block.key_value(torch.cat([features, previous], -1)).chunk(2, -1)
        self.keys[:, :, p] = keys.unflatten(-1, (block.heads, -1))
        self.values[:, :, p] = values.unflatten(-1, (block.heads, -1))
        query = block.query(features).unflatten(-1, (block.heads, 1, -1))  # (n, heads, 1, d)
        read = F.scaled_dot_product_attention(query, self.keys[:, :, : p + 1], self.values[:, :, : p + 1])
        return h + block.out(read.flatten(1))

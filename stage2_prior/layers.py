"""The building blocks of the gated PixelCNN: the gate, one gated layer, the top-code conditioner, the draw.

Dropout acts on the gated outputs of both stacks while training; it is elementwise, so it cannot
break the causality invariant described in `stage2_prior.model`. A layer's bias (class embedding,
and for a conditioned prior a 1x1 projection of the conditioning map) is added inside both gates.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Dropout(nn.Module):
    """Dropout; on CPU its mask takes 15 random bits per element from 64-bit draws.

    On CPU torch's own dropout draws one 32-bit number per element (`bernoulli_`), which took a third
    of the prior's training step; four elements per draw make the mask about 5x cheaper. The keep
    probability is rounded to a multiple of 1/32768.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
        bits = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF  # uniform in [0, 32768)
        keep = bits < round((1 - self.p) * 32768)
        return (x * keep).mul_(1 / (1 - self.p))  # a Python scale: bf16 rounds the product once, not 1/(1-p) too


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int, dropout: float = 0.0,
                 conditioned: bool = False):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.first = first
        self.half = kernel_size // 2
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.class_bias = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        self.map_bias = nn.Conv2d(channels, 2 * channels, 1) if conditioned else None

    def bias(self, labels: torch.Tensor | None, condition: torch.Tensor | None) -> torch.Tensor | None:
        """What this layer adds inside its gates: (B, 2C, 1, 1), (B, 2C, H, W) or None."""
        bias = None if self.class_bias is None else self.class_bias(labels)[:, :, None, None]
        if self.map_bias is not None:
            projected = self.map_bias(condition)
            bias = projected if bias is None else bias + projected
        return bias

    def forward(self, v: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None):
        height, width = v.shape[-2:]
        shift = 1 if self.first else 0
        # Vertical: output row i covers input rows i-half-shift .. i-shift (all columns within half).
        v_pre = self.vertical(F.pad(v, (self.half, self.half, self.half + shift, 0)))[:, :, :height]
        # Horizontal: output (i, j) covers input (i, j-half-shift .. j-shift).
        h_pre = self.horizontal(F.pad(h, (self.half + shift, 0, 0, 0)))[..., :width]
        h_pre = h_pre + self.vertical_to_horizontal(v_pre)
        if bias is not None:
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_out = self.horizontal_out(self.dropout(gate(h_pre)))
        if not self.first:  # the first layer's input is the current code itself: no residual
            h_out = h_out + h
        return self.dropout(gate(v_pre)), h_out


class MapConditioner(nn.Module):
    """Codes of a conditioning map (B, Hc, Wc) -> features (B, C, H, W) on the prior's grid.

    The gated PixelCNN paper's spatial conditioning (arXiv:1606.05328): a small network over the whole
    conditioning map (every one of its codes may be seen), resized to the grid by nearest neighbours.
    """

    def __init__(self, codebook_size: int, channels: int, grid: tuple):
        super().__init__()
        self.grid = tuple(grid)
        self.embedding = nn.Embedding(codebook_size, channels)
        self.before = nn.Conv2d(channels, channels, 3, padding=1)
        self.after = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.before(self.embedding(codes).permute(0, 3, 1, 2)))
        return F.relu(self.after(F.interpolate(x, size=self.grid, mode="nearest")))


def draw(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """One index per row of `logits` (B, K): temperature 0 is greedy; top_k keeps the k most likely."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=1)
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

"""Gated PixelCNN over code maps (van den Oord et al. 2016, arXiv:1606.05328).

A vertical stack sees only the rows above the current position and a horizontal stack only the
positions to its left in the current row, so together they cover everything before it in raster
order with no blind spot. Causality comes from padding and shifting rather than masking weights:
the first layer shifts both stacks one step further (it must not see the current code, "mask A").
Invariant after every layer: vertical features at row i depend on rows < i only; horizontal
features at (i, j) depend on positions before (i, j) only. Dropout acts on the gated outputs of both
stacks while training; it is elementwise, so it cannot break the invariant.

No I/O here: tensors in, tensors and losses out.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage2_prior.config import PriorConfig


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.first = first
        self.half = kernel_size // 2
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.class_bias = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None):
        height, width = v.shape[-2:]
        shift = 1 if self.first else 0
        # Vertical: output row i covers input rows i-half-shift .. i-shift (all columns within half).
        v_pre = self.vertical(F.pad(v, (self.half, self.half, self.half + shift, 0)))[:, :, :height]
        # Horizontal: output (i, j) covers input (i, j-half-shift .. j-shift).
        h_pre = self.horizontal(F.pad(h, (self.half + shift, 0, 0, 0)))[..., :width]
        h_pre = h_pre + self.vertical_to_horizontal(v_pre)
        if self.class_bias is not None:
            bias = self.class_bias(labels)[:, :, None, None]  # (B, 2C, 1, 1)
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_out = self.horizontal_out(self.dropout(gate(h_pre)))
        if not self.first:  # the first layer's input is the current code itself: no residual
            h_out = h_out + h
        return self.dropout(gate(v_pre)), h_out


class GatedPixelCNN(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_channels
        num_classes = cfg.num_classes if cfg.class_conditional else 0
        self.embedding = nn.Embedding(cfg.codebook_size, c)
        self.layers = nn.ModuleList(
            GatedLayer(c, cfg.kernel_size, first=i == 0, num_classes=num_classes, dropout=cfg.dropout)
            for i in range(cfg.layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, cfg.codebook_size, 1))

    def _check_labels(self, labels, batch: int, device) -> torch.Tensor | None:
        """Labels as a (B,) long tensor for a class-conditional prior; None otherwise."""
        if not self.cfg.class_conditional:
            if labels is not None:
                raise ValueError("this prior is not class-conditional: pass labels=None")
            return None
        if labels is None:
            raise ValueError(f"this prior is class-conditional: pass labels (ints in [0, {self.cfg.num_classes}))")
        labels = torch.as_tensor(labels, device=device).long()
        if labels.dim() == 0:  # one class for the whole batch
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"labels must be an int or a ({batch},) tensor, got shape {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= self.cfg.num_classes:
            raise ValueError(f"labels must be in [0, {self.cfg.num_classes})")
        return labels

    def logits_from_embedded(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """Embedded codes (B, C, H, W) -> logits (B, K, H, W); exposed so tests can take gradients."""
        labels = self._check_labels(labels, x.shape[0], x.device)
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Codes (B, H, W) long -> logits (B, K, H, W)."""
        return self.logits_from_embedded(self.embedding(codes).permute(0, 3, 1, 2), labels)

    def forward(self, codes: torch.Tensor, labels=None):
        """Codes (B, H, W) long -> (logits (B, K, H, W), mean cross-entropy in nats)."""
        logits = self.logits(codes, labels)
        return logits, F.cross_entropy(logits.float(), codes)

    def log_prob(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Log-likelihood of each code map (B, H, W), in nats: (B,)."""
        logits = self.logits(codes.long(), labels)
        return -F.cross_entropy(logits.float(), codes.long(), reduction="none").sum(dim=(1, 2))

    @torch.no_grad()
    def sample(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, naive: bool = False) -> torch.Tensor:
        """Draw `n` code maps (n, H, W) in raster order.

        By default only what a new code can change is recomputed (`stage2_prior.sampling`); `naive=True`
        runs one full forward pass per position instead (the reference the fast path is tested against).
        Dropout is off while sampling, whatever mode the model is in.
        """
        was_training = self.training
        self.eval()
        try:
            return self._sample(n, labels, temperature, top_k, generator, naive)
        finally:
            self.train(was_training)

    def _sample(self, n, labels, temperature, top_k, generator, naive) -> torch.Tensor:
        device = self.embedding.weight.device
        labels = self._check_labels(labels, n, device)
        if not naive:
            from stage2_prior.sampling import sample_cached

            return sample_cached(self, n, labels, temperature, top_k, generator)
        codes = torch.zeros(n, self.cfg.grid_height, self.cfg.grid_width, dtype=torch.long, device=device)
        for i in range(self.cfg.grid_height):
            for j in range(self.cfg.grid_width):
                logits = self.logits(codes, labels)
                codes[:, i, j] = draw(logits[:, :, i, j], temperature, top_k, generator)
        return codes


def draw(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """One index per row of `logits` (B, K): temperature 0 is greedy; top_k keeps the k most likely."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

"""Cached PixelCNN sampling: reuse the work of earlier positions (cf. arXiv:1704.06001).

The naive sampler runs the whole network over the whole grid for each of the H*W positions. Here,
for each row, the vertical stack of every layer is computed once, for that row only (it depends on
the rows above, which are final); then, for each position of the row, only the horizontal stack at
that position is computed, from per-layer row buffers of the positions to its left. In exact
arithmetic the logits are those of the full forward pass, so with the same generator the draws are
the same code for code (float32 rounding differs in the last bits, which can only change a draw
that falls within about 1e-6 of a probability boundary; the tests compare in float64).

Attention blocks (`stage2_prior.attention`) keep the keys and values of every position computed so far
(a KV cache), so each position adds one query per block.

Completion starts from a partly filled map: the kept rows are never drawn, they only pass through the
vertical stack (the horizontal stack of a row feeds nothing below it), and drawing begins after them.
With attention the horizontal stack does feed later rows, through the cached keys and values: kept
rows then go through it too, position by position, with their own codes instead of draws.

Classifier-free guidance (Ho & Salimans, arXiv:2207.12598) runs 2n rows in one batch, the n given
labels then n null labels, and draws each code from uncond + s * (cond - uncond) (`guide`); the drawn
code is written to both halves. Scale 1 is plain conditional sampling and runs n rows only.

Per position the work is one small matrix product, a gate and a 1x1 product per layer (and one query per
attention block), then the head and the draw: the buffers a position reads are views (channels-last rows),
the terms that are constant along a row are added once per row, and a row's codes enter the vertical
stack's buffer once, when the row is complete.
"""

import torch
import torch.nn.functional as F

from stage2_prior.attention import KeyValueCache
from stage2_prior.layers import draw, gate


class _LayerCache:
    """Zero-padded buffers of one layer's inputs: all rows for the vertical stack, one row for the horizontal;
    and the keys and values of the attention block that follows the layer, if one does."""

    def __init__(self, layer, n: int, channels: int, height: int, width: int, like: torch.Tensor, block=None):
        self.layer = layer
        self.attention = None if block is None else KeyValueCache(block, n, like)
        self.half = layer.half
        self.shift = 1 if layer.first else 0
        self.top = self.half + 1  # rows of zero padding above the grid (enough for the shifted first layer)
        self.vertical_in = like.new_zeros(n, channels, height + self.top, width + 2 * self.half)
        self.horizontal_in = like.new_zeros(n, width + self.half + 1, channels)  # channels-last: windows are views
        # The horizontal kernel as a matrix over a window's (half + 1) positions x C channels: (C * (half + 1), 2C).
        self.h_weight_t = layer.horizontal.weight[:, :, 0].permute(0, 2, 1).flatten(1).t()

    def vertical_row(self, i: int) -> torch.Tensor:
        """Pre-activation vertical features of row i: (n, 2C, 1, W)."""
        first = i + self.top - self.half - self.shift
        window = self.vertical_in[:, :, first : first + self.half + 1]  # rows i-half-shift .. i-shift
        return self.layer.vertical(window)

    def write_vertical_input(self, i: int, row: torch.Tensor) -> None:
        """Store this layer's vertical input for row i: (n, C, W)."""
        self.vertical_in[:, :, i + self.top, self.half : self.half + row.shape[-1]] = row

    def horizontal_at(self, j: int) -> torch.Tensor:
        """Horizontal convolution at column j of the current row, without its bias (`_vertical_pass` folds it in
        once per row): (n, 2C)."""
        first = j + 1 - self.shift
        window = self.horizontal_in[:, first : first + self.half + 1]  # columns j-half-shift .. j-shift: a view
        return window.flatten(1) @ self.h_weight_t

    def write_horizontal_input(self, j: int, value: torch.Tensor) -> None:
        self.horizontal_in[:, j + self.half + 1] = value

    def start_row(self) -> None:
        self.horizontal_in.zero_()


def doubled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` (n, ...) as the rows of a guided batch (2n, ...): twice over, unless the scale is 1 (no guidance)."""
    return x if scale == 1 else torch.cat([x, x])


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided logits (n, K) of a batch of conditional then unconditional rows (2n, K): uncond + s * (cond - uncond)."""
    if scale == 1:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


def _linear_1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (n, C_in) features at one position."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


@torch.no_grad()
def sample_cached(model, n: int, biases: list, temperature: float, top_k, generator, given=None,
                  keep_rows: int = 0, scale: float = 1.0, on_row=None) -> torch.Tensor:
    """Draw n code maps (n, H, W) from a GatedPixelCNN given each layer's gate bias (`model.layer_biases`).

    With `given` (n, H, W), its first `keep_rows` rows are kept and only the rest is drawn (completion).
    With a guidance `scale` other than 1 the biases are those of 2n rows, conditional then unconditional.
    Same draws as `model.sample(..., naive=True)` (or `model.complete(..., naive=True)`) for the same generator.
    `on_row(i, codes)`, when given, is called after each row i is final, with the map being filled (n, H, W).
    """
    cfg = model.cfg
    height, width, channels = cfg.grid_height, cfg.grid_width, cfg.hidden_channels
    weight = model.embedding.weight
    rows = n if scale == 1 else 2 * n
    both = torch.zeros(rows, height, width, dtype=torch.long, device=weight.device)  # each half holds the codes
    halves, codes = both.view(rows // n, n, height, width), both[:n]
    if given is not None:
        halves[:, :, :keep_rows] = given[:, :keep_rows]
    blocks = dict(zip(model.attention_after, model.attention))
    caches = [_LayerCache(layer, rows, channels, height, width, weight, blocks.get(l))
              for l, layer in enumerate(model.layers)]
    previous = weight.new_zeros(rows, channels)  # the embedded code before the current position
    # Every bias as (rows, 2C, H, W): class biases and zeros are expanded views (adding exact zeros changes nothing).
    biases = [weight.new_zeros(1, 2 * channels, 1, 1) if b is None else b for b in biases]
    biases = [b.expand(rows, 2 * channels, height, width) for b in biases]
    for i in range(height):
        to_horizontal = _vertical_pass(caches, biases, i)
        if i >= keep_rows or blocks:  # a kept row feeds the rows below through the vertical stack only
            for j in range(width):
                h = _horizontal_stack(model, caches, to_horizontal, previous, i, j)
                if i >= keep_rows:  # a kept code is not drawn (no logits), but its keys and values are cached
                    halves[:, :, i, j] = draw(guide(_head(model, h), scale), temperature, top_k, generator)
                previous = F.embedding(both[:, i, j], weight)  # (rows, C)
                caches[0].write_horizontal_input(j, previous)
        caches[0].write_vertical_input(i, F.embedding(both[:, i], weight).transpose(1, 2))  # (rows, C, W)
        if on_row is not None:
            on_row(i, codes)
    return codes.clone()


def _vertical_pass(caches: list, biases: list, i: int) -> list:
    """Every layer's vertical stack for row i: feeds the next layer's vertical input and returns, per layer,
    what the horizontal stack adds to its convolution along the row, folded once for the whole row: the vertical
    stack's contribution, the gate bias and the horizontal convolution's own bias, (n, W, 2C)."""
    to_horizontal = []
    for l, cache in enumerate(caches):
        v_pre = cache.vertical_row(i)  # (n, 2C, 1, W)
        row = cache.layer.vertical_to_horizontal(v_pre)[:, :, 0] + biases[l][:, :, i]  # (n, 2C, W)
        to_horizontal.append((row + cache.layer.horizontal.bias[:, None]).transpose(1, 2).contiguous())
        if l + 1 < len(caches):
            caches[l + 1].write_vertical_input(i, gate(v_pre + biases[l][:, :, i : i + 1])[:, :, 0])
        cache.start_row()
    return to_horizontal


def _horizontal_stack(model, caches: list, to_horizontal: list, previous: torch.Tensor, i: int,
                      j: int) -> torch.Tensor:
    """Every layer's horizontal stack (and attention block) at (i, j): the features the head reads, (n, C).

    `previous` (n, C) is the embedded code before (i, j) in raster order, which attention blocks read.
    """
    h = None
    for l, cache in enumerate(caches):
        h_pre = cache.horizontal_at(j) + to_horizontal[l][:, j]
        h_out = _linear_1x1(cache.layer.horizontal_out, gate(h_pre))
        h = h_out if cache.layer.first else h_out + h
        if cache.attention is not None:
            h = cache.attention.step(h, previous, i * model.cfg.grid_width + j)
        if l + 1 < len(caches):
            caches[l + 1].write_horizontal_input(j, h)
    return h


def _head(model, h: torch.Tensor) -> torch.Tensor:
    """The head at one position: features (n, C) -> logits (n, K)."""
    head_hidden, head_out = model.head[1], model.head[3]
    return _linear_1x1(head_out, F.relu(_linear_1x1(head_hidden, F.relu(h))))


"""Gated PixelCNN over code maps (van den Oord et al. 2016, arXiv:1606.05328).

A vertical stack sees only the rows above the current position and a horizontal stack only the
positions to its left in the current row, so together they leave no blind spot inside their reach.
That reach is finite (`reach`): with h = kernel_size // 2, a position's logits see h * layers + 1
rows up, h * layers columns either side on those rows and h * layers + 1 positions to its left in
its own row. That is every earlier code of an 8x8 grid with every size preset (kernel 3); on larger
grids it is not, unless layers are added (`layers_to_see_everything`: 15 at 16x16, 31 at 32x32 with
kernel 3); `stage2_prior.train` logs which holds. Causality comes from padding and shifting rather
than masking weights: the first layer shifts both stacks one step further (it must not see the
current code, "mask A").
With `attention_layers` > 0, causal self-attention blocks (`stage2_prior.attention`, PixelSNAIL) follow
evenly spaced gated layers and add to the horizontal stack what each position reads from the features
and codes before it: then every position sees every earlier code, at any grid size.
Invariant after every layer: vertical features at row i depend on rows < i only; horizontal
features at (i, j) depend on positions before (i, j) only. Dropout acts on the gated outputs of both
stacks while training; it is elementwise, so it cannot break the invariant. An attention block keeps it:
its keys and values at a position hold neither that position's code nor a later one.

A prior can be conditioned on a class label and, as the bottom prior of a two-level model is, on a
whole map of codes (`cond`, the top level): both enter every gate as biases (`stage2_prior.layers`),
so the bottom prior sees every top code and only the earlier bottom codes.
With `label_dropout` > 0 a class-conditional prior is also trained, that often, on a "no class" label
(one more row of each class embedding, index num_classes), so it can sample with classifier-free
guidance (`stage2_prior.sampling`).

No I/O here: tensors in, tensors and losses out.
"""

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from stage2_prior.attention import CausalAttention, attention_after, shifted_codes
from stage2_prior.config import PriorConfig
from stage2_prior.layers import GatedLayer, MapConditioner, draw
from stage2_prior.sampling import doubled, guide, sample_cached


class Reach(NamedTuple):
    """How far back a position's logits see, in codes (a rectangle of the rows above, and a run of its own row)."""

    rows_up: int  # rows above the position's own
    left: int  # columns to its left, on those rows
    right: int  # columns to its right, on those rows
    own_row: int  # positions to its left in its own row


def reach(cfg: PriorConfig) -> Reach:
    """Each layer widens both stacks by kernel_size // 2 codes; the first one's shift adds a row and a column.

    With attention every earlier code is seen: the reach is then the whole grid.
    """
    if cfg.attention_layers:
        return Reach(rows_up=cfg.grid_height - 1, left=cfg.grid_width - 1, right=cfg.grid_width - 1,
                     own_row=cfg.grid_width - 1)
    span = cfg.layers * (cfg.kernel_size // 2)
    return Reach(rows_up=span + 1, left=span, right=span, own_row=span + 1)


def sees_every_earlier_code(cfg: PriorConfig) -> bool:
    """Whether every position's logits depend on every code before it in raster order."""
    r, last_column = reach(cfg), cfg.grid_width - 1
    return r.rows_up >= cfg.grid_height - 1 and min(r.left, r.right, r.own_row) >= last_column


def layers_to_see_everything(kernel_size: int, grid_height: int, grid_width: int) -> int | None:
    """The fewest layers with which every position sees every earlier code; None if no number will (kernel 1)."""
    half = kernel_size // 2
    needed = max(grid_width - 1, grid_height - 2, 0)
    if half == 0:
        return 1 if needed == 0 else None
    return max(1, math.ceil(needed / half))


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN prior, optionally with attention; each position sees the earlier codes within `reach(cfg)`."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_channels
        num_classes = cfg.num_classes if cfg.class_conditional else 0
        # Only priors trained with label dropout get the null row, so older checkpoints load strictly.
        self.null_class = num_classes if num_classes and cfg.label_dropout > 0 else None
        class_rows = num_classes + (self.null_class is not None)
        self.embedding = nn.Embedding(cfg.codebook_size, c)
        conditioned = cfg.condition_codebook_size > 0
        self.layers = nn.ModuleList(
            GatedLayer(c, cfg.kernel_size, first=i == 0, num_classes=class_rows, dropout=cfg.dropout,
                       conditioned=conditioned)
            for i in range(cfg.layers)
        )
        grid = (cfg.grid_height, cfg.grid_width)
        self.attention_after = attention_after(cfg.layers, cfg.attention_layers)  # gated layers the blocks follow
        self.attention = nn.ModuleList(
            CausalAttention(c, cfg.attention_channels, cfg.attention_heads, grid, cfg.dropout)
            for _ in range(cfg.attention_layers)
        )
        self.conditioner = MapConditioner(cfg.condition_codebook_size, c, grid) if conditioned else None
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
        in_range = (labels >= 0).all() & (labels < self.cfg.num_classes).all()
        message = f"labels must be in [0, {self.cfg.num_classes})"
        if self.training:  # checked on the device: reading the answer back would make every step wait for it
            torch._assert_async(in_range, message)
        elif not in_range:
            raise ValueError(message)
        return labels

    def condition_features(self, cond, batch: int) -> torch.Tensor | None:
        """Conditioning-map codes (B, Hc, Wc) -> features on this prior's grid; None when not conditioned."""
        if self.conditioner is None:
            if cond is not None:
                raise ValueError("this prior is not conditioned on a code map: pass cond=None")
            return None
        if cond is None or cond.dim() != 3 or cond.shape[0] != batch:
            raise ValueError(f"this prior is conditioned on a map of codes: pass cond as a ({batch}, H, W) long tensor")
        return self.conditioner(cond.long())

    def _drop_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """While training with label dropout, each label becomes the null class with probability label_dropout."""
        if labels is None or self.null_class is None or not self.training:
            return labels
        dropped = torch.rand(labels.shape, device=labels.device) < self.cfg.label_dropout  # global RNG: resumable
        return labels.masked_fill(dropped, self.null_class)

    def layer_biases(self, labels, cond, batch: int, device, guided: bool = False, unconditional: bool = False) -> list:
        """What each layer adds inside its gates, from the class labels and the conditioning map.

        `guided`: for 2 * batch rows, the given labels then as many null labels (the unconditional half).
        `unconditional`: the null label in place of every given one (guidance scale 0).
        """
        labels = self._check_labels(labels, batch, device)
        features = self.condition_features(cond, batch)
        if unconditional:
            labels = torch.full_like(labels, self.null_class)
        elif guided:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
            features = None if features is None else torch.cat([features, features])
        labels = self._drop_labels(labels)  # once: every layer sees the same label
        return [layer.bias(labels, features) for layer in self.layers]

    def guidance_scale(self, guidance=None) -> float:
        """The classifier-free guidance scale to sample with: `guidance`, or when None the config's default.

        ValueError when `guidance` is given to a prior without a null class (not class-conditional, or trained
        without label dropout).
        """
        if guidance is not None and self.null_class is None:
            why = "was trained without label dropout" if self.cfg.class_conditional else "is not class-conditional"
            raise ValueError(f"guidance needs a class-conditional prior trained with label dropout; this one {why}")
        return float(self.cfg.guidance if guidance is None else guidance)

    def _run_layers(self, x: torch.Tensor, biases: list) -> torch.Tensor:
        """Embedded codes (B, C, H, W) and each layer's gate bias -> logits (B, K, H, W)."""
        blocks = dict(zip(self.attention_after, self.attention))
        previous = shifted_codes(x) if blocks else None
        v = h = x
        for l, (layer, bias) in enumerate(zip(self.layers, biases)):
            v, h = layer(v, h, bias)
            if l in blocks:
                h = blocks[l](h, previous)
        return self.head(h)

    def _logits_from_embedded(self, x: torch.Tensor, labels=None, cond=None) -> torch.Tensor:
        """Embedded codes (B, C, H, W) -> logits (B, K, H, W) (the causality tests take gradients here)."""
        return self._run_layers(x, self.layer_biases(labels, cond, x.shape[0], x.device))

    def logits(self, codes: torch.Tensor, labels=None, cond=None) -> torch.Tensor:
        """Codes (B, H, W) long -> logits (B, K, H, W)."""
        return self._logits_from_embedded(self.embedding(codes).permute(0, 3, 1, 2), labels, cond)

    def forward(self, codes: torch.Tensor, labels=None, cond=None):
        """Codes (B, H, W) long -> (logits (B, K, H, W), mean cross-entropy in nats)."""
        logits = self.logits(codes, labels, cond)
        return logits, F.cross_entropy(logits.float(), codes)

    def log_prob(self, codes: torch.Tensor, labels=None, cond=None) -> torch.Tensor:
        """Log-likelihood of each code map (B, H, W), in nats: (B,)."""
        logits = self.logits(codes.long(), labels, cond)
        return -F.cross_entropy(logits.float(), codes.long(), reduction="none").sum(dim=(1, 2))

    # The project's own code passes code maps as a tuple of levels (`foundation.levels`); a two-level
    # prior has the same three methods, so callers never ask how many levels a prior has.
    def level_log_probs(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """`log_prob` as (B, 1): one level, in the form a two-level prior gives (B, 2)."""
        return self.log_prob(codes, labels)[:, None]

    def sample_levels(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                      generator: torch.Generator | None = None, naive: bool = False, guidance=None,
                      on_row=None) -> tuple:
        """`sample` as a 1-tuple of levels; `on_row(level, i, codes)` as `sample`'s, with level 0."""
        return (self.sample(n, labels, temperature, top_k, generator, naive, guidance=guidance,
                            on_row=level_callback(0, on_row)),)

    def complete_levels(self, levels: tuple, keep_rows: int, labels=None, temperature: float = 1.0,
                        top_k: int | None = None, generator: torch.Generator | None = None, naive: bool = False,
                        guidance=None, on_row=None) -> tuple:
        """`complete` of a 1-tuple of levels, as a 1-tuple; `on_row(level, i, codes)` as in `sample_levels`."""
        (codes,) = levels
        return (self.complete(codes, keep_rows, labels, temperature, top_k, generator, naive, guidance=guidance,
                              on_row=level_callback(0, on_row)),)

    @torch.no_grad()
    def sample(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, naive: bool = False, cond=None, guidance=None,
               on_row=None) -> torch.Tensor:
        """Draw `n` code maps (n, H, W) in raster order.

        `on_row(i, codes)`, when given, is called as soon as row i is final, with the map being filled (rows
        after i are still zeros); it may raise to stop the draw (a closed page, say).

        By default only what a new code can change is recomputed (`stage2_prior.sampling`); `naive=True`
        runs one full forward pass per position instead (the reference the fast path is tested against).
        Dropout is off while sampling, whatever mode the model is in.
        `guidance` s (None: `cfg.guidance`) draws from uncond + s * (cond - uncond) logits, then applies
        temperature and top-k; s = 1 is plain conditional sampling, s = 0 unconditional. Any other value
        than None needs a prior trained with label dropout (ValueError otherwise).
        """
        return self._draw(n, None, 0, labels, temperature, top_k, generator, naive, cond, guidance, on_row)

    @torch.no_grad()
    def complete(self, codes: torch.Tensor, keep_rows: int, labels=None, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None, naive: bool = False,
                 cond=None, guidance=None, on_row=None) -> torch.Tensor:
        """Keep the first `keep_rows` rows of each map `codes` (n, H, W) and draw the rest in raster order.

        The draws are those `sample` would make at the same positions given the same rows (cached or naive alike).
        """
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (self.cfg.grid_height, self.cfg.grid_width):
            raise ValueError(f"codes must be (n, {self.cfg.grid_height}, {self.cfg.grid_width}), got {tuple(codes.shape)}")
        if not 0 <= keep_rows <= self.cfg.grid_height:
            raise ValueError(f"keep_rows must be in [0, {self.cfg.grid_height}], got {keep_rows}")
        return self._draw(codes.shape[0], codes.long(), keep_rows, labels, temperature, top_k, generator, naive, cond,
                          guidance, on_row)

    def _draw(self, n, given, keep_rows, labels, temperature, top_k, generator, naive, cond, guidance,
              on_row=None) -> torch.Tensor:
        scale = self.guidance_scale(guidance)
        unconditional = scale == 0 and self.null_class is not None
        if unconditional:  # uncond + 0 * (cond - uncond) is the null label's logits: n rows, not 2n
            scale = 1.0
        was_training = self.training
        self.eval()
        try:
            biases = self.layer_biases(labels, cond, n, self.embedding.weight.device, guided=scale != 1,
                                       unconditional=unconditional)
            if not naive:
                return sample_cached(self, n, biases, temperature, top_k, generator, given, keep_rows, scale, on_row)
            return self._draw_naive(n, given, keep_rows, biases, scale, temperature, top_k, generator, on_row)
        finally:
            self.train(was_training)

    def _draw_naive(self, n, given, keep_rows, biases, scale, temperature, top_k, generator, on_row) -> torch.Tensor:
        codes = torch.zeros(n, self.cfg.grid_height, self.cfg.grid_width, dtype=torch.long,
                            device=self.embedding.weight.device)
        if given is not None:
            codes[:, :keep_rows] = given[:, :keep_rows]
        for i in range(keep_rows if on_row is not None else 0):  # kept rows are final at once
            on_row(i, codes)
        for i in range(keep_rows, self.cfg.grid_height):
            for j in range(self.cfg.grid_width):
                embedded = self.embedding(doubled(codes, scale)).permute(0, 3, 1, 2)
                logits = guide(self._run_layers(embedded, biases)[:, :, i, j], scale)
                codes[:, i, j] = draw(logits, temperature, top_k, generator)
            if on_row is not None:
                on_row(i, codes)
        return codes


def level_callback(level: int, on_row):
    """A one-level `on_row(i, codes)` that calls `on_row(level, i, codes)`; None stays None."""
    return None if on_row is None else lambda i, codes: on_row(level, i, codes)

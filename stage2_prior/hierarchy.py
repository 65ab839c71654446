"""Priors over the codes of a two-level VQ-VAE: a top prior, and a bottom prior conditioned on the top codes.

Both are gated PixelCNNs, trained together (one optimizer, the sum of their losses) and saved in one
checkpoint. The top prior may be class-conditional; the bottom prior sees every top code (through the
map conditioner inside each gate) and the earlier bottom codes only. Code maps come as a tuple
(top, bottom), the form `VQVAE.encode` returns for two levels; `forward` and `level_log_probs` take
the two maps as arguments, so every prior is called as `prior(*levels, labels=...)`.

No I/O here: tensors in, tensors and losses out.
"""

import dataclasses

import torch
import torch.nn as nn

from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN, level_callback


def level_configs(cfg: PriorConfig) -> tuple:
    """(top prior's config, bottom prior's config) of a two-level prior's config."""
    top = dataclasses.replace(cfg, levels=1, codebook_size=cfg.top_codebook_size, grid_height=cfg.top_grid_height,
                              grid_width=cfg.top_grid_width)
    bottom = dataclasses.replace(cfg, levels=1, class_conditional=False, condition_codebook_size=cfg.top_codebook_size,
                                 guidance=1.0)  # guidance steers the top map only
    return top, bottom


class HierarchicalPrior(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        top_cfg, bottom_cfg = level_configs(cfg)
        self.top = GatedPixelCNN(top_cfg)
        self.bottom = GatedPixelCNN(bottom_cfg)

    @staticmethod
    def _split(codes) -> tuple:
        if not isinstance(codes, (tuple, list)) or len(codes) != 2:
            raise ValueError("a two-level prior takes a tuple of code maps (top, bottom)")
        return codes[0].long(), codes[1].long()

    def forward(self, top: torch.Tensor, bottom: torch.Tensor, labels=None):
        """Top and bottom maps -> ((top logits, bottom logits), mean cross-entropy in nats over all codes of both levels)."""
        top_logits, top_loss = self.top(top.long(), labels)
        bottom_logits, bottom_loss = self.bottom(bottom.long(), cond=top.long())
        sizes = top[0].numel(), bottom[0].numel()
        loss = (top_loss * sizes[0] + bottom_loss * sizes[1]) / sum(sizes)
        return (top_logits, bottom_logits), loss

    def level_log_probs(self, top: torch.Tensor, bottom: torch.Tensor, labels=None) -> torch.Tensor:
        """Log-likelihood of each level's map, in nats: (B, 2), top level first."""
        top, bottom = top.long(), bottom.long()
        return torch.stack([self.top.log_prob(top, labels), self.bottom.log_prob(bottom, cond=top)], dim=1)

    def guidance_scale(self, guidance=None) -> float:
        """The top prior's classifier-free guidance scale (`GatedPixelCNN.guidance_scale`)."""
        return self.top.guidance_scale(guidance)

    def log_prob(self, codes, labels=None) -> torch.Tensor:
        """Log-likelihood of each (top, bottom) pair, in nats summed over the levels: (B,)."""
        return self.level_log_probs(*self._split(codes), labels=labels).sum(dim=1)

    @torch.no_grad()
    def sample(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, naive: bool = False, guidance=None, on_row=None) -> tuple:
        """Draw n (top, bottom) pairs: the top map first, then the bottom map given it.

        `guidance` applies to the top prior, the class-conditional one (`GatedPixelCNN.sample`).
        `on_row(level, i, codes)` is called as each row of a level is final (level 0: top, 1: bottom).
        """
        top = self.top.sample(n, labels, temperature, top_k, generator, naive, guidance=guidance,
                              on_row=level_callback(0, on_row))
        return top, self.bottom.sample(n, None, temperature, top_k, generator, naive, cond=top,
                                       on_row=level_callback(1, on_row))

    @torch.no_grad()
    def complete(self, codes, keep_rows: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, naive: bool = False, guidance=None, on_row=None) -> tuple:
        """Keep the whole top map and the first `keep_rows` rows of the bottom map; draw the rest of the bottom.

        `labels` and `guidance` are accepted (and checked) for the same call as a one-level prior; they only
        condition the top map, which is kept.
        """
        self.guidance_scale(guidance)
        top, bottom = self._split(codes)
        return top, self.bottom.complete(bottom, keep_rows, None, temperature, top_k, generator, naive, cond=top,
                                         on_row=level_callback(1, on_row))

    sample_levels = sample  # the tuple form is this prior's own (`GatedPixelCNN` has the same three methods)
    complete_levels = complete


def build_prior(cfg: PriorConfig) -> nn.Module:
    """The prior a config describes: a GatedPixelCNN for one level of codes, a HierarchicalPrior for two."""
    return HierarchicalPrior(cfg) if cfg.levels == 2 else GatedPixelCNN(cfg)

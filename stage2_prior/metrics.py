"""Stage-2 figures on a split: the prior's negative log-likelihood in bits per code and per image.

Used by `stage2_prior.train` every epoch and by `tools.evaluate`. Figures are computed in fp32 unless
asked otherwise: the epoch chosen on validation and the reported test figure must not carry the bf16
rounding of the logits that training may use.
"""

import math

import torch

from foundation import distributed
from foundation.levels import count, level_names, take
from foundation.runtime import autocast, eval_batch

EVAL_BATCH = 128  # on a CPU (8x on a GPU): fp32 on a 2-core CPU, 723 maps/s, against 524 at 1024 (cache-sized)


def labels_or_none(model, labels: torch.Tensor):
    """The batch's labels for a class-conditional prior, None otherwise (`model` may be DDP-wrapped)."""
    return labels if distributed.unwrap(model).cfg.class_conditional else None


@torch.no_grad()
def split_bits(model, codes: tuple, labels, device, precision: str = "fp32") -> dict:
    """Negative log-likelihood of a split's code maps (a tuple of levels): bits_per_code (over every code of
    every level), bits_per_image, and with two levels top_bits_per_code and bottom_bits_per_code."""
    model.eval()
    nats = 0.0
    batch = eval_batch(device, EVAL_BATCH)
    for start in range(0, count(codes), batch):
        index = slice(start, start + batch)
        with autocast(device, precision):
            nats = nats - model.level_log_probs(*take(codes, index), labels=labels_or_none(model, labels[index])).sum(0)
    bits = nats.double() / count(codes) / math.log(2)  # (levels,) bits per image
    sizes = [level[0].numel() for level in codes]
    figures = {"bits_per_code": bits.sum().item() / sum(sizes), "bits_per_image": bits.sum().item()}
    if len(codes) > 1:
        figures.update({f"{name}_bits_per_code": b.item() / size
                        for name, b, size in zip(level_names(len(codes)), bits, sizes)})
    return figures

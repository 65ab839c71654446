"""Drawing code maps from a trained prior, batch by batch: shared by `tools.sample` and `tools.evaluate`."""

import torch
from tqdm import tqdm

from tools.common.cli import UserError
from tools.common.runtime import progress_disabled


def choose_labels(prior, label: int | None, n: int, device) -> torch.Tensor | None:
    """Labels for each sample: None for an unconditional prior, else `label` or every class in blocks."""
    cfg = prior.cfg
    if not cfg.class_conditional:
        if label is not None:
            raise UserError("--class needs a class-conditional prior (train it with --class-conditional)")
        return None
    if label is None:
        return torch.arange(n, device=device) * cfg.num_classes // n  # every class, in equal blocks
    if not 0 <= label < cfg.num_classes:
        raise UserError(f"--class must be in [0, {cfg.num_classes})")
    return torch.full((n,), label, device=device, dtype=torch.long)


def draw_samples(prior, labels, args, device):
    """(n, H, W) code maps (a tuple of them, top first, for two levels) drawn batch by batch from one seeded generator."""
    generator = torch.Generator(device=device).manual_seed(args.seed)
    chunks = []
    for start in tqdm(range(0, args.n, args.batch_size), desc="sampling", unit="batch", disable=progress_disabled()):
        count = min(args.batch_size, args.n - start)
        chunk_labels = None if labels is None else labels[start : start + count]
        chunks.append(prior.sample(count, chunk_labels, args.temperature, args.top_k, generator))
    if isinstance(chunks[0], tuple):
        return tuple(torch.cat(level) for level in zip(*chunks))
    return torch.cat(chunks)

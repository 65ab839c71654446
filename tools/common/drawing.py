"""Drawing code maps from a trained prior, batch by batch: shared by `tools.sample`, `tools.evaluate` and
`tools.choose_guidance`."""

import torch
from tqdm import tqdm

from foundation.cli import UserError
from foundation.images import to_uint8
from foundation.levels import concatenate, count, take
from foundation.runtime import progress_disabled
from stage1_vqvae.metrics import eval_batch_size


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


GUIDANCE_HELP = ("classifier-free guidance scale for a class-conditional prior trained with label dropout: "
                 "logits uncond + S * (cond - uncond); 1 = plain conditional, 0 = unconditional "
                 "(default: the prior's own: 5 in a new prior until make choose-guidance stores the one its validation images "
                 "prefer; 1 in older priors)")


def add_guidance_flag(parser) -> None:
    """--guidance S, the same on every command that draws codes."""
    parser.add_argument("--guidance", type=float, default=None, metavar="S", help=GUIDANCE_HELP)


def check_guidance(prior, guidance: float | None) -> None:
    """UserError when --guidance was given for a prior that cannot be guided."""
    try:
        prior.guidance_scale(guidance)
    except ValueError as err:
        raise UserError(f"--guidance: {err}") from None


def draw_samples(prior, labels, n: int, batch_size: int, seed: int, device, temperature: float = 1.0,
                 top_k: int | None = None, guidance: float | None = None) -> tuple:
    """`n` code maps (a tuple of levels, top first) drawn `batch_size` at a time from one generator seeded with `seed`.

    `guidance` is the classifier-free guidance scale (None: the prior's default; see `GatedPixelCNN.sample`).
    """
    check_guidance(prior, guidance)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="sampling", unit="batch", disable=progress_disabled()):
        count = min(batch_size, n - start)
        chunk_labels = None if labels is None else labels[start : start + count]
        chunks.append(prior.sample_levels(count, chunk_labels, temperature, top_k, generator, guidance=guidance))
    return concatenate(chunks)


@torch.no_grad()
def decode_uint8(vqvae, codes, device) -> torch.Tensor:
    """Code maps (a tuple of levels) -> uint8 images on the CPU, decoded batch by batch."""
    n, batch = count(codes), eval_batch_size(vqvae.cfg)
    return torch.cat([to_uint8(vqvae.decode_indices(take(codes, slice(s, s + batch)))).cpu() for s in range(0, n, batch)])


def draw_images(run, n: int, labels, seed: int, batch_size: int, device, guidance: float | None = None) -> tuple:
    """n samples of a finished run (codes, uint8 images), drawn as `draw_samples` does, decoded by its VQ-VAE."""
    codes = draw_samples(run.prior, labels, n, batch_size, seed, device, guidance=guidance)
    return codes, decode_uint8(run.vqvae, codes, device)

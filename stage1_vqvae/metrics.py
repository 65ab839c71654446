"""Stage-1 figures on a held-out split: MSE and PSNR on the [0, 1] scale, codes used, perplexity, decoder bits/dim.

Used by `stage1_vqvae.train` every epoch and by `tools.evaluate`; the formatting helpers give the
one-line summaries both print.
"""

import math

import torch

from foundation.images import to_uint8
from foundation.levels import LEVEL_NAMES, name_suffix
from foundation.runtime import autocast
from stage1_vqvae import likelihood
from stage1_vqvae.classifier import accuracy, predict
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import eval_batches
from stage1_vqvae.model import VQVAE
from stage1_vqvae.quantizer import count_usage

EVAL_BATCH = 512
LOGITS_PER_PIXEL_BATCH = 64  # a categorical decoder's 768 logits per pixel: 512 images would take gigabytes


def eval_batch_size(cfg: VQVAEConfig) -> int:
    """Images per evaluation batch: fewer for a categorical decoder, whose output is 256 times larger."""
    return LOGITS_PER_PIXEL_BATCH if likelihood.models_likelihood(cfg.recon_loss) else EVAL_BATCH


def psnr(mse_unit_range: float) -> float:
    """PSNR in dB for an MSE measured on the [0, 1] scale."""
    return 10 * math.log10(1.0 / max(mse_unit_range, 1e-12))


def psnr_of_each_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each image's PSNR in dB, its reconstruction rounded to uint8 first, as scripts that score folders of PNG
    files one by one compute it. Their mean exceeds the PSNR of the pooled MSE (by about 0.6 dB on CIFAR-10)."""
    mse = ((to_uint8(x_hat).float() - to_uint8(x).float()) / 255).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate(model: VQVAE, images: torch.Tensor, device, precision: str, judge: torch.nn.Module | None = None,
             labels: torch.Tensor | None = None) -> dict:
    """Held-out loss, MSE and PSNR on the [0, 1] scale, perplexity and codes used over the whole split, and
    psnr_per_image, the mean of each image's PSNR (see psnr_of_each_image).

    With two levels, codes_used_top/bottom and perplexity_top/bottom are given too; codes_used and
    perplexity are the bottom level's. A categorical decoder's "recon" is its mean negative log-likelihood
    in nats per sub-pixel, also given as decoder_bits_per_dim (-log2 p(x | z) per sub-pixel). With a
    classifier `judge` and the images' `labels`, "recognised" is the share of reconstructions (as uint8
    images) it puts in their image's class.
    """
    model.eval()
    totals = {"loss": 0.0, "recon": 0.0, "mse": 0.0, "psnr_per_image": 0.0}
    counts = [torch.zeros(k, device=device) for k in model.cfg.codebook_sizes]
    reconstructions = []
    for x in eval_batches(images, eval_batch_size(model.cfg), device):
        with autocast(device, precision):
            x_hat, loss, parts = model(x)
        if judge is not None:
            reconstructions.append(to_uint8(x_hat))
        n = x.shape[0]
        totals["loss"] += loss.item() * n
        totals["recon"] += parts["recon"].item() * n
        totals["mse"] += torch.mean(((x_hat.float() - x) / 2) ** 2).item() * n  # /2: [-1,1] -> [0,1] scale
        totals["psnr_per_image"] += psnr_of_each_image(x_hat, x).sum().item()
        for level_counts, indices in zip(counts, parts["level_indices"]):
            level_counts += torch.bincount(indices.flatten(), minlength=level_counts.shape[0])
    metrics = {k: v / images.shape[0] for k, v in totals.items()}
    metrics["psnr"] = psnr(metrics["mse"])
    if likelihood.models_likelihood(model.cfg.recon_loss):
        metrics["decoder_bits_per_dim"] = metrics["recon"] / math.log(2)
    for name, level_counts in zip(model.cfg.level_names, counts):
        metrics.update({f"{key}{name_suffix(name)}": value for key, value in count_usage(level_counts).items()})
    if model.levels > 1:
        metrics["perplexity"], metrics["codes_used"] = metrics["perplexity_bottom"], metrics["codes_used_bottom"]
    if judge is not None:
        metrics["recognised"] = accuracy(predict(judge, torch.cat(reconstructions), device), labels)
    return metrics


def format_usage(m: dict, perplexity: bool = False) -> str:
    """Codes used (and perplexity) per level: 'codes used 500', or 'codes used top 240 bottom 500'."""
    suffixes = [f"_{n}" for n in LEVEL_NAMES if f"codes_used_{n}" in m] or [""]
    label = lambda suffix: suffix[1:] + " " if suffix else ""  # noqa: E731
    text = "codes used " + " ".join(f"{label(x)}{m['codes_used' + x]}" for x in suffixes)
    if perplexity:
        text = "perplexity " + " ".join(f"{label(x)}{m['perplexity' + x]:.1f}" for x in suffixes) + "  " + text
    return text


def levels_text(cfg: VQVAEConfig) -> str:
    """'8x8 codes' or 'top 4x4 + bottom 8x8 codes'."""
    grids = [f"{h}x{w}" for h, w in cfg.grid_shapes]
    return f"{grids[0]} codes" if cfg.levels == 1 else f"top {grids[0]} + bottom {grids[1]} codes"


def decoder_text(m: dict) -> str:
    """'  decoder 3.210 bits/dim' for a categorical decoder's figures, '' otherwise."""
    return f"  decoder {m['decoder_bits_per_dim']:.3f} bits/dim" if "decoder_bits_per_dim" in m else ""


def format_metrics(m: dict) -> str:
    recognised = f"  recognised {m['recognised']:.3f}" if "recognised" in m else ""
    return f"MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB{decoder_text(m)}  {format_usage(m)}{recognised}"


def format_all_metrics(m: dict) -> str:
    recognised = (f"  classifier accuracy: reconstructions {m['recognised']:.3f}, originals {m['recognised_originals']:.3f}"
                  if "recognised_originals" in m else "")
    return (f"loss {m['loss']:.4f}  MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB (mean per image "
            f"{m['psnr_per_image']:.2f} dB){decoder_text(m)}  "
            f"{format_usage(m, perplexity=True)}{recognised}")

"""What the decoder's output means, per `--recon-loss`: an image (l1, l2, gaussian) or a distribution (categorical).

- l1, l2, gaussian: the decoder outputs the image itself (B, 3, S, S) in [-1, 1]; there is no normalised
  likelihood, so no bits per dimension. gaussian is 0.5 log(MSE), SQ-VAE's reconstruction term
  (`stage1_vqvae.stochastic_quantizer.gaussian_reconstruction`).
- categorical: the decoder outputs 256 logits per sub-pixel (B, 3 * 256, S, S), a softmax over the
  8-bit values (the form behind the VQ-VAE paper's CIFAR-10 bits/dim). The loss is the mean negative
  log-likelihood in nats per sub-pixel, and `log_likelihood` gives log p(x | z) per image. Its
  reconstruction is the **expected value** of each sub-pixel under its distribution: the estimate
  with the lowest expected squared error, so MSE and PSNR stay comparable with an L2 decoder.

No I/O here: tensors in, tensors out.
"""

import torch
import torch.nn.functional as F

from stage1_vqvae.stochastic_quantizer import gaussian_reconstruction

LEVELS = 256  # values of an 8-bit sub-pixel


def models_likelihood(kind: str) -> bool:
    """Whether a decoder trained with this loss gives a normalised likelihood p(x | z)."""
    return kind == "categorical"


def output_channels(kind: str) -> int:
    """Channels of the decoder's output: 3 for an image, 3 x 256 logits for a categorical decoder."""
    return 3 * LEVELS if models_likelihood(kind) else 3


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (exact multiples of 1/127.5 when they came from uint8) -> long 8-bit values."""
    return ((x.float() + 1) * (LEVELS - 1) / 2).round().clamp(0, LEVELS - 1).long()


def categorical_logits(out: torch.Tensor) -> torch.Tensor:
    """Decoder output (B, 3 * 256, S, S) -> logits (B, 256, 3, S, S), the class dimension second."""
    b, _, h, w = out.shape
    return out.view(b, 3, LEVELS, h, w).transpose(1, 2)


def expected_image(log_probs: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, 256, 3, S, S) -> the expected value of each sub-pixel, as an image in [-1, 1]."""
    values = torch.linspace(-1, 1, LEVELS, device=log_probs.device).view(1, LEVELS, 1, 1, 1)
    return (log_probs.exp() * values).sum(dim=1)


def to_image(out: torch.Tensor, kind: str) -> torch.Tensor:
    """The decoder's output as an image in [-1, 1]: itself, or the expected value of each sub-pixel."""
    if not models_likelihood(kind):
        return out
    return expected_image(F.log_softmax(categorical_logits(out.float()), dim=1))


def image_and_loss(out: torch.Tensor, x: torch.Tensor, kind: str) -> tuple:
    """(the output as an image, the reconstruction loss against images x): mean L1 (sharper) or L2 distance, half the
    log of the L2 one (gaussian), or the mean negative log-likelihood in nats per sub-pixel (its image carries no
    gradient: the loss does not use it)."""
    if kind == "gaussian":
        return out, gaussian_reconstruction(out, x)
    if not models_likelihood(kind):
        return out, F.l1_loss(out.float(), x) if kind == "l1" else F.mse_loss(out.float(), x)
    log_probs = F.log_softmax(categorical_logits(out.float()), dim=1)  # computed once for the loss and the image
    with torch.no_grad():
        image = expected_image(log_probs)
    return image, F.nll_loss(log_probs, to_levels(x))


def log_likelihood(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) of each image under a categorical decoder's output, in nats summed over sub-pixels: (B,)."""
    nll = F.cross_entropy(categorical_logits(out.float()), to_levels(x), reduction="none")  # (B, 3, S, S)
    return -nll.flatten(1).sum(dim=1)

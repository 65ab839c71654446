"""The adversarial part of stage 1 (VQGAN, arXiv:2012.09841): a patch discriminator that keeps decoded images sharp.

A PatchGAN discriminator (pix2pix, arXiv:1611.07004) scores overlapping patches of an image as real or decoded;
it is trained with the hinge loss. The decoder adds `-mean(D(x_hat))` to its loss, weighted as in VQGAN: the ratio
of the reconstruction loss's and the adversarial loss's gradient norms at the decoder's last layer (so neither
swamps the other whatever their scales), times the user's `--adversarial-weight`. Both start after
`--adversarial-start` of the steps: first the decoder learns to reconstruct, then to look real. With
`--adversarial-ramp`, the decoder's term then grows linearly over that share of the steps, so a discriminator
that has only just begun to learn cannot throw the reconstructions off at once.

Nothing here needs a pretrained network. No I/O: `Adversary` holds the discriminator and its optimizer, and
gives and takes its state as a dict for the resumable state file.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation import distributed

ADAM_BETAS = (0.5, 0.9)  # VQGAN's, for both players
MAX_ADAPTIVE_WEIGHT = 1e4
DISCRIMINATOR_SEED = 0


class PatchDiscriminator(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, 1, P, P) logits, one per overlapping patch.

    `layers` stride-2 4x4 convolutions (the first without batch norm), one stride-1 convolution at twice the last
    width, and a 1-channel stride-1 convolution: at 32 px and 2 layers, 6 x 6 logits, each seeing 34 x 34 pixels
    (the whole image, padded); with 1 layer, 14 x 14 logits of 16 x 16 pixel patches.
    """

    def __init__(self, channels: int = 64, layers: int = 2):
        super().__init__()
        widths = [3] + [channels * min(2 ** i, 8) for i in range(layers + 1)]
        blocks = [nn.Conv2d(3, widths[1], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(widths[i], widths[i + 1], 4, stride, 1, bias=False), nn.BatchNorm2d(widths[i + 1]),
                       nn.LeakyReLU(0.2, inplace=True)]
        blocks.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _init_weights(module: nn.Module) -> None:
    """DCGAN's initialisation, as pix2pix and VQGAN use it."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))): zero once every patch is beyond the margin."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def adaptive_weight(recon_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """||d recon / d last_layer|| / (||d generator / d last_layer|| + 1e-4), clamped to [0, 1e4], detached.

    Both losses must still hold their graphs: this takes gradients of the one layer and keeps the graphs.
    """
    recon_grad, = torch.autograd.grad(recon_loss, last_layer, retain_graph=True)
    generator_grad, = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    ratio = recon_grad.float().norm() / (generator_grad.float().norm() + 1e-4)
    return ratio.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()


def average_gradients_over_ranks(module: nn.Module) -> None:
    """Under torchrun, every rank's gradients replaced by their mean (what DistributedDataParallel would do)."""
    if distributed.active():
        for p in module.parameters():
            if p.grad is not None:
                distributed.all_reduce_sum_(p.grad).div_(distributed.world_size())


class Adversary:
    """The discriminator, its optimizer and the step it starts at, for one stage-1 run."""

    def __init__(self, weight: float, start_step: int, channels: int, layers: int, lr: float, device,
                 ramp_steps: int = 0):
        self.weight, self.start_step, self.ramp_steps = weight, start_step, ramp_steps
        with torch.random.fork_rng(devices=[]):  # the run's generator moves as in a run without the option
            torch.manual_seed(DISCRIMINATOR_SEED)
            discriminator = PatchDiscriminator(channels, layers)
        self.discriminator = discriminator.to(device, memory_format=torch.channels_last)
        # fused, as the VQ-VAE's own (foundation.optimization): the unfused step reads every parameter's step count
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=ADAM_BETAS, fused=True)

    def active(self, step: int) -> bool:
        return step >= self.start_step

    def ramp(self, step: int) -> float:
        """The share of the user's weight the decoder's term gets at `step`: 0 before the start, then rising
        linearly to 1 over `ramp_steps` (at once without a ramp) while the discriminator already learns."""
        if not self.active(step):
            return 0.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps) if self.ramp_steps > 0 else 1.0

    def generator_term(self, x_hat: torch.Tensor, recon_loss: torch.Tensor, last_layer: torch.Tensor,
                       step: int) -> tuple:
        """(the decoder's adversarial loss term, its weight): both zero before the start step.

        The discriminator's own weights take no gradient from this term.
        """
        if not self.active(step):
            zero = x_hat.new_zeros((), dtype=torch.float32)
            return zero, zero
        self.discriminator.requires_grad_(False)
        try:
            generator_loss = -self.discriminator(x_hat).float().mean()
        finally:
            self.discriminator.requires_grad_(True)
        weight = self.weight * self.ramp(step) * adaptive_weight(recon_loss, generator_loss, last_layer)
        return weight * generator_loss, weight

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, step: int) -> torch.Tensor:
        """One hinge-loss step on real images and (detached) reconstructions; returns the loss (zero before the start)."""
        if not self.active(step):
            return real.new_zeros((), dtype=torch.float32)
        self.discriminator.train()
        # real and decoded images in separate batches, as VQGAN: batch norm does not mix their statistics
        loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients_over_ranks(self.discriminator)
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "start_step": self.start_step, "ramp_steps": self.ramp_steps}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step, self.ramp_steps = state["start_step"], state.get("ramp_steps", 0)

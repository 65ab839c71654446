"""Stage-1 configuration: one dataclass, turned into flags by `foundation.cli` and saved in every checkpoint."""

import math
from dataclasses import dataclass

from foundation import levels as code_levels
from foundation.checks import check_ranges
from foundation.cli import UserError, derived, opt
from foundation.config import TrainingFlags
from foundation.curves import FLAG_HELP as TENSORBOARD_HELP
from foundation.optimization import OptimizerSettings


QUANTIZERS = ["ema", "codebook", "rotation", "factorized", "fsq", "stochastic"]  # stage1_vqvae.modern_quantizers builds each
QUANTIZER_HELP = ("how codes learn and gradients pass: ema or codebook (EMA or codebook-loss codebook, "
                  "straight-through), rotation (EMA codebook, rotation-trick gradient), factorized (l2-normalised "
                  "codes searched in --factorized-dim dimensions, EMA), fsq (finite scalar quantization over "
                  "--fsq-levels, no codebook), stochastic (SQ-VAE: soft Gumbel-softmax draws with a learned variance; "
                  "needs --recon-loss gaussian)")
FACTORIZED_DIM_HELP = "with --quantizer factorized: the dimension vectors are projected down to and l2-normalised in"
FSQ_LEVELS_HELP = ("with --quantizer fsq: levels of each channel, comma-separated; their product is the number of "
                   "codes and must equal --codebook-size")
SQ_TEMPERATURE_HELP = ("with --quantizer stochastic: the Gumbel-softmax temperature is exp(-this * step); SQ-VAE's "
                       "1e-5 ends near 0.2 after its 156,000 steps, 2e-4 does after 8,800 (25 epochs of 45,000 at 128)")


@dataclass
class VQVAEConfig(TrainingFlags):
    # what checkpoints saved before these fields were trained with
    ADDED_LATER = {"top_join": "concat", "adversarial_weight": 0.0, "adversarial_ramp": 0.0}
    # the values each numeric flag allows (`foundation.checks`); the adversarial ones are checked together below
    RANGES = {"shapes_train": ">= 1", "shapes_test": ">= 1", "val_size": "> 0", "image_size": ">= 1",
              "codebook_size": ">= 1", "top_codebook_size": ">= 1", "embed_dim": ">= 1",
              "factorized_dim": ">= 1", "sq_temperature_decay": ">= 0",
              "hidden_channels": ">= 2",  # the outer layers have hidden_channels // 2
              "res_blocks": ">= 0", "attention_blocks": ">= 0", "weight_ema": "[0, 1)",
              "beta": ">= 0", "ema_decay": "[0, 1)", "dead_code_threshold": ">= 0",
              "discriminator_lr": "> 0", "discriminator_channels": ">= 1", "discriminator_layers": ">= 1",
              "epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0"}

    # data
    dataset: str = opt("cifar10", "which images", choices=["cifar10", "folder", "shapes"])
    data_dir: str = opt("data", "CIFAR-10 download folder, or the image folder for --dataset folder")
    shapes_train: int = opt(10000, "train images generated for --dataset shapes")
    shapes_test: int = opt(1000, "test images generated for --dataset shapes")
    val_size: float = opt(0.1, "validation images taken out of the train images (a fraction below 1, else a "
                               "count; shapes generate their own); the best epoch is chosen on them")
    out_dir: str = opt("runs/vqvae", "where checkpoints, logs and pictures go")
    image_size: int = opt(32, "image side in pixels (folder and shapes; folder images are resized and "
                              "center-cropped to it); the downsampling must divide it")
    # model
    downsample: int = opt(4, "image pixels per code per side: the code grid is image_size / downsample",
                          choices=[4, 8])
    levels: int = opt(1, "code levels: 1, or 2 (VQ-VAE-2: a top grid at half the bottom one's side)", choices=[1, 2])
    codebook_size: int = opt(512, "K, number of code vectors (of the bottom level with --levels 2)")
    top_codebook_size: int | None = opt(None, "K of the top level with --levels 2 (default: --codebook-size)")
    top_join: str = opt("residual", "with --levels 2, what the bottom quantizer sees: what the decoded top "
                                    "leaves of the bottom features (their difference), or both joined as in "
                                    "VQ-VAE-2 (concat)",
                        choices=["residual", "concat"])
    embed_dim: int = opt(64, "D, size of each code vector")
    hidden_channels: int = opt(128, "width of the encoder/decoder at the latent resolution")
    res_blocks: int = opt(2, "residual blocks in the encoder and in the decoder")
    attention_blocks: int = opt(0, "self-attention blocks over the whole code grid in the encoder and in the decoder, "
                                "after the residual blocks (VQGAN's mid block; the bottom level with --levels 2)")
    quantizer: str = opt("ema", QUANTIZER_HELP, choices=QUANTIZERS)
    factorized_dim: int = opt(16, FACTORIZED_DIM_HELP)
    fsq_levels: str = opt("8,8,8", FSQ_LEVELS_HELP)
    sq_temperature_decay: float = opt(1e-5, SQ_TEMPERATURE_HELP)
    beta: float = opt(0.25, "commitment weight")
    ema_decay: float = opt(0.99, "EMA decay (gamma) for --quantizer ema, rotation and factorized")
    dead_code_threshold: float = opt(
        1.0, "re-seed a code when its average use per batch (EMA) drops below this; 0 disables"
    )
    recon_loss: str = opt("l1", "reconstruction loss: L1, L2, gaussian (0.5 log MSE: a Gaussian likelihood at its best "
                                "variance, SQ-VAE's), or categorical (256-way softmax per sub-pixel: a likelihood, so "
                                "tools.evaluate can give bits per dimension)",
                          choices=["l1", "l2", "gaussian", "categorical"])
    # adversarial decoder (stage1_vqvae.adversarial)
    adversarial_weight: float = opt(0.0, "weight of a patch discriminator's loss on the decoder, times VQGAN's adaptive "
                                         "weight; 0 turns it off. When on, the epoch kept is the one whose validation "
                                         "reconstructions a small classifier of the training images recognises best")
    adversarial_start: float = opt(0.3, "fraction of the training steps before the discriminator starts")
    adversarial_ramp: float = opt(0.2, "fraction of the training steps over which the decoder's adversarial term then "
                                       "grows linearly from 0 to its full weight (0: at once; measured: 0.2 pays)")
    discriminator_lr: float = opt(1e-4, "the discriminator's Adam learning rate (constant)")
    discriminator_channels: int = opt(64, "width of the discriminator's first layer (doubled at each next one)")
    discriminator_layers: int = opt(2, "stride-2 layers of the discriminator: each of its outputs sees 34 x 34 "
                                       "pixels with 2, 16 x 16 with 1")
    # training
    epochs: int = opt(25, "training epochs")
    batch_size: int = opt(128, "images per step")
    lr: float = opt(4e-3, "peak Adam learning rate")  # chosen on the full-scale validation images (RESULTS.md)
    weight_ema: float = opt(0.0, "decay of a moving average of the weights to evaluate, choose and save instead of "
                            "the raw weights (e.g. 0.999); 0: off")
    seed: int = opt(0, "seed for initialisation, shuffling and augmentation")
    tensorboard: bool = opt(False, TENSORBOARD_HELP.format(what="losses, PSNR, codes used and reconstructions"))
    # recorded by the run
    val_split: str = derived("")  # how the validation images were chosen, with a fingerprint

    def __post_init__(self):
        super().__post_init__()
        if self.top_codebook_size is None:
            self.top_codebook_size = self.codebook_size
        check_ranges(self, self.RANGES)
        grid, top = self.image_size // self.downsample, self.image_size // (self.downsample * 2 ** (self.levels - 1))
        if self.image_size % self.downsample or (self.levels == 2 and grid % 2) or top < 1:
            raise UserError(f"--image-size {self.image_size} cannot be split into "
                            f"{'two levels of ' if self.levels == 2 else ''}codes with --downsample {self.downsample}: "
                            f"use a multiple of {self.downsample * 2 ** (self.levels - 1)}")
        self._check_adversarial()
        check_quantizer(self.quantizer, self.fsq_levels, self.codebook_sizes)
        if self.quantizer == "stochastic" and self.recon_loss != "gaussian":
            raise UserError("--quantizer stochastic is SQ-VAE's objective, whose latent loss is weighed against a "
                            "Gaussian reconstruction term: add --recon-loss gaussian")

    def _check_adversarial(self) -> None:
        if self.adversarial_weight < 0 or not 0 <= self.adversarial_start < 1 or not 0 <= self.adversarial_ramp <= 1:
            raise UserError("--adversarial-weight must be >= 0, --adversarial-start in [0, 1) and --adversarial-ramp "
                            "in [0, 1]")
        if self.adversarial_weight > 0 and self.recon_loss == "categorical":
            raise UserError("--adversarial-weight needs an image decoder: use --recon-loss l1 or l2")

    @property
    def adversarial(self) -> bool:
        return self.adversarial_weight > 0

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.warmup_fraction, self.lr_schedule, weight_ema=self.weight_ema)

    @property
    def grid_shapes(self) -> tuple:
        """(height, width) of each level's code grid, top level first."""
        bottom = self.image_size // self.downsample
        return code_levels.top_first((bottom // 2, bottom // 2), (bottom, bottom), self.levels)

    @property
    def level_names(self) -> tuple:
        """Names of the levels, top level first, as logs and meta.json use them."""
        return code_levels.level_names(self.levels)

    @property
    def codebook_sizes(self) -> tuple:
        """Codebook size of each level, top level first."""
        return code_levels.top_first(self.top_codebook_size, self.codebook_size, self.levels)


def fsq_levels(text: str) -> tuple:
    """'8,8,8' -> (8, 8, 8); a UserError unless every level is an integer of at least 2."""
    try:
        levels = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 2:
        raise UserError(f"--fsq-levels {text!r}: give comma-separated integers of at least 2 each, e.g. 8,8,8")
    return levels


def check_quantizer(quantizer: str, levels_text: str, codebook_sizes) -> None:
    """A UserError when --quantizer fsq's levels are malformed or do not make the codebook sizes."""
    if quantizer != "fsq":
        return
    codes = math.prod(fsq_levels(levels_text))
    if any(size != codes for size in codebook_sizes):
        raise UserError(f"--fsq-levels {levels_text} make {codes} codes but the codebook size is "
                        f"{'/'.join(str(size) for size in codebook_sizes)}: pass --codebook-size {codes}"
                        f"{' (and --top-codebook-size)' if len(codebook_sizes) > 1 else ''} or other levels")

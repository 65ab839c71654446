"""Stage-2 configuration: one dataclass, turned into flags by `foundation.cli` and saved in every checkpoint.

Fields marked `cli=False` are not flags: they are read from the encoded dataset's meta.json, except `guidance`,
the default sampling scale: GUIDED_DEFAULT for a new guidable prior, then the scale `tools.choose_guidance`
measures on the run's validation images.
`--size` picks the capacity by name; `--hidden-channels` and `--layers` override its numbers.
"""

from dataclasses import dataclass

from foundation.checks import check_ranges
from foundation.cli import UserError, derived, opt
from foundation.config import TrainingFlags
from foundation.curves import FLAG_HELP as TENSORBOARD_HELP
from foundation.optimization import OptimizerSettings

# name: (hidden_channels, layers); each one's layers see every earlier code of an 8x8 grid at kernel 3
SIZES = {"small": (64, 7), "base": (128, 8), "large": (192, 12)}
# the guidance scale a new class-conditional prior with label dropout samples with until `make choose-guidance`
# measures its own. Validation chose 5 on the subset's codes and on the gated full-scale CIFAR-10 (JPEG) prior; with
# today's attention prior the rule chose 7 and 8 in two seeds and 6 on a later held-out run, but scales 4 to 12 are
# level within seed noise each time, so 5, the plateau's smallest scale, stays (RESULTS.md, guidance at full scale)
GUIDED_DEFAULT = 5.0


@dataclass
class PriorConfig(TrainingFlags):
    # what checkpoints saved before these fields had
    ADDED_LATER = {"label_dropout": 0.0, "guidance": 1.0, "attention_layers": 0}
    # the values each numeric flag allows (`foundation.checks`); kernel size and attention are checked below.
    # --val-size 0 is allowed: code folders with val.npy never read it, and runs may have saved it
    RANGES = {"val_size": ">= 0", "hidden_channels": ">= 1", "layers": ">= 1", "dropout": "[0, 1)",
              "label_dropout": "[0, 1)", "epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0",
              "weight_decay": ">= 0", "weight_ema": "[0, 1)"}

    codes_dir: str = opt("runs/codes", "folder written by stage1_vqvae.encode (train.npy, test.npy, meta.json)")
    out_dir: str = opt("runs/prior", "where checkpoints and logs go")
    val_size: float = opt(0.1, "for code folders without val.npy (older runs): train maps held out for "
                               "validation (a fraction below 1, else a count)")
    # model
    size: str = opt("base", "capacity preset: " + ", ".join(f"{k} = {c} channels x {n} layers" for k, (c, n) in SIZES.items()),
                    choices=list(SIZES))
    hidden_channels: int | None = opt(None, "channels of each stack (auto: from --size)")
    layers: int | None = opt(None, "gated layers, the first one is mask A; each widens the reach by "
                                   "kernel_size // 2 codes (auto: from --size)")
    kernel_size: int = opt(3, "odd kernel width of the masked convolutions")
    dropout: float = opt(0.3, "dropout on the gated outputs of every layer while training")
    # 2 blocks: chosen on validation at full scale against gated-only at equal training time (RESULTS.md)
    attention_layers: int = opt(2, "causal self-attention blocks (PixelSNAIL) spaced evenly among the gated layers; "
                                   "with any, every code sees every earlier code at any grid size (0: none)")
    attention_heads: int = opt(4, "heads of each attention block")
    attention_channels: int | None = opt(None, "width of each attention block's queries, keys and values, a multiple "
                                               "of --attention-heads (auto: --hidden-channels)")
    class_conditional: bool = opt(False, "condition every gate on the class label")
    label_dropout: float = opt(0.1, "class-conditional priors: fraction of training maps shown a learned 'no class' "
                                    "label instead of theirs, so that sampling can use classifier-free guidance "
                                    "(0: no guidance)")
    # training
    # 15: chosen on validation at full scale against 10; the gain flattens by epoch 15 (RESULTS.md)
    epochs: int = opt(15, "training epochs (over mirrored train maps: twice the steps of as many unmirrored epochs)")
    batch_size: int = opt(128, "code maps per step")
    lr: float = opt(1e-3, "peak AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (0: plain Adam)")
    weight_ema: float = opt(0.0, "decay of a moving average of the weights to evaluate, sample and save instead "
                                 "of the raw ones, e.g. 0.995 (0: off)")
    seed: int = opt(0, "seed for initialisation and shuffling")
    tensorboard: bool = opt(False, TENSORBOARD_HELP.format(what="train, validation and test bits per code"))
    # from meta.json
    codebook_size: int = derived(512)
    grid_height: int = derived(8)
    grid_width: int = derived(8)
    num_classes: int = derived(0)
    levels: int = derived(1)  # 2: a top prior and a bottom prior conditioned on the top codes
    top_codebook_size: int = derived(0)
    top_grid_height: int = derived(0)
    top_grid_width: int = derived(0)
    condition_codebook_size: int = derived(0)  # >0: conditioned on a map of codes with this codebook (the top's)
    stage1_checkpoint: str = derived("")
    stage1_sha256: str = derived("")
    guidance: float = derived(1.0)  # the classifier-free guidance scale sampling uses by default (1: none)

    @property
    def guidable(self) -> bool:
        """A class-conditional prior that learns a 'no class' label: classifier-free guidance can steer it."""
        return self.class_conditional and self.label_dropout > 0

    def __post_init__(self):
        super().__post_init__()
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:  # the causal padding needs a centre column
            raise UserError(f"--kernel-size must be odd (1, 3, 5, ...), got {self.kernel_size}")
        channels, layers = SIZES[self.size]
        self.hidden_channels = channels if self.hidden_channels is None else self.hidden_channels
        self.layers = layers if self.layers is None else self.layers
        self.attention_channels = self.hidden_channels if self.attention_channels is None else self.attention_channels
        check_ranges(self, self.RANGES)
        if self.attention_layers:
            self._check_attention()

    def _check_attention(self):
        if not 0 < self.attention_layers <= self.layers:
            raise UserError(f"--attention-layers must be in [0, --layers] = [0, {self.layers}], "
                            f"got {self.attention_layers} (the default is 2; --attention-layers 0: none)")
        check_ranges(self, {"attention_channels": ">= 1"})
        if self.attention_heads < 1 or self.attention_channels % self.attention_heads:
            raise UserError(f"--attention-channels ({self.attention_channels}) must be a multiple of --attention-heads "
                            f"({self.attention_heads}); or --attention-layers 0 for none")

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.warmup_fraction, self.lr_schedule, self.weight_decay, self.weight_ema)

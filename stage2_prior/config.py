"""Stage-2 configuration: one dataclass, turned into flags by `tools.cli` and saved in every checkpoint.

Fields marked `cli=False` are not flags: they are read from the encoded dataset's meta.json.
"""

from dataclasses import dataclass, field


def opt(default, help, **extra):
    """A config field with its --help text (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **extra})


def derived(default):
    """A config field filled from stage 1's meta.json, never typed by the user."""
    return field(default=default, metadata={"cli": False})


@dataclass
class PriorConfig:
    codes_dir: str = opt("runs/codes", "folder written by stage1_vqvae.encode (train.npy, test.npy, meta.json)")
    out_dir: str = opt("runs/prior", "where checkpoints and logs go")
    # model
    hidden_channels: int = opt(128, "channels of each stack")
    layers: int = opt(8, "gated layers (the first one is mask A)")
    kernel_size: int = opt(3, "odd kernel width of the masked convolutions")
    class_conditional: bool = opt(False, "condition every gate on the class label")
    # training
    epochs: int = opt(30, "training epochs")
    batch_size: int = opt(128, "code maps per step")
    lr: float = opt(3e-4, "Adam learning rate")
    seed: int = opt(0, "seed for initialisation and shuffling")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    compile: bool | None = opt(None, "torch.compile the training step (auto: on with CUDA; falls back to eager)")
    precision: str = opt("auto", "auto: bf16 on CUDA and on CPUs with native bf16, else fp32", choices=["auto", "fp32", "bf16"])
    # from meta.json
    codebook_size: int = derived(512)
    grid_height: int = derived(8)
    grid_width: int = derived(8)
    num_classes: int = derived(0)
    stage1_checkpoint: str = derived("")
    stage1_sha256: str = derived("")

"""Flags every training stage shares: the stage configs extend `TrainingFlags` (and list their own flags first)."""

from dataclasses import dataclass

from foundation.checks import check_ranges
from foundation.cli import opt


@dataclass
class TrainingFlags:
    lr_schedule: str = opt("cosine", "after the warm-up: cosine decay to 0 over the run, or constant",
                           choices=["cosine", "constant"])
    warmup_fraction: float = opt(0.05, "share of the steps spent raising the learning rate linearly from 0")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    compile: bool | None = opt(None, "torch.compile the training step (auto: on with CUDA); a failed compilation "
                                     "stops the run with torch's error, and --no-compile runs without it")
    precision: str = opt("auto", "auto: bf16 on CUDA and on CPUs with native bf16, else fp32",
                         choices=["auto", "fp32", "bf16"])

    def __post_init__(self):
        check_ranges(self, {"warmup_fraction": "[0, 1)"})

"""Training curves for TensorBoard (`--tensorboard` on both training stages), written under OUT_DIR/tensorboard.

An optional extra: `pip install -e '.[tensorboard]'`, then `tensorboard --logdir runs`. Without the
flag a `Curves` does nothing and nothing is imported; with the flag but without the package the run
stops before training with one message saying what to install. Only rank 0 writes.
"""

from pathlib import Path

from foundation import distributed
from foundation.cli import UserError

FOLDER = "tensorboard"
INSTALL = "pip install -e '.[tensorboard]'"
FLAG_HELP = "also write {what} per epoch to OUT_DIR/tensorboard (needs " + INSTALL + ")"
PREFIXES = ("train_", "val_", "test_", "raw_")
NOT_CURVES = {"epoch", "step", "processes"}  # in the log records, but not worth a curve


def summary_writer_class():
    """torch's SummaryWriter, or a UserError saying how to install the package it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise UserError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


def tag(name: str) -> str:
    """'val_psnr' -> 'val/psnr', so TensorBoard groups each split's curves; other names are kept."""
    return name.replace("_", "/", 1) if name.startswith(PREFIXES) else name


class Curves:
    """Per-epoch scalars and preview images, or nothing at all when disabled."""

    def __init__(self, out_dir, enabled: bool):
        writer_class = summary_writer_class() if enabled else None  # every rank checks, so all stop alike
        self.writer = writer_class(str(Path(out_dir) / FOLDER)) if writer_class and distributed.is_main() else None

    def log(self, epoch: int, record: dict, images: dict | None = None) -> None:
        """Every number of an epoch's log record as a scalar, and {name: (3, H, W) grid in [0, 1]} as images."""
        if self.writer is None:
            return
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in NOT_CURVES:
                self.writer.add_scalar(tag(name), value, epoch)
        for name, grid in (images or {}).items():
            self.writer.add_image(name, grid.detach().float().cpu().clamp(0, 1), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


"""Device, precision and seeding choices shared by every command."""

import contextlib
import random

import numpy as np
import torch

from tools.cli import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available (use --device cpu)")
    return device


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` ('auto': bf16 on CUDA that supports it, fp32 elsewhere)."""
    if precision == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16_ok else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backend(device: torch.device) -> None:
    """Fast defaults: TF32 matmuls/convs on CUDA, cuDNN autotuning."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def progress_disabled() -> bool:
    """Progress bars only on a terminal, so CI logs and captured output stay readable."""
    import sys

    return not sys.stderr.isatty()

"""Load a trained prior from its checkpoint alone (the config travels inside it)."""

import json
from pathlib import Path

from foundation.cli import saved_config_from
from foundation.files import load_checkpoint, save_checkpoint, write_json
from foundation.runtime import pick_device
from stage2_prior.config import PriorConfig
from stage2_prior.hierarchy import build_prior

STAGE = "prior"


def load_prior(path, device="cpu"):
    """The prior saved at `path`, on `device` ('auto' allowed), in eval mode.

    A GatedPixelCNN for one level of codes; for two levels a HierarchicalPrior, whose `sample` returns and
    whose `log_prob` takes a tuple (top, bottom) of code maps.
    """
    device = pick_device(str(device))
    ckpt = load_checkpoint(path, STAGE)
    model = build_prior(saved_config_from(PriorConfig, ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def store_guidance(path, scale: float) -> None:
    """Make `scale` the default classifier-free guidance of the prior saved at `path` (rewritten atomically), and
    of the config.json beside it when there is one."""
    path = Path(path)
    ckpt = load_checkpoint(path, STAGE)
    extra = {key: value for key, value in ckpt.items() if key not in ("format_version", "stage", "config", "model")}
    save_checkpoint(path, STAGE, {**ckpt["config"], "guidance": float(scale)}, ckpt["model"], **extra)
    beside = path.parent / "config.json"
    if beside.is_file():
        write_json(beside, {**json.loads(beside.read_text()), "guidance": float(scale)})

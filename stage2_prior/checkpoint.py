"""Load a trained prior from its checkpoint alone (the config travels inside it)."""

from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from tools.cli import config_from
from tools.files import load_checkpoint
from tools.runtime import pick_device

STAGE = "prior"


def load_prior(path, device="cpu") -> GatedPixelCNN:
    """The PixelCNN prior saved at `path`, on `device` ('auto' allowed), in eval mode."""
    device = pick_device(str(device))
    ckpt = load_checkpoint(path, STAGE)
    model = GatedPixelCNN(config_from(PriorConfig, ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()

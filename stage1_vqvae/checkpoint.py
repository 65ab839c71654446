"""Load a trained VQ-VAE from its checkpoint alone (the config travels inside it)."""

from foundation.cli import saved_config_from
from foundation.files import load_checkpoint
from foundation.runtime import pick_device
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE

STAGE = "vqvae"


def load_vqvae(path, device="cpu") -> VQVAE:
    """The VQ-VAE saved at `path`, on `device` ('auto' allowed), in eval mode."""
    device = pick_device(str(device))
    ckpt = load_checkpoint(path, STAGE)
    model = VQVAE(saved_config_from(VQVAEConfig, ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()

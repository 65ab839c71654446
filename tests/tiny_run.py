"""A finished run folder in a second or two: a tiny untrained VQ-VAE, its codes of a few shapes, a tiny prior."""

import dataclasses

import pytest
import torch

from foundation.files import save_checkpoint
from foundation.runtime import cpu_threads
from stage1_vqvae import encode
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_prior.data import read_meta
from stage2_prior.hierarchy import build_prior
from stage2_prior.train import with_meta
from tests.conftest import tiny_prior_config

SHAPES = dict(dataset="shapes", shapes_train=24, shapes_test=12, val_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are many small operations: on a busy 2-core CPU two threads made these tests 10-20x slower.

    Autouse in every test module that imports it.
    """
    with cpu_threads(1):
        yield


def make_tiny_run(run_dir, recon_loss="categorical", levels=1, class_conditional=False, randomize=True):
    """RUN_DIR with vqvae/ckpt.pt, codes/ and prior/ckpt.pt, as the make targets would leave it."""
    vq_cfg = VQVAEConfig(codebook_size=16, top_codebook_size=8, embed_dim=8, hidden_channels=16, res_blocks=1,
                         recon_loss=recon_loss, levels=levels, **SHAPES)
    vqvae = VQVAE(vq_cfg)
    vqvae_path = run_dir / "vqvae" / "ckpt.pt"
    save_checkpoint(vqvae_path, "vqvae", dataclasses.asdict(vq_cfg), vqvae.state_dict())
    encode.main(["--ckpt", str(vqvae_path), "--out-dir", str(run_dir / "codes"), "--device", "cpu"])
    prior_cfg = with_meta(tiny_prior_config(class_conditional, layers=2, codes_dir=str(run_dir / "codes")),
                          read_meta(run_dir / "codes"))
    prior = build_prior(prior_cfg)
    if randomize:  # non-trivial weights everywhere (class biases start at zero otherwise)
        for p in prior.parameters():
            torch.nn.init.normal_(p, std=0.3)
    save_checkpoint(run_dir / "prior" / "ckpt.pt", "prior", dataclasses.asdict(prior_cfg), prior.state_dict())
    return run_dir

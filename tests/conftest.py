"""Shared fixtures: small models and data that build in milliseconds on CPU."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stage1_vqvae.config import VQVAEConfig  # noqa: E402
from stage2_prior.config import PriorConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_vqvae_config():
    return VQVAEConfig(codebook_size=32, embed_dim=8, hidden_channels=16, res_blocks=1)


def tiny_prior_config(class_conditional=False, **overrides):
    values = dict(codebook_size=16, grid_height=4, grid_width=4, hidden_channels=16, layers=4, kernel_size=3,
                  class_conditional=class_conditional, num_classes=3, dropout=0.0,
                  attention_layers=0)  # gated only: tests of attention ask for it
    values.update(overrides)
    return PriorConfig(**values)

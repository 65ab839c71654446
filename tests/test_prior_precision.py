"""Stage-2 evaluation runs in fp32 whatever precision training uses, so model selection sees no bf16 rounding."""

import pytest
import torch

from stage2_prior.hierarchy import build_prior
from stage2_prior.metrics import split_bits
from stage2_prior.train import evaluate_splits
from tests.conftest import tiny_prior_config

CPU = torch.device("cpu")


def random_prior(levels: int):
    """A prior with weights large enough that bf16 rounding of its logits shows in the figures."""
    extra = {"top_codebook_size": 8, "top_grid_height": 2, "top_grid_width": 2} if levels == 2 else {}
    prior = build_prior(tiny_prior_config(precision="bf16", levels=levels, **extra))
    for p in prior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return prior


def random_split(levels: int, n: int = 6):
    """(codes, labels) of one split: a tuple of levels, (n, 4, 4) bottom maps and (n, 2, 2) top maps."""
    bottom = torch.randint(16, (n, 4, 4))
    codes = (torch.randint(8, (n, 2, 2)), bottom) if levels == 2 else (bottom,)
    return codes, torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("levels", [1, 2])
def test_validation_and_test_figures_are_fp32_under_bf16_training(levels):
    prior = random_prior(levels)
    data = {split: random_split(levels) for split in ("val", "test")}
    figures = evaluate_splits(prior, data, prior.cfg, CPU)
    for split in ("val", "test"):
        exact = split_bits(prior, *data[split], CPU, "fp32")
        assert figures[f"{split}_bits_per_code"] == exact["bits_per_code"]
        assert figures[f"{split}_bits_per_image"] == exact["bits_per_image"]


def test_bf16_evaluation_would_differ():
    """The check above has teeth: on this prior, bf16 autocast changes the figure."""
    prior = random_prior(1)
    codes, labels = random_split(1)
    assert split_bits(prior, codes, labels, CPU, "bf16") != split_bits(prior, codes, labels, CPU, "fp32")

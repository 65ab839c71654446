"""One form for code maps inside the project: a tuple of levels, top first, whatever the number of levels."""

import pytest
import torch

from foundation.levels import concatenate, count, level_names, name_suffix, take, top_first
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_prior.hierarchy import build_prior
from tests.conftest import tiny_prior_config


def test_names_and_values_per_level_follow_one_rule():
    assert level_names(1) == ("codes",) and level_names(2) == ("top", "bottom")
    assert [name_suffix(n) for n in level_names(1) + level_names(2)] == ["", "_top", "_bottom"]
    assert top_first("t", "b", 1) == ("b",) and top_first("t", "b", 2) == ("t", "b")
    with pytest.raises(ValueError, match="1 or 2 levels"):
        top_first("t", "b", 3)


def test_take_count_and_concatenate_work_level_by_level():
    levels = (torch.arange(12).view(3, 2, 2), torch.arange(48).view(3, 4, 4))
    assert count(levels) == 3
    assert [level.shape[0] for level in take(levels, slice(1, 3))] == [2, 2]
    assert all(torch.equal(a, b) for a, b in zip(concatenate([take(levels, [0]), take(levels, [1, 2])]), levels))


@pytest.mark.parametrize("levels", [1, 2])
def test_models_give_every_level_as_a_tuple(levels):
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=4, hidden_channels=8, res_blocks=1, levels=levels,
                              image_size=16)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = vqvae.encode_levels(x)
    assert isinstance(codes, tuple) and len(codes) == levels
    public = vqvae.encode(x)  # the public method keeps a bare tensor for one level
    assert torch.equal(public, codes[0]) if levels == 1 else all(torch.equal(a, b) for a, b in zip(public, codes))
    extra = {"top_codebook_size": 8, "top_grid_height": 2, "top_grid_width": 2} if levels == 2 else {}
    prior = build_prior(tiny_prior_config(levels=levels, **extra)).eval()
    drawn = prior.sample_levels(3, generator=torch.Generator().manual_seed(0))
    assert isinstance(drawn, tuple) and len(drawn) == levels and count(drawn) == 3
    assert prior.level_log_probs(*drawn).shape == (3, levels)
    _, loss = prior(*drawn)
    assert loss.ndim == 0 and torch.isfinite(loss)
    completed = prior.complete_levels(drawn, keep_rows=4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(completed, drawn))  # every row kept: nothing drawn

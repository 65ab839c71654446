"""The prior's reach: what `reach` documents is what gradients measure, and every preset covers an 8x8 grid."""

import pytest
import torch

from stage2_prior.config import SIZES
from stage2_prior.hierarchy import build_prior
from stage2_prior.model import layers_to_see_everything, reach, sees_every_earlier_code
from stage2_prior.train import announce, reach_text
from tests.conftest import tiny_prior_config

CPU = torch.device("cpu")


def seen_from(model, i, j, cond=None) -> torch.Tensor:
    """(H, W) bools: which input codes the logits at (i, j) depend on, measured by gradients in float64."""
    model = model.double().eval()
    cfg = model.cfg
    x = torch.randn(1, cfg.hidden_channels, cfg.grid_height, cfg.grid_width, dtype=torch.float64, requires_grad=True)
    model._logits_from_embedded(x, cond=cond)[:, :, i, j].sum().backward()
    return x.grad.abs().sum(dim=(0, 1)) > 0


def documented(cfg, i, j) -> torch.Tensor:
    """(H, W) bools: the codes `reach(cfg)` says the logits at (i, j) see."""
    r = reach(cfg)
    rows, cols = torch.arange(cfg.grid_height)[:, None], torch.arange(cfg.grid_width)[None, :]
    above = (rows < i) & (rows >= i - r.rows_up) & (cols >= j - r.left) & (cols <= j + r.right)
    own_row = (rows == i) & (cols < j) & (cols >= j - r.own_row)
    return above | own_row


def preset_prior(size: str, levels: int, grid: int = 8):
    """A prior of the preset's depth on a grid x grid map (the bottom prior for two levels), with its cond."""
    extra = {"top_codebook_size": 8, "top_grid_height": grid // 2, "top_grid_width": grid // 2} if levels == 2 else {}
    prior = build_prior(tiny_prior_config(size=size, hidden_channels=None, layers=None, levels=levels,
                                          grid_height=grid, grid_width=grid, **extra))
    if levels == 1:
        return prior, None
    return prior.bottom, torch.randint(8, (1, grid // 2, grid // 2))


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("size", list(SIZES))
def test_every_preset_sees_the_far_end_of_the_row_above_at_8x8(size, levels):
    model, cond = preset_prior(size, levels)
    assert seen_from(model, 7, 0, cond)[6, 7], f"{size}: (7, 0) does not see (6, 7)"
    assert sees_every_earlier_code(model.cfg)


@pytest.mark.parametrize("size", list(SIZES))
def test_every_preset_sees_every_earlier_code_at_8x8(size):
    layers = SIZES[size][1]
    model = build_prior(tiny_prior_config(grid_height=8, grid_width=8, hidden_channels=8, layers=layers))
    for i in range(8):
        for j in range(8):
            earlier = torch.arange(64).view(8, 8) < i * 8 + j
            assert torch.equal(seen_from(model, i, j), earlier), f"{size}: ({i}, {j})"


@pytest.mark.parametrize("grid", [16, 32])
@pytest.mark.parametrize("layers, kernel_size", [(7, 3), (8, 3), (12, 3), (3, 5), (2, 7)])
def test_measured_reach_is_exactly_the_documented_one(grid, layers, kernel_size):
    cfg = tiny_prior_config(grid_height=grid, grid_width=grid, hidden_channels=8, layers=layers, kernel_size=kernel_size)
    model = build_prior(cfg)
    for i, j in [(grid - 1, grid // 2), (grid - 1, 0), (grid - 1, grid - 1), (grid // 2, grid // 2)]:
        assert torch.equal(seen_from(model, i, j), documented(cfg, i, j)), (i, j)
    assert not sees_every_earlier_code(cfg)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (32, 32), (4, 12), (12, 4)])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_layers_to_see_everything_is_the_fewest_that_do(grid, kernel_size):
    needed = layers_to_see_everything(kernel_size, *grid)
    enough = tiny_prior_config(grid_height=grid[0], grid_width=grid[1], kernel_size=kernel_size, layers=needed)
    assert sees_every_earlier_code(enough)
    if needed > 1:
        assert not sees_every_earlier_code(tiny_prior_config(grid_height=grid[0], grid_width=grid[1],
                                                             kernel_size=kernel_size, layers=needed - 1))


def test_enough_layers_see_every_earlier_code_of_a_16x16_grid():
    layers = layers_to_see_everything(3, 16, 16)
    model = build_prior(tiny_prior_config(grid_height=16, grid_width=16, hidden_channels=8, layers=layers))
    assert layers == 15
    assert seen_from(model, 15, 0)[14, 15] and seen_from(model, 15, 15)[0, 0]


def test_the_training_log_states_the_reach(capsys):
    assert reach_text(tiny_prior_config(grid_height=8, grid_width=8, layers=7)).endswith(
        "every earlier code of the 8x8 grid")
    cfg = tiny_prior_config(grid_height=16, grid_width=16, layers=8, levels=2, top_codebook_size=8,
                            top_grid_height=8, top_grid_width=8)
    data = {split: ((torch.zeros(2, 8, 8), torch.zeros(2, 16, 16)), None) for split in ("train", "val", "test")}
    announce(cfg, data, "", CPU)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == ("reach of the top prior: each code sees 9 rows up (8 columns left and 8 right of its own) "
                         "and 9 codes to its left: every earlier code of the 8x8 grid")
    assert lines[-1] == ("reach of the bottom prior: each code sees 9 rows up (8 columns left and 8 right of its own) "
                         "and 9 codes to its left: not every earlier code of the 16x16 grid "
                         "(--layers 15 would see them all)")

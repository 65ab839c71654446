"""Attention in the prior (PixelSNAIL): strict causality at any grid size, cached == naive, config, checkpoints."""

import dataclasses

import pytest
import torch

from foundation.cli import UserError
from foundation.files import save_checkpoint
from stage2_prior.attention import attention_after
from stage2_prior.checkpoint import load_prior
from stage2_prior.hierarchy import HierarchicalPrior
from stage2_prior.model import GatedPixelCNN, reach, sees_every_earlier_code
from stage2_prior.train import reach_text
from tests.conftest import tiny_prior_config

LABELS = torch.tensor([0, 1, 2, 1, 0, 2])


def attention_config(grid=8, **overrides):
    values = dict(grid_height=grid, grid_width=grid, hidden_channels=16, layers=2, attention_layers=1,
                  attention_heads=2)
    return tiny_prior_config(**{**values, **overrides})


def randomized(prior):
    """Seeded non-trivial weights everywhere, in float64 (both sampling paths then agree to ~1e-15)."""
    torch.manual_seed(0)
    for p in prior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return prior.double().eval()


def seen_from(model, x, i, j, labels=None, cond=None) -> torch.Tensor:
    """(H * W,) bools: which input positions the logits at (i, j) depend on, measured by gradients."""
    x.grad = None
    model._logits_from_embedded(x, labels, cond)[:, :, i, j].sum().backward()
    return (x.grad.abs().sum(dim=(0, 1)) > 0).flatten()


def assert_sees_exactly_the_earlier_codes(model, positions, labels=None, cond=None):
    cfg = model.cfg
    # a batch of 4: a gradient vanishes only where the head's ReLUs are all off for every map
    x = torch.randn(4, cfg.hidden_channels, cfg.grid_height, cfg.grid_width, dtype=torch.float64, requires_grad=True)
    for i, j in positions:
        seen, p = seen_from(model, x, i, j, labels, cond), i * cfg.grid_width + j
        assert not seen[p:].any(), f"({i}, {j}) sees itself or a later code"
        assert seen[:p].all(), f"({i}, {j}) misses an earlier code"


def every_position(grid):
    return [(i, j) for i in range(grid) for j in range(grid)]


@pytest.mark.parametrize("grid, layers, blocks, kernel_size", [
    (8, 2, 1, 3), (8, 1, 1, 3), (8, 3, 2, 1), (8, 4, 4, 5), (16, 2, 1, 3), (16, 1, 1, 3), (16, 3, 2, 1)])
def test_logits_see_every_earlier_code_and_nothing_else(grid, layers, blocks, kernel_size):
    # (1, 1): the block follows the mask-A layer; kernel 1: the convolutions alone see almost nothing
    cfg = attention_config(grid, layers=layers, attention_layers=blocks, kernel_size=kernel_size)
    assert_sees_exactly_the_earlier_codes(randomized(GatedPixelCNN(cfg)), every_position(grid))


def test_causal_with_dropout_in_training_and_class_labels():
    cfg = attention_config(8, class_conditional=True, dropout=0.5, label_dropout=0.2)
    model = randomized(GatedPixelCNN(cfg)).train()
    assert_sees_exactly_the_earlier_codes(model, every_position(8), labels=torch.tensor([0, 2, 1, 0]))


def test_causal_at_32x32():
    model = randomized(GatedPixelCNN(attention_config(32, kernel_size=1)))
    positions = [(i, j) for i in range(0, 32, 3) for j in (0, 1, 16, 31)] + [(31, 31)]
    assert_sees_exactly_the_earlier_codes(model, positions)


def test_both_priors_of_two_levels_get_attention_and_the_bottom_one_is_causal():
    cfg = attention_config(16, levels=2, top_codebook_size=8, top_grid_height=8, top_grid_width=8)
    prior = randomized(HierarchicalPrior(cfg))
    assert len(prior.top.attention) == len(prior.bottom.attention) == 1
    assert_sees_exactly_the_earlier_codes(prior.bottom, every_position(16), cond=torch.randint(8, (4, 8, 8)))


@pytest.mark.parametrize("layers, blocks, after", [(8, 1, (3,)), (8, 3, (1, 3, 5)), (4, 4, (0, 1, 2, 3)),
                                                   (12, 2, (3, 7)), (2, 1, (0,))])
def test_blocks_are_spaced_evenly(layers, blocks, after):
    assert attention_after(layers, blocks) == after


def test_reach_and_training_log_say_every_earlier_code():
    cfg = attention_config(32, layers=2, attention_layers=1)
    assert sees_every_earlier_code(cfg) and reach(cfg).rows_up == 31
    assert reach_text(cfg) == "each code sees every earlier code of the 32x32 grid (1 attention block)"
    assert not sees_every_earlier_code(dataclasses.replace(cfg, attention_layers=0))


def test_config_refuses_channels_not_divisible_by_heads():
    with pytest.raises(UserError, match=r"--attention-channels \(10\) must be a multiple of --attention-heads \(4\)"):
        tiny_prior_config(attention_layers=1, attention_heads=4, attention_channels=10)
    with pytest.raises(UserError, match=r"--attention-channels \(16\) must be a multiple of --attention-heads \(3\)"):
        tiny_prior_config(attention_layers=1, attention_heads=3)  # auto width: --hidden-channels
    with pytest.raises(UserError, match="--attention-layers"):
        tiny_prior_config(layers=2, attention_layers=3)
    assert tiny_prior_config(attention_heads=3).attention_layers == 0  # no blocks: nothing to refuse


def sample_pair(prior, seed, **kwargs):
    """(naive, cached) draws with the same seed."""
    return [prior.sample(6, generator=torch.Generator().manual_seed(seed), naive=naive, **kwargs)
            for naive in (True, False)]


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 5), (0.0, None)])
@pytest.mark.parametrize("guidance", [None, 2.5])
def test_cached_equals_naive_with_attention(temperature, top_k, guidance):
    cfg = attention_config(5, layers=3, attention_layers=2, class_conditional=True, label_dropout=0.2)
    prior = randomized(GatedPixelCNN(cfg))
    for seed in (0, 1):
        naive, cached = sample_pair(prior, seed, labels=LABELS, temperature=temperature, top_k=top_k, guidance=guidance)
        assert torch.equal(naive, cached), f"seed {seed}"
        done = [prior.complete(naive, 2, LABELS, temperature, top_k, torch.Generator().manual_seed(seed), flag,
                               guidance=guidance) for flag in (True, False)]
        assert torch.equal(done[0], done[1]) and torch.equal(done[0][:, :2], naive[:, :2]), f"seed {seed}"


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_cached_equals_naive_with_attention_in_both_levels(guidance):
    cfg = attention_config(6, class_conditional=True, label_dropout=0.2, levels=2, top_codebook_size=8,
                           top_grid_height=3, top_grid_width=3)
    prior = randomized(HierarchicalPrior(cfg))
    for seed in (0, 1):
        naive, cached = sample_pair(prior, seed, labels=LABELS, temperature=0.9, top_k=6, guidance=guidance)
        assert all(torch.equal(a, b) for a, b in zip(naive, cached)), f"seed {seed}"
        done = [prior.complete(naive, 3, LABELS, 0.9, None, torch.Generator().manual_seed(seed), flag, guidance)
                for flag in (True, False)]
        assert all(torch.equal(a, b) for a, b in zip(*done)), f"seed {seed}"


def test_cached_greedy_codes_are_the_full_forward_argmax_in_float32():
    prior = randomized(GatedPixelCNN(attention_config(8, attention_layers=2))).float()
    greedy = prior.sample(8, temperature=0.0)
    assert torch.equal(prior.logits(greedy).argmax(1), greedy)


def test_old_checkpoint_loads_strictly_and_an_attention_one_round_trips(tmp_path):
    old = tiny_prior_config()
    gone = ("attention_layers", "attention_heads", "attention_channels")
    saved = {k: v for k, v in dataclasses.asdict(old).items() if k not in gone}
    save_checkpoint(tmp_path / "old.pt", "prior", saved, GatedPixelCNN(old).state_dict())
    prior = load_prior(tmp_path / "old.pt")  # load_state_dict is strict
    assert prior.cfg.attention_layers == 0 and len(prior.attention) == 0
    new = attention_config(4)
    model = randomized(GatedPixelCNN(new)).float()
    save_checkpoint(tmp_path / "new.pt", "prior", dataclasses.asdict(new), model.state_dict())
    loaded = load_prior(tmp_path / "new.pt")
    codes = torch.randint(16, (2, 4, 4))
    assert loaded.cfg.attention_layers == 1 and torch.equal(loaded.logits(codes), model.logits(codes))


def test_cached_equals_naive_with_attention_in_float32():
    prior = randomized(GatedPixelCNN(attention_config(8, attention_layers=2))).float()
    for seed in (0, 1):
        naive, cached = sample_pair(prior, seed, temperature=1.0)
        assert torch.equal(naive, cached), f"seed {seed}"

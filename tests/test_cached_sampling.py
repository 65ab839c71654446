"""The cached sampler draws exactly what the naive one (a full forward pass per position) draws."""

import pytest
import torch

from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config


def randomized(model):
    """Non-trivial weights everywhere (class biases start at zero otherwise)."""
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.mark.parametrize("class_conditional", [False, True])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, None), (1.3, 5), (1.0, 1), (0.0, None)])
def test_cached_equals_naive_code_for_code(class_conditional, kernel_size, temperature, top_k):
    # float64: both paths then agree to ~1e-15, so any difference would be a real bug, not rounding
    model = randomized(GatedPixelCNN(tiny_prior_config(class_conditional, kernel_size=kernel_size, grid_width=5)))
    model = model.double()
    labels = torch.tensor([0, 1, 2, 1, 0, 2]) if class_conditional else None
    for seed in (0, 1, 2):
        naive = model.sample(6, labels, temperature, top_k, torch.Generator().manual_seed(seed), naive=True)
        cached = model.sample(6, labels, temperature, top_k, torch.Generator().manual_seed(seed))
        assert torch.equal(naive, cached), f"seed {seed}"


def test_cached_logits_match_full_forward_in_float32():
    """Fill a grid with the cached sampler, then check a full forward pass finds the same greedy codes."""
    model = randomized(GatedPixelCNN(tiny_prior_config()))
    greedy = model.sample(8, temperature=0.0)
    logits, _ = model(greedy)
    assert torch.equal(logits.argmax(1), greedy)  # greedy codes are each position's argmax given the earlier ones


def test_cached_equals_naive_with_dropout_layers():
    model = randomized(GatedPixelCNN(tiny_prior_config(dropout=0.5))).double().train()  # sample() turns dropout off
    for seed in (0, 1):
        naive = model.sample(6, None, 1.0, None, torch.Generator().manual_seed(seed), naive=True)
        cached = model.sample(6, None, 1.0, None, torch.Generator().manual_seed(seed))
        assert torch.equal(naive, cached), f"seed {seed}"


@pytest.mark.parametrize("naive", [False, True])
@pytest.mark.parametrize("attention_layers, keep_rows", [(0, 0), (0, 2), (1, 0), (1, 2)])
def test_on_row_sees_each_row_once_as_soon_as_it_is_final(naive, attention_layers, keep_rows):
    """The streaming hook (the browser page draws rows as they come) is called once per row, in order, with
    that row and every row above it already equal to the finished map's, and changes no draw."""
    model = randomized(GatedPixelCNN(tiny_prior_config(attention_layers=attention_layers))).double()
    seen = []
    given = torch.randint(16, (5, 4, 4))
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    on_row = lambda i, codes: seen.append((i, codes.clone()))  # noqa: E731
    final = model.complete(given, keep_rows, None, 1.0, None, generator(), naive, on_row=on_row)
    assert torch.equal(final, model.complete(given, keep_rows, None, 1.0, None, generator(), naive))
    assert [i for i, _ in seen] == list(range(4))
    for i, codes in seen:
        assert torch.equal(codes[:, : i + 1], final[:, : i + 1])


def test_on_row_can_stop_a_draw():
    class Stop(Exception):
        pass

    def stop_after_first_row(i, codes):
        raise Stop

    model = randomized(GatedPixelCNN(tiny_prior_config())).train()
    with pytest.raises(Stop):
        model.sample_levels(2, on_row=lambda level, i, codes: stop_after_first_row(i, codes))
    assert model.training  # the mode it had before the draw, even when the draw stopped


def test_the_cached_samplers_operations_per_position_do_not_grow_with_the_batch_or_the_grid():
    """`make bench` reports these counts (each a kernel launch on a GPU): the cached sampler's per-position work is
    a fixed set of small operations, where the naive sampler's grows with the grid."""
    from tools.common.efficiency import sampler_operations

    small, large = sampler_operations(0, side=4, batch=2), sampler_operations(0, side=4, batch=16)
    assert small == large and sampler_operations(0, side=6, batch=2) <= small  # a row's own work spreads wider
    assert sampler_operations(1, side=4, batch=2) > small  # an attention block adds its own

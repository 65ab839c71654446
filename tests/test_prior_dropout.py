"""The prior's dropout: torch's semantics (drop with probability p, scale the rest by 1/(1-p), off in eval)."""

import pytest
import torch

from stage2_prior.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_a_share_p_and_scales_what_it_keeps(p):
    x = torch.ones(64, 32, 8, 8)
    y = Dropout(p).train()(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # 131,072 draws: the share is within 1% of p
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert not torch.equal(kept, Dropout(p).train()(x) != 0)  # a new mask every call


def test_is_the_identity_in_eval_mode_or_at_zero_and_keeps_the_dtype():
    x = torch.randn(4, 8, 3, 3, dtype=torch.bfloat16)
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0).train()(x) is x
    assert Dropout(0.3).train()(x).dtype == torch.bfloat16


def test_gradients_flow_through_the_kept_elements_only():
    x = torch.randn(16, 8, 4, 4, requires_grad=True)
    y = Dropout(0.4).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0) and torch.allclose(x.grad[y != 0], torch.tensor(1 / 0.6))


def test_the_seed_fixes_the_mask():
    x = torch.ones(8, 8, 4, 4)
    torch.manual_seed(5)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    assert torch.equal(a, Dropout(0.3).train()(x))


def test_bf16_keeps_the_scale_unbiased():
    """Issue 35: a bf16 mask scaled by 1/(1-p) rounded the scale itself (1/0.7 -> 1.4297), biasing every kept
    value up by 0.08%; the product must be rounded once."""
    x = torch.rand(64, 32, 8, 8, dtype=torch.bfloat16) + 0.5
    y = Dropout(0.3).train()(x)
    kept = y != 0
    ratio = y[kept].double() / (x[kept].double() / 0.7)
    assert abs(ratio.mean().item() - 1) < 2e-4  # rounding once: unbiased; the rounded scale gave 7.8e-4

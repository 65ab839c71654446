"""Gated PixelCNN: strict causality with no blind spot, likelihoods, and sampling controls."""

import pytest
import torch

from stage2_prior.model import GatedPixelCNN, draw
from tests.conftest import tiny_prior_config


def gradient_of_logits_at(model, i, j, labels):
    """|d logits(i, j) / d embedded input| summed over channels: (H, W)."""
    cfg = model.cfg
    x = torch.randn(2, cfg.hidden_channels, cfg.grid_height, cfg.grid_width, requires_grad=True)
    model._logits_from_embedded(x, labels)[:, :, i, j].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))


@pytest.mark.parametrize("class_conditional", [False, True])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_logits_depend_only_on_earlier_positions_and_all_of_them(class_conditional, kernel_size, dropout):
    # in training mode, so dropout is active; it is elementwise and must not open a path to later codes
    model = GatedPixelCNN(tiny_prior_config(class_conditional, kernel_size=kernel_size, dropout=dropout)).train()
    labels = torch.tensor([0, 2]) if class_conditional else None
    h, w = model.cfg.grid_height, model.cfg.grid_width
    for i in range(h):
        for j in range(w):
            grad = gradient_of_logits_at(model, i, j, labels).flatten()
            position = i * w + j
            assert torch.all(grad[position:] == 0), f"({i},{j}) sees itself or a later position"
            assert torch.all(grad[:position] > 0), f"({i},{j}) has a blind spot"


def test_dropout_acts_in_training_and_is_off_in_eval():
    model = GatedPixelCNN(tiny_prior_config(dropout=0.3))
    codes = torch.randint(0, 16, (4, 4, 4))
    model.train()
    assert not torch.equal(model.logits(codes), model.logits(codes))
    model.eval()
    assert torch.equal(model.logits(codes), model.logits(codes))
    without = GatedPixelCNN(tiny_prior_config(dropout=0.0)).eval()
    without.load_state_dict(model.state_dict())  # dropout adds no weights: checkpoints stay interchangeable
    assert torch.equal(without.logits(codes), model.logits(codes))


def test_sampling_ignores_dropout_and_keeps_the_mode():
    model = GatedPixelCNN(tiny_prior_config(dropout=0.5)).train()
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert model.training
    b = model.eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_class_label_changes_the_logits():
    model = GatedPixelCNN(tiny_prior_config(class_conditional=True))
    torch.nn.init.normal_(model.layers[0].class_bias.weight)
    codes = torch.randint(0, 16, (1, 4, 4))
    a, _ = model(codes, torch.tensor([0]))
    b, _ = model(codes, torch.tensor([1]))
    assert not torch.allclose(a, b)


def test_labels_must_match_the_prior_kind():
    codes = torch.randint(0, 16, (2, 4, 4))
    with pytest.raises(ValueError, match="not class-conditional"):
        GatedPixelCNN(tiny_prior_config())(codes, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        GatedPixelCNN(tiny_prior_config(class_conditional=True))(codes)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        GatedPixelCNN(tiny_prior_config(class_conditional=True)).eval()(codes, torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match=r"\[0, 3\)"):  # training checks on the device, without waiting for it
        GatedPixelCNN(tiny_prior_config(class_conditional=True)).train()(codes, torch.tensor([0, 3]))


def test_log_prob_is_the_sum_of_per_position_log_probabilities():
    model = GatedPixelCNN(tiny_prior_config())
    codes = torch.randint(0, 16, (3, 4, 4))
    logits, loss = model(codes)
    per_position = torch.log_softmax(logits, 1).gather(1, codes[:, None]).squeeze(1)
    torch.testing.assert_close(model.log_prob(codes), per_position.sum(dim=(1, 2)))
    torch.testing.assert_close(loss, -per_position.mean())


@pytest.mark.parametrize("class_conditional", [False, True])
def test_sample_shape_range_and_seed_reproducibility(class_conditional):
    model = GatedPixelCNN(tiny_prior_config(class_conditional)).eval()
    labels = 1 if class_conditional else None
    a = model.sample(5, labels, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, labels, generator=torch.Generator().manual_seed(3))
    c = model.sample(5, labels, generator=torch.Generator().manual_seed(4))
    assert a.shape == (5, 4, 4) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 16
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_one_and_temperature_zero_are_greedy():
    model = GatedPixelCNN(tiny_prior_config()).eval()
    greedy = model.sample(3, temperature=0.0)
    top1 = model.sample(3, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)


def test_top_k_never_draws_outside_the_k_most_likely():
    logits = torch.randn(200, 50)
    picks = draw(logits.repeat(20, 1), temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    allowed = torch.topk(logits, 5, dim=1).indices.repeat(20, 1)
    assert (allowed == picks[:, None]).any(1).all()

"""The quantizers as a layer on any vectors: layouts, grouped and residual codes, straight-through, eval mode."""

import copy

import pytest
import torch

from stage1_vqvae.multi_quantizer import GroupedQuantizer, ResidualQuantizer, build_quantizer
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer, code_usage

D = 8
LAYOUTS = [((6, D), 1), ((3, 5, D), -1), ((2, D, 3, 4), 1)]  # (input shape, dim holding the D features)


def make(kind: str, dim: int, codebook_size: int = 16, ema: bool = True):
    """A quantizer by name: plain VQ, or 2 groups / 2 stages built from the plain ones."""
    common = dict(dead_code_threshold=0.0, dim=dim)
    if kind == "plain":
        return (EMAVectorQuantizer if ema else VectorQuantizer)(codebook_size, D, **common)
    return build_quantizer(codebook_size, D, **{kind: 2}, ema=ema, **common)


def lookup(q, indices: torch.Tensor, dim: int) -> torch.Tensor:
    """The code vectors of `indices`, placed back in the input's layout."""
    return q.embed_code(indices).movedim(-1, dim)


KINDS = ["plain", "groups", "stages"]


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,dim", LAYOUTS)
def test_output_is_the_lookup_of_its_indices(kind, ema, shape, dim):
    q = make(kind, dim, ema=ema).train()
    z = torch.randn(shape)
    q(z)  # initialise the codebooks from the data
    out, loss, indices = q.eval()(z)
    assert out.shape == z.shape and loss.ndim == 0
    codes_per_vector = () if kind == "plain" else (2,)
    vector_shape = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
    assert indices.shape == vector_shape + codes_per_vector and indices.dtype == torch.long
    torch.testing.assert_close(out, lookup(q, indices, dim), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_outputs_the_codes_its_search_chose_from(kind):
    q = build_quantizer(16, D, **({} if kind == "plain" else {kind: 2}), dim=-1, decay=0.5).train()
    z = torch.randn(64, D)
    q(z)  # initialise the codebooks from the data
    before = copy.deepcopy(q)  # the codebooks this step searches; the step then moves them (decay 0.5)
    out, _, indices = q(z)
    torch.testing.assert_close(out, lookup(before, indices, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_and_feature_maps_give_the_same_codes(kind):
    maps = make(kind, dim=1).eval()
    last = make(kind, dim=-1).eval()
    last.load_state_dict(maps.state_dict())
    z = torch.randn(2, D, 3, 4)
    out_maps, _, codes_maps = maps(z)
    out_last, _, codes_last = last(z.permute(0, 2, 3, 1))
    assert torch.equal(codes_maps, codes_last)
    torch.testing.assert_close(out_maps.permute(0, 2, 3, 1), out_last)


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_the_input_unchanged_through_straight_through(kind, ema):
    q = make(kind, dim=-1, ema=ema).train()
    z = torch.randn(5, 3, D, requires_grad=True)
    out, _, _ = q(z)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # the quantized output passes the gradient as if it were z


@pytest.mark.parametrize("kind", KINDS)
def test_commitment_loss_reaches_the_input(kind):
    q = make(kind, dim=-1).train()
    z = torch.randn(32, D, requires_grad=True)
    _, loss, _ = q(z)
    loss.backward()
    assert z.grad.abs().sum() > 0


def trained_mse(q, x: torch.Tensor, steps: int = 15) -> float:
    """Mean squared error of the codes after `steps` full-batch EMA updates on `x`."""
    q.train()
    for _ in range(steps):
        q(x)
    out, _, _ = q.eval()(x)
    return torch.mean((out - x) ** 2).item()


@pytest.mark.parametrize("kind", ["groups", "stages"])
def test_more_groups_or_stages_reconstruct_random_vectors_better(kind):
    x = torch.randn(2048, 16)
    errors = [trained_mse(build_quantizer(16, 16, **{kind: n}, dim=-1), x) for n in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.6 * errors[0], errors


@pytest.mark.parametrize("kind", KINDS)
def test_ema_variants_do_nothing_in_eval_mode(kind):
    q = make(kind, dim=-1, ema=True).train()
    q(torch.randn(64, D))
    q.eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(64, D) * 3)
    for name, value in q.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_codes_used_and_perplexity_per_group_and_stage():
    assert code_usage(torch.tensor([0, 0, 1, 1]), 8) == {"codes_used": 2, "perplexity": pytest.approx(2.0)}
    q = GroupedQuantizer(8, D, groups=2, dim=-1)
    codes = torch.tensor([[0, 5], [1, 5], [2, 5], [3, 5]])  # (N, G): group 0 uses 4 codes evenly, group 1 one
    usage = q.usage(codes)
    assert [u["codes_used"] for u in usage] == [4, 1]
    assert usage[0]["perplexity"] == pytest.approx(4.0) and usage[1]["perplexity"] == pytest.approx(1.0)
    assert len(ResidualQuantizer(8, D, stages=3).usage(torch.zeros(5, 3, dtype=torch.long))) == 3


def test_residual_code_is_the_sum_of_its_stages_and_grouped_the_concatenation():
    z = torch.randn(40, D)
    rq = ResidualQuantizer(8, D, stages=3, dim=-1).train()
    rq(z)
    codes = rq.eval()(z)[2]
    expected = sum(q.codebook[codes[:, i]] for i, q in enumerate(rq.quantizers))
    torch.testing.assert_close(rq.embed_code(codes), expected)
    gq = GroupedQuantizer(8, D, groups=4, dim=-1).train()
    gq(z)
    codes = gq.eval()(z)[2]
    expected = torch.cat([q.codebook[codes[:, i]] for i, q in enumerate(gq.quantizers)], -1)
    torch.testing.assert_close(gq.embed_code(codes), expected)
    assert gq.quantizers[0].embed_dim == D // 4


def test_quantizers_stay_fp32_under_bf16_autocast():
    for q in (make("plain", -1), make("groups", -1), make("stages", -1)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, loss, _ = q.train()(torch.randn(16, D).bfloat16())
        assert out.dtype == torch.float32 and loss.dtype == torch.float32


def test_stage1_checkpoint_keys_are_unchanged():
    assert set(VectorQuantizer(4, 2).state_dict()) == {"initialized", "usage", "embedding"}
    assert set(EMAVectorQuantizer(4, 2).state_dict()) == {"initialized", "usage", "embedding", "cluster_size",
                                                          "embed_sum"}


def test_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match="size 8 along dim -1"):
        make("plain", -1)(torch.randn(4, 6))
    with pytest.raises(ValueError, match="size 8 along dim 1"):
        make("stages", 1)(torch.randn(4, 6, 8))
    with pytest.raises(ValueError, match="equal groups"):
        GroupedQuantizer(8, 10, groups=4)
    with pytest.raises(ValueError, match="not both"):
        build_quantizer(8, 8, groups=2, stages=2)

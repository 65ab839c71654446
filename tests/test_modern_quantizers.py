"""The rotation-trick, factorised l2-normalised and finite scalar quantizers: contract, gradients, codes.

Their wiring into stage 1 and the vectors command: test_modern_quantizers_wiring.py.
"""

import copy
import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stage1_vqvae.modern_quantizers import FactorizedQuantizer, FiniteScalarQuantizer, RotationQuantizer, rotate_to
from stage1_vqvae.multi_quantizer import build_quantizer

D = 8
KINDS = ["rotation", "factorized", "fsq"]
LAYOUTS = [((6, D), 1), ((3, 5, D), -1), ((2, D, 3, 4), 1)]  # (input shape, dim holding the D features)
FSQ_LEVELS = {32: "4,4,2", 64: "4,4,4"}  # codebook size -> levels with that many codes


def make(kind: str, dim: int = -1, codebook_size: int = 64, dead_code_threshold: float = 0.0):
    """A quantizer of `kind` on D-dimensional vectors (FSQ: levels with `codebook_size` codes)."""
    if kind == "rotation":
        return RotationQuantizer(codebook_size, D, dead_code_threshold=dead_code_threshold, dim=dim)
    if kind == "factorized":
        return FactorizedQuantizer(codebook_size, D, factorized_dim=4, dead_code_threshold=dead_code_threshold, dim=dim)
    levels = tuple(int(n) for n in FSQ_LEVELS[codebook_size].split(","))
    return FiniteScalarQuantizer(codebook_size, D, levels, dim=dim)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,dim", LAYOUTS)
def test_output_is_the_code_of_its_indices_and_eval_moves_nothing(kind, shape, dim):
    q = make(kind, dim).train()
    z = torch.randn(shape)
    q(z)  # a codebook starts on the data
    trained = copy.deepcopy(q.state_dict())
    out, loss, indices = q.eval()(z * 3)
    assert all(torch.equal(value, trained[name]) for name, value in q.state_dict().items())  # eval moves nothing
    out, loss, indices = q(z)
    vector_shape = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
    assert out.shape == z.shape and loss.ndim == 0
    assert indices.shape == vector_shape and indices.dtype == torch.long
    assert 0 <= indices.min() and indices.max() < q.codebook_size
    torch.testing.assert_close(out, q.embed_code(indices).movedim(-1, dim), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.nearest_codes(z.movedim(dim, -1).reshape(-1, D)), indices.flatten(), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_outputs_the_codes_its_search_chose_from(kind):
    q = make(kind).train()
    z = torch.randn(64, D)
    q(z)
    before = copy.deepcopy(q)  # the codebook this step searches; EMA moves it afterwards
    out, _, indices = q(z)
    torch.testing.assert_close(out, before.embed_code(indices), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_input_and_every_projection(kind):
    q = make(kind).train()
    z = torch.randn(32, D, requires_grad=True)
    out, loss, _ = q(z)
    (out * torch.randn_like(out)).sum().add(loss).backward()
    assert z.grad.abs().sum() > 0
    parameters = dict(q.named_parameters())
    assert set(parameters) == ({"project_in.weight", "project_in.bias", "project_out.weight", "project_out.bias"}
                               if kind != "rotation" else set())  # rotation: an EMA codebook, no parameters
    for name, parameter in parameters.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def rotation_gradient(z: torch.Tensor, codes: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(lambda R)^T g row by row, with R = I - 2 r r^T + 2 q^ z^^T formed as a matrix (the paper's definition)."""
    rows = []
    for z_row, q_row, g_row in zip(z, codes, g):
        z_unit, q_unit = z_row / z_row.norm(), q_row / q_row.norm()
        r = (z_unit + q_unit) / (z_unit + q_unit).norm()
        eye = torch.eye(len(z_row), dtype=z.dtype)
        rotation = eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_unit, z_unit)
        torch.testing.assert_close(rotation @ z_unit, q_unit)  # it takes z's direction onto the code's...
        torch.testing.assert_close(rotation.T @ rotation, eye)  # ...and is a rotation
        rows.append(q_row.norm() / z_row.norm() * rotation.T @ g_row)
    return torch.stack(rows)


def test_rotate_to_gives_the_codes_forward_and_the_rotation_backward():
    torch.manual_seed(1)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    codes, g = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    out = rotate_to(z, codes)
    torch.testing.assert_close(out, codes)
    (out * g).sum().backward()
    torch.testing.assert_close(z.grad, rotation_gradient(z.detach(), codes, g))
    assert (z.grad - g).abs().max() > 0.1  # not the straight-through copy


def test_rotate_to_copes_with_opposite_and_zero_vectors():
    z = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    codes = torch.tensor([[-2.0, -4.0, 0.0], [1.0, 1.0, 1.0]])  # row 0: opposite to z; row 1: z is zero
    out = rotate_to(z, codes)
    torch.testing.assert_close(out, codes)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    z_unit = torch.tensor([1.0, 2.0, 0.0]) / math.sqrt(5)
    reflection = torch.eye(3) - 2 * torch.outer(z_unit, z_unit)  # R when q^ = -z^ (r = 0), lambda = 2
    torch.testing.assert_close(z.grad[0], 2 * reflection.T @ torch.ones(3))


def test_the_rotation_quantizer_passes_the_rotation_gradient_of_its_codes():
    q = make("rotation").train()
    q(torch.randn(256, D))
    q.eval()
    z = torch.randn(16, D, requires_grad=True)
    out, _, indices = q(z)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    codes = q.embed_code(indices)
    torch.testing.assert_close(z.grad, rotation_gradient(z.detach().double(), codes.double(), g.double()).float(),
                               rtol=1e-4, atol=1e-5)
    assert (z.grad - g).abs().max() > 0.1  # not the straight-through copy


def fsq_constants(levels):
    """The paper's bound, by hand: (half_l, offset, shift) per channel, as float64 tensors."""
    radix = torch.tensor(levels, dtype=torch.float64)
    half_l = (radix - 1) * (1 - 1e-3) / 2
    offset = torch.tensor([0.5 if n % 2 == 0 else 0.0 for n in levels], dtype=torch.float64)
    return half_l, offset, torch.tan(offset / half_l)


@pytest.mark.parametrize("levels", [(8, 8, 8), (8, 5, 5, 5), (3, 2)])
def test_fsq_reaches_every_code_and_its_indices_round_trip(levels):
    k, c = math.prod(levels), len(levels)
    q = FiniteScalarQuantizer(k, c, levels, dim=-1)
    with torch.no_grad():  # identity projections: the channels are the bounded inputs, the outputs the levels
        for layer in (q.project_in, q.project_out):
            layer.weight.copy_(torch.eye(c))
            layer.bias.zero_()
    digits = torch.tensor([combo[::-1] for combo in itertools.product(*(range(n) for n in levels[::-1]))])  # (K, C)
    centred = (digits - torch.tensor(levels) // 2).double()  # the integer level of each channel, code by code
    half_l, offset, shift = fsq_constants(levels)
    target = torch.maximum(torch.minimum(centred, half_l - offset - 0.25), -half_l - offset + 0.25)  # inside the bound
    z = (torch.atanh((target + offset) / half_l) - shift).float()  # what the bound maps onto each code's levels
    out, loss, indices = q(z)
    assert torch.equal(indices, torch.arange(k))  # every code reached, numbered first channel fastest
    assert loss.item() == 0
    torch.testing.assert_close(q.embed_code(indices), (centred / (torch.tensor(levels) // 2)).float())
    torch.testing.assert_close(out, q.embed_code(indices), rtol=0, atol=1e-6)
    wild = torch.randn(4096, c) * 10
    out, _, indices = q(wild)
    assert 0 <= indices.min() and indices.max() < k
    torch.testing.assert_close(out, q.embed_code(indices), rtol=0, atol=1e-6)
    assert torch.equal(q.nearest_codes(wild), indices)


@pytest.mark.parametrize("kind", KINDS)
def test_codes_get_used_on_random_data(kind):
    q = make(kind, dead_code_threshold=1.0).train()  # 64 codes, re-seeding on where there is a codebook
    x = torch.randn(2048, D)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-2) if list(q.parameters()) else None
    for step in range(8):
        out, loss, _ = q(x[step % 4 * 512:(step % 4 + 1) * 512])
        if optimizer is not None:  # the projections learn to carry the vectors
            optimizer.zero_grad()
            (loss + torch.nn.functional.mse_loss(out, x[step % 4 * 512:(step % 4 + 1) * 512])).backward()
            optimizer.step()
    _, _, indices = q.eval()(x)
    assert indices.unique().numel() >= 32


@pytest.mark.parametrize("kind", KINDS)
def test_feature_maps_and_channels_last_give_the_same_codes(kind):
    maps, last = make(kind, dim=1), make(kind, dim=-1)
    maps.train()(torch.randn(2, D, 4, 4))
    last.load_state_dict(maps.state_dict())
    z = torch.randn(2, D, 3, 4)
    out_maps, _, codes_maps = maps.eval()(z)
    out_last, _, codes_last = last.eval()(z.permute(0, 2, 3, 1))
    assert torch.equal(codes_maps, codes_last)
    torch.testing.assert_close(out_maps.permute(0, 2, 3, 1), out_last)


@pytest.mark.parametrize("kind", KINDS)
def test_quantizers_compute_in_fp32_under_bf16_autocast(kind):
    q = make(kind).train()
    q(torch.randn(64, D))
    q.eval()
    z = torch.randn(64, D).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss, indices = q(z)
        searched = q.nearest_codes(z)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    exact_out, _, exact_indices = q(z.float())  # the same values without autocast
    assert torch.equal(indices, exact_indices) and torch.equal(searched, exact_indices.flatten())
    assert torch.equal(out, exact_out)


class HostWaitSpy(TorchDispatchMode):
    """Records the operators that make the host wait for the device: a value read back, a shape read from data."""

    WAITING = {"_local_scalar_dense", "nonzero", "bincount", "_unique2", "unique_dim", "masked_select"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.WAITING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# training mode of the EMA codebooks runs stage1_vqvae.quantizer's own statistics, outside this module
@pytest.mark.parametrize("kind,training", [("fsq", True), ("fsq", False), ("rotation", False), ("factorized", False)])
def test_a_forward_and_backward_pass_never_makes_the_host_wait(kind, training):
    q = make(kind).train()
    q(torch.randn(64, D))
    q.train(training)
    z = torch.randn(64, D, requires_grad=True)
    with HostWaitSpy() as spy:
        out, loss, _ = q(z)
        (out.sum() + loss).backward()
        rotate_to(z, torch.randn(64, D)).sum().backward()
    assert spy.seen == []
    with HostWaitSpy() as spy:
        loss.detach().item()
    assert spy.seen == ["_local_scalar_dense"]  # the spy sees a read-back


def test_grouped_quantizers_take_the_new_ones_and_residual_stages_refuse_them():
    for quantizer, options in [(FiniteScalarQuantizer, {"levels": (4, 4)}), (RotationQuantizer, {}),
                               (FactorizedQuantizer, {"factorized_dim": 2})]:
        q = build_quantizer(16, D, groups=2, dim=-1, quantizer=quantizer, **options).train()
        z = torch.randn(40, D)
        q(z)
        out, _, codes = q.eval()(z)
        assert codes.shape == (40, 2)
        torch.testing.assert_close(out, q.embed_code(codes), rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="residual stages take"):
            build_quantizer(16, D, stages=2, quantizer=quantizer, **options)

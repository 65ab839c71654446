"""Vector quantizers: nearest-code search, straight-through gradients, codebook learning, EMA formula."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from foundation.runtime import configure_backend
from stage1_vqvae.model import VQVAE
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer

QUANTIZERS = [VectorQuantizer, EMAVectorQuantizer]


def distance_to_nearest(points, candidates):
    """Exact Euclidean distance from each point to its nearest candidate (cdist's matmul form is not exact)."""
    return ((points[:, None, :] - candidates[None]) ** 2).sum(-1).min(1).values.sqrt()


def make(cls, k=16, d=4, **kwargs):
    return cls(k, d, dead_code_threshold=0.0, **kwargs)


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 4, 3, 5), (8, 4, 8, 8)])
def test_indices_are_brute_force_argmin(cls, shape):
    q = make(cls).eval()
    z = torch.randn(shape)
    _, _, indices = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, shape[1])
    expected = ((flat[:, None, :] - q.codebook[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(indices.flatten(), expected)


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_output_is_codebook_lookup_of_indices(cls):
    q = make(cls).eval()
    out, _, indices = q(torch.randn(3, 4, 5, 5))
    lookup = q.codebook[indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out, lookup, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_gradient_reaches_the_encoder_through_straight_through(cls):
    q = make(cls).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out, loss, _ = q(z)
    (out.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_codebook_loss_moves_the_codebook_in_one_step():
    q = make(VectorQuantizer).train()
    q.initialized.fill_(True)  # no data initialisation: only the optimizer may move the codes
    before = q.embedding.detach().clone()
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1)
    _, loss, indices = q(torch.randn(4, 4, 3, 3))
    loss.backward()
    optimizer.step()
    used = indices.unique()
    assert q.embedding.grad[used].abs().sum() > 0
    assert not torch.allclose(q.embedding[used], before[used])


def test_ema_update_matches_the_formula_by_hand():
    decay, eps = 0.5, 1e-5
    q = EMAVectorQuantizer(3, 2, dead_code_threshold=0.0, decay=decay, eps=eps).train()
    q.initialized.fill_(True)
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    q._set_codes(torch.ones(3, dtype=torch.bool), codes)  # embedding = embed_sum = codes, cluster_size = 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # two vectors -> code 0, one -> code 1
    q(z.view(3, 2, 1, 1))  # (B, D, H, W) with H = W = 1: rows of z are the vectors

    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]])
    cluster = decay * torch.ones(3) + (1 - decay) * counts
    embed_sum = decay * codes + (1 - decay) * sums
    n = cluster.sum()
    smoothed = (cluster + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(q.cluster_size, cluster)
    torch.testing.assert_close(q.embed_sum, embed_sum)
    torch.testing.assert_close(q.embedding, embed_sum / smoothed[:, None])


def test_ema_does_nothing_in_eval_mode():
    q = make(EMAVectorQuantizer).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(4, 4, 3, 3))
    for name, value in q.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_first_training_batch_initialises_codes_from_data(cls):
    extra = {"decay": 1.0} if cls is EMAVectorQuantizer else {}  # decay 1: the EMA keeps the initial codes
    q = cls(8, 4, dead_code_threshold=0.0, **extra).train()
    z = torch.randn(4, 4, 3, 3)
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert bool(q.initialized)
    assert distance_to_nearest(q.codebook.detach(), flat).max() < 1e-6


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_dead_codes_are_reseeded_onto_encoder_outputs(cls):
    q = cls(8, 4, dead_code_threshold=1.0).train()
    q.initialized.fill_(True)
    far = torch.full((8, 4), 100.0)
    q._set_codes(torch.ones(8, dtype=torch.bool), far)  # nothing will ever be assigned to these codes...
    q.usage.fill_(0.5)  # ...and they are already below the threshold
    z = torch.randn(2, 4, 4, 4)
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    codebook = q.codebook.detach()
    # every code except the one that caught the whole batch now sits on an input vector
    on_data = distance_to_nearest(codebook, flat) < 1e-6
    assert on_data.sum() >= 7


def test_quantizer_stays_fp32_under_bf16_autocast(tiny_vqvae_config):
    model = VQVAE(tiny_vqvae_config).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_e = model.encoder(x)
        quantized, loss, _ = model.quantizer(z_e)
    assert z_e.dtype == torch.bfloat16
    assert quantized.dtype == torch.float32 and loss.dtype == torch.float32
    assert model.quantizer.codebook.dtype == torch.float32
    assert model.quantizer.usage.dtype == torch.float32


def test_vqvae_gradients_reach_encoder_and_decoder(tiny_vqvae_config):
    model = VQVAE(tiny_vqvae_config).train()
    _, loss, _ = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.decoder[-2].weight.grad.abs().sum() > 0


def test_encode_and_decode_indices_shapes_and_ranges(tiny_vqvae_config):
    model = VQVAE(tiny_vqvae_config).eval()
    idx = model.encode(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert idx.shape == (3, 8, 8) and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < tiny_vqvae_config.codebook_size
    x_hat = model.decode_indices(idx)
    assert x_hat.shape == (3, 3, 32, 32) and x_hat.abs().max() <= 1


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_a_code_used_in_the_batch_is_never_reseeded(cls):
    q = cls(4, 2, dead_code_threshold=40.0).train()
    q.initialized.fill_(True)
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0], [100.0, 100.0]])
    q._set_codes(torch.ones(4, dtype=torch.bool), codes)
    q.usage.zero_()  # all four codes are below the threshold; this batch uses codes 0-2, not code 3
    unseeded = copy.deepcopy(q)
    unseeded.dead_code_threshold = 0.0  # the same step without any re-seeding
    searched = q.codebook.detach().clone()  # the codebook the nearest-code search sees
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0], [-9.0, 5.0]]).view(4, 2, 1, 1)
    quantized, _, indices = q(z)
    unseeded(z)
    assert indices.flatten().tolist() == [0, 0, 1, 2]
    assert torch.equal(q.codebook[:3], unseeded.codebook[:3])  # the used codes kept this step's update
    assert distance_to_nearest(q.codebook[3:].detach(), z.view(4, 2)).item() < 1e-6  # the unused one moved
    torch.testing.assert_close(quantized.view(4, 2), searched[indices.flatten()], rtol=0, atol=1e-6)


@pytest.fixture
def training_backend():
    """The precision flags configure_backend sets for CUDA training (TF32 matmuls and convs), restored afterwards."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    configure_backend(torch.device("cuda"))
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[1:]


class MatmulPrecisionSpy(TorchDispatchMode):
    """Records the fp32 matmul precision in force at every matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "mm" in func.__name__:
            self.seen.append(torch.get_float32_matmul_precision())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_distances_run_in_full_fp32_while_training_allows_tf32(cls, training_backend):
    q = make(cls)
    with MatmulPrecisionSpy() as spy:
        q.nearest_codes(torch.randn(10, 4))
    assert spy.seen and set(spy.seen) == {"highest"}
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # the convolutions keep TF32


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_distances_ignore_autocast(cls):
    q = make(cls, k=64, d=8)
    q._set_codes(torch.ones(64, dtype=torch.bool), torch.randn(64, 8) + 20)  # far from 0: |z|^2 + |e|^2 - 2 z.e cancels badly
    flat = torch.randn(4096, 8) + 20
    exact = ((flat.double()[:, None] - q.codebook.double()[None]) ** 2).sum(-1)
    gap = exact.topk(2, largest=False).values.diff(dim=1).squeeze(1)
    clear = gap > 1e-3  # rows whose two nearest codes fp32 can tell apart
    with torch.autocast("cpu", dtype=torch.bfloat16):
        indices = q.nearest_codes(flat)
    assert clear.float().mean() > 0.9
    assert torch.equal(indices[clear], exact.argmin(1)[clear])

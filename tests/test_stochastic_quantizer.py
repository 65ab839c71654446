"""SQ-VAE's stochastic quantizer: contract, loss, gradients, annealing; its wiring into stage 1.

The contract tests it shares with the other quantizers (training, encoding, resume, the vectors command) run in
test_modern_quantizers_wiring.py.
"""

import math

import numpy as np
import pytest
import torch

from foundation.cli import UserError
from stage1_vqvae import StochasticQuantizer, VQVAE, VQVAEConfig, vectors
from stage1_vqvae.multi_quantizer import build_quantizer
from stage1_vqvae.stochastic_quantizer import gaussian_reconstruction
from tests.test_modern_quantizers import D, HostWaitSpy

LAYOUTS = [((6, D), -1), ((2, D, 3, 4), 1)]


def make(dim: int = -1, codebook_size: int = 16, **options) -> StochasticQuantizer:
    torch.manual_seed(0)
    return StochasticQuantizer(codebook_size, D, dim=dim, **options)


@pytest.mark.parametrize("shape,dim", LAYOUTS)
def test_eval_outputs_the_nearest_code_and_training_a_soft_mixture(shape, dim):
    q = make(dim)
    z = torch.randn(shape) * 2
    out, loss, indices = q.eval()(z)
    assert out.shape == z.shape and loss.ndim == 0 and indices.dtype == torch.long
    vectors = z.movedim(dim, -1).reshape(-1, D)
    nearest = torch.cdist(vectors, q.embedding).argmin(1)
    assert torch.equal(indices.flatten(), nearest) and torch.equal(q.nearest_codes(vectors), nearest)
    torch.testing.assert_close(out, q.embed_code(indices).movedim(-1, dim), rtol=0, atol=0)
    trained, _, train_indices = q.train()(z)
    assert torch.equal(train_indices, indices)  # the indices are the nearest codes in both modes
    assert not torch.allclose(trained, out)  # the training output is a draw, not the nearest code


def test_the_loss_is_the_discrete_and_continuous_kl_in_nats_per_dimension():
    q = make().eval()
    z = torch.randn(50, D) * 2
    out, loss, _ = q(z)
    variance = 1 + 20.0  # the paper's start: 1 + exp(log 20)
    log_p = torch.log_softmax(-torch.cdist(z, q.embedding) ** 2 / (2 * variance), dim=1)
    expected = (log_p.exp() * log_p).sum(1).mean() + ((z - out) ** 2).sum(1).mean() / (2 * variance)
    torch.testing.assert_close(loss, expected / D, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(make(loss_scale=1.0).eval()(z)[1], expected, rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_input_the_codebook_and_the_variance():
    q = make().train()
    z = torch.randn(32, D, requires_grad=True)
    out, loss, _ = q(z)
    (out * torch.randn_like(out)).sum().add(loss).backward()
    assert z.grad.abs().sum() > 0
    assert set(dict(q.named_parameters())) == {"embedding", "log_extra_variance"}
    assert q.embedding.grad.abs().sum() > 0 and q.log_extra_variance.grad.abs() > 0


def test_the_temperature_falls_with_training_steps_only():
    q = make(temperature_decay=0.1)
    z = torch.randn(8, D)
    q.eval()(z)
    assert q.steps.item() == 0 and q.temperature.item() == 1.0
    for _ in range(3):
        q.train()(z)
    assert q.steps.item() == 3
    torch.testing.assert_close(q.temperature, torch.tensor(math.exp(-0.3)))
    q.steps.fill_(10 ** 6)
    assert q.temperature.item() == pytest.approx(0.01)  # floored before the exponential underflows


def test_fitting_vectors_anneals_the_variance_and_uses_the_codes():
    torch.manual_seed(0)
    centres = torch.randn(12, D)  # vectors of unit scale, as encoders give: the paper's variance floor of 1 suits them
    x = centres[torch.randint(0, 12, (2048,))] + 0.03 * torch.randn(2048, D)
    q = StochasticQuantizer(32, D, dim=-1, temperature_decay=1e-2)
    optimizer = torch.optim.Adam(q.parameters(), lr=5e-2)
    start_variance = q.variance.item()
    for step in range(300):
        batch = x[step % 8 * 256:(step % 8 + 1) * 256]
        out, loss, _ = q.train()(batch)
        optimizer.zero_grad()
        (loss + gaussian_reconstruction(out, batch)).backward()
        optimizer.step()
    with torch.no_grad():
        out, _, indices = q.eval()(x)
    assert q.variance.item() < start_variance / 4  # self-annealing: the variance falls as the fit improves
    assert ((out - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum() < 0.1  # the mean vector gives 1
    assert indices.unique().numel() >= 10


def test_it_computes_in_fp32_under_bf16_autocast_and_never_makes_the_host_wait():
    q = make().train()
    z = torch.randn(64, D, requires_grad=True)
    with HostWaitSpy() as spy:
        out, loss, _ = q(z)
        (out.sum() + loss).backward()
    assert spy.seen == []
    q.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss, indices = q(z.detach().bfloat16())
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(indices, q(z.detach().bfloat16().float())[2])


def test_grouped_quantization_takes_it_and_the_gaussian_term_is_half_the_log_mse():
    q = build_quantizer(16, D, groups=2, dim=-1, quantizer=StochasticQuantizer).eval()
    out, _, codes = q(torch.randn(40, D))
    assert out.shape == (40, D) and codes.shape == (40, 2)
    x, x_hat = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(gaussian_reconstruction(x_hat, x), 0.5 * ((x_hat - x) ** 2).mean().log())


def test_stage_1_weighs_the_latent_loss_per_image_sub_pixel_and_needs_the_gaussian_term():
    cfg = VQVAEConfig(quantizer="stochastic", recon_loss="gaussian", levels=2, downsample=4, embed_dim=D,
                      hidden_channels=16, res_blocks=1)
    model = VQVAE(cfg)
    assert model.quantizer.loss_scale == pytest.approx(1 / 48)  # one 8 x 8 code per 4 x 4 x 3 sub-pixels
    assert model.top.quantizer.loss_scale == pytest.approx(1 / 192)
    with pytest.raises(UserError, match="add --recon-loss gaussian"):
        VQVAEConfig(quantizer="stochastic")
    assert VQVAEConfig(recon_loss="gaussian").quantizer == "ema"  # the Gaussian term works with any quantizer


def test_the_vectors_command_codes_with_it(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(12, D))[rng.integers(0, 12, 512)] + 0.03 * rng.normal(size=(512, D))).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    vectors.main(["--input", str(tmp_path / "emb.npy"), "--out-dir", str(tmp_path / "run"), "--codebook-size", "32",
                  "--batch-size", "32", "--epochs", "5", "--lr", "5e-2", "--device", "cpu", "--quantizer", "stochastic",
                  "--sq-temperature-decay", "1e-2"])
    codes = torch.from_numpy(np.load(tmp_path / "run" / "codes.npy").astype(np.int64))
    assert codes.shape == (512, 1) and codes.max() < 32
    with torch.no_grad():
        decoded = vectors.load_quantizer(tmp_path / "run" / "ckpt.pt").embed_code(codes).numpy()
    # the mean vector gives 1, an untrained codebook about 1.1; on fixed vectors SQ-VAE fits far worse than the EMA
    # codebook, whose test asks < 0.6 of other data (RESULTS.md: without an encoder its variance tends to grow)
    assert ((decoded - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum() < 0.8

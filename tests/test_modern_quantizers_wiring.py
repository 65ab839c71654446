"""The new quantizers wired into stage 1 and the vectors command: training, encoding, resume, flags."""

import copy
import io

import numpy as np
import pytest
import torch

from foundation.cli import UserError, build_parser, given_config_values, saved_config_from
from foundation.files import load_checkpoint
from foundation.optimization import Optimization
from foundation.training import STATE, StopSignal, restore, save_state
from stage1_vqvae import vectors
from stage1_vqvae.checkpoint import STAGE
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.encode import encode_to_files
from stage1_vqvae.metrics import evaluate
from stage1_vqvae.model import VQVAE
from stage1_vqvae.modern_quantizers import FiniteScalarQuantizer
from stage1_vqvae.shapes import make_shapes
from stage1_vqvae.train import train_epoch
from tests.test_modern_quantizers import D, FSQ_LEVELS, KINDS

WIRED = KINDS + ["stochastic"]  # SQ-VAE's quantizer: tests of its own in test_stochastic_quantizer.py


def tiny_config(quantizer: str, **overrides) -> VQVAEConfig:
    """A VQ-VAE of 32 codes (FSQ: levels 4,4,2) that trains in milliseconds per step."""
    values = dict(codebook_size=32, embed_dim=D, hidden_channels=16, res_blocks=1, quantizer=quantizer,
                  fsq_levels=FSQ_LEVELS[32], factorized_dim=4, precision="fp32", device="cpu",
                  recon_loss="gaussian" if quantizer == "stochastic" else "l1")
    return VQVAEConfig(**{**values, **overrides})


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("quantizer", WIRED)
def test_a_vqvae_with_each_quantizer_trains_encodes_and_round_trips(tmp_path, quantizer, levels):
    cfg = tiny_config(quantizer, levels=levels)
    model = VQVAE(cfg).train()
    images = make_shapes(8, seed=0).images
    x = images.float() / 127.5 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.encoder.state_dict())
    _, loss, _ = model(x)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(model.encoder.state_dict()["0.weight"], before["0.weight"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = VQVAE(cfg)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), loaded.eval()
    x_hat, _, parts = model(x)
    assert torch.equal(loaded(x)[0], x_hat)
    codes = model.encode_levels(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, parts["level_indices"]))  # encode agrees with the forward pass
    assert all(torch.equal(a, b) for a, b in zip(codes, loaded.encode_levels(x)))
    torch.testing.assert_close(model.decode_indices(model.encode(x)), x_hat)
    paths = [tmp_path / f"level{i}.npy" for i in range(levels)]
    encode_to_files(model, images, paths, 4, torch.device("cpu"), "encode")
    assert all(np.array_equal(np.load(path), c.numpy()) for path, c in zip(paths, codes))
    metrics = evaluate(model, images, torch.device("cpu"), "fp32")
    assert 1 <= metrics["codes_used"] <= 32 and 1 <= metrics["perplexity"] <= 32


@pytest.mark.parametrize("quantizer", WIRED)
def test_resumed_training_is_bitwise_the_uninterrupted_run(tmp_path, quantizer):
    cfg = tiny_config(quantizer, batch_size=8, epochs=2, lr=1e-3, lr_schedule="constant", warmup_fraction=0.0,
                      dead_code_threshold=40.0)  # codes fall dead within the run: re-seeding draws random numbers
    images, device = make_shapes(32, seed=0).images, torch.device("cpu")

    def start(state):
        torch.manual_seed(0)
        model = VQVAE(cfg)
        optimization = Optimization.build(model, cfg.optimizer_settings(), 8, device)
        return model, optimization, restore(state, model, optimization, tmp_path)

    def epoch(model, optimization, progress):
        with StopSignal() as stop:
            train_epoch(model, optimization, images, cfg, device, progress, stop)
        progress.record_epoch(0.0, model, {})

    model, optimization, progress = start(None)
    epoch(model, optimization, progress)
    save_state(tmp_path, STAGE, cfg, model, optimization, progress)
    epoch(model, optimization, progress)
    resumed, resumed_optimization, resumed_progress = start(load_checkpoint(tmp_path / STATE, STAGE))
    epoch(resumed, resumed_optimization, resumed_progress)
    assert resumed_progress.step == progress.step == 8
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_quantizer_flags_parse_and_refuse_what_cannot_work():
    args = build_parser(VQVAEConfig, "").parse_args(["--quantizer", "fsq", "--fsq-levels", "8,5,5,5", "--codebook-size",
                                                     "1000", "--factorized-dim", "8"])
    cfg = VQVAEConfig(**given_config_values(VQVAEConfig, args))
    assert isinstance(VQVAE(cfg).quantizer, FiniteScalarQuantizer) and VQVAE(cfg).quantizer.levels == (8, 5, 5, 5)
    assert VQVAEConfig().quantizer == "ema"  # the default stays
    with pytest.raises(UserError, match="make 512 codes .* pass --codebook-size 512"):
        VQVAEConfig(quantizer="fsq", codebook_size=256)
    with pytest.raises(UserError, match="top-codebook-size"):
        VQVAEConfig(quantizer="fsq", levels=2, top_codebook_size=64)
    with pytest.raises(UserError, match="integers of at least 2"):
        VQVAEConfig(quantizer="fsq", fsq_levels="8,x,8")
    with pytest.raises(UserError, match="integers of at least 2"):
        VQVAEConfig(quantizer="fsq", fsq_levels="512,1", codebook_size=512)
    with pytest.raises(UserError, match="--factorized-dim must be >= 1"):
        VQVAEConfig(quantizer="factorized", factorized_dim=0)
    VQVAEConfig(fsq_levels="nonsense")  # only --quantizer fsq reads the levels
    saved = {k: v for k, v in vars(VQVAEConfig()).items() if k not in ("factorized_dim", "fsq_levels")}
    assert saved_config_from(VQVAEConfig, saved).quantizer == "ema"  # configs saved before the flags still load


def write_clusters(path, n=512, clusters=6):
    """`n` float32 vectors of size D near `clusters` random centres."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(clusters, D))[rng.integers(0, clusters, n)] * 3 + 0.05 * rng.normal(size=(n, D))
    np.save(path, x.astype(np.float32))
    return x.astype(np.float32)


@pytest.mark.parametrize("extra,codes_per_vector", [
    (["--quantizer", "rotation"], 1), (["--quantizer", "factorized", "--factorized-dim", "4"], 1),
    (["--quantizer", "fsq", "--fsq-levels", "4,4,4"], 1),
    (["--quantizer", "fsq", "--fsq-levels", "8,8", "--groups", "2"], 2)])
def test_the_vectors_command_codes_with_each_quantizer(tmp_path, extra, codes_per_vector):
    x = write_clusters(tmp_path / "emb.npy")
    out = tmp_path / "run"
    vectors.main(["--input", str(tmp_path / "emb.npy"), "--out-dir", str(out), "--codebook-size", "64",
                  "--batch-size", "64", "--epochs", "10", "--lr", "3e-2", "--device", "cpu", *extra])
    codes = torch.from_numpy(np.load(out / "codes.npy").astype(np.int64))
    assert codes.shape == (512, codes_per_vector) and codes.max() < 64
    with torch.no_grad():
        decoded = vectors.load_quantizer(out / "ckpt.pt").embed_code(codes).numpy()
    assert ((decoded - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum() < 0.6  # the mean vector gives 1; untrained ~1.1


@pytest.mark.parametrize("extra,message", [(["--quantizer", "fsq"], "make 512 codes"),
                                           (["--quantizer", "factorized", "--stages", "2"], "--stages takes"),
                                           (["--factorized-dim", "0"], "--factorized-dim must be at least 1")])
def test_the_vectors_command_refuses_what_cannot_work(tmp_path, capsys, extra, message):
    write_clusters(tmp_path / "emb.npy", n=64)
    with pytest.raises(SystemExit):
        vectors.main(["--input", str(tmp_path / "emb.npy"), "--out-dir", str(tmp_path / "run"), "--codebook-size",
                      "64", "--device", "cpu", *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]

"""Checkpoints: round trips give identical outputs; broken, foreign or malicious files are refused clearly."""

import dataclasses
import os

import pytest
import torch

from foundation.cli import UserError
from foundation.files import load_checkpoint, save_checkpoint
from stage1_vqvae import load_vqvae
from stage1_vqvae.model import VQVAE
from stage2_prior import load_prior
from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config


def trained_vqvae(cfg):
    model = VQVAE(cfg).train()
    model(torch.rand(4, 3, 32, 32) * 2 - 1)  # initialises the codebook from data, updates EMA buffers
    return model.eval()


def test_vqvae_round_trip_gives_identical_outputs(tmp_path, tiny_vqvae_config):
    model = trained_vqvae(tiny_vqvae_config)
    save_checkpoint(tmp_path / "ckpt.pt", "vqvae", dataclasses.asdict(model.cfg), model.state_dict())
    loaded = load_vqvae(tmp_path / "ckpt.pt", device="cpu")
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert not loaded.training
    assert torch.equal(loaded.encode(x), model.encode(x))
    idx = model.encode(x)
    assert torch.equal(loaded.decode_indices(idx), model.decode_indices(idx))


def test_prior_round_trip_gives_identical_outputs(tmp_path):
    model = GatedPixelCNN(tiny_prior_config(class_conditional=True)).eval()
    save_checkpoint(tmp_path / "ckpt.pt", "prior", dataclasses.asdict(model.cfg), model.state_dict())
    loaded = load_prior(tmp_path / "ckpt.pt")
    codes, labels = torch.randint(0, 16, (3, 4, 4)), torch.tensor([0, 1, 2])
    assert torch.equal(loaded.log_prob(codes, labels), model.log_prob(codes, labels))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(loaded.sample(4, 1, generator=g()), model.sample(4, 1, generator=g()))


@pytest.fixture
def good_checkpoint(tmp_path, tiny_vqvae_config):
    model = VQVAE(tiny_vqvae_config)
    path = tmp_path / "good.pt"
    save_checkpoint(path, "vqvae", dataclasses.asdict(model.cfg), model.state_dict())
    return path


@pytest.mark.parametrize("corrupt", ["empty", "truncated", "random"])
def test_broken_checkpoints_are_clear_errors(tmp_path, good_checkpoint, corrupt):
    data = good_checkpoint.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(4096)}[corrupt])
    with pytest.raises(UserError, match="bad.pt"):
        load_vqvae(bad)


def test_wrong_stage_is_named(good_checkpoint):
    with pytest.raises(UserError, match="'vqvae' checkpoint, expected a 'prior'"):
        load_prior(good_checkpoint)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vqvae(tmp_path / "nothing.pt")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = None


def test_pickled_code_is_refused_without_running(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "stage": "vqvae", "config": {}, "model": {}, "payload": RunsCode()}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path, "vqvae")
    assert not MARKER.exists()

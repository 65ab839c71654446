"""tools.sample: reproducible samples, and a clear refusal to decode with the wrong stage-1 checkpoint."""

import dataclasses

import numpy as np
import pytest
import torch

from foundation.files import save_checkpoint, sha256_file
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config
from tools import sample


def make_checkpoints(tmp_path, class_conditional=False):
    """A tiny stage-1 checkpoint and a prior that records it as the source of its codes."""
    vq_cfg = VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1)
    vqvae_path = tmp_path / "vqvae.pt"
    save_checkpoint(vqvae_path, "vqvae", dataclasses.asdict(vq_cfg), VQVAE(vq_cfg).state_dict())
    prior_cfg = tiny_prior_config(class_conditional, grid_height=8, grid_width=8, stage1_checkpoint=str(vqvae_path),
                                  stage1_sha256=sha256_file(vqvae_path))
    prior_path = tmp_path / "prior.pt"
    save_checkpoint(prior_path, "prior", dataclasses.asdict(prior_cfg), GatedPixelCNN(prior_cfg).state_dict())
    return vqvae_path, prior_path


def run_sample(prior_path, out_dir, *extra):
    sample.main(["--prior", str(prior_path), "--out-dir", str(out_dir), "--n", "5", "--device", "cpu", *extra])


def test_same_seed_same_samples_and_files(tmp_path):
    _, prior_path = make_checkpoints(tmp_path)
    run_sample(prior_path, tmp_path / "a", "--seed", "4")
    run_sample(prior_path, tmp_path / "b", "--seed", "4")
    run_sample(prior_path, tmp_path / "c", "--seed", "5")
    a, b, c = (np.load(tmp_path / d / "samples.npy") for d in "abc")
    assert a.shape == (5, 8, 8) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0


def test_class_conditional_samples_record_their_labels(tmp_path):
    _, prior_path = make_checkpoints(tmp_path, class_conditional=True)
    run_sample(prior_path, tmp_path / "out", "--class", "2")
    assert np.load(tmp_path / "out" / "samples_labels.npy").tolist() == [2] * 5


def test_decoding_with_another_stage1_checkpoint_is_refused(tmp_path, capsys):
    _, prior_path = make_checkpoints(tmp_path)
    other = tmp_path / "other.pt"
    cfg = VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1)
    torch.manual_seed(1)
    save_checkpoint(other, "vqvae", dataclasses.asdict(cfg), VQVAE(cfg).state_dict())
    with pytest.raises(SystemExit) as exit_info:
        run_sample(prior_path, tmp_path / "out", "--vqvae", str(other))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "other.pt" in err and "sha256" in err
    assert not (tmp_path / "out" / "samples.npy").exists()


@pytest.mark.parametrize("flags, message", [(["--class", "1"], "class-conditional"), (["--n", "0"], "--n"),
                                            (["--temperature", "-1"], "--temperature"), (["--top-k", "0"], "--top-k")])
def test_bad_sampling_flags_are_clear_errors(tmp_path, capsys, flags, message):
    _, prior_path = make_checkpoints(tmp_path)
    with pytest.raises(SystemExit):
        run_sample(prior_path, tmp_path / "out", *flags)
    assert message in capsys.readouterr().err

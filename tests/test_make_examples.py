"""The README's make examples that act on a finished stage do what they say (slow: tiny runs of the make targets)."""

import json

import pytest

from tests.test_end_to_end import TINY, make

pytestmark = pytest.mark.slow
VQVAE_TINY = next(arg for arg in TINY if arg.startswith("VQVAE_ARGS="))
PRIOR_TINY = next(arg for arg in TINY if arg.startswith("PRIOR_ARGS="))


def metrics_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_only_evaluates_a_finished_stage_1_and_leaves_its_checkpoint(tmp_path):
    run = tmp_path / "runs"
    make("train-vqvae", run)
    checkpoint = (run / "vqvae/ckpt.pt").read_bytes()
    result = make("train-vqvae", run, f"{VQVAE_TINY} --eval-only")
    assert "stage1_vqvae.train" in result.stdout  # make ran the command although ckpt.pt exists
    assert (run / "vqvae/eval_recon.png").is_file()
    report = json.loads((run / "vqvae/eval.json").read_text())
    assert 0 < report["psnr"] < 60 and report["checkpoint"].endswith("ckpt.pt")
    assert (run / "vqvae/ckpt.pt").read_bytes() == checkpoint


def test_fresh_retrains_a_finished_stage(tmp_path):
    run = tmp_path / "runs"
    make("train-prior", run)
    for stage, target, args in [("prior", "train-prior", f"{PRIOR_TINY} --fresh --seed 7"),
                                ("vqvae", "train-vqvae", f"{VQVAE_TINY} --fresh --seed 7")]:
        before = (run / stage / "ckpt.pt").read_bytes()
        make(target, run, args)
        assert (run / stage / "ckpt.pt").read_bytes() != before, stage  # another seed: other weights
        config = json.loads((run / stage / "config.json").read_text())
        assert config["seed"] == 7 and len(metrics_lines(run / stage / "metrics.jsonl")) == 1, stage

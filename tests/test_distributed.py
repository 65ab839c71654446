"""Data-parallel training with torchrun on CPU (gloo, 2 processes): ranks agree and resume, one step equals one
process's, a dead rank fails the job fast."""

import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
WORKER = str(ROOT / "tests" / "ddp_worker.py")


def torchrun(nproc, *args, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def load(path):
    return torch.load(path, weights_only=True)


def optimizer_tensors(state):
    return [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]


@pytest.mark.parametrize("quantizer", ["ema", "codebook", "stochastic"])
def test_codebook_weights_and_optimizer_are_identical_on_every_rank(tmp_path, quantizer):
    result = torchrun(2, WORKER, "--out", str(tmp_path), "--quantizer", quantizer)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load(tmp_path / "rank0.pt"), load(tmp_path / "rank1.pt")
    assert a["step"] == b["step"] == 32
    assert_same_states(a, b)


def test_two_processes_with_half_batches_take_the_step_of_one_process(tmp_path):
    """From the same start on the same global batch, one step differs only by float summation order.

    Only one step: the ranks add up gradients and EMA sums in another order than one process, so the weights
    then differ by about 1e-7, and an encoder output whose two nearest codes are about as close to a tie goes
    to the other code (measured with oneDNN limited to AVX2: at step 8, squared distances 1.1e-7 apart); from
    there the runs differ by code updates, not rounding (0.03 after 32 steps). When that happens depends on
    the CPU's kernels. tests/test_ddp_quantizer.py shows the quantizer keeps one process's codebook exactly.
    """
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one_step = ["--images", "32", "--epochs", "1"]
    assert torchrun(1, WORKER, "--out", str(tmp_path / "one"), "--batch-size", "32", *one_step).returncode == 0
    assert torchrun(2, WORKER, "--out", str(tmp_path / "two"), "--batch-size", "16", *one_step).returncode == 0
    one, two = load(tmp_path / "one" / "rank0.pt"), load(tmp_path / "two" / "rank0.pt")
    assert one["step"] == two["step"] == 1
    for name, value in one["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["model"][name], value, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(two["model"][name], value), name


def assert_same_states(a, b):
    """Two saved worker states hold bitwise the same weights, buffers and optimizer tensors."""
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert all(torch.equal(x, y) for x, y in zip(optimizer_tensors(a), optimizer_tensors(b)))


def test_ranks_with_their_own_generators_keep_one_codebook_through_a_kill_and_resume(tmp_path):
    """Each rank's generator differs (as each GPU's does): re-seeds must not depend on it; each rank resumes its own."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    args = ["--rank-generators", "--epochs", "3"]
    assert torchrun(2, WORKER, "--out", str(whole), *args).returncode == 0
    assert_same_states(load(whole / "rank0.pt"), load(whole / "rank1.pt"))
    assert torchrun(2, WORKER, "--out", str(killed), *args, "--kill-after", "20").returncode != 0
    assert (killed / "state.pt").exists() and not (killed / "rank0.pt").exists()
    result = torchrun(2, WORKER, "--out", str(killed), *args)  # resumes from the end of epoch 1 (step 16)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load(killed / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["step"] == 48 and ranks[0]["reseeded_codes"] > 0  # dead codes were re-seeded after the resume
    assert_same_states(ranks[0], ranks[1])
    for rank, resumed in enumerate(ranks):
        uninterrupted = load(whole / f"rank{rank}.pt")
        assert_same_states(uninterrupted, resumed)
        assert torch.equal(uninterrupted["rng"], resumed["rng"]), f"rank {rank} did not resume its own generator"


def test_a_dead_rank_fails_the_job_promptly(tmp_path):
    start = time.perf_counter()
    result = torchrun(2, WORKER, "--out", str(tmp_path), "--die-rank", "1", timeout=240)
    assert result.returncode != 0
    assert time.perf_counter() - start < 120
    assert not (tmp_path / "rank0.pt").exists()


def test_make_targets_train_both_stages_on_two_processes(tmp_path):
    run = tmp_path / "runs"
    command = ["make", "--no-print-directory", "train-prior", f"RUN_DIR={run}", f"PY={sys.executable}", "NEED_VENV=",
               "NPROC=2", "DATASET=shapes", "EPOCHS=1", "PRIOR_EPOCHS=1", "DEVICE=cpu",
               "VQVAE_ARGS=--shapes-train 256 --shapes-test 64 --codebook-size 32 --hidden-channels 16 --batch-size 32",
               "PRIOR_ARGS=--hidden-channels 16 --layers 2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 processes x batch 32 = global batch 64" in result.stdout
    for stage in ("vqvae", "prior"):
        assert (run / stage / "ckpt.pt").is_file()
        log = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert len(log) == 1 and log[0]["processes"] == 2

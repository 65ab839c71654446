"""Interrupted runs lose nothing: kill, resume, compare with an uninterrupted run; atomic saves; NaN guards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from foundation.cli import UserError
from foundation.files import TMP_PREFIX, save_checkpoint
from foundation.optimization import Optimization
from foundation.training import Progress, optimize, prepare_run, set_rng_states, trim_metrics
from stage1_vqvae.config import VQVAEConfig
from tests.conftest import ROOT

STAGE1 = ["-m", "stage1_vqvae.train", "--dataset", "shapes", "--shapes-train", "4096", "--shapes-test", "64",
          "--codebook-size", "32", "--hidden-channels", "16", "--batch-size", "16", "--epochs", "3", "--device", "cpu"]
# the adversarial stage 1 at 16 px: its classifier (trained once, then copied into each run folder) takes seconds
STAGE1_ADVERSARIAL = [*STAGE1[:STAGE1.index("--shapes-train")], "--shapes-train", "2048",
                      *STAGE1[STAGE1.index("--shapes-test"):], "--image-size", "16", "--adversarial-weight", "0.5",
                      "--adversarial-start", "0.2", "--adversarial-ramp", "0.2", "--discriminator-channels", "8"]
STAGE2 = ["-m", "stage2_prior.train", "--hidden-channels", "16", "--layers", "2", "--batch-size", "32", "--weight-ema", "0.9",
          "--class-conditional", "--label-dropout", "0.3", "--epochs", "3", "--device", "cpu"]  # labels dropped resumably


def write_random_codes(folder, n=3000):
    """A codes folder as stage1_vqvae.encode writes it, with random 4x4 maps over 16 codes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in [("train", n), ("test", n // 10)]:
        np.save(folder / f"{split}.npy", rng.integers(0, 16, (count, 4, 4)).astype(np.uint8))
        np.save(folder / f"{split}_labels.npy", np.zeros(count, np.int64))
    meta = {"codebook_size": 16, "grid_shape": [4, 4], "counts": {"train": n, "test": n // 10}, "num_classes": 1,
            "stage1_sha256": "0" * 64, "stage1_checkpoint": "none.pt"}
    (folder / "meta.json").write_text(json.dumps(meta))


def command(stage_args, out_dir, codes_dir):
    extra = ["--codes-dir", str(codes_dir)] if "stage2_prior.train" in stage_args else []
    return [sys.executable, *stage_args, "--out-dir", str(out_dir), *extra]


def run(cmd):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def start_and_interrupt(cmd, out_dir, sig):
    """Start a run, wait until its first epoch is saved, then send `sig` a moment later (mid-epoch)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out_dir / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before saving its first epoch"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def final_weights(out_dir):
    return torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each stage trained once without interruption: {stage args: run folder}."""
    base = tmp_path_factory.mktemp("uninterrupted")
    write_random_codes(base / "codes")
    runs = {}
    for name, args in [("stage1", STAGE1), ("stage1-adversarial", STAGE1_ADVERSARIAL), ("stage2", STAGE2)]:
        run(command(args, base / name, base / "codes"))
        runs[name] = base / name
    return base, runs


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage1-adversarial", "stage2"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, uninterrupted, stage, sig):
    base, reference = uninterrupted
    args = {"stage1": STAGE1, "stage1-adversarial": STAGE1_ADVERSARIAL, "stage2": STAGE2}[stage]
    cmd = command(args, tmp_path / "run", base / "codes")
    if stage == "stage1-adversarial":
        (tmp_path / "run").mkdir()
        shutil.copy(reference[stage] / "classifier.pt", tmp_path / "run")
    returncode, stderr = start_and_interrupt(cmd, tmp_path / "run", sig)
    if sig == signal.SIGTERM:
        assert returncode == 128 + signal.SIGTERM and "state saved" in stderr
    else:
        assert returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "ckpt.pt").exists()

    resumed = run(cmd)
    assert "resuming from epoch" in resumed.stdout
    expected, got = final_weights(reference[stage]), final_weights(tmp_path / "run")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name  # bitwise: CPU kernels are deterministic
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert_same_schedule_and_average(reference[stage] / "state.pt", tmp_path / "run" / "state.pt")


def assert_same_schedule_and_average(expected_path, got_path):
    """The learning-rate schedule, the weight average (stage 2) and the discriminator with its optimizer (adversarial
    stage 1) ended where the uninterrupted run's did."""
    expected, got = (torch.load(path, weights_only=True) for path in (expected_path, got_path))
    assert expected["scheduler"] == got["scheduler"] and got["scheduler"]["last_epoch"] > 0
    assert ("ema" in expected) == ("ema" in got) and ("adversary" in expected) == ("adversary" in got)
    for name, value in expected.get("ema", {}).items():
        assert torch.equal(value, got["ema"][name]), name
    if "adversary" in expected:
        assert expected["adversary"]["start_step"] == got["adversary"]["start_step"] > 0
        for name, value in expected["adversary"]["discriminator"].items():
            assert torch.equal(value, got["adversary"]["discriminator"][name]), name
        moments = [(e["exp_avg"], g["exp_avg"]) for e, g in zip(expected["adversary"]["optimizer"]["state"].values(),
                                                                 got["adversary"]["optimizer"]["state"].values())]
        assert moments and all(torch.equal(e, g) for e, g in moments)


@pytest.mark.slow
def test_finished_stage_rerun_is_a_no_op(uninterrupted):
    base, reference = uninterrupted
    before = {p.name: p.stat().st_mtime_ns for p in reference["stage1"].iterdir()}
    result = run(command(STAGE1, reference["stage1"], base / "codes"))
    assert "already trained" in result.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in reference["stage1"].iterdir()}


def test_save_interrupted_before_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, "vqvae", {}, {"w": torch.ones(3)})
    good = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(UserError, match="could not write .*No space left"):
        save_checkpoint(path, "vqvae", {}, {"w": torch.zeros(3)})
    assert path.read_bytes() == good
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_stale_temporaries_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / f"{TMP_PREFIX}state.pt.abc123").write_bytes(b"half a checkpoint")
    prepare_run(VQVAEConfig, {"out_dir": str(out)}, "vqvae", fresh=False)
    assert not list(out.glob(TMP_PREFIX + "*"))


def test_nan_loss_skips_the_step_on_the_device_and_stops_at_the_next_read():
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.tensor([[float("nan"), 1.0]])).sum()
    optimization = Optimization.build(model, VQVAEConfig().optimizer_settings(), 10, torch.device("cpu"))
    progress = Progress()
    optimize(loss, model, optimization, progress)  # no read: the step is skipped, not reported yet
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optimize(model(torch.ones(1, 2)).sum(), model, optimization, progress)  # a finite step after it moves on
    assert not torch.equal(before[0], model.weight)
    with pytest.raises(UserError, match="loss became nan at epoch 1, step 1;"):
        progress.read()


def test_infinite_gradient_skips_the_step_and_stops_at_the_next_read():
    model = torch.nn.Linear(2, 1)
    model.weight.register_hook(lambda grad: grad * float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    optimization = Optimization.build(model, VQVAEConfig().optimizer_settings(), 10, torch.device("cpu"))
    progress = Progress()
    optimize(model(torch.ones(1, 2)).sum(), model, optimization, progress)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(UserError, match="gradient became"):
        progress.epoch_means()


def test_non_finite_epoch_is_never_the_best():
    progress, model = Progress(), torch.nn.Linear(1, 1)
    assert progress.record_epoch(2.0, model, {})
    assert not progress.record_epoch(float("nan"), model, {})
    assert not progress.record_epoch(float("-inf"), model, {})
    assert progress.best_metric == 2.0 and progress.best_epoch == 1


def test_metrics_log_is_trimmed_to_the_resume_point(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in [1, 2, 3]))
    trim_metrics(log, 2)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_rank_restores_its_own_generator_and_old_state_files_still_load():
    mine, rank_one = torch.manual_seed(1).get_state(), torch.manual_seed(2).get_state()
    set_rng_states({"torch": rank_one, "ranks": {0: {"torch": mine}, 1: {"torch": rank_one}}})  # this process is rank 0
    assert torch.equal(torch.get_rng_state(), mine)
    set_rng_states({"torch": rank_one})  # written before per-rank states: rank 0's serve every rank
    assert torch.equal(torch.get_rng_state(), rank_one)


def test_the_running_sums_kept_on_the_device_are_each_values_own():
    """Values added in separate calls (the adversarial run's discriminator loss after the step's) keep their own sums,
    equal to the float sums of the values read one by one, and continue across reads."""
    progress, expected = Progress(), {}
    for step, (loss, recon, other) in enumerate([(0.5, 0.25, 3.0), (0.125, 1.5, -2.0), (1 / 3, 0.1, 0.7)]):
        progress.add(loss=torch.tensor(loss), recon=torch.tensor(recon))
        progress.add(discriminator_loss=torch.tensor(other))
        for name, value in (("loss", loss), ("recon", recon), ("discriminator_loss", other)):
            expected[name] = expected.get(name, 0.0) + float(torch.tensor(value))  # float32 values, float64 sums
        if step == 1:
            progress.read()  # a read in the middle changes nothing
    progress.read()
    assert progress.sums == expected

"""The four make targets, chained, on tiny built-in data (slow: about a minute on 2 CPU cores)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

TINY = [
    "DATASET=shapes", "EPOCHS=1", "PRIOR_EPOCHS=1", "N_SAMPLES=6", "DEVICE=cpu",
    "VQVAE_ARGS=--shapes-train 192 --shapes-test 64 --codebook-size 32 --hidden-channels 32 --batch-size 64",
    "PRIOR_ARGS=--hidden-channels 16 --layers 2",
    "SAMPLE_ARGS=--seed 3",
]


def make(target, run_dir, *extra):
    """Run a make target with this interpreter (no virtual environment needed) and return the result."""
    command = ["make", "--no-print-directory", target, f"RUN_DIR={run_dir}", f"PY={sys.executable}", "NEED_VENV=",
               *TINY, *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_make_sample_runs_every_stage_then_nothing(tmp_path):
    run = tmp_path / "runs"
    make("sample", run)
    for artifact in ["vqvae/ckpt.pt", "vqvae/config.json", "vqvae/metrics.jsonl", "vqvae/recon_epoch001.png",
                     "codes/train.npy", "codes/val.npy", "codes/test.npy", "codes/train_labels.npy",
                     "codes/val_labels.npy", "codes/test_labels.npy",
                     "codes/meta.json", "prior/ckpt.pt", "prior/config.json", "prior/metrics.jsonl",
                     "samples/samples.png", "samples/samples.npy"]:
        assert (run / artifact).is_file(), artifact

    meta = json.loads((run / "codes/meta.json").read_text())
    assert meta["codebook_size"] == 32 and meta["grid_shape"] == [8, 8]
    assert meta["counts"] == {"train": 384, "val": 19, "test": 64} and meta["dataset"] == "shapes"  # train mirrored
    train = np.load(run / "codes/train.npy")
    assert train.shape == (384, 8, 8) and train.dtype == np.uint8 and train.max() < 32
    samples = np.load(run / "samples/samples.npy")
    assert samples.shape == (6, 8, 8) and samples.max() < 32
    prior_log = [json.loads(line) for line in (run / "prior/metrics.jsonl").read_text().splitlines()]
    assert 0 < prior_log[-1]["test_bits_per_code"] < 20 and 0 < prior_log[-1]["val_bits_per_code"] < 20
    assert json.loads((run / "vqvae/config.json").read_text())["val_split"] == "19 generated shapes, seed 2"

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = make("sample", run)
    assert "python" not in again.stdout, again.stdout  # nothing was rebuilt
    assert stamps == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}

    # Re-encoding with the same checkpoint gives identical files; the same seed gives the same samples.
    before = {name: (run / "codes" / name).read_bytes() for name in ["train.npy", "val.npy", "test.npy", "meta.json"]}
    first_samples = (run / "samples/samples.npy").read_bytes()
    (run / "codes/meta.json").unlink()
    (run / "samples/samples.png").unlink()
    make("encode-dataset", run)
    assert before == {name: (run / "codes" / name).read_bytes() for name in before}
    (run / "prior/ckpt.pt").touch()  # keep the prior: it is still the right one for these codes
    make("sample", run)
    assert (run / "samples/samples.npy").read_bytes() == first_samples


def test_every_command_has_help():
    for module in ["stage1_vqvae.train", "stage1_vqvae.encode", "stage2_prior.train", "tools.sample"]:
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout, module


@pytest.mark.slow
def test_make_sample_with_two_levels_at_64_px(tmp_path):
    run = tmp_path / "runs"
    make("sample", run, "VQVAE_ARGS=--levels 2 --image-size 64 --shapes-train 96 --shapes-test 32 --codebook-size 32 "
         "--top-codebook-size 16 --hidden-channels 32 --batch-size 32")
    meta = json.loads((run / "codes/meta.json").read_text())
    assert [(lv["name"], lv["grid_shape"], lv["codebook_size"]) for lv in meta["levels"]] == [
        ("top", [8, 8], 16), ("bottom", [16, 16], 32)]
    assert "codebook_size" not in meta and meta["image_size"] == 64
    for split, count in [("train", 192), ("val", 10), ("test", 32)]:
        assert np.load(run / f"codes/{split}_top.npy").shape == (count, 8, 8)
        assert np.load(run / f"codes/{split}_bottom.npy").shape == (count, 16, 16)
    top, bottom = np.load(run / "samples/samples_top.npy"), np.load(run / "samples/samples_bottom.npy")
    assert top.shape == (6, 8, 8) and bottom.shape == (6, 16, 16) and top.max() < 16 and bottom.max() < 32
    last = [json.loads(line) for line in (run / "prior/metrics.jsonl").read_text().splitlines()][-1]
    assert 0 < last["test_top_bits_per_code"] < 20 and 0 < last["test_bottom_bits_per_code"] < 20
    assert last["test_bits_per_image"] == pytest.approx(
        64 * last["test_top_bits_per_code"] + 256 * last["test_bottom_bits_per_code"], rel=1e-6)
    stage1 = [json.loads(line) for line in (run / "vqvae/metrics.jsonl").read_text().splitlines()][-1]
    assert {"test_codes_used_top", "test_codes_used_bottom", "test_perplexity_top"} <= set(stage1)
    assert (run / "samples/samples.png").is_file()

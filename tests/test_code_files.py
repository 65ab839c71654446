"""Stage 2 refuses code files that do not match meta.json, with one clear message naming the file."""

import json
import subprocess
import sys

import numpy as np
import pytest

from foundation.cli import UserError
from stage2_prior.data import load_codes, read_meta

META = {"codebook_size": 16, "grid_shape": [4, 4], "counts": {"train": 6, "test": 2}, "num_classes": 3,
        "stage1_sha256": "0" * 64, "stage1_checkpoint": "none.pt"}


def write_codes(folder, train=None, labels=None, meta=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(0, 16, (6, 4, 4)).astype(np.uint16) if train is None else train)
    np.save(folder / "train_labels.npy", np.arange(6) % 3 if labels is None else labels)
    np.save(folder / "test.npy", rng.integers(0, 16, (2, 4, 4)).astype(np.uint16))
    np.save(folder / "test_labels.npy", np.array([0, 1]))
    (folder / "meta.json").write_text(json.dumps(META if meta is None else meta))
    return folder


def test_valid_codes_load_as_long_tensors(tmp_path):
    folder = write_codes(tmp_path)
    (codes,), labels = load_codes(folder, "train", read_meta(folder))
    assert codes.shape == (6, 4, 4) and str(codes.dtype) == "torch.int64" and labels.tolist() == [0, 1, 2, 0, 1, 2]


BAD_CODES = {
    "float dtype": (np.zeros((6, 4, 4), np.float32), "integers"),
    "object dtype": (np.array([[[None] * 4] * 4] * 6, dtype=object), "not a plain numeric"),
    "too large": (np.full((6, 4, 4), 16, np.uint16), r"\[0, 16\)"),
    "negative": (np.full((6, 4, 4), -1, np.int64), r"\[0, 16\)"),
    "wrong grid": (np.zeros((6, 8, 8), np.uint16), r"\(N, 4, 4\)"),
    "flat": (np.zeros((6, 16), np.uint16), r"\(N, 4, 4\)"),
    "wrong count": (np.zeros((5, 4, 4), np.uint16), "meta.json says 6"),
}


@pytest.mark.parametrize("case", BAD_CODES)
def test_bad_code_files_are_named_errors(tmp_path, case):
    array, message = BAD_CODES[case]
    folder = write_codes(tmp_path, train=array)
    with pytest.raises(UserError, match=message) as err:
        load_codes(folder, "train", read_meta(folder))
    assert "train.npy" in str(err.value)


def test_bad_labels_and_meta_are_named_errors(tmp_path):
    folder = write_codes(tmp_path / "a", labels=np.zeros(5, np.int64))
    with pytest.raises(UserError, match="train_labels.npy"):
        load_codes(folder, "train", read_meta(folder))
    folder = write_codes(tmp_path / "b", meta={"codebook_size": 16})
    with pytest.raises(UserError, match="missing"):
        read_meta(folder)
    with pytest.raises(UserError, match="not found"):
        read_meta(tmp_path / "nowhere")


def test_random_code_arrays_are_accepted_exactly_when_valid(tmp_path):
    rng = np.random.default_rng(1)
    for trial in range(30):
        dtype = rng.choice([np.int8, np.int16, np.int64, np.uint8, np.uint16, np.float32])
        shape = (6, 4, 4) if rng.random() < 0.6 else tuple(rng.integers(1, 7, rng.integers(1, 4)))
        array = (rng.integers(-3, 20, shape)).astype(dtype)
        valid = (np.dtype(dtype).kind in "iu" and array.shape == (6, 4, 4) and array.min() >= 0 and array.max() < 16)
        folder = write_codes(tmp_path / str(trial), train=array)
        if valid:
            load_codes(folder, "train", read_meta(folder))
        else:
            with pytest.raises(UserError):
                load_codes(folder, "train", read_meta(folder))


def test_prior_command_rejects_bad_codes_without_traceback(tmp_path):
    folder = write_codes(tmp_path / "codes", train=np.full((6, 4, 4), 99, np.uint16))
    result = subprocess.run([sys.executable, "-m", "stage2_prior.train", "--codes-dir", str(folder),
                             "--out-dir", str(tmp_path / "prior")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "train.npy" in result.stderr

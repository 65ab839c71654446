"""`python -m stage1_vqvae.vectors`: codes for an (N, D) .npy, bad inputs refused with one line, resume."""

import json
import re

import numpy as np
import pytest
import torch

from foundation.training import StopSignal
from stage1_vqvae import vectors

SIZES = ["--codebook-size", "16", "--batch-size", "64", "--epochs", "3", "--device", "cpu"]


def clustered_vectors(path, n=512, d=8, clusters=6, seed=0):
    """n vectors near `clusters` random centres, saved as float32 .npy."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 3
    x = centres[rng.integers(0, clusters, n)] + 0.05 * rng.normal(size=(n, d))
    np.save(path, x.astype(np.float32))
    return x.astype(np.float32)


def run(tmp_path, *extra):
    """Run the command in this process on clustered vectors; returns (input vectors, out folder)."""
    emb, out = tmp_path / "emb.npy", tmp_path / "run"
    x = np.load(emb) if emb.exists() else clustered_vectors(emb)
    vectors.main(["--input", str(emb), "--out-dir", str(out), *SIZES, *extra])
    return x, out


@pytest.mark.parametrize("extra,codes_per_vector", [([], 1), (["--groups", "4"], 4), (["--stages", "3"], 3),
                                                    (["--stages", "2", "--quantizer", "codebook"], 2)])
def test_codes_round_trip_to_the_vectors(tmp_path, extra, codes_per_vector):
    x, out = run(tmp_path, *extra)
    codes = np.load(out / "codes.npy", allow_pickle=False)
    meta = json.loads((out / "meta.json").read_text())
    assert codes.shape == (512, codes_per_vector) and codes.dtype == np.uint8 and codes.max() < 16
    assert meta["codes_per_vector"] == codes_per_vector and meta["dtype"] == "uint8" and meta["count"] == 512
    assert len(meta["codes_used"]) == len(meta["perplexity"]) == codes_per_vector
    with torch.no_grad():
        decoded = vectors.load_quantizer(out / "ckpt.pt").embed_code(torch.from_numpy(codes).long()).numpy()
    relative_mse = ((decoded - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert relative_mse == pytest.approx(meta["relative_mse"], rel=1e-4)
    assert relative_mse < 0.05  # 6 tight clusters, 16 codes
    for name in ["config.json", "metrics.jsonl", "state.pt", "ckpt.pt"]:
        assert (out / name).is_file(), name


def test_finished_run_is_left_alone(tmp_path, capsys):
    _, out = run(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run(tmp_path)
    assert "already trained" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def bad_input(kind: str, path):
    if kind == "pickled":
        np.save(path, np.array([{"vector": [1.0]}], dtype=object), allow_pickle=True)
    elif kind == "not numpy":
        path.write_bytes(b"id,x\n1,0.5\n")
    elif kind == "truncated":
        np.save(path, np.zeros((64, 8), np.float32))
        path.write_bytes(path.read_bytes()[:300])
    else:
        np.save(path, {"wrong rank": np.zeros((4, 2, 2), np.float32), "one vector": np.zeros(8, np.float32),
                       "integer": np.arange(8).reshape(4, 2), "non-finite": np.array([[0.0, 1.0], [np.inf, 2.0]])}[kind])


@pytest.mark.parametrize("kind,message", [
    ("wrong rank", r"expected an \(N, D\) array .* shape \(4, 2, 2\)"),
    ("one vector", r"expected an \(N, D\) array .* shape \(8,\)"),
    ("integer", "expected floating-point vectors, got dtype int64"),
    ("non-finite", r"1 vector\(s\) hold NaN or infinite values \(first: row 1\)"),
    ("pickled", "pickled Python objects"),
    ("not numpy", "not a readable .npy file"),
    ("truncated", "not a readable .npy file"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, kind, message):
    path = tmp_path / "bad.npy"
    bad_input(kind, path)
    with pytest.raises(SystemExit) as exit_info:
        vectors.main(["--input", str(path), "--out-dir", str(tmp_path / "run"), *SIZES])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1 and str(path) in err
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_sizes_that_cannot_work_are_refused(tmp_path, capsys):
    clustered_vectors(tmp_path / "emb.npy")
    for extra, message in [(["--groups", "3"], "does not divide"), (["--groups", "2", "--stages", "2"], "not both")]:
        with pytest.raises(SystemExit):
            run(tmp_path, *extra)
        assert message in capsys.readouterr().err


def stop_after(steps: int):
    """A StopSignal.should_stop that asks to stop after `steps` training steps, as SIGTERM would."""
    calls = {"n": 0}

    def should_stop(self, device, step=None):
        calls["n"] += 1
        self.requested = self.requested or (15 if calls["n"] == steps else None)
        return self.requested is not None

    return should_stop


@pytest.mark.parametrize("quantizer", ["ema", "codebook"])
def test_interrupted_run_resumes_to_the_same_codebooks(tmp_path, monkeypatch, capsys, quantizer):
    for folder in ("reference", "resumed"):
        (tmp_path / folder).mkdir()
    _, reference = run(tmp_path / "reference", "--quantizer", quantizer)
    (tmp_path / "resumed" / "emb.npy").write_bytes((tmp_path / "reference" / "emb.npy").read_bytes())
    with monkeypatch.context() as patch:
        patch.setattr(StopSignal, "should_stop", stop_after(11))  # mid-epoch 2 (8 steps an epoch)
        with pytest.raises(SystemExit) as exit_info:
            run(tmp_path / "resumed", "--quantizer", quantizer)
    assert exit_info.value.code == 143 and "state saved" in capsys.readouterr().err
    out = tmp_path / "resumed" / "run"
    assert (out / "state.pt").exists() and not (out / "ckpt.pt").exists() and not (out / "codes.npy").exists()

    vectors.main(["--out-dir", str(out)])  # the saved config remembers the input and sizes
    assert "resuming from epoch 1, step 11" in capsys.readouterr().out
    expected, got = (torch.load(d / "ckpt.pt", weights_only=True)["model"] for d in (reference, out))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert np.array_equal(np.load(reference / "codes.npy"), np.load(out / "codes.npy"))
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_refuses_changed_vectors(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setattr(StopSignal, "should_stop", stop_after(3))
        with pytest.raises(SystemExit):
            run(tmp_path)
    clustered_vectors(tmp_path / "emb.npy", seed=1)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path)
    assert exit_info.value.code == 1 and "changed since this run started" in capsys.readouterr().err


def test_help_lists_the_config_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        vectors.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--groups" in out and "--stages" in out and "--fresh" in out

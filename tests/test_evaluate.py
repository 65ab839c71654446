"""tools.evaluate: bits per dimension by hand, eval.json and its pictures, clear messages for what is missing."""

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import make_shapes
from stage1_vqvae.model import VQVAE
from stage2_prior.hierarchy import build_prior
from stage2_prior.metrics import split_bits
from tests.conftest import tiny_prior_config
from tests.test_end_to_end import make
from tests.test_sample_judge import tiny_classifier  # noqa: F401 (autouse)
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools import complete, evaluate
from tools.common.finished_run import FinishedRun

CPU = torch.device("cpu")
KEYS = {"psnr", "mse", "codes_used", "perplexity", "bits_per_code", "bits_per_dim", "fid", "kid", *evaluate.JUDGE_KEYS}


def known_decoder(levels: int) -> VQVAE:
    """A categorical decoder whose distribution is the same for every code: softmax of a fixed bias."""
    cfg = VQVAEConfig(codebook_size=16, top_codebook_size=8, embed_dim=8, hidden_channels=16, res_blocks=1,
                      recon_loss="categorical", levels=levels)
    model = VQVAE(cfg).eval()
    torch.nn.init.zeros_(model.decoder[-1].weight)
    with torch.no_grad():
        model.decoder[-1].bias.copy_(torch.randn(768))
    return model


def uniform_prior(levels: int):
    """A prior whose logits are all zero: every code has probability 1/K."""
    cfg = tiny_prior_config(grid_height=8, grid_width=8, levels=levels,
                            **({"top_codebook_size": 8, "top_grid_height": 4, "top_grid_width": 4} if levels == 2 else {}))
    prior = build_prior(cfg).eval()
    for pixelcnn in [prior] if levels == 1 else [prior.top, prior.bottom]:
        torch.nn.init.zeros_(pixelcnn.head[3].weight)
        torch.nn.init.zeros_(pixelcnn.head[3].bias)
    return prior


@pytest.mark.parametrize("levels", [1, 2])
def test_bits_per_dim_equals_a_hand_computation(levels):
    vqvae, prior = known_decoder(levels), uniform_prior(levels)
    images = make_shapes(5, seed=3, size=32).images
    codes = vqvae.encode_levels(images.float() / 127.5 - 1)
    meta = {"levels": [{"grid_shape": [4, 4], "codebook_size": 8}] * (levels == 2) + [{"grid_shape": [8, 8], "codebook_size": 16}]}
    run = FinishedRun(None, vqvae, prior, meta)
    # by hand: every sub-pixel value v of channel c costs -log2 softmax(bias of channel c)[v]; every code log2 K
    log_probs = F.log_softmax(vqvae.decoder[-1].bias.detach().view(3, 256).double(), dim=1)  # (3, 256)
    decoder_bits = -sum(log_probs[c, images[:, c].long()].sum() for c in range(3)).item() / math.log(2) / 5
    code_bits = 64 * 4 + (16 * 3 if levels == 2 else 0)
    prior_bits = split_bits(prior, codes, torch.zeros(5, dtype=torch.long), CPU, "fp32")["bits_per_image"]
    assert prior_bits == pytest.approx(code_bits, rel=1e-6)
    figures, unavailable = evaluate.bits_per_dim(run, images, codes, prior_bits, CPU)
    assert unavailable == {}
    assert figures["decoder_bits_per_dim"] == pytest.approx(decoder_bits / 3072, rel=1e-6)
    assert figures["bits_per_dim"] == pytest.approx((decoder_bits + code_bits) / 3072, rel=1e-6)
    assert figures["bits_per_dim_uniform_prior"] == pytest.approx(figures["bits_per_dim"], rel=1e-6)


def test_an_l1_decoder_gives_no_bits_per_dim_and_says_why():
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1)).eval()
    run = FinishedRun(None, vqvae, uniform_prior(1), {"codebook_size": 16, "grid_shape": [8, 8]})
    figures, unavailable = evaluate.bits_per_dim(run, make_shapes(2, seed=0).images, None, 100.0, CPU)
    assert figures == {"decoder_bits_per_dim": None, "bits_per_dim": None, "bits_per_dim_uniform_prior": None}
    assert "--recon-loss l1" in unavailable["bits_per_dim"] and "categorical" in unavailable["bits_per_dim"]


def without_fidelity(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)


def small_pictures(monkeypatch):
    """Fewer samples in the pictures: the sampling is what takes time here."""
    monkeypatch.setattr(evaluate, "PICTURE_SAMPLES", 8)
    monkeypatch.setattr(evaluate, "PER_CLASS_ROW", 3)


def test_evaluate_writes_every_figure_and_picture(tmp_path, monkeypatch, capsys):
    without_fidelity(monkeypatch)
    small_pictures(monkeypatch)
    run = make_tiny_run(tmp_path / "run", recon_loss="categorical", class_conditional=True)
    evaluate.main(["--run-dir", str(run), "--n-samples", "20", "--judge-samples", "6", "--device", "cpu"])
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("FID/KID skipped")]) == 1
    assert "pip install -e '.[metrics]'" in out and "bits per dimension" in out
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert KEYS <= set(results) and results["fid"] is None and results["kid"] is None
    assert "torch-fidelity" in results["unavailable"]["fid"] and "bits_per_dim" not in results["unavailable"]
    assert 0 < results["bits_per_code"] < 10 and 0 <= results["mse"] <= 1
    assert 0 < results["decoder_bits_per_dim"] < results["bits_per_dim"]
    assert 0 <= results["gan_test_accuracy"] <= 1 and 0 <= results["gan_train_accuracy"] <= 1
    for picture in ["recon.png", "samples.png"]:
        assert (run / "eval" / picture).stat().st_size > 0
    check_class_grid(run)


def check_class_grid(run):
    """classes.png has one row per class of meta.json, each with its label written on the left."""
    names = json.loads((run / "codes" / "meta.json").read_text())["class_names"]
    picture = Image.open(run / "eval" / "classes.png").convert("L")
    assert picture.height == len(names) * 34 + 2  # 32 px images, 2 px between rows
    margin = picture.width - (evaluate.PER_CLASS_ROW * 34 + 2)
    for row in range(len(names)):
        label = picture.crop((0, row * 34 + 2, margin, (row + 1) * 34))
        assert label.getextrema()[0] < 128, f"row {row} ({names[row]}) has no label"


def test_evaluate_with_an_l1_decoder_says_what_is_unavailable(tmp_path, monkeypatch, capsys):
    small_pictures(monkeypatch)
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    evaluate.main(["--run-dir", str(run), "--n-samples", "0", "--judge-samples", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert results["bits_per_dim"] is None and "categorical" in results["unavailable"]["bits_per_dim"]
    assert results["fid"] is None and results["unavailable"]["fid"] == "--n-samples 0"
    assert "n/a: the stage-1 decoder was trained with --recon-loss l1" in out
    assert not (run / "eval" / "classes.png").exists()


def test_fid_and_kid_of_the_samples_through_a_stand_in_extractor(tmp_path, monkeypatch, capsys):
    small_pictures(monkeypatch)
    seen = []

    def colour_statistics(images):  # (B, 3, H, W) uint8 -> (B, 6): mean and spread of each channel
        seen.append(images.shape[0])
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    monkeypatch.setattr(evaluate, "inception_features", lambda device, weights: colour_statistics)
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    evaluate.main(["--run-dir", str(run), "--n-samples", "30", "--judge-samples", "0", "--device", "cpu"])
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert sum(seen) == 30 + results["test_images"] and results["n_samples"] == 30
    assert results["fid"] > 0 and math.isfinite(results["kid"]) and "fid" not in results["unavailable"]
    assert "FID/KID skipped" not in capsys.readouterr().out


@pytest.mark.parametrize("command", [evaluate, complete])
def test_commands_answer_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        command.main(["--help"])
    assert info.value.code == 0 and "--run-dir" in capsys.readouterr().out


def test_missing_stages_name_the_make_target(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    (run / "prior" / "ckpt.pt").unlink()
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--run-dir", str(run), "--device", "cpu"])
    assert info.value.code == 1 and "make train-prior" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--run-dir", str(tmp_path / "nothing"), "--device", "cpu"])
    assert "make train-vqvae" in capsys.readouterr().err


@pytest.mark.slow
def test_make_evaluate_and_complete_on_a_tiny_categorical_run(tmp_path):
    run = tmp_path / "runs"
    categorical = ("VQVAE_ARGS=--shapes-train 192 --shapes-test 64 --codebook-size 32 --hidden-channels 32 "
                   "--batch-size 64 --recon-loss categorical")
    args = (categorical, "PRIOR_ARGS=--hidden-channels 16 --layers 2 --class-conditional",
            "EVAL_ARGS=--n-samples 16 --judge-samples 16", "COMPLETE_ARGS=--n-images 3 --n-completions 2")
    result = make("evaluate", run, *args)
    assert result.stdout.count("FID/KID skipped") <= 1  # one line when the extra or its weights are missing
    results = json.loads((run / "eval/eval.json").read_text())
    assert KEYS <= set(results) and results["test_images"] == 64 and results["judge_samples"] == 16
    assert 0 <= results["gan_test_accuracy"] <= 1 and 0 <= results["classifier_test_accuracy"] <= 1
    assert 0 < results["decoder_bits_per_dim"] < results["bits_per_dim"] < 9
    for picture in ["recon.png", "samples.png", "classes.png"]:
        assert (run / "eval" / picture).is_file()
    make("complete", run, *args)
    assert np.load(run / "complete/completions.npy").shape == (3, 2, 8, 8)
    again = make("evaluate", run, *args)
    assert "python" not in again.stdout  # a finished evaluation is not redone

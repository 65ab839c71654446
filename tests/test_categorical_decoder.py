"""The categorical decoder (--recon-loss categorical): its loss is the likelihood it reports; l1/l2 are unchanged."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from foundation.files import load_checkpoint
from stage1_vqvae import train as stage1_train
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import to_model_range
from stage1_vqvae.metrics import evaluate
from stage1_vqvae.model import VQVAE
from tests.tiny_run import one_thread  # noqa: F401 (autouse)


def tiny(recon_loss="categorical", **overrides) -> VQVAE:
    values = dict(codebook_size=16, top_codebook_size=8, embed_dim=8, hidden_channels=16, res_blocks=1,
                  recon_loss=recon_loss)
    return VQVAE(VQVAEConfig(**{**values, **overrides})).eval()


def random_images(n=3, size=32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def hand_nll(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) per image, from the raw decoder output by an explicit log-softmax and gather."""
    codes = model.encode(x)
    out = model.decode_codes(codes).float()  # (B, 768, S, S)
    b, _, h, w = out.shape
    log_probs = F.log_softmax(out.view(b, 3, 256, h, w), dim=2)
    levels = torch.round((x + 1) * 127.5).long()  # (B, 3, S, S)
    return -log_probs.gather(2, levels[:, :, None]).squeeze(2).flatten(1).sum(1)


@pytest.mark.parametrize("levels", [1, 2])
def test_loss_is_the_mean_negative_log_likelihood_it_reports(levels):
    model = tiny(levels=levels)
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.2)
    images = random_images()
    x = to_model_range(images)
    _, loss, parts = model(x)
    nll = hand_nll(model, x)
    assert torch.allclose(-model.log_likelihood(x, model.encode(x)), nll, rtol=1e-5)
    assert parts["recon"].item() == pytest.approx(nll.sum().item() / x.numel(), rel=1e-5)
    assert loss.item() == pytest.approx((parts["recon"] + parts["vq"]).item(), rel=1e-6)
    reported = evaluate(model, images, torch.device("cpu"), "fp32")
    assert reported["recon"] == pytest.approx(nll.sum().item() / x.numel(), rel=1e-5)
    assert reported["decoder_bits_per_dim"] == pytest.approx(nll.sum().item() / x.numel() / math.log(2), rel=1e-5)


def test_reconstruction_is_the_expected_value_in_range():
    model = tiny()
    last = model.decoder[-1]  # the 1x1 convolution that makes the 768 logits
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.fill_(-30.0)
        last.bias.view(3, 256)[:, 200] = 30.0  # every sub-pixel is 200 with probability ~1
        last.bias.view(3, 256)[0, 200], last.bias.view(3, 256)[0, 100] = 0.0, 0.0  # red: 100 or 200, equally
    x = to_model_range(random_images(2))
    image = model.decode_indices(model.encode(x))
    assert image.shape == x.shape and image.abs().max() <= 1
    expected_red, expected_rest = 150 / 127.5 - 1, 200 / 127.5 - 1
    assert torch.allclose(image[:, 0], torch.full_like(image[:, 0], expected_red), atol=1e-5)
    assert torch.allclose(image[:, 1:], torch.full_like(image[:, 1:], expected_rest), atol=1e-5)
    x_hat, _, _ = model(x)
    assert torch.allclose(x_hat, image, atol=1e-6)


@pytest.mark.parametrize("recon_loss", ["l1", "l2"])
def test_l1_and_l2_decoders_keep_their_form_and_give_no_likelihood(recon_loss):
    model = tiny(recon_loss)
    assert isinstance(model.decoder[-1], torch.nn.Tanh) and model.decoder[-2].out_channels == 3
    x = to_model_range(random_images(2))
    x_hat, _, parts = model(x)
    distance = (x_hat - x).abs().mean() if recon_loss == "l1" else (x_hat - x).square().mean()
    assert parts["recon"].item() == pytest.approx(distance.item(), rel=1e-6)
    with pytest.raises(ValueError, match="categorical"):
        model.log_likelihood(x, model.encode(x))


def test_the_epoch_is_chosen_on_validation_likelihood(tmp_path):
    """A categorical decoder's epoch is the one with the lowest validation NLL, the figure bits/dim depends on."""
    stage1_train.main(["--dataset", "shapes", "--shapes-train", "24", "--shapes-test", "8", "--val-size", "4",
                       "--codebook-size", "16", "--hidden-channels", "16", "--res-blocks", "1", "--embed-dim", "8",
                       "--batch-size", "12", "--epochs", "4", "--lr", "3e-3", "--recon-loss", "categorical",
                       "--device", "cpu", "--out-dir", str(tmp_path)])
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    by_nll = min(log, key=lambda record: record["val_recon"])["epoch"]
    assert by_nll != min(log, key=lambda record: record["val_mse"])["epoch"]  # here the two disagree
    assert load_checkpoint(tmp_path / "ckpt.pt", "vqvae")["epoch"] == by_nll

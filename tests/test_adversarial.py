"""The adversarial stage 1: adaptive weight, start step, discriminator updates, epoch choice, and "off" changes nothing."""

import json

import pytest
import torch

from stage1_vqvae import classifier
from stage1_vqvae.adversarial import Adversary, PatchDiscriminator, adaptive_weight, hinge_discriminator_loss
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage1_vqvae.train import main as train_main
from foundation.cli import UserError

CPU = torch.device("cpu")
TINY = ["--dataset", "shapes", "--shapes-train", "160", "--shapes-test", "32", "--image-size", "16",
        "--codebook-size", "16", "--hidden-channels", "16", "--batch-size", "16", "--epochs", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def tiny_classifier(monkeypatch):
    monkeypatch.setattr(classifier, "WIDTH", 8)
    monkeypatch.setattr(classifier, "EPOCHS", 2)
    monkeypatch.setattr(classifier, "BATCH_SIZE", 16)


def test_the_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    w = torch.nn.Parameter(torch.ones(4))
    a, b = torch.tensor([3.0, 0.0, 4.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    weight = adaptive_weight((w * a).sum(), (w * b).sum() * 2, w)  # norms 5 and 2
    assert weight.item() == pytest.approx(5 / (2 + 1e-4)) and not weight.requires_grad
    flat = adaptive_weight((w * a).sum(), (w * 0).sum(), w)  # no adversarial gradient: clamped, finite
    assert flat.item() == 1e4


def test_before_the_start_step_the_decoder_gets_no_adversarial_term_and_the_discriminator_does_not_move():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_size=16, hidden_channels=16, codebook_size=16))
    adversary = Adversary(0.5, start_step=3, channels=8, layers=2, lr=1e-3, device=CPU)
    before = {k: v.clone() for k, v in adversary.discriminator.state_dict().items()}
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    x_hat, _, parts = model(x)
    term, weight = adversary.generator_term(x_hat, parts["recon"], model.last_decoder_weight, step=2)
    assert term.item() == 0.0 and weight.item() == 0.0 and not term.requires_grad
    assert adversary.discriminator_step(x, x_hat, step=2).item() == 0.0
    assert all(torch.equal(before[k], v) for k, v in adversary.discriminator.state_dict().items())

    term, weight = adversary.generator_term(x_hat, parts["recon"], model.last_decoder_weight, step=3)
    assert torch.isfinite(weight) and weight.item() > 0 and term.requires_grad
    term.backward()
    assert all(p.grad is None for p in adversary.discriminator.parameters())  # the decoder's term trains the decoder only
    assert model.last_decoder_weight.grad.abs().sum() > 0
    loss = adversary.discriminator_step(x, x_hat, step=3)
    assert loss.item() > 0
    assert not torch.equal(before["net.0.weight"], adversary.discriminator.state_dict()["net.0.weight"])


def test_the_ramp_raises_the_decoders_share_of_the_weight_linearly_from_the_start_step():
    ramped = Adversary(0.5, start_step=10, channels=4, layers=1, lr=1e-3, device=CPU, ramp_steps=4)
    assert [ramped.ramp(step) for step in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    at_once = Adversary(0.5, start_step=10, channels=4, layers=1, lr=1e-3, device=CPU)
    assert [at_once.ramp(step) for step in (9, 10)] == [0.0, 1.0]


def test_the_hinge_loss_is_zero_beyond_the_margin_and_the_discriminator_gives_a_logit_per_patch():
    assert hinge_discriminator_loss(torch.full((2, 1, 3, 3), 1.5), torch.full((2, 1, 3, 3), -2.0)).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)).item() == 1.0
    assert PatchDiscriminator(8, 2)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(8, 1)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 14, 14)


def test_bad_adversarial_flags_are_refused():
    for flags in [dict(adversarial_weight=-1.0), dict(adversarial_start=1.0), dict(adversarial_ramp=1.5),
                  dict(adversarial_weight=0.5, recon_loss="categorical")]:
        with pytest.raises(UserError):
            VQVAEConfig(**flags)


def weights(run_dir) -> dict:
    return torch.load(run_dir / "ckpt.pt", weights_only=True)["model"]


def test_with_the_option_off_the_adversarial_settings_change_nothing(tmp_path):
    train_main([*TINY, "--out-dir", str(tmp_path / "plain")])
    train_main([*TINY, "--out-dir", str(tmp_path / "off"), "--adversarial-start", "0.7",
                "--discriminator-channels", "4", "--discriminator-layers", "1"])
    plain, off = weights(tmp_path / "plain"), weights(tmp_path / "off")
    assert plain.keys() == off.keys() and all(torch.equal(plain[k], off[k]) for k in plain)
    state = torch.load(tmp_path / "off" / "state.pt", weights_only=True)
    assert "adversary" not in state and not (tmp_path / "off" / "classifier.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_recognised" not in r and "train_adversarial_weight" not in r for r in records)


def test_before_its_start_an_adversarial_run_takes_the_plain_runs_steps(tmp_path):
    train_main([*TINY, "--out-dir", str(tmp_path / "plain")])
    train_main([*TINY, "--out-dir", str(tmp_path / "late"), "--adversarial-weight", "0.5", "--adversarial-start", "0.99"])
    plain, late = (torch.load(tmp_path / run / "state.pt", weights_only=True) for run in ("plain", "late"))
    assert late["adversary"]["start_step"] == late["progress"]["step"]  # 2 epochs of 9 steps: it never started
    assert all(torch.equal(plain["model"][k], late["model"][k]) for k in plain["model"])


def test_an_adversarial_run_keeps_the_epoch_its_classifier_recognises_best(tmp_path):
    out = tmp_path / "adversarial"
    train_main([*TINY, "--epochs", "3", "--out-dir", str(out), "--adversarial-weight", "0.5",
                "--adversarial-start", "0.3", "--discriminator-channels", "8"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights_logged = [r["train_adversarial_weight"] for r in records]
    assert all(w >= 0 and w == w for w in weights_logged) and weights_logged[-1] > 0
    assert all(0 <= r["val_recognised"] <= 1 for r in records)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    best = max(range(3), key=lambda i: (records[i]["val_recognised"], -i))  # the first of equals
    assert ckpt["epoch"] == best + 1 and ckpt["metrics"]["val_recognised"] == records[best]["val_recognised"]
    assert (out / "classifier.pt").exists() and "adversary" in torch.load(out / "state.pt", weights_only=True)

    cached = (out / "classifier.pt").stat().st_mtime_ns
    train_main([*TINY, "--out-dir", str(out), "--eval-only", "--recognised"])
    figures = json.loads((out / "eval.json").read_text())
    assert 0 <= figures["recognised"] <= 1 and 0 <= figures["recognised_originals"] <= 1
    assert (out / "classifier.pt").stat().st_mtime_ns == cached  # the run's classifier, not a new one


def test_training_or_loading_the_classifier_leaves_the_runs_generator_alone(tmp_path):
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 3
    state = torch.get_rng_state()
    for _ in range(2):  # trained, then loaded from the cache
        classifier.cached_classifier(tmp_path / "classifier.pt", images, labels, 3, CPU, dataset="shapes", data_dir=None)
        assert torch.equal(torch.get_rng_state(), state)

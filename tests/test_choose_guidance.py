"""Choosing a class-conditional prior's default guidance scale on validation (`tools.choose_guidance`)."""

import json

import pytest
import torch

from stage1_vqvae import classifier
from stage2_prior.checkpoint import load_prior
from stage2_prior.config import GUIDED_DEFAULT
from stage2_prior.data import read_meta
from stage2_prior.train import with_meta
from tests.conftest import tiny_prior_config
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools import choose_guidance


@pytest.fixture(autouse=True)
def tiny_classifier(monkeypatch):
    """A narrow classifier trained for a few short epochs: seconds, not minutes."""
    monkeypatch.setattr(classifier, "WIDTH", 8)
    monkeypatch.setattr(classifier, "EPOCHS", 2)
    monkeypatch.setattr(classifier, "BATCH_SIZE", 8)


def row(scale, gan_test, gan_train):
    return {"scale": scale, "gan_test_accuracy": gan_test, "gan_train_accuracy": gan_train}


def test_the_rule_takes_the_best_sum_of_gan_test_and_gan_train_and_the_smaller_scale_on_a_tie():
    assert choose_guidance.chosen_scale([row(1, 0.24, 0.40), row(3, 0.47, 0.37), row(5, 0.57, 0.38)]) == 5
    assert choose_guidance.chosen_scale([row(1, 0.24, 0.40), row(3, 0.47, 0.37), row(5, 0.50, 0.20)]) == 3
    assert choose_guidance.chosen_scale([row(2, 0.5, 0.25), row(1, 0.25, 0.5), row(4, 0.5, 0.1)]) == 1


def test_a_new_guidable_prior_samples_with_the_default_scale_until_one_is_chosen(tmp_path):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)  # configured by with_meta
    assert GUIDED_DEFAULT != 1.0 and load_prior(run / "prior" / "ckpt.pt").guidance_scale() == GUIDED_DEFAULT
    meta = read_meta(run / "codes")
    assert with_meta(tiny_prior_config(True, label_dropout=0.0), meta).guidance == 1.0  # nothing to guide with
    assert with_meta(tiny_prior_config(False), meta).guidance == 1.0


def run_choice(run, *flags) -> dict:
    choose_guidance.main(["--run-dir", str(run), "--device", "cpu", "--judge-samples", "6", *flags])
    return json.loads((run / "guidance" / "guidance.json").read_text())


def test_the_winner_measured_on_validation_becomes_the_priors_default(tmp_path, monkeypatch):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)
    seen, scales = [], []

    def judged(judge, samples, labels, images, image_labels, classes, device):  # 3 wins, then 5 over 1, by construction
        scale = scales.pop(0)
        seen.append(images.shape[0])
        return {"gan_test_accuracy": {1.0: 0.2, 3.0: 0.6, 5.0: 0.7}[scale],
                "gan_train_accuracy": {1.0: 0.5, 3.0: 0.4, 5.0: 0.1}[scale]}, {}

    monkeypatch.setattr(choose_guidance, "judge_samples", judged)
    scales[:] = [1.0, 3.0, 5.0]
    result = run_choice(run, "--scales", "1", "3", "5", "--dry-run")
    assert result["chosen"] == 3.0 and not result["stored"] and seen == [4, 4, 4]  # the 4 validation shapes
    assert load_prior(run / "prior" / "ckpt.pt").guidance_scale() == GUIDED_DEFAULT
    scales[:] = [1.0, 3.0, 5.0]
    result = run_choice(run, "--scales", "1", "3", "5")
    assert result["stored"] and result["previous_default"] == GUIDED_DEFAULT and result["validation_images"] == 4
    assert load_prior(run / "prior" / "ckpt.pt").guidance_scale() == 3.0
    (run / "prior" / "config.json").write_text(json.dumps({"guidance": 3.0, "lr": 0.001}))
    scales[:] = [5.0, 1.0]
    run_choice(run, "--scales", "5", "1")  # 5 beats 1
    assert load_prior(run / "prior" / "ckpt.pt").guidance_scale() == 5.0
    assert json.loads((run / "prior" / "config.json").read_text()) == {"guidance": 5.0, "lr": 0.001}
    assert (run / "guidance" / "guidance.png").stat().st_size > 0


@pytest.mark.parametrize("levels", [1, 2])
def test_real_figures_for_every_scale_and_the_classifier_cached(tmp_path, levels):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True, levels=levels)
    result = run_choice(run, "--scales", "1", "2")
    assert [r["scale"] for r in result["figures"]] == [1.0, 2.0] and result["chosen"] in (1.0, 2.0)
    for figures in result["figures"]:
        assert 0 <= figures["gan_test_accuracy"] <= 1 and 0 <= figures["gan_train_accuracy"] <= 1
    prior = load_prior(run / "prior" / "ckpt.pt")
    assert prior.guidance_scale() == result["chosen"] and (run / "guidance" / "classifier.pt").is_file()
    maps = prior.sample_levels(3, torch.tensor([0, 1, 2]))  # with two levels the stored scale guides the top map only
    assert len(maps) == levels and all(m.shape[0] == 3 for m in maps)


def test_a_prior_that_cannot_be_guided_is_refused_in_one_line(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    with pytest.raises(SystemExit) as info:
        run_choice(run)
    assert info.value.code == 1 and "no guidance scale to choose" in capsys.readouterr().err


def test_the_samples_that_choose_the_scale_are_not_the_samples_evaluate_reports(tmp_path, monkeypatch):
    """Issue 35: with the same --seed, choose_guidance and evaluate once drew the very same samples, so the
    reported GAN-test was measured on the samples that had chosen the scale."""
    from tools import evaluate

    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)
    drawn = {"choose": [], "evaluate": []}

    def recording(name, original):
        def draw(run, n, labels, seed, *args, **kwargs):
            codes, images = original(run, n, labels, seed, *args, **kwargs)
            drawn[name].append(codes[0])
            return codes, images
        return draw

    monkeypatch.setattr(choose_guidance, "draw_images", recording("choose", choose_guidance.draw_images))
    monkeypatch.setattr(evaluate, "draw_images", recording("evaluate", evaluate.draw_images))
    monkeypatch.setattr(evaluate, "PICTURE_SAMPLES", 6)
    run_choice(run, "--scales", "5", "--dry-run", "--seed", "0")
    evaluate.main(["--run-dir", str(run), "--device", "cpu", "--n-samples", "0", "--judge-samples", "6",
                   "--guidance", "5", "--seed", "0"])
    chosen_on, reported = drawn["choose"][0], drawn["evaluate"]
    assert all(not torch.equal(chosen_on, codes[: chosen_on.shape[0]]) for codes in reported)

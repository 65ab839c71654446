"""The classifier that judges samples (GAN-test, GAN-train, confidence, class entropy) and its figures in eval.json."""

import json
import math

import pytest
import torch

from stage2_prior.config import GUIDED_DEFAULT
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools import evaluate
from stage1_vqvae import classifier
from tools.common import sample_judge

CPU = torch.device("cpu")
COLOURS = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=torch.uint8)  # class c: colour c


@pytest.fixture(autouse=True)
def tiny_classifier(monkeypatch):
    """A narrow classifier trained for a few short epochs: seconds, not minutes."""
    monkeypatch.setattr(classifier, "WIDTH", 8)
    monkeypatch.setattr(classifier, "EPOCHS", 4)
    monkeypatch.setattr(classifier, "BATCH_SIZE", 8)


def coloured(per_class: int, seed: int, size: int = 16) -> tuple:
    """(uint8 images (N, 3, size, size), labels): plain images in their class's colour, with some noise."""
    labels = torch.arange(3).repeat_interleave(per_class)
    noise = torch.randint(-20, 21, (labels.shape[0], 3, size, size), generator=torch.Generator().manual_seed(seed))
    return (COLOURS[labels][:, :, None, None].int() + noise).clamp(0, 255).to(torch.uint8), labels


def test_accuracy_confidence_and_entropy_on_known_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert classifier.accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.75
    expected = sum(math.exp(top) / (math.exp(top) + 2) for top in [2, 3, 1, 5]) / 4
    assert sample_judge.mean_confidence(logits) == pytest.approx(expected, rel=1e-12)
    assert sample_judge.class_entropy_bits(logits) == pytest.approx(1.5)  # predicted classes 0, 1, 2, 0
    assert sample_judge.class_entropy_bits(torch.eye(4)) == pytest.approx(2.0)
    assert sample_judge.class_entropy_bits(torch.tensor([[1.0, 0.0]] * 5)) == 0.0
    assert sample_judge.mean_confidence(torch.zeros(2, 4)) == pytest.approx(0.25)


def test_a_classifier_of_coloured_images_judges_samples_of_the_right_colour_perfectly():
    images, labels = coloured(20, seed=0)
    judge, chosen = classifier.train_classifier(images, labels, 3, CPU)
    again, _ = classifier.train_classifier(images, labels, 3, CPU)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))  # seeded
    assert 1 <= chosen["epoch"] <= classifier.EPOCHS and chosen["val_accuracy"] == 1.0
    test, test_labels = coloured(5, seed=1)
    samples, sample_labels = coloured(20, seed=2)
    figures, unavailable = sample_judge.judge_samples(judge, samples, sample_labels, test, test_labels, 3, CPU)
    assert unavailable == {} and figures["gan_test_accuracy"] == 1.0 and figures["gan_train_accuracy"] == 1.0
    assert figures["sample_class_entropy_bits"] == pytest.approx(math.log2(3))
    wrong, _ = sample_judge.judge_samples(judge, samples, (sample_labels + 1) % 3, test, test_labels, 3, CPU)
    assert wrong["gan_test_accuracy"] == 0.0 and wrong["gan_train_accuracy"] < 0.5  # GAN-train learnt shifted labels
    reds = samples[sample_labels == 0]
    alone, unavailable = sample_judge.judge_samples(judge, reds, None, test, test_labels, 3, CPU)
    assert alone["gan_test_accuracy"] is None and "not class-conditional" in unavailable["gan_train_accuracy"]
    assert alone["sample_class_entropy_bits"] == 0.0 and 1 / 3 < alone["sample_mean_confidence"] <= 1


def test_the_classifier_is_cached_and_retrained_only_when_its_training_set_changes(tmp_path, monkeypatch, capsys):
    trained = []
    train = classifier.train_classifier
    monkeypatch.setattr(classifier, "train_classifier", lambda *args: trained.append(1) or train(*args))
    images, labels = coloured(6, seed=0)
    path = tmp_path / "classifier.pt"
    first = classifier.cached_classifier(path, images, labels, 3, CPU, dataset="shapes", data_dir=None)
    second = classifier.cached_classifier(path, images, labels, 3, CPU, dataset="shapes", data_dir=None)
    assert len(trained) == 1 and torch.equal(classifier.predict(first, images, CPU), classifier.predict(second, images, CPU))
    classifier.cached_classifier(path, images, labels, 3, CPU, dataset="folder", data_dir="/data")
    assert len(trained) == 2
    classifier.cached_classifier(path, images.flip(0), labels.flip(0), 3, CPU, dataset="folder", data_dir="/data")
    assert len(trained) == 3
    path.write_bytes(b"not a checkpoint")
    classifier.cached_classifier(path, images, labels, 3, CPU, dataset="folder", data_dir="/data")
    assert len(trained) == 4 and "retraining the classifier" in capsys.readouterr().out


def evaluate_tiny(run, *flags) -> dict:
    evaluate.main(["--run-dir", str(run), "--n-samples", "0", "--device", "cpu", *flags])
    return json.loads((run / "eval" / "eval.json").read_text())


@pytest.fixture
def small_pictures(monkeypatch):
    monkeypatch.setattr(evaluate, "PICTURE_SAMPLES", 4)
    monkeypatch.setattr(evaluate, "PER_CLASS_ROW", 1)


def test_a_class_conditional_run_gets_gan_test_and_gan_train(tmp_path, small_pictures, capsys):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)
    results = evaluate_tiny(run, "--judge-samples", "9")
    for key in evaluate.JUDGE_KEYS:
        assert results[key] is not None and key not in results["unavailable"]
    for key in ["classifier_test_accuracy", "recon_classifier_accuracy", "gan_test_accuracy", "gan_train_accuracy",
                "sample_mean_confidence"]:
        assert 0 <= results[key] <= 1, key
    assert 0 <= results["sample_class_entropy_bits"] <= math.log2(3) + 1e-9
    assert results["judge_samples"] == 9 and results["guidance"] == GUIDED_DEFAULT  # a new prior's default
    out = capsys.readouterr().out
    assert "GAN-test, GAN-train" in out and f"(9 samples, guidance {GUIDED_DEFAULT})" in out
    cached = (run / "eval" / "classifier.pt").stat().st_mtime_ns
    assert evaluate_tiny(run, "--judge-samples", "9") == results  # the cached classifier, the same samples
    assert (run / "eval" / "classifier.pt").stat().st_mtime_ns == cached


def test_an_unconditional_run_gets_confidence_and_entropy_and_says_why_gan_figures_are_null(tmp_path, small_pictures):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    results = evaluate_tiny(run, "--judge-samples", "6")
    assert results["gan_test_accuracy"] is None and results["gan_train_accuracy"] is None
    assert "not class-conditional" in results["unavailable"]["gan_test_accuracy"]
    assert 0 < results["sample_mean_confidence"] <= 1 and results["guidance"] is None
    assert 0 <= results["recon_classifier_accuracy"] <= 1


def test_judge_samples_0_skips_the_classifier(tmp_path, small_pictures, capsys):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    results = evaluate_tiny(run, "--judge-samples", "0")
    assert all(results[key] is None and results["unavailable"][key] == "--judge-samples 0" for key in evaluate.JUDGE_KEYS)
    assert results["judge_samples"] == 0 and not (run / "eval" / "classifier.pt").exists()
    assert any(line.startswith("classifier ") and line.endswith("n/a: --judge-samples 0")
               for line in capsys.readouterr().out.splitlines())
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--run-dir", str(run), "--judge-samples", "1"])
    assert info.value.code == 1 and "--judge-samples" in capsys.readouterr().err


def test_the_classifiers_train_on_every_core_while_sampling_keeps_threads_1(tmp_path, small_pictures, monkeypatch):
    threads_seen = []
    train = classifier.train_classifier

    def spy(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return train(*args, **kwargs)

    monkeypatch.setattr(classifier, "train_classifier", spy)
    monkeypatch.setattr(sample_judge, "TRAINING_THREADS", 3)
    before = torch.get_num_threads()
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)
    evaluate_tiny(run, "--judge-samples", "6", "--threads", "1")
    assert threads_seen == [3, 3]  # the run's classifier, then GAN-train's
    assert torch.get_num_threads() == before

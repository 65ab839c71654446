"""The cached classifier is reused only when it was trained on the same images in the same way; else retrained, saying why."""

import pytest
import torch
from torch import nn

from foundation.files import load_checkpoint, save_checkpoint
from stage1_vqvae import classifier
from tests.test_sample_judge import coloured, tiny_classifier  # noqa: F401 (autouse)
from tests.tiny_run import one_thread  # noqa: F401 (autouse)

CPU = torch.device("cpu")
SOURCE = {"dataset": "shapes", "data_dir": None}


@pytest.fixture
def trainings(monkeypatch):
    """The list of the classifier's trainings, one entry each, as cached_classifier asks for them."""
    trained, train = [], classifier.train_classifier
    monkeypatch.setattr(classifier, "train_classifier", lambda *args: trained.append(1) or train(*args))
    return trained


def no_training(*args):
    raise AssertionError("the cached classifier should have been reused")


def cached(path):
    images, labels = coloured(6, seed=0)
    return classifier.cached_classifier(path, images, labels, 3, CPU, **SOURCE)


def assert_reused(path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setattr(classifier, "train_classifier", no_training)
        cached(path)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("setting, value, named", [("LEARNING_RATE", 1e-3, "learning rate"), ("BATCH_SIZE", 4, "batch size"),
                                                   ("VAL_FRACTION", 0.2, "validation share"),
                                                   ("WEIGHT_DECAY", 0.0, "weight decay"), ("EPOCHS", 3, "number of epochs"),
                                                   ("ARCHITECTURE", 2, "architecture")])
def test_a_changed_setting_retrains_saying_which_then_the_new_cache_is_reused(tmp_path, trainings, monkeypatch, capsys,
                                                                              setting, value, named):
    path = tmp_path / "classifier.pt"
    cached(path)
    monkeypatch.setattr(classifier, setting, value)
    cached(path)
    assert len(trainings) == 2
    out = capsys.readouterr().out
    assert out == f"retraining the classifier: the one cached in {path} was trained with a different {named}\n"
    assert_reused(path, monkeypatch, capsys)


def test_a_changed_architecture_retrains_instead_of_crashing(tmp_path, trainings, monkeypatch, capsys):
    path = tmp_path / "classifier.pt"
    cached(path)
    monkeypatch.setattr(classifier, "conv_bn_relu", lambda cin, cout: [  # convolutions with a bias: new weights
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)])
    cached(path)
    assert len(trainings) == 2
    assert capsys.readouterr().out == (f"retraining the classifier: the weights cached in {path} do not fit today's "
                                       "classifier (a different architecture)\n")
    assert_reused(path, monkeypatch, capsys)


@pytest.mark.parametrize("weights", [
    lambda: classifier.SmallCNN(3, width=4).state_dict(),  # other shapes
    lambda: dict(list(classifier.SmallCNN(3, width=8).state_dict().items())[1:]),  # a tensor missing
    lambda: {"not": "weights"},
])
def test_a_cache_whose_weights_do_not_fit_retrains_instead_of_crashing(tmp_path, trainings, capsys, weights):
    path = tmp_path / "classifier.pt"
    images, labels = coloured(6, seed=0)
    trained_on = classifier.describe_training_set(images, labels, 3, **SOURCE)
    save_checkpoint(path, "classifier", {"num_classes": 3, "width": 8}, weights(), trained_on=trained_on)
    model = cached(path)
    assert len(trainings) == 1 and "do not fit today's classifier" in capsys.readouterr().out
    assert classifier.predict(model, images, CPU).shape == (18, 3)


def test_a_cache_from_before_the_settings_were_recorded_is_reused_until_one_changes(tmp_path, trainings, monkeypatch,
                                                                                    capsys):
    for key, value in classifier.RECORDED_LATER.items():  # what those caches were trained with
        monkeypatch.setattr(classifier, key.upper(), value)
    path = tmp_path / "classifier.pt"
    cached(path)
    ckpt = load_checkpoint(path, "classifier")
    for key in classifier.RECORDED_LATER:  # as caches were written before they recorded these
        del ckpt["trained_on"][key]
    torch.save(ckpt, path)
    assert_reused(path, monkeypatch, capsys)
    monkeypatch.setattr(classifier, "LEARNING_RATE", 1e-3)
    cached(path)
    assert len(trainings) == 2 and "was trained with a different learning rate" in capsys.readouterr().out


def test_a_cache_elsewhere_is_reused_and_a_stale_one_named_only_when_retraining(tmp_path, trainings, monkeypatch,
                                                                                capsys):
    images, labels = coloured(6, seed=0)
    elsewhere, path = tmp_path / "stage1.pt", tmp_path / "eval.pt"
    cached(elsewhere)
    classifier.cached_classifier(path, images, labels, 3, CPU, also_at=(elsewhere,), **SOURCE)
    assert len(trainings) == 1 and not path.exists() and capsys.readouterr().out == ""
    monkeypatch.setattr(classifier, "BATCH_SIZE", 4)
    classifier.cached_classifier(path, images, labels, 3, CPU, also_at=(elsewhere,), **SOURCE)
    assert len(trainings) == 2 and path.is_file()
    assert capsys.readouterr().out.count("\n") == 1  # one line: why the cache found was not used

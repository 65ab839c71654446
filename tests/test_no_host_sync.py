"""No training step makes the host wait for the device (issue 36).

A read of a tensor's value on the host (`.item()`, `.tolist()`, `bool()`, `float()`, `.nonzero()`,
`torch.bincount`, indexing with a bool mask, ...) waits for every queued kernel on a GPU. Such reads are
counted here on CPU with patched `torch.Tensor` methods, over whole tiny trainings of 2 and of 6 steps an
epoch: reads made once an epoch (evaluation, logging) are the same in both, so any difference is a read
made per step. On CUDA, `torch.cuda.set_sync_debug_mode("error")` would raise at each of them.
"""

import collections

import pytest
import torch

from stage1_vqvae import classifier
from stage1_vqvae import train as stage1
from stage2_prior import train as stage2
from tests.test_resume import write_random_codes

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "numpy")
READING_FUNCTIONS = ("nonzero", "bincount", "unique", "masked_select", "argwhere")


def _counting(counts, name, original):
    def counted(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)

    return counted


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


def _counting_index(counts, name, original):
    def indexed(self, index, *rest):
        if _bool_index(index):
            counts[name + "[bool mask]"] += 1
        return original(self, index, *rest)

    return indexed


def host_reads(monkeypatch, run) -> collections.Counter:
    """The host reads of tensor values made while `run()` runs, by kind."""
    counts = collections.Counter()
    with monkeypatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, _counting(counts, name, getattr(torch.Tensor, name)))
        for name in READING_FUNCTIONS:
            patch.setattr(torch, name, _counting(counts, "torch." + name, getattr(torch, name)))
        for name in ("__getitem__", "__setitem__"):
            patch.setattr(torch.Tensor, name, _counting_index(counts, name, getattr(torch.Tensor, name)))
        run()
    return counts


def reads_per_step(monkeypatch, run_with_steps) -> dict:
    """{kind: extra reads} of a run of 6 steps an epoch over one of 2: empty when no step reads anything."""
    few, many = (host_reads(monkeypatch, lambda steps=steps: run_with_steps(steps)) for steps in (2, 6))
    return {kind: many[kind] - few[kind] for kind in many | few if many[kind] != few[kind]}


STAGE1_CASES = {
    "plain": [],
    "codebook loss": ["--quantizer", "codebook"],
    "two levels": ["--levels", "2"],
    "attention and weight average": ["--attention-blocks", "1", "--weight-ema", "0.9"],
    "adversarial": ["--adversarial-weight", "0.5", "--adversarial-start", "0", "--adversarial-ramp", "0",
                    "--discriminator-channels", "8"],
}


def untrained_classifier(images, labels, num_classes, device, **kwargs):
    """The adversarial run's judge without its training, whose steps grow with the training images."""
    return classifier.new_classifier(num_classes, classifier.WIDTH, 0, device).eval(), {"epoch": 0, "val_accuracy": None}


@pytest.mark.parametrize("case", list(STAGE1_CASES))
def test_a_stage1_step_reads_nothing_back(tmp_path, monkeypatch, case):
    monkeypatch.setattr(classifier, "train_classifier", untrained_classifier)
    def train(steps):
        stage1.main(["--dataset", "shapes", "--shapes-train", str(16 * steps), "--shapes-test", "32",
                     "--image-size", "16", "--codebook-size", "16", "--hidden-channels", "16", "--batch-size", "16",
                     "--epochs", "1", "--device", "cpu", "--out-dir", str(tmp_path / f"{steps}"), "--fresh",
                     *STAGE1_CASES[case]])

    assert reads_per_step(monkeypatch, train) == {}


STAGE2_CASES = {
    "plain": [],
    "class-conditional with label dropout": ["--class-conditional", "--label-dropout", "0.3"],
    "weight average": ["--weight-ema", "0.9"],
    "attention": ["--attention-layers", "1"],
}


@pytest.mark.parametrize("case", list(STAGE2_CASES))
def test_a_prior_step_reads_nothing_back(tmp_path, monkeypatch, case):
    write_random_codes(tmp_path / "codes", n=600)

    def train(steps):
        stage2.main(["--codes-dir", str(tmp_path / "codes"), "--out-dir", str(tmp_path / f"{steps}"), "--fresh",
                     "--hidden-channels", "16", "--layers", "2", "--batch-size", str(540 // steps), "--epochs", "1",
                     "--device", "cpu", "--attention-layers", "0", *STAGE2_CASES[case]])

    assert reads_per_step(monkeypatch, train) == {}


def test_the_counter_sees_a_read_in_a_step(monkeypatch):
    """The measure itself: a step that reads its loss back is caught."""
    def train(steps):
        for _ in range(steps):
            loss = torch.ones(3).sum()
            loss.item()
            torch.zeros(4)[torch.ones(4, dtype=torch.bool)]

    assert reads_per_step(monkeypatch, train) == {"item": 4, "__getitem__[bool mask]": 4}

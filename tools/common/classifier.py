"""A small CNN that judges images by their class: the measures of Shmelkov et al., "How good is my GAN?" (ECCV 2018).

Used by `tools.evaluate` (`make evaluate`). The classifier is trained on the run's real training images, with
flips, for a fixed number of epochs; a seeded, class-stratified tenth of those images chooses the epoch. It is
cached as RUN_DIR/eval/classifier.pt together with what it was trained on, and retrained only when that changes.

- **GAN-test**: its accuracy on class-conditional samples (each against the label it was drawn with), beside its
  accuracy on the real test images (the ceiling). Low: the samples do not look like their class.
- **GAN-train**: the same architecture trained on samples alone, tested on the real test images. Low while
  GAN-test is high: the samples are recognisable but lack the variety of the real images.
- For any prior: the classifier's mean confidence (max softmax) on samples, and the entropy of its predicted-class
  histogram in bits (log2 of the class count when every class is predicted equally often).
"""

import copy
import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from foundation.cli import UserError
from foundation.files import load_checkpoint, save_checkpoint
from foundation.runtime import progress_disabled
from foundation.splits import split_validation
from stage1_vqvae.data import channels_last, hflip_where, shuffled_batches, to_model_range

WIDTH = 32  # channels of the first block; the two others have 2x and 4x
EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 3e-3  # the peak of a one-cycle schedule
VAL_FRACTION = 0.1  # of the training images, to choose the epoch
SEED = 0
EVAL_BATCH = 256


class SmallCNN(nn.Module):
    """Three blocks of two 3x3 convolutions (batch norm, ReLU) and a 2x2 max-pool; global average pool; linear."""

    def __init__(self, num_classes: int, width: int = WIDTH):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            layers += [*conv_bn_relu(channels, out), *conv_bn_relu(out, out), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, num_classes) logits."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


# ---------------------------------------------------------------- measures on logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of (N, C) logits whose largest entry is at the row's label."""
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()


def mean_confidence(logits: torch.Tensor) -> float:
    """Mean over the rows of the largest softmax probability."""
    return logits.double().softmax(dim=1).max(dim=1).values.mean().item()


def class_entropy_bits(logits: torch.Tensor) -> float:
    """Entropy in bits of the histogram of predicted classes (argmax of each row)."""
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log2()).sum().item()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    """(N, C) logits on the CPU of uint8 images (N, 3, H, W), in batches."""
    model.eval()
    batches = (images[s : s + EVAL_BATCH].to(device) for s in range(0, images.shape[0], EVAL_BATCH))
    return torch.cat([model(channels_last(to_model_range(x))).float().cpu() for x in batches])


# ---------------------------------------------------------------- training


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, device, seed: int = SEED,
                     desc: str = "classifier") -> tuple:
    """(a SmallCNN trained on uint8 images with their labels, {epoch, val_accuracy}): the best of EPOCHS on validation."""
    train_idx, val_idx = split_validation(labels, VAL_FRACTION)
    with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's generator
        torch.manual_seed(seed)
        model = SmallCNN(num_classes, WIDTH).to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    steps = EPOCHS * math.ceil(len(train_idx) / BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    best = {"epoch": 0, "val_accuracy": -1.0, "state": None}
    bar = tqdm(range(1, EPOCHS + 1), desc=desc, unit="epoch", disable=progress_disabled())
    for epoch in bar:
        one_epoch(model, optimizer, schedule, images[train_idx], labels[train_idx], generator, device)
        # without validation images, the last epoch is the one kept
        score = accuracy(predict(model, images[val_idx], device), labels[val_idx]) if len(val_idx) else epoch
        if score > best["val_accuracy"]:
            best = {"epoch": epoch, "val_accuracy": score, "state": copy.deepcopy(model.state_dict())}
        bar.set_postfix(val_accuracy=f"{score:.3f}" if len(val_idx) else "n/a")
    model.load_state_dict(best["state"])
    return model.eval(), {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"] if len(val_idx) else None}


def one_epoch(model, optimizer, schedule, images, labels, generator, device) -> None:
    """One pass over the images in a seeded order, each flipped left-right with probability 1/2."""
    model.train()
    for picked, flips in shuffled_batches(images.shape[0], BATCH_SIZE, generator, images.device):
        if picked.shape[0] < 2:  # batch norm needs two images; the odd last one waits for the next epoch
            continue
        x = hflip_where(to_model_range(images[picked].to(device)), flips.to(device))
        loss = F.cross_entropy(model(channels_last(x)), labels[picked].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


# ---------------------------------------------------------------- the cache


def describe_training_set(images: torch.Tensor, labels: torch.Tensor, num_classes: int, **source) -> dict:
    """What a classifier was trained on (the `source`: dataset, data dir ...) and how: equal means reusable."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return {**source, "image_size": images.shape[-1], "train_images": images.shape[0], "num_classes": num_classes,
            "images_sha256": digest.hexdigest(), "width": WIDTH, "epochs": EPOCHS, "seed": SEED}


def cached_classifier(path: Path, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device,
                      **source) -> nn.Module:
    """The classifier cached at `path` when it was trained on the same images, else one trained now and cached."""
    trained_on = describe_training_set(images, labels, num_classes, **source)
    reused = reuse(path, trained_on, device)
    if reused is not None:
        return reused
    model, chosen = train_classifier(images, labels, num_classes, device)
    save_checkpoint(path, "classifier", {"num_classes": num_classes, "width": WIDTH},
                    {k: v.cpu() for k, v in model.state_dict().items()}, trained_on=trained_on, **chosen)
    return model


def reuse(path: Path, trained_on: dict, device) -> nn.Module | None:
    """The model cached at `path` if it was trained on `trained_on`; None when it is missing, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path, "classifier", map_location=device)
    except UserError as why:
        print(f"retraining the classifier: {why}")
        return None
    if ckpt.get("trained_on") != trained_on:
        return None
    model = SmallCNN(ckpt["config"]["num_classes"], ckpt["config"]["width"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.to(memory_format=torch.channels_last).eval()


# ---------------------------------------------------------------- the measures of samples

NOT_CONDITIONAL = "the prior is not class-conditional: its samples have no label to check (see sample_mean_confidence)"


def judge_samples(judge: nn.Module, samples: torch.Tensor, labels: torch.Tensor | None, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, device) -> tuple:
    """({gan_test_accuracy, gan_train_accuracy, sample_mean_confidence, sample_class_entropy_bits}, {key: why null}).

    `samples` are uint8 images drawn with `labels` (None for an unconditional prior: no GAN-test, no GAN-train).
    """
    logits = predict(judge, samples, device)
    figures = {"sample_mean_confidence": mean_confidence(logits), "sample_class_entropy_bits": class_entropy_bits(logits)}
    if labels is None:
        return {**figures, "gan_test_accuracy": None, "gan_train_accuracy": None}, dict.fromkeys(
            ("gan_test_accuracy", "gan_train_accuracy"), NOT_CONDITIONAL)
    labels = labels.cpu()
    trained, _ = train_classifier(samples, labels, num_classes, device, desc="GAN-train classifier")
    figures["gan_test_accuracy"] = accuracy(logits, labels)
    figures["gan_train_accuracy"] = accuracy(predict(trained, test_images, device), test_labels)
    return figures, {}

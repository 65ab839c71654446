"""A small CNN that tells an image's class: how recognisable reconstructions and samples are, with no pretrained network.

Used by `stage1_vqvae.train` (an adversarial run keeps the epoch whose validation reconstructions it recognises
best) and by `tools.evaluate` (`make evaluate`: its accuracy on test images, their reconstructions and samples,
`tools.common.sample_judge`). The classifier is trained on the run's real training images, with
flips, for a fixed number of epochs; a seeded, class-stratified tenth of those images chooses the epoch. It is
cached (stage 1: OUT_DIR/classifier.pt; `make evaluate`: RUN_DIR/eval/classifier.pt, or stage 1's when it was
trained on the same images) together with what it was trained on and how (the settings below, the architecture),
and retrained, with a line saying why, only when that changes.
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
WEIGHT_DECAY = 5e-4
SEED = 0
ARCHITECTURE = 1  # raise it when SmallCNN computes something else; new names or shapes of its weights are caught anyway
# what caches written before they recorded these settings were trained with (the settings had never changed)
RECORDED_LATER = {"learning_rate": 3e-3, "batch_size": 64, "val_fraction": 0.1, "weight_decay": 5e-4, "architecture": 1}
# how the reason for retraining names a setting, where its key does not say it
SETTING_NAMES = {"images_sha256": "set of images", "train_images": "number of images", "data_dir": "data folder",
                 "num_classes": "number of classes", "val_fraction": "validation share", "epochs": "number of epochs"}
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


def new_classifier(num_classes: int, width: int, seed: int, device) -> SmallCNN:
    """A SmallCNN with seeded weights, made without moving the caller's random generator (a training run's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(num_classes, width).to(device, memory_format=torch.channels_last)


def conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


# ---------------------------------------------------------------- accuracy


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of (N, C) logits whose largest entry is at the row's label."""
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()


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
    model = new_classifier(num_classes, WIDTH, seed, device)
    generator = torch.Generator().manual_seed(seed)
    steps = EPOCHS * math.ceil(len(train_idx) / BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
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
            "images_sha256": digest.hexdigest(), "width": WIDTH, "epochs": EPOCHS, "seed": SEED,
            "learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE, "val_fraction": VAL_FRACTION,
            "weight_decay": WEIGHT_DECAY, "architecture": ARCHITECTURE}


def classifier_source(dataset: str, data_dir: str) -> dict:
    """Where the training images came from, as the cache records it (generated shapes have no folder)."""
    return {"dataset": dataset, "data_dir": None if dataset == "shapes" else str(Path(data_dir).resolve())}


def cached_classifier(path: Path, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device,
                      also_at: tuple = (), **source) -> nn.Module:
    """The classifier cached at `path` (or at one of the paths `also_at`) when it was trained on the same images
    in the same way, else one trained now (saying why, when a cache was found) and cached at `path`."""
    trained_on = describe_training_set(images, labels, num_classes, **source)
    reasons = []
    for place in (path, *also_at):
        reused, why = reuse(place, trained_on, device)
        if reused is not None:
            return reused
        reasons.append(why)
    why = next((reason for reason in reasons if reason), None)
    if why:
        print(f"retraining the classifier: {why}")
    model, chosen = train_classifier(images, labels, num_classes, device)
    save_checkpoint(path, "classifier", {"num_classes": num_classes, "width": WIDTH},
                    {k: v.cpu() for k, v in model.state_dict().items()}, trained_on=trained_on, **chosen)
    return model


def reuse(path: Path, trained_on: dict, device) -> tuple:
    """(the model cached at `path`, None) if it was trained on `trained_on`, else (None, why not: None when missing)."""
    if not path.is_file():
        return None, None
    try:
        ckpt = load_checkpoint(path, "classifier", map_location=device)
    except UserError as why:
        return None, str(why)
    saved = ckpt.get("trained_on")
    if not isinstance(saved, dict):
        return None, f"the one cached in {path} does not say what it was trained on"
    differ = settings_that_differ({**RECORDED_LATER, **saved}, trained_on)
    if differ:
        return None, f"the one cached in {path} was trained with a different {', '.join(differ)}"
    model = new_classifier(trained_on["num_classes"], WIDTH, SEED, device)
    if not isinstance(ckpt["model"], dict) or shapes(ckpt["model"]) != shapes(model.state_dict()):
        return None, f"the weights cached in {path} do not fit today's classifier (a different architecture)"
    model.load_state_dict(ckpt["model"])
    return model.eval(), None


def settings_that_differ(saved: dict, wanted: dict) -> list:
    """The names of the entries in which two descriptions of a training (`describe_training_set`) differ."""
    keys = [*wanted, *(key for key in saved if key not in wanted)]
    return [SETTING_NAMES.get(key, key.replace("_", " ")) for key in keys if saved.get(key) != wanted.get(key)]


def shapes(state: dict) -> dict:
    """{name: shape} of a state dict's tensors."""
    return {name: tuple(getattr(tensor, "shape", ())) for name, tensor in state.items()}

"""Stage-1 previews (recon_epochNNN.png, eval_recon.png) show test images of every class, the same all run."""

import numpy as np
import pytest
import torch
from PIL import Image

from stage1_vqvae import train
from stage1_vqvae.data import spread_over_classes
from tests.tiny_run import one_thread  # noqa: F401  (autouse fixture)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def test_spread_over_classes_takes_one_of_each_class_in_turn():
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 3)
    chosen = spread_over_classes(labels, 16)
    assert labels[chosen[:3]].tolist() == [0, 1, 2]
    assert chosen.numel() == 16 and len(set(chosen.tolist())) == 16
    assert torch.equal(chosen, spread_over_classes(labels, 16))  # fixed: the same images every epoch
    assert spread_over_classes(torch.zeros(5, dtype=torch.long), 16).tolist() == list(range(5))


def colour_pixels(path, colour) -> int:
    picture = np.asarray(Image.open(path).convert("RGB"))
    return int((picture == colour).all(axis=-1).sum())


@pytest.mark.slow
def test_preview_of_a_folder_sorted_by_class_shows_every_class(tmp_path):
    """A folder lists its test images class by class: the first 16 would all be one class."""
    for name, colour in [("a_red", RED), ("b_blue", BLUE)]:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(200):  # 20 test images per class
            Image.new("RGB", (16, 16), colour).save(tmp_path / "data" / name / f"{i:03d}.png")
    out = tmp_path / "run"
    train.main(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--epochs", "2",
                "--codebook-size", "8", "--embed-dim", "4", "--hidden-channels", "8", "--res-blocks", "1",
                "--batch-size", "64", "--device", "cpu", "--out-dir", str(out)])
    train.main(["--eval-only", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                "--out-dir", str(out)])
    for picture in ["recon_epoch001.png", "recon_epoch002.png", "eval_recon.png"]:
        # 16 inputs of 16x16 px, half of each class: the pure colours are the inputs (reconstructions are not exact)
        assert colour_pixels(out / picture, RED) >= 8 * 16 * 16, picture
        assert colour_pixels(out / picture, BLUE) >= 8 * 16 * 16, picture

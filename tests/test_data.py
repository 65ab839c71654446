"""Datasets: procedural shapes, image folders (any size, broken files), offline CIFAR-10, batching."""

import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import hflip

from foundation.cli import UserError
from stage1_vqvae import data, sources
from stage1_vqvae.data import load_split, make_shapes, to_model_range, train_batches


def test_shapes_are_deterministic_varied_and_labelled():
    a, b = make_shapes(64, seed=5), make_shapes(64, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_shapes(64, seed=6).images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert set(a.labels.tolist()) == set(range(len(a.class_names)))  # 64 draws cover all 6 classes
    assert a.images.float().std(dim=(1, 2, 3)).min() > 5  # every image shows a shape on a background


def write_image(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_holds_out_every_tenth_file_per_class_and_resizes(tmp_path):
    for name, colour in [("cats", (255, 0, 0)), ("dogs", (0, 0, 255))]:
        for i in range(20):
            write_image(tmp_path / name / f"{i:02d}.png", (48, 40), colour)
    train, test = load_split("folder", tmp_path, "train"), load_split("folder", tmp_path, "test")
    assert (len(train), len(test)) == (32, 4)  # 40 files: 4 test, then 10% of the other 36 for validation
    assert len(load_split("folder", tmp_path, "val")) == 4
    assert train.class_names == ["cats", "dogs"] and train.images.shape[1:] == (3, 32, 32)
    assert torch.equal(test.labels, torch.tensor([0, 0, 1, 1]))
    assert test.images[0, 0].float().mean() == 255 and test.images[-1, 2].float().mean() == 255


def test_folder_uses_train_and_test_subfolders_when_present(tmp_path):
    for split, count in [("train", 3), ("test", 2)]:
        for i in range(count):
            write_image(tmp_path / split / "a" / f"{i}.png", (32, 32), (i, i, i))
    assert len(load_split("folder", tmp_path, "train")) == 3
    assert len(load_split("folder", tmp_path, "test")) == 2


def test_folder_skips_undecodable_images_with_a_warning(tmp_path, capsys):
    for i in range(10):
        write_image(tmp_path / "a" / f"{i}.png", (32, 32), (1, 2, 3))
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    train = load_split("folder", tmp_path, "train", val_size=0)
    assert len(train) == 9  # 11 files, 1 broken, 1 held out
    assert "broken.png" in capsys.readouterr().err


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_split("folder", tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        load_split("folder", tmp_path / "empty", "train")


def test_cifar10_offline_is_one_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(UserError) as err:
        load_split("cifar10", tmp_path, "train")
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "DATASET=shapes" in message and "DATASET=folder" in message


def test_training_command_reports_missing_data_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stage1_vqvae.train", "--dataset", "folder", "--data-dir", str(tmp_path / "missing"),
         "--out-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:")


def test_train_batches_yield_every_image_once_per_epoch():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 32, 32).contiguous()
    seen = torch.cat([b[:, 0, 0, 0] for b in train_batches(images, 16, torch.Generator().manual_seed(0), augment=False)])
    values = torch.round((seen + 1) * 127.5).long()
    assert sorted(values.tolist()) == list(range(50))


def test_training_flips_match_torchvision_hflip_and_keep_every_image_once():
    images = make_shapes(64, seed=2).images
    originals = {bytes(img.numpy()): to_model_range(img) for img in images}
    batches = list(train_batches(images, 16, torch.Generator().manual_seed(1), augment=True))
    flipped = 0
    for x in torch.cat(batches):
        restored = torch.round((x + 1) * 127.5).to(torch.uint8)
        key = bytes(restored.numpy())
        if key not in originals:  # a flipped image: flipping it back must give an original
            key = bytes(hflip(restored).numpy())
            flipped += 1
            assert torch.equal(hflip(originals[key]), x)
        originals.pop(key)  # each image exactly once per epoch
    assert not originals
    assert 10 < flipped < 54


def test_model_range_scaling():
    u8 = torch.tensor([0, 255, 128], dtype=torch.uint8)
    np.testing.assert_allclose(data.to_model_range(u8).numpy(), [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)


def test_folder_decoding_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    for i in range(10):
        write_image(tmp_path / "a" / f"{i}.png", (32, 32), (i, 0, 0))
    first = load_split("folder", tmp_path, "train")
    assert list((tmp_path / ".cache").glob("folder-train-*.pt"))

    def no_decoding(*args):
        raise AssertionError("decoded again although the files did not change")

    monkeypatch.setattr(sources, "_decode_files", no_decoding)
    cached = load_split("folder", tmp_path, "train")
    assert torch.equal(cached.images, first.images) and torch.equal(cached.labels, first.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # another image size is another cache entry
        load_split("folder", tmp_path, "train", image_size=64)

    monkeypatch.undo()
    write_image(tmp_path / "a" / "0.png", (32, 32), (200, 200, 200))
    changed = load_split("folder", tmp_path, "train")
    assert changed.images[0, 0, 0, 0] == 200


@pytest.mark.parametrize("size", [32, 64, 128])
def test_folder_and_shapes_load_at_any_image_size(tmp_path, size):
    for i in range(10):
        write_image(tmp_path / "a" / f"{i}.png", (50 + i, 40), (i, 0, 0))  # not square, not the target size
    assert load_split("folder", tmp_path, "test", image_size=size).images.shape == (1, 3, size, size)
    shapes = load_split("shapes", "unused", "train", shapes_counts=(8, 4), image_size=size)
    assert shapes.images.shape == (8, 3, size, size)
    assert torch.equal(shapes.labels, make_shapes(8, 0).labels)  # same shapes at every size


def test_cifar10_at_another_size_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="32 px"):
        load_split("cifar10", tmp_path, "test", image_size=64)

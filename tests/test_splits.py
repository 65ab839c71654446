"""The validation split: disjoint from train and test, deterministic, stratified; mirrored train maps only."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from foundation.cli import UserError
from foundation.files import save_checkpoint
from foundation.splits import split_validation, validation_count
from stage1_vqvae import encode
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import load_splits, make_shapes
from stage1_vqvae.model import VQVAE
from stage1_vqvae.train import check_same_split
from stage2_prior.data import load_splits as load_code_splits
from stage2_prior.data import read_meta


@pytest.mark.parametrize("size, expected", [(0.1, 10), (0.25, 25), (7, 7), (1, 1), (0.0, 0)])
def test_size_is_a_fraction_below_one_else_a_count(size, expected):
    assert validation_count(size, 100) == expected


def test_size_that_leaves_no_training_items_is_an_error():
    with pytest.raises(UserError, match="leaves no training"):
        validation_count(100, 100)


@pytest.mark.parametrize("size", [0.1, 0.33, 17])
def test_split_is_disjoint_complete_exact_stratified_and_deterministic(size):
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    train, val = split_validation(labels, size)
    assert len(val) == validation_count(size, 100)
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    per_class = torch.bincount(labels[val], minlength=3).double()
    assert torch.all((per_class - torch.tensor([0.5, 0.3, 0.2]) * len(val)).abs() <= 1)
    again_train, again_val = split_validation(labels.clone(), size)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)


def write_folder(root, per_class=20, classes=("a", "b")):
    """Tiny images, each unique: pixel (0, 0) encodes the file's index."""
    index = 0
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[0, 0] = [index % 256, index // 256, 7]
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
            index += 1


def image_keys(image_set) -> set:
    return {bytes(img[:, 0, 0].tolist()) for img in image_set.images}


@pytest.mark.parametrize("layout", ["train_test_folders", "one_folder"])
def test_folder_splits_are_disjoint_and_stable(tmp_path, layout):
    if layout == "train_test_folders":
        write_folder(tmp_path / "train", per_class=20)
        write_folder(tmp_path / "test", per_class=5)
    else:
        write_folder(tmp_path, per_class=30)
    splits = load_splits("folder", tmp_path, val_size=0.2)
    keys = {name: image_keys(data) for name, data in splits.items()}
    if layout == "one_folder":  # test images come from the same files: they must not leak into train or val
        assert not keys["test"] & (keys["train"] | keys["val"])
    assert not keys["train"] & keys["val"]
    assert len(splits["val"]) == round(0.2 * (len(splits["train"]) + len(splits["val"])))
    assert abs(int(splits["val"].labels.bincount().diff())) <= 1  # stratified: both classes give their share
    again = load_splits("folder", tmp_path, val_size=0.2)
    assert torch.equal(again["val"].images, splits["val"].images) and again["val"].note == splits["val"].note


def test_shapes_generate_their_own_validation_images():
    splits = load_splits("shapes", "unused", shapes_counts=(200, 20), val_size=0.1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [200, 20, 20]
    assert not image_keys_full(splits["val"]) & image_keys_full(splits["train"])
    assert not torch.equal(splits["val"].images, splits["test"].images)


def image_keys_full(image_set) -> set:
    return {bytes(img.flatten().tolist()) for img in image_set.images}


def test_resumed_run_refuses_a_changed_split():
    cfg = VQVAEConfig(val_split="10 of 100 train items, ... sha256 aaaaaaaaaaaa")
    assert check_same_split(cfg, cfg.val_split).val_split == cfg.val_split
    with pytest.raises(UserError, match="validation split changed"):
        check_same_split(cfg, "10 of 101 train items, ... sha256 bbbbbbbbbbbb")
    assert check_same_split(VQVAEConfig(), "new").val_split == "new"  # a fresh run records its split


@pytest.fixture
def tiny_checkpoint(tmp_path):
    cfg = VQVAEConfig(dataset="shapes", shapes_train=40, shapes_test=8, val_size=0.25, codebook_size=32,
                      embed_dim=8, hidden_channels=16, res_blocks=1, precision="fp32")
    model = VQVAE(cfg)
    model.quantizer.embedding.data.normal_()  # spread codes, so the maps are not all one index
    path = tmp_path / "vqvae.pt"
    save_checkpoint(path, "vqvae", dataclasses.asdict(cfg), model.state_dict())
    return path, model.eval()


def test_mirroring_doubles_train_maps_only(tmp_path, tiny_checkpoint):
    path, model = tiny_checkpoint
    encode.main(["--ckpt", str(path), "--out-dir", str(tmp_path / "mirrored"), "--device", "cpu"])
    encode.main(["--ckpt", str(path), "--out-dir", str(tmp_path / "plain"), "--device", "cpu", "--no-mirror-train"])
    mirrored, plain = tmp_path / "mirrored", tmp_path / "plain"
    load = lambda folder, name: np.load(folder / name)  # noqa: E731
    train_m, train_p = load(mirrored, "train.npy"), load(plain, "train.npy")
    assert train_m.shape[0] == 2 * train_p.shape[0] == 80
    assert np.array_equal(train_m[:40], train_p)
    images = make_shapes(40, seed=0).images.float() / 127.5 - 1
    assert np.array_equal(train_m[40:], model.encode(images.flip(3)).numpy())  # the second half: mirrored images
    assert np.array_equal(load(mirrored, "train_labels.npy"), np.tile(load(plain, "train_labels.npy"), 2))
    for split in ("val", "test"):
        assert np.array_equal(load(mirrored, f"{split}.npy"), load(plain, f"{split}.npy"))
    meta = json.loads((mirrored / "meta.json").read_text())
    assert meta["counts"] == {"train": 80, "val": 10, "test": 8} and meta["train_mirrored"] is True
    assert meta["val_split"] == "10 generated shapes, seed 2"
    assert json.loads((plain / "meta.json").read_text())["train_mirrored"] is False


def test_code_folders_without_val_carve_one_from_train(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    folder = tmp_path / "codes"
    encode.main(["--ckpt", str(path), "--out-dir", str(folder), "--device", "cpu", "--no-mirror-train"])
    splits, note = load_code_splits(folder, read_meta(folder), 0.1)
    assert note == ""
    assert splits["val"][0][0].shape[0] == 10
    # an older folder: no val.npy, and meta.json without the val count
    (folder / "val.npy").unlink()
    (folder / "val_labels.npy").unlink()
    meta = read_meta(folder)
    del meta["counts"]["val"], meta["train_mirrored"]
    splits, note = load_code_splits(folder, meta, 0.1)
    assert "no val.npy" in note
    assert splits["train"][0][0].shape[0] + splits["val"][0][0].shape[0] == 40 and splits["val"][0][0].shape[0] == 4
    again, _ = load_code_splits(folder, meta, 0.1)
    assert torch.equal(again["val"][0][0], splits["val"][0][0])
    meta["train_mirrored"] = True  # mirrored maps of one image would land on both sides of a carved split
    with pytest.raises(UserError, match="mirrored"):
        load_code_splits(folder, meta, 0.1)

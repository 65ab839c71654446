"""The recommender experiment: the cold-item split, MovieLens files, and training that beats the global mean."""

import hashlib
import json
import subprocess
import sys
import urllib.error
import zipfile

import numpy as np
import pytest
import torch

from foundation.cli import UserError
from tests.conftest import ROOT
from tools.recommend import command as recommend
from tools.recommend import data as ratings

SMALL = ["--synthetic-users", "200", "--synthetic-items", "300", "--epochs", "6", "--batch-size", "256",
         "--codebook-size", "16", "--device", "cpu"]


@pytest.mark.parametrize("max_train", [1, 3, 5])
def test_cold_items_keep_the_promised_number_of_training_ratings(max_train):
    data = ratings.synthetic_ratings(300, 400, seed=1)
    split = ratings.cold_item_split(data, cold_fraction=0.2, max_train=max_train, seed=2)
    everything = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(everything), np.arange(len(data)))  # a partition of the ratings
    train_counts = np.bincount(data.items[split.train], minlength=data.n_items)
    test_counts = np.bincount(data.items[split.test], minlength=data.n_items)
    all_counts = np.bincount(data.items, minlength=data.n_items)
    assert split.cold_items.size == round(0.2 * (all_counts > max_train + 1).sum())
    assert (train_counts[split.cold_items] >= 1).all() and (train_counts[split.cold_items] <= max_train).all()
    assert (test_counts[split.cold_items] >= 1).all()
    if max_train == 5:
        assert set(train_counts[split.cold_items]) == {1, 2, 3, 4, 5}  # drawn across the whole range
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    assert train_counts[warm].sum() / all_counts[warm].sum() == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize("warm_min_train", [3, 10])
def test_the_item_groups_split_the_items_by_their_training_ratings(warm_min_train):
    data = ratings.synthetic_ratings(300, 400, seed=1)
    split = ratings.cold_item_split(data, cold_fraction=0.2, max_train=5, holdout=0.45, seed=2)  # unseen items too
    groups = ratings.item_groups(data, split, warm_min_train)
    assert list(groups) == ["cold", "warm", "rare", "unseen"] and all(items.size for items in groups.values())
    assert np.array_equal(np.sort(np.concatenate(list(groups.values()))), np.arange(data.n_items))  # a partition
    train_counts = np.bincount(data.items[split.train], minlength=data.n_items)
    assert np.array_equal(groups["cold"], split.cold_items)
    assert train_counts[groups["cold"]].min() >= 1 and train_counts[groups["cold"]].max() <= 5
    assert train_counts[groups["warm"]].min() >= warm_min_train
    assert train_counts[groups["rare"]].min() >= 1 and train_counts[groups["rare"]].max() < warm_min_train
    assert (train_counts[groups["unseen"]] == 0).all()


@pytest.mark.parametrize("name", list(recommend.MODELS))
def test_every_model_starts_from_the_same_user_and_item_vectors(name):
    cfg = recommend.RecommendConfig(codebook_size=8, embed_dim=8, groups=2)
    data = ratings.synthetic_ratings(50, 80, seed=0)
    model, reference = (recommend.build_model(n, cfg, data, 3.5).state_dict() for n in (name, "mf+genres"))
    shared = set(model) & set(reference)
    assert {"user.weight", "item.weight", "user_bias.weight", "item_bias.weight"} <= shared
    for key in shared:
        assert torch.equal(model[key], reference[key]), key


def test_training_beats_the_global_mean_and_writes_the_item_codes(tmp_path, capsys):
    out = tmp_path / "recommend"
    recommend.main([*SMALL, "--models", "mf,vq+genres,residual+genres", "--out-dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    rmse = results["rmse"]
    assert set(rmse) == {"global mean", "mf", "vq+genres", "residual+genres"}
    for name in ("mf", "vq+genres", "residual+genres"):
        assert rmse[name]["test"] < rmse["global mean"]["test"] - 0.1, (name, rmse)
        assert rmse[name]["val"] < rmse["global mean"]["val"] - 0.1, (name, rmse)
    groups = results["groups"]
    assert list(groups) == ["cold", "warm", "rare", "unseen"] and results["split"]["warm_min_train"] == 10
    assert sum(g["test_ratings"] for g in groups.values()) == results["split"]["test"]
    assert sum(g["items"] for g in groups.values()) == results["items"]
    assert groups["cold"]["test_ratings"] == results["split"]["cold_test_ratings"]
    for r in rmse.values():  # the groups' squared errors add up to the whole test set's
        per_group = sum(g["test_ratings"] * r[f"test_{name}"] ** 2 for name, g in groups.items() if g["test_ratings"])
        assert per_group == pytest.approx(results["split"]["test"] * r["test"] ** 2, rel=1e-4)
        not_cold = results["split"]["test"] - groups["cold"]["test_ratings"]
        assert not_cold * r["test_not_cold"] ** 2 == pytest.approx(
            per_group - groups["cold"]["test_ratings"] * r["test_cold"] ** 2, rel=1e-4)
    best = results["best_quantized"]
    assert best == min(("vq+genres", "residual+genres"), key=lambda name: rmse[name]["val"])
    codes, meta = np.load(out / "item_codes.npy", allow_pickle=False), json.loads((out / "meta.json").read_text())
    assert codes.shape == (300, 1 if best == "vq+genres" else 3) and codes.dtype == np.uint8 and codes.max() < 16
    assert meta["model"] == best and len(meta["item_ids"]) == 300 and len(meta["usage"]) == codes.shape[1]
    printed = capsys.readouterr().out
    assert "cold items" in printed and "global mean" in printed and "warm" in printed and "rare" in printed


@pytest.mark.parametrize("flags, message", [(["--models", "mf,transformer"], "unknown model(s) ['transformer']"),
                                           (["--warm-min-train", "1"], "--warm-min-train must be at least 2")])
def test_bad_flags_are_one_clear_error(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        recommend.main([*SMALL, *flags, "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 1 and message in capsys.readouterr().err


def write_movielens(folder):
    """A tiny extracted ml-latest-small folder: 3 users, 3 rated movies, one movie without ratings."""
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n1,30,3.5,2\n7,10,5.0,3\n"
                                        "9,20,0.5,4\n")
    (folder / "movies.csv").write_text('movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n'
                                       "20,Toy Story (1995),(no genres listed)\n30,Up (2009),Animation|Action\n"
                                       "40,Unrated (2000),Drama\n")


def test_an_extracted_movielens_folder_is_read(tmp_path):
    write_movielens(tmp_path / "ml-latest-small")
    data = ratings.load_movielens(tmp_path)
    assert data.item_ids == [10, 20, 30] and data.n_users == 3 and len(data) == 4
    assert data.genre_names == ["Action", "Animation", "Crime"]
    assert data.genres.tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 0]]
    assert data.users.tolist() == [0, 0, 1, 2] and data.items.tolist() == [0, 2, 0, 1]
    assert data.ratings.tolist() == [4.0, 3.5, 5.0, 0.5]


def make_zip(path, folder):
    with zipfile.ZipFile(path, "w") as zf:
        for name in ratings.MOVIELENS_FILES:
            zf.write(folder / name, f"ml-latest-small/{name}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_zip_is_checked_then_extracted(tmp_path, monkeypatch):
    write_movielens(tmp_path / "source")
    (tmp_path / "data").mkdir()
    digest = make_zip(tmp_path / "data" / "ml-latest-small.zip", tmp_path / "source")
    with pytest.raises(UserError, match="SHA-256 .* is not the expected"):
        ratings.load_movielens(tmp_path / "data")
    monkeypatch.setattr(ratings, "MOVIELENS_SHA256", digest)
    assert ratings.load_movielens(tmp_path / "data").item_ids == [10, 20, 30]
    assert (tmp_path / "data" / "ml-latest-small" / "movies.csv").is_file()


def test_offline_download_says_where_to_put_the_zip(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ratings.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"put ml-latest-small.zip in '.*data/'"):
        ratings.load_movielens(tmp_path / "data")
    assert not (tmp_path / "data" / "ml-latest-small.zip").exists()


@pytest.mark.slow
def test_make_recommend_uses_the_synthetic_ratings_by_default(tmp_path):
    args = " ".join(SMALL[:-2] + ["--models", "mf,grouped+genres"])
    result = subprocess.run(["make", "--no-print-directory", "recommend", f"RUN_DIR={tmp_path}", f"PY={sys.executable}",
                             "NEED_VENV=", "DEVICE=cpu", f"RECOMMEND_ARGS={args}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "recommend" / "results.json").read_text())
    assert results["dataset"] == "synthetic" and results["best_quantized"] == "grouped+genres"
    assert np.load(tmp_path / "recommend" / "item_codes.npy").shape == (300, 4)


def test_help_lists_the_config_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recommend.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--dataset {synthetic,movielens}" in out and "--max-cold-train" in out

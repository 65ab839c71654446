"""Completion: the kept rows stay exactly as given, the cached completion draws what the naive one draws."""

import numpy as np
import pytest
import torch

from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import load_split, to_model_range
from stage2_prior.hierarchy import HierarchicalPrior
from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config
from tests.tiny_run import SHAPES, make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools import complete


def randomized(model):
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.double().eval()  # float64: cached and naive agree to ~1e-15, so a difference is a bug


def draws(model, given, keep_rows, seed, naive, **kwargs):
    return model.complete(given, keep_rows, generator=torch.Generator().manual_seed(seed), naive=naive, **kwargs)


@pytest.mark.parametrize("keep_rows", [0, 1, 2, 4])
@pytest.mark.parametrize("kind", ["plain", "class", "conditioned"])
def test_kept_rows_stay_and_cached_completion_equals_naive(kind, keep_rows):
    overrides = {"conditioned": dict(condition_codebook_size=6)}.get(kind, {})
    model = randomized(GatedPixelCNN(tiny_prior_config(kind == "class", grid_height=5, grid_width=4, **overrides)))
    given = torch.randint(16, (4, 5, 4))
    extra = {"labels": torch.tensor([0, 2, 1, 0])} if kind == "class" else {}
    if kind == "conditioned":
        extra["cond"] = torch.randint(6, (4, 3, 2))
    for seed in (0, 1):
        cached = draws(model, given, keep_rows, seed, naive=False, **extra)
        naive = draws(model, given, keep_rows, seed, naive=True, **extra)
        assert torch.equal(cached, naive), seed
        assert torch.equal(cached[:, :keep_rows], given[:, :keep_rows])
    if keep_rows == 0:  # nothing kept: the same draws as sampling from scratch
        sampled = model.sample(4, generator=torch.Generator().manual_seed(1), **extra)
        assert torch.equal(sampled, cached)


def test_completion_depends_on_the_kept_rows():
    model = randomized(GatedPixelCNN(tiny_prior_config()))
    given = torch.randint(16, (64, 4, 4))
    other = given.clone()
    other[:, :2] = (other[:, :2] + 1) % 16
    assert not torch.equal(draws(model, given, 2, 0, naive=False)[:, 2:], draws(model, other, 2, 0, naive=False)[:, 2:])


def test_two_levels_keep_the_top_map_and_the_first_bottom_rows():
    cfg = tiny_prior_config(grid_height=6, grid_width=4, levels=2, top_codebook_size=8, top_grid_height=3,
                            top_grid_width=2)
    prior = randomized(HierarchicalPrior(cfg))
    given = (torch.randint(8, (3, 3, 2)), torch.randint(16, (3, 6, 4)))
    cached = draws(prior, given, 3, 0, naive=False)
    naive = draws(prior, given, 3, 0, naive=True)
    assert all(torch.equal(a, b) for a, b in zip(cached, naive))
    assert torch.equal(cached[0], given[0]) and torch.equal(cached[1][:, :3], given[1][:, :3])


@pytest.mark.parametrize("levels", [1, 2])
def test_complete_command_writes_the_picture_and_codes(tmp_path, levels):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", levels=levels, class_conditional=True)
    complete.main(["--run-dir", str(run), "--n-images", "3", "--n-completions", "2", "--keep-rows", "5",
                   "--device", "cpu"])
    out = run / "complete"
    codes = np.load(out / "completions.npy")
    assert codes.shape == (3, 2, 8, 8) and (out / "completions.png").stat().st_size > 0
    if levels == 2:
        assert np.load(out / "completions_top.npy").shape == (3, 2, 4, 4)
    # The images are picked one per class in turn; their kept rows are their own codes.
    test = load_split("shapes", "", "test", (SHAPES["shapes_train"], SHAPES["shapes_test"]))
    first = [int(torch.nonzero(test.labels == c)[0]) for c in torch.unique(test.labels)][:3]
    own = load_vqvae(run / "vqvae" / "ckpt.pt").encode(to_model_range(test.images[first]))
    own = (own[1] if levels == 2 else own).numpy()
    assert np.array_equal(codes[:, 0, :5], own[:, :5]) and np.array_equal(codes[:, 1, :5], own[:, :5])


def test_complete_command_refuses_bad_rows_and_missing_stages(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    with pytest.raises(SystemExit):
        complete.main(["--run-dir", str(run), "--keep-rows", "8", "--device", "cpu"])
    assert "--keep-rows" in capsys.readouterr().err
    (run / "prior" / "ckpt.pt").unlink()
    with pytest.raises(SystemExit):
        complete.main(["--run-dir", str(run), "--device", "cpu"])
    assert "make train-prior" in capsys.readouterr().err

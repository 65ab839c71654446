"""Two-level codes: stage-1 shapes at every size, the conditioned prior's causality and sampler, round trips."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from foundation.cli import UserError
from foundation.files import save_checkpoint
from foundation.training import prepare_run
from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_prior.checkpoint import load_prior
from stage2_prior.data import load_splits, read_meta
from stage2_prior.hierarchy import HierarchicalPrior
from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config


def tiny_vqvae(**overrides) -> VQVAE:
    values = dict(codebook_size=32, top_codebook_size=24, embed_dim=8, hidden_channels=16, res_blocks=1)
    return VQVAE(VQVAEConfig(**{**values, **overrides})).eval()


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("downsample", [4, 8])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_code_and_reconstruction_shapes(size, downsample, levels):
    model = tiny_vqvae(image_size=size, downsample=downsample, levels=levels)
    x = torch.rand(2, 3, size, size) * 2 - 1
    x_hat, loss, parts = model(x)
    codes = model.encode(x)
    bottom = size // downsample
    expected = [(2, bottom, bottom)] if levels == 1 else [(2, bottom // 2, bottom // 2), (2, bottom, bottom)]
    got = [c.shape for c in (codes if levels == 2 else (codes,))]
    assert got == expected and model.levels == levels
    assert x_hat.shape == x.shape and model.decode_indices(codes).shape == x.shape and torch.isfinite(loss)
    assert [i.shape for i in parts["level_indices"]] == expected  # forward and encode agree on the grids...
    for from_forward, from_encode in zip(parts["level_indices"], codes if levels == 2 else (codes,)):
        assert torch.equal(from_forward, from_encode)  # ...and on the codes


def test_two_level_decode_uses_both_levels():
    model = tiny_vqvae(levels=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    top, bottom = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    image = model.decode_indices((top, bottom))
    assert not torch.allclose(image, model.decode_indices(((top + 1) % 24, bottom)))
    assert not torch.allclose(image, model.decode_indices((top, (bottom + 1) % 32)))
    with pytest.raises(ValueError, match="tuple of 2"):
        model.decode_indices(bottom)


def test_residual_top_join_quantizes_what_the_top_left_unsaid():
    model = tiny_vqvae(levels=2, top_join="residual")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    features = model.encoder(x)
    top_q = model.top.quantizer.embed_code(model.encode(x)[0]).permute(0, 3, 1, 2)
    assert model.top.join is None
    assert torch.allclose(model.top.bottom_input(features, top_q), features - model.top.decoder(top_q))
    x_hat, _, parts = model(x)
    assert x_hat.shape == x.shape and torch.equal(parts["level_indices"][1], model.encode(x)[1])


@pytest.mark.parametrize("size, downsample, levels", [(33, 4, 1), (40, 8, 2), (20, 4, 2)])
def test_sizes_the_downsampling_does_not_divide_are_clear_errors(size, downsample, levels):
    with pytest.raises(UserError, match="--image-size"):
        VQVAEConfig(image_size=size, downsample=downsample, levels=levels)


def conditioned_prior(grid=(4, 4), top_grid=(2, 2)) -> GatedPixelCNN:
    cfg = tiny_prior_config(grid_height=grid[0], grid_width=grid[1], condition_codebook_size=8)
    model = GatedPixelCNN(cfg)
    model.conditioner.grid = grid
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.double().eval()


def test_conditioned_prior_sees_every_top_code_and_only_earlier_bottom_codes():
    model = conditioned_prior(grid=(4, 4))
    top = torch.randint(8, (1, 2, 2))
    x = model.embedding(torch.randint(16, (1, 4, 4))).permute(0, 3, 1, 2).detach().requires_grad_(True)
    logits = model._logits_from_embedded(x, cond=top)
    for i in range(4):
        for j in range(4):
            (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), x, retain_graph=True)
            seen = grad.abs().sum(1)[0] > 0
            earlier = torch.arange(16).view(4, 4) < i * 4 + j
            assert not (seen & ~earlier).any(), f"({i}, {j}) sees itself or a later bottom code"
    base = model.logits(torch.zeros(1, 4, 4, dtype=torch.long), cond=top)
    for ti in range(2):
        for tj in range(2):
            changed = top.clone()
            changed[0, ti, tj] = (changed[0, ti, tj] + 1) % 8
            moved = (model.logits(torch.zeros(1, 4, 4, dtype=torch.long), cond=changed) - base).abs()
            assert moved.sum() > 0, f"top code ({ti}, {tj}) is ignored"
    later_top = top.clone()
    later_top[0, 1, 1] = (later_top[0, 1, 1] + 1) % 8  # the last top code moves the first bottom code's logits
    assert (model.logits(torch.zeros(1, 4, 4, dtype=torch.long), cond=later_top) - base)[0, :, 0, 0].abs().sum() > 0


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (16, 16), (6, 4)])
def test_cached_equals_naive_for_the_conditioned_prior(grid):
    model = conditioned_prior(grid=grid)
    top = torch.randint(8, (3, grid[0] // 2, grid[1] // 2))
    for seed, temperature, top_k in [(0, 1.0, None), (1, 0.8, 4)]:
        naive = model.sample(3, None, temperature, top_k, torch.Generator().manual_seed(seed), naive=True, cond=top)
        cached = model.sample(3, None, temperature, top_k, torch.Generator().manual_seed(seed), cond=top)
        assert torch.equal(naive, cached), (grid, seed)


def two_level_prior(class_conditional=False) -> HierarchicalPrior:
    cfg = tiny_prior_config(class_conditional, grid_height=8, grid_width=8, levels=2, top_codebook_size=12,
                            top_grid_height=4, top_grid_width=4)
    return HierarchicalPrior(cfg).eval()


def test_two_level_prior_samples_and_scores_tuples():
    prior = two_level_prior(class_conditional=True)
    labels = torch.tensor([0, 2, 1])
    top, bottom = prior.sample(3, labels, generator=torch.Generator().manual_seed(0))
    assert top.shape == (3, 4, 4) and bottom.shape == (3, 8, 8) and top.max() < 12 and bottom.max() < 16
    log_prob = prior.log_prob((top, bottom), labels)
    by_level = prior.top.log_prob(top, labels) + prior.bottom.log_prob(bottom, cond=top)
    assert log_prob.shape == (3,) and torch.allclose(log_prob, by_level)
    _, loss = prior(top, bottom, labels=labels)
    assert torch.allclose(loss, -log_prob.mean() / (16 + 64), rtol=1e-4)  # mean nats per code over both levels
    again = prior.sample(3, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], top) and torch.equal(again[1], bottom)


def test_two_level_checkpoints_round_trip(tmp_path):
    vqvae = tiny_vqvae(levels=2)
    save_checkpoint(tmp_path / "vqvae.pt", "vqvae", dataclasses.asdict(vqvae.cfg), vqvae.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = load_vqvae(tmp_path / "vqvae.pt")
    assert loaded.levels == 2 and all(torch.equal(a, b) for a, b in zip(loaded.encode(x), vqvae.encode(x)))
    prior = two_level_prior()
    save_checkpoint(tmp_path / "prior.pt", "prior", dataclasses.asdict(prior.cfg), prior.state_dict())
    codes = prior.sample(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(load_prior(tmp_path / "prior.pt").log_prob(codes), prior.log_prob(codes))


def test_one_level_checkpoints_from_before_levels_still_load(tmp_path, tiny_vqvae_config):
    model = VQVAE(tiny_vqvae_config).eval()
    old_config = {k: v for k, v in dataclasses.asdict(model.cfg).items()
                  if k not in ("image_size", "downsample", "levels", "top_codebook_size")}
    save_checkpoint(tmp_path / "old.pt", "vqvae", old_config, model.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = load_vqvae(tmp_path / "old.pt")
    assert loaded.levels == 1 and torch.equal(loaded.encode(x), model.encode(x))


def test_two_level_checkpoints_from_before_top_join_still_load_as_concat(tmp_path):
    model = tiny_vqvae(levels=2, top_join="concat")
    old_config = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "top_join"}
    save_checkpoint(tmp_path / "old.pt", "vqvae", old_config, model.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = load_vqvae(tmp_path / "old.pt")
    assert loaded.cfg.top_join == "concat" and VQVAEConfig(levels=2).top_join == "residual"
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), model.encode(x)))
    save_checkpoint(tmp_path / "run" / "state.pt", "vqvae", old_config, model.state_dict())  # an interrupted old run
    resumed, _ = prepare_run(VQVAEConfig, {"out_dir": str(tmp_path / "run")}, "vqvae", fresh=False)
    assert resumed.top_join == "concat"


def test_old_one_level_code_folders_still_load(tmp_path):
    """A meta.json without `levels` (written before them) describes one level with split.npy files."""
    rng = np.random.default_rng(0)
    for split, n in [("train", 20), ("val", 4), ("test", 6)]:
        np.save(tmp_path / f"{split}.npy", rng.integers(0, 16, (n, 4, 4)).astype(np.uint8))
        np.save(tmp_path / f"{split}_labels.npy", np.zeros(n, dtype=np.int64))
    meta = {"codebook_size": 16, "grid_shape": [4, 4], "dtype": "uint8", "counts": {"train": 20, "val": 4, "test": 6},
            "num_classes": 1, "stage1_sha256": "x"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    splits, note = load_splits(tmp_path, read_meta(tmp_path), 0.1)
    assert splits["train"][0][0].shape == (20, 4, 4) and splits["test"][0][0].shape == (6, 4, 4) and note == ""

"""Classifier-free guidance: label dropout while training, guided sampling (cached == naive), old checkpoints, flags."""

import dataclasses

import numpy as np
import pytest
import torch

import stage2_prior.model as model_module
import stage2_prior.sampling as sampling_module
from foundation.files import save_checkpoint
from stage2_prior.checkpoint import load_prior
from stage2_prior.config import PriorConfig
from stage2_prior.hierarchy import HierarchicalPrior
from stage2_prior.layers import draw
from stage2_prior.model import GatedPixelCNN
from tests.conftest import tiny_prior_config
from tests.test_sample_command import make_checkpoints, run_sample
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools import complete, evaluate
from tools.common.finished_run import load_finished_run

LABELS = torch.tensor([0, 1, 2, 1, 0, 2])


def guided_prior(levels=1, **overrides) -> torch.nn.Module:
    """A class-conditional prior trained with label dropout, random weights everywhere, in float64."""
    cfg = tiny_prior_config(True, grid_width=5, label_dropout=0.2, **overrides)
    if levels == 2:
        cfg = dataclasses.replace(cfg, levels=2, top_codebook_size=8, top_grid_height=3, top_grid_width=3)
    prior = HierarchicalPrior(cfg) if levels == 2 else GatedPixelCNN(cfg)
    for p in prior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return prior.double().eval()


def labels_seen(model, codes, labels) -> torch.Tensor:
    """The labels the first layer's class embedding is looked up with in one forward pass."""
    seen = []
    handle = model.layers[0].class_bias.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(codes, labels)
    handle.remove()
    return seen[0]


def test_label_dropout_uses_the_null_class_at_its_rate_in_training_only():
    model = GatedPixelCNN(tiny_prior_config(True, label_dropout=0.25))
    assert model.layers[0].class_bias.num_embeddings == 4 and model.null_class == 3
    labels = torch.arange(4000) % 3
    codes = torch.zeros(4000, 4, 4, dtype=torch.long)
    seen = labels_seen(model.train(), codes, labels)
    dropped = seen == 3
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(seen[~dropped], labels[~dropped])
    torch.manual_seed(5)
    first = labels_seen(model, codes, labels)
    torch.manual_seed(5)
    assert torch.equal(first, labels_seen(model, codes, labels))  # drawn from the global (resumable) RNG
    assert torch.equal(labels_seen(model.eval(), codes, labels), labels)


def test_without_label_dropout_there_is_no_null_class():
    model = GatedPixelCNN(tiny_prior_config(True, label_dropout=0.0))
    assert model.null_class is None and model.layers[0].class_bias.num_embeddings == 3
    assert PriorConfig().label_dropout == 0.1


def plain_conditional(model, n, labels, temperature, top_k, seed) -> torch.Tensor:
    """Conditional sampling as it was before guidance: one full forward pass per position."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, model.cfg.grid_height, model.cfg.grid_width, dtype=torch.long)
    for i in range(model.cfg.grid_height):
        for j in range(model.cfg.grid_width):
            codes[:, i, j] = draw(model.logits(codes, labels)[:, :, i, j], temperature, top_k, generator)
    return codes


def rows_run(model, **kwargs) -> set:
    """The batch sizes the first layer saw while sampling 6 maps."""
    sizes = set()
    handle = model.layers[0].vertical.register_forward_hook(lambda m, args, out: sizes.add(args[0].shape[0]))
    model.sample(6, LABELS, generator=torch.Generator().manual_seed(0), **kwargs)
    handle.remove()
    return sizes


@pytest.mark.parametrize("naive", [False, True])
def test_scale_one_is_plain_conditional_sampling_in_one_pass(naive):
    model = guided_prior()
    expected = plain_conditional(model, 6, LABELS, 0.8, 6, seed=3)
    for guidance in (None, 1.0):  # None: the config's default, 1 in a config not made by with_meta
        got = model.sample(6, LABELS, 0.8, 6, torch.Generator().manual_seed(3), naive=naive, guidance=guidance)
        assert torch.equal(got, expected)
    assert rows_run(model, naive=naive, guidance=1.0) == {6}
    assert rows_run(model, naive=naive, guidance=2.0) == {12}
    assert rows_run(model, naive=naive, guidance=0.0) == {6}  # the null label's rows alone (issue 35)


@pytest.mark.parametrize("naive", [False, True])
def test_scale_zero_is_plain_sampling_with_the_null_label(naive):
    model = guided_prior()
    biases = model.layer_biases(LABELS, None, 6, "cpu", unconditional=True)  # every row shows the null label
    height, width = model.cfg.grid_height, model.cfg.grid_width
    generator, expected = torch.Generator().manual_seed(3), torch.zeros(6, height, width, dtype=torch.long)
    for i in range(height):
        for j in range(width):
            logits = model._run_layers(model.embedding(expected).permute(0, 3, 1, 2), biases)[:, :, i, j]
            expected[:, i, j] = draw(logits, 0.8, 6, generator)
    got = model.sample(6, LABELS, 0.8, 6, torch.Generator().manual_seed(3), naive=naive, guidance=0.0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("guidance", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 4), (1.3, None), (0.0, None)])
@pytest.mark.parametrize("levels", [1, 2])
def test_cached_equals_naive_with_guidance(guidance, temperature, top_k, levels):
    model = guided_prior(levels)
    for seed in (0, 1):
        naive = model.sample_levels(6, LABELS, temperature, top_k, torch.Generator().manual_seed(seed), naive=True,
                                    guidance=guidance)
        cached = model.sample_levels(6, LABELS, temperature, top_k, torch.Generator().manual_seed(seed),
                                     guidance=guidance)
        assert all(torch.equal(a, b) for a, b in zip(naive, cached)), f"seed {seed}"


@pytest.mark.parametrize("keep_rows", [0, 2])
def test_guided_completion_cached_equals_naive_and_keeps_rows(keep_rows):
    model = guided_prior()
    given = torch.randint(0, 16, (6, 4, 5))
    runs = [model.complete(given, keep_rows, LABELS, 0.9, None, torch.Generator().manual_seed(2), naive=naive,
                           guidance=2.5) for naive in (True, False)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0][:, :keep_rows], given[:, :keep_rows])


@pytest.mark.parametrize("naive", [True, False])
def test_guided_logits_are_uncond_plus_scale_times_difference(naive, monkeypatch):
    model, scale = guided_prior(), 2.5
    seen = []

    def spy(logits, temperature, top_k, generator):
        seen.append(logits.clone())
        return draw(logits, temperature, top_k, generator)

    monkeypatch.setattr(model_module, "draw", spy)
    monkeypatch.setattr(sampling_module, "draw", spy)
    codes = model.sample(6, LABELS, 1.0, None, torch.Generator().manual_seed(0), naive=naive, guidance=scale)
    cond = model.logits(codes, LABELS)
    null = torch.full_like(LABELS, model.null_class)  # the public API takes real classes only
    embedded = model.embedding(codes).permute(0, 3, 1, 2)
    uncond = model._run_layers(embedded, [layer.bias(null, None) for layer in model.layers])
    expected = uncond + scale * (cond - uncond)  # (n, K, H, W); each position depends on earlier, final codes only
    positions = [(i, j) for i in range(4) for j in range(5)]
    assert len(seen) == len(positions)
    for (i, j), logits in zip(positions, seen):
        torch.testing.assert_close(logits, expected[:, :, i, j])


def test_guidance_needs_a_prior_trained_with_label_dropout():
    for cfg, why in [(tiny_prior_config(False), "not class-conditional"),
                     (tiny_prior_config(True, label_dropout=0.0), "without label dropout")]:
        for prior in (GatedPixelCNN(cfg), HierarchicalPrior(dataclasses.replace(
                cfg, levels=2, top_codebook_size=8, top_grid_height=2, top_grid_width=2))):
            labels = LABELS if cfg.class_conditional else None
            with pytest.raises(ValueError, match=why):
                prior.sample_levels(6, labels, guidance=2.0)
            with pytest.raises(ValueError, match=why):
                prior.complete_levels(prior.sample_levels(6, labels), 1, labels, guidance=2.0)


def test_old_class_conditional_checkpoint_loads_and_samples(tmp_path):
    old = tiny_prior_config(True, label_dropout=0.0)
    saved = {k: v for k, v in dataclasses.asdict(old).items() if k not in ("label_dropout", "guidance")}
    save_checkpoint(tmp_path / "old.pt", "prior", saved, GatedPixelCNN(old).state_dict())  # loads strictly
    prior = load_prior(tmp_path / "old.pt")
    assert prior.cfg.label_dropout == 0.0 and prior.cfg.guidance == 1.0 and prior.null_class is None
    assert prior.sample(3, torch.tensor([0, 1, 2])).shape == (3, 4, 4)
    new = tiny_prior_config(True)
    save_checkpoint(tmp_path / "new.pt", "prior", dataclasses.asdict(new), GatedPixelCNN(new).state_dict())
    assert load_prior(tmp_path / "new.pt").cfg.label_dropout == 0.1


def spy_scales(monkeypatch) -> list:
    """The guidance scale every cached draw is made with."""
    scales, original = [], model_module.sample_cached

    def spy(*args, **kwargs):
        scales.append(args[8] if len(args) > 8 else kwargs.get("scale", 1.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module, "sample_cached", spy)
    return scales


def test_sample_command_passes_guidance_and_refuses_an_unconditional_prior(tmp_path, monkeypatch, capsys):
    scales = spy_scales(monkeypatch)
    _, prior_path = make_checkpoints(tmp_path, class_conditional=True)
    run_sample(prior_path, tmp_path / "out", "--guidance", "2.5")
    assert scales == [2.5] and np.load(tmp_path / "out" / "samples.npy").shape == (5, 8, 8)
    unconditional = tmp_path / "unconditional"
    unconditional.mkdir()
    _, prior_path = make_checkpoints(unconditional)
    with pytest.raises(SystemExit) as exit_info:
        run_sample(prior_path, tmp_path / "refused", "--guidance", "2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "--guidance" in err and "class-conditional" in err


def test_complete_and_evaluate_pass_guidance(tmp_path, monkeypatch):
    scales = spy_scales(monkeypatch)
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)  # label dropout 0.1, the default
    complete.main(["--run-dir", str(run), "--n-images", "2", "--n-completions", "1", "--device", "cpu",
                   "--guidance", "1.5"])
    args = evaluate.parse_args(["--run-dir", str(run), "--guidance", "3"])
    evaluate.draw_images(load_finished_run(run, "cpu"), 2, torch.tensor([0, 1]), 0, 2, "cpu", args.guidance)
    assert scales == [1.5, 3.0]

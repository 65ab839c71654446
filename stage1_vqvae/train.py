"""Train the VQ-VAE; keep the epoch with the best validation reconstruction, report the test split.

    python -m stage1_vqvae.train --dataset shapes --epochs 5       # see --help for every flag
    python -m stage1_vqvae.train --eval-only                        # test metrics + pictures from ckpt.pt

The best epoch is the one with the lowest validation MSE (not the total loss, whose commitment term
drifts as the encoder moves), or for a categorical decoder the lowest validation negative log-likelihood
(what bits per dimension measures). With `--adversarial-weight` (`stage1_vqvae.adversarial`) MSE would
always prefer the blurriest epoch, and the discriminator is a player, not a judge: the epoch kept is the
one whose validation reconstructions a small classifier of the training images (`stage1_vqvae.classifier`,
cached as OUT_DIR/classifier.pt) puts in their class most often. Test metrics are logged every epoch but
never used to choose. With --weight-ema a moving average of the weights is what is evaluated, chosen and saved.
Writes to --out-dir: config.json, metrics.jsonl (val_* and test_* every epoch), recon_epochNNN.png
(16 test inputs across the classes above their reconstructions), state.pt (resume point, every epoch) and, at the end,
ckpt.pt (best epoch); with --tensorboard also the same curves and pictures under tensorboard/.
Re-running resumes an interrupted run; a finished run is left alone unless --fresh is given.
"""

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from foundation import distributed
from foundation.cli import UserError, build_parser, config_from, given_config_values, main_entry
from foundation.curves import Curves
from foundation.files import append_jsonl, write_json
from foundation.images import save_comparison
from foundation.optimization import Optimization
from foundation.runtime import (autocast, configure_backend, eager_unless, maybe_compile, pick_device, progress_disabled,
                                seed_everything)
from foundation.training import (METRICS, StopSignal, epoch_generator, finish, optimize, prepare_run, read_now,
                                  restore, save_state, say, train_in_process_group, write_config)
from stage1_vqvae.adversarial import Adversary
from stage1_vqvae.checkpoint import STAGE, load_vqvae
from stage1_vqvae.classifier import accuracy, cached_classifier, classifier_source, predict
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import load_splits, spread_over_classes, to_model_range, train_batches
from stage1_vqvae.metrics import evaluate, format_all_metrics, format_metrics, format_usage, levels_text
from stage1_vqvae.model import VQVAE

PREVIEW_IMAGES = 16  # test images in every recon_epochNNN.png, taken across the classes, the same all run
# recon loss -> (the validation figure that chooses the epoch, its name in messages, 1: lower is better, -1: higher)
SELECTED_BY = {"l1": ("mse", "MSE", 1), "l2": ("mse", "MSE", 1), "gaussian": ("mse", "MSE", 1),
               "categorical": ("recon", "NLL", 1)}
RECOGNISED = ("recognised", "share of reconstructions the classifier recognises", -1)  # adversarial runs


def parse_args(argv):
    parser = build_parser(VQVAEConfig, __doc__.split("\n")[0])
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint instead of training")
    parser.add_argument("--ckpt", default=None, help="checkpoint for --eval-only (default: OUT_DIR/ckpt.pt)")
    parser.add_argument("--recognised", action="store_true",
                        help="with --eval-only, also how often a small classifier of the training images puts the test "
                             "images and their reconstructions in their class (trained once, cached in "
                             "OUT_DIR/classifier.pt)")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier run in OUT_DIR and start over")
    return parser.parse_args(argv)


class Loaded(NamedTuple):
    images: dict  # {split: resident uint8 images on the device}
    labels: dict  # {split: labels on the CPU}
    classes: int
    note: str  # how the validation split was made
    preview: torch.Tensor  # the test images every recon_epochNNN.png shows


def load_data(cfg: VQVAEConfig, device: torch.device, splits=("train", "val", "test")) -> Loaded:
    """The splits' images and labels, and what the run records and shows of them."""
    sets = load_splits(cfg.dataset, cfg.data_dir, splits, (cfg.shapes_train, cfg.shapes_test), cfg.val_size,
                       cfg.image_size)
    note = sets["val"].note if "val" in sets else ""
    test = sets["test"]
    preview = test.images[spread_over_classes(test.labels, PREVIEW_IMAGES)]
    labels = {name: data.labels for name, data in sets.items()}
    classes = max(len(test.class_names), *(int(y.max()) + 1 for y in labels.values() if len(y)))
    return Loaded({name: data.images.to(device) for name, data in sets.items()}, labels, classes, note, preview)


def selected_by(cfg: VQVAEConfig) -> tuple:
    """(the validation figure that chooses the epoch, its name in messages, 1 when lower is better or -1)."""
    return RECOGNISED if cfg.adversarial else SELECTED_BY[cfg.recon_loss]


def build_adversary(cfg: VQVAEConfig, total_steps: int, state, device) -> Adversary | None:
    """The discriminator of an adversarial run (restored from the resume state), or None when the option is off."""
    if not cfg.adversarial:
        return None
    adversary = Adversary(cfg.adversarial_weight, round(cfg.adversarial_start * total_steps),
                          cfg.discriminator_channels, cfg.discriminator_layers, cfg.discriminator_lr, device,
                          ramp_steps=round(cfg.adversarial_ramp * total_steps))
    if state is not None and "adversary" in state:
        adversary.load_state_dict(state["adversary"])
    return adversary


def build_judge(cfg: VQVAEConfig, data: Loaded, out_dir: Path, device):
    """The classifier that chooses an adversarial run's epoch, trained on the training images once and cached."""
    if not cfg.adversarial:
        return None
    say(f"the classifier that chooses the epoch: {out_dir / 'classifier.pt'} (trained once)")
    judge = stage1_classifier(cfg, data, out_dir, device) if distributed.is_main() else None
    distributed.barrier()  # the other ranks load what rank 0 trained and cached
    return judge if judge is not None else stage1_classifier(cfg, data, out_dir, device)


def stage1_classifier(cfg: VQVAEConfig, data: Loaded, out_dir: Path, device):
    """The classifier of the training images cached in OUT_DIR/classifier.pt, trained there when missing or stale."""
    return cached_classifier(out_dir / "classifier.pt", data.images["train"].cpu(), data.labels["train"], data.classes,
                             device, **classifier_source(cfg.dataset, cfg.data_dir))


def check_same_split(cfg: VQVAEConfig, note: str) -> VQVAEConfig:
    """The config with the validation split recorded; a resumed run must find the split it started with."""
    if cfg.val_split and cfg.val_split != note:
        raise UserError(f"the validation split changed since this run started (now: {note}; was: {cfg.val_split}): "
                        "were images added or removed? Use --fresh to start over")
    return dataclasses.replace(cfg, val_split=note)


def train_epoch(model, optimization, images, cfg, device, progress, stop, adversary=None) -> dict | None:
    """Train until the end of the current epoch (or a stop signal: then None); returns mean losses."""
    model.train()
    last_layer = distributed.unwrap(model).last_decoder_weight
    n_batches = distributed.batch_count(images.shape[0], cfg.batch_size)
    generator = epoch_generator(cfg.seed, progress.epoch, device)
    batches = train_batches(images, cfg.batch_size, generator, start_batch=progress.batch)
    bar = tqdm(batches, initial=progress.batch, total=n_batches, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
               unit="batch", leave=False, disable=progress_disabled() or not distributed.is_main())
    for x in bar:
        step, logged = progress.step, {}
        with autocast(device, cfg.precision), eager_unless(x.shape[0] == cfg.batch_size):
            x_hat, loss, parts = model(x)
            if adversary is not None:
                adversarial, logged["adversarial_weight"] = adversary.generator_term(x_hat, parts["recon"], last_layer,
                                                                                     step)
                loss = loss + adversarial
        optimize(loss, model, optimization, progress, recon=parts["recon"], **logged)
        if adversary is not None:
            with autocast(device, cfg.precision):
                progress.add(discriminator_loss=adversary.discriminator_step(x, x_hat, step))
        if read_now(progress):
            bar.set_postfix(loss=f"{progress.epoch_means()['loss']:.4f}")
        if stop.should_stop(device, progress.step):
            return None
    return progress.epoch_means()


def save_preview(model: VQVAE, preview_images: torch.Tensor, path: Path, device) -> torch.Tensor:
    """Save the preview images above their reconstructions; returns the picture (3, H, W) in [0, 1]."""
    model.eval()
    x = to_model_range(preview_images.to(device))
    return save_comparison(x, model.decode_indices(model.encode(x)), path)


def run_eval_only(args, given: dict) -> None:
    """Print held-out metrics of a checkpoint and render its reconstructions."""
    out_dir = Path(given.get("out_dir", VQVAEConfig().out_dir))
    ckpt_path = Path(args.ckpt) if args.ckpt else out_dir / "ckpt.pt"
    device = pick_device(given.get("device", "auto"))
    model = load_vqvae(ckpt_path, device)
    data_flags = {k: v for k, v in given.items() if k in ("dataset", "data_dir", "shapes_train", "shapes_test", "image_size")}
    cfg = config_from(VQVAEConfig, {**vars(model.cfg), **data_flags})
    data = load_data(cfg, device, ("train", "test") if args.recognised else ("test",))
    test_images, test_labels, preview = data.images["test"], data.labels["test"], data.preview
    judge = stage1_classifier(cfg, data, out_dir, device) if args.recognised else None
    metrics = evaluate(model, test_images, device, given.get("precision", cfg.precision), judge, test_labels)
    if judge is not None:
        metrics["recognised_originals"] = accuracy(predict(judge, test_images, device), test_labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_preview(model, preview, out_dir / "eval_recon.png", device)
    write_json(out_dir / "eval.json", {"checkpoint": str(ckpt_path), "dataset": cfg.dataset, **metrics})
    print(f"{ckpt_path} on {cfg.dataset} test ({test_images.shape[0]} images): " + format_all_metrics(metrics))
    print(f"wrote {out_dir / 'eval_recon.png'} and {out_dir / 'eval.json'}")


@main_entry
def main(argv=None):
    args = parse_args(argv)
    given = given_config_values(VQVAEConfig, args)
    if args.eval_only:
        return run_eval_only(args, given)
    train_in_process_group(VQVAEConfig, given, args.fresh, train)


def train(given: dict, fresh: bool) -> None:
    """Train (or resume) in the run folder named by the config; rank 0 writes every file."""
    cfg, state = prepare_run(VQVAEConfig, given, STAGE, fresh)
    if cfg is None:
        return
    out_dir = Path(cfg.out_dir)
    curves = Curves(out_dir, cfg.tensorboard)
    device = pick_device(cfg.device)
    configure_backend(device)
    seed_everything(cfg.seed)
    data = load_data(cfg, device)
    images, labels, preview = data.images, data.labels, data.preview
    cfg = check_same_split(cfg, data.note)
    model = VQVAE(cfg).to(device, memory_format=torch.channels_last)  # as the batches (stage1_vqvae.data)
    total_steps = cfg.epochs * distributed.batch_count(images["train"].shape[0], cfg.batch_size)
    optimization = Optimization.build(model, cfg.optimizer_settings(), total_steps, device)
    adversary = build_adversary(cfg, total_steps, state, device)  # before `restore` sets the generator's state
    progress = restore(state, model, optimization, out_dir)
    write_config(out_dir, cfg)
    judge = build_judge(cfg, data, out_dir, device)
    extra_state = lambda: {"adversary": adversary.state_dict()} if adversary else {}  # noqa: E731
    if maybe_compile([model.encoder, model.decoder], cfg.compile, device):  # the quantizer stays eager (data-dependent)
        say("compiling the encoder and decoder (the first steps are slower)")
    parallel = distributed.wrap(model, device)
    world = distributed.world_size()
    say(f"training on {images['train'].shape[0]} {cfg.dataset} images ({cfg.image_size} px, {levels_text(cfg)}), choosing the epoch on {images['val'].shape[0]} "
        f"validation images, testing on {images['test'].shape[0]}, device {device}"
        + (f", {world} processes x batch {cfg.batch_size} = global batch {world * cfg.batch_size}" if world > 1 else ""))
    with StopSignal() as stop, curves:
        while progress.epoch < cfg.epochs:
            start, images_left = time.perf_counter(), images["train"].shape[0] - progress.batch * cfg.batch_size * world
            train = train_epoch(parallel, optimization, images["train"], cfg, device, progress, stop, adversary)
            if train is None:
                save_state(out_dir, STAGE, cfg, model, optimization, progress, **extra_state())
                stop.exit(progress)
            seconds = time.perf_counter() - start
            evaluated = optimization.averaged(model)  # the weight average with --weight-ema
            val, test = (evaluate(evaluated, images[split], device, cfg.precision, judge, labels[split])
                         for split in ("val", "test"))
            reported = {**{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()}}
            key, _, sign = selected_by(cfg)
            is_best = progress.record_epoch(sign * val[key], evaluated, reported)
            record = {"epoch": progress.epoch, "step": progress.step, "lr": optimization.scheduler.get_last_lr()[0],
                      **{f"train_{k}": v for k, v in train.items()}, **reported,
                      "seconds": seconds, "img_per_s": images_left / seconds, "processes": world}
            if distributed.is_main():
                append_jsonl(out_dir / METRICS, record)
                picture = save_preview(evaluated, preview, out_dir / f"recon_epoch{progress.epoch:03d}.png", device)
                curves.log(progress.epoch, record, {"test/reconstructions": picture})
            save_state(out_dir, STAGE, cfg, model, optimization, progress, **extra_state())
            say(f"epoch {progress.epoch}/{cfg.epochs}: train loss {train['loss']:.4f}  val {format_metrics(val)}  "
                f"test {format_metrics(test)}  ({record['img_per_s']:.0f} img/s){'  *best' if is_best else ''}")
    path = finish(out_dir, STAGE, cfg, progress)
    best = progress.best_metrics
    key, name, _ = selected_by(cfg)
    say(f"best epoch {progress.best_epoch} by validation {name} ({best['val_' + key]:.5f}): test PSNR "
        f"{best['test_psnr']:.2f} dB, MSE {best['test_mse']:.5f}, "
        f"{format_usage({k[5:]: v for k, v in best.items() if k.startswith('test_')})} -> {path}")
    say(f"logs and pictures in {out_dir}/ (metrics.jsonl, config.json, recon_epoch*.png)")


if __name__ == "__main__":
    main()

"""Train the PixelCNN prior on stage-1 code maps; choose the epoch on validation, report test bits per code.

    python -m stage2_prior.train --codes-dir runs/codes --out-dir runs/prior   # see --help

Codebook size, grid shape and class count come from CODES_DIR/meta.json, never from flags.
With --weight-ema, a moving average of the weights is what is evaluated and saved.
Writes to --out-dir: config.json, metrics.jsonl (train, val and test bits per code every epoch, and
with --weight-ema the raw weights' figures beside the average's), state.pt (resume point, every epoch) and, at the
end, ckpt.pt (the epoch with the lowest validation bits per code); with --tensorboard the same curves
under tensorboard/. The end of training prints the
selected epoch's train, validation and test figures and the train/test gap.
Re-running resumes an interrupted run; a finished run is left alone unless --fresh is given.
"""

import dataclasses
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from foundation import distributed
from foundation.cli import UserError, build_parser, given_config_values, main_entry
from foundation.curves import Curves
from foundation.files import append_jsonl
from foundation.levels import count, level_names, take, to_device
from foundation.optimization import Optimization
from foundation.runtime import (autocast, configure_backend, eager_unless, maybe_compile, pick_device, progress_disabled,
                                seed_everything)
from foundation.training import (METRICS, StopSignal, epoch_generator, finish, optimize, prepare_run, read_now,
                                  restore, save_state, say, train_in_process_group, write_config)
from stage2_prior.checkpoint import STAGE
from stage2_prior.config import GUIDED_DEFAULT, PriorConfig
from stage2_prior.data import level_specs, load_splits, read_meta
from stage2_prior.hierarchy import build_prior, level_configs
from stage2_prior.metrics import labels_or_none, split_bits
from stage2_prior.model import layers_to_see_everything, reach, sees_every_earlier_code


def parse_args(argv):
    parser = build_parser(PriorConfig, __doc__.split("\n")[0])
    parser.add_argument("--fresh", action="store_true", help="discard an earlier run in OUT_DIR and start over")
    return parser.parse_args(argv)


def with_meta(cfg: PriorConfig, meta: dict) -> PriorConfig:
    """The config with codebook sizes, grid shapes, class count and stage-1 identity from meta.json."""
    if cfg.class_conditional and meta["num_classes"] < 1:
        raise UserError("--class-conditional needs labelled codes, but meta.json lists no classes")
    specs = level_specs(meta)
    if len(specs) > 2:
        raise UserError(f"{cfg.codes_dir}/meta.json lists {len(specs)} levels; stage 2 handles 1 or 2")
    top, bottom = specs[0], specs[-1]
    return dataclasses.replace(
        cfg,
        codebook_size=bottom["codebook_size"],
        grid_height=bottom["grid_shape"][0],
        grid_width=bottom["grid_shape"][1],
        levels=len(specs),
        **({"top_codebook_size": top["codebook_size"], "top_grid_height": top["grid_shape"][0],
            "top_grid_width": top["grid_shape"][1]} if len(specs) == 2 else {}),
        num_classes=meta["num_classes"],
        stage1_checkpoint=meta.get("stage1_checkpoint", ""),
        stage1_sha256=meta["stage1_sha256"],
        guidance=GUIDED_DEFAULT if cfg.guidable else 1.0,
    )


def train_epoch(model, optimization, codes, labels, cfg: PriorConfig, device, progress, stop) -> float | None:
    """Train until the end of the current epoch (or a stop signal: then None); returns mean train bits/code."""
    model.train()
    generator = epoch_generator(cfg.seed, progress.epoch, device)
    order = torch.randperm(count(codes), generator=generator, device=device)
    shares = distributed.my_batches(count(codes), cfg.batch_size, progress.batch)
    bar = tqdm(shares, initial=progress.batch, total=distributed.batch_count(count(codes), cfg.batch_size),
               unit="batch", leave=False, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
               disable=progress_disabled() or not distributed.is_main())
    for start, stop_at in bar:
        picked = order[start:stop_at]
        with autocast(device, cfg.precision), eager_unless(stop_at - start == cfg.batch_size):
            _, loss = model(*take(codes, picked), labels=labels_or_none(model, labels[picked]))
        optimize(loss, model, optimization, progress)
        if read_now(progress):
            bar.set_postfix(bits=f"{progress.epoch_means()['loss'] / math.log(2):.3f}")
        if stop.should_stop(device, progress.step):
            return None
    return progress.epoch_means()["loss"] / math.log(2)


@main_entry
def main(argv=None):
    args = parse_args(argv)
    train_in_process_group(PriorConfig, given_config_values(PriorConfig, args), args.fresh, train)


def train(given: dict, fresh: bool) -> None:
    """Train (or resume) in the run folder named by the config; rank 0 writes every file."""
    cfg, state = prepare_run(PriorConfig, given, STAGE, fresh)
    if cfg is None:
        return
    meta = read_meta(cfg.codes_dir)
    if state is not None and state["config"].get("stage1_sha256") != meta["stage1_sha256"]:
        raise UserError(f"{cfg.codes_dir} was re-encoded by another stage-1 checkpoint since this run started; use --fresh")
    cfg = with_meta(cfg, meta)
    out_dir = Path(cfg.out_dir)
    curves = Curves(out_dir, cfg.tensorboard)
    device = pick_device(cfg.device)
    configure_backend(device)
    seed_everything(cfg.seed)
    splits, carved = load_splits(cfg.codes_dir, meta, cfg.val_size)
    data = {name: (to_device(codes, device), labels.to(device)) for name, (codes, labels) in splits.items()}
    model = build_prior(cfg).to(device, memory_format=torch.channels_last)  # embedded codes are (B, H, W, C) in memory
    total_steps = cfg.epochs * distributed.batch_count(count(data["train"][0]), cfg.batch_size)
    optimization = Optimization.build(model, cfg.optimizer_settings(), total_steps, device)
    progress = restore(state, model, optimization, out_dir)
    write_config(out_dir, cfg)
    if maybe_compile([model], cfg.compile, device):
        say("compiling the model (the first steps are slower)")
    parallel = distributed.wrap(model, device)
    announce(cfg, data, carved, device)
    with StopSignal() as stop, curves:
        while progress.epoch < cfg.epochs:
            train_epoch_and_log(parallel, model, optimization, data, cfg, device, progress, stop, curves)
    path = finish(out_dir, STAGE, cfg, progress)
    report_selected(cfg, progress, data, device, path)


def announce(cfg: PriorConfig, data: dict, carved: str, device) -> None:
    """Say what is being trained on what."""
    world = distributed.world_size()
    if carved:
        say(carved)
    kind = "class-conditional " if cfg.class_conditional else ""
    counts = ", ".join(f"{count(data[split][0])} {split}" for split in ("train", "val", "test"))
    grid = (f"{cfg.grid_height}x{cfg.grid_width} codes (K={cfg.codebook_size}; uniform = "
            f"{math.log2(cfg.codebook_size):.2f} bits/code)")
    if cfg.levels == 2:
        kind += "two-level "
        grid = (f"top {cfg.top_grid_height}x{cfg.top_grid_width} (K={cfg.top_codebook_size}) + bottom {grid}, the "
                "bottom prior conditioned on the top codes")
    say(f"training a {kind}prior ({cfg.hidden_channels} channels x {cfg.layers} layers) on {counts} maps of "
        f"{grid}, device {device}"
        + (f", {world} processes x batch {cfg.batch_size} = global batch {world * cfg.batch_size}" if world > 1 else ""))
    levels = zip(level_names(2), level_configs(cfg)) if cfg.levels == 2 else [("", cfg)]
    for name, level in levels:
        say(f"reach{f' of the {name} prior' if name else ''}: {reach_text(level)}")


def reach_text(cfg: PriorConfig) -> str:
    """What each code's logits see (`stage2_prior.model.reach`), and whether that is every earlier code."""
    r, grid = reach(cfg), f"{cfg.grid_height}x{cfg.grid_width}"
    if cfg.attention_layers:
        blocks = f"{cfg.attention_layers} attention block{'s' if cfg.attention_layers > 1 else ''}"
        return f"each code sees every earlier code of the {grid} grid ({blocks})"
    text = (f"each code sees {r.rows_up} rows up ({r.left} columns left and {r.right} right of its own) "
            f"and {r.own_row} codes to its left")
    if sees_every_earlier_code(cfg):
        return f"{text}: every earlier code of the {grid} grid"
    needed = layers_to_see_everything(cfg.kernel_size, cfg.grid_height, cfg.grid_width)
    remedy = f"--layers {needed}" if needed else "a --kernel-size above 1"
    return f"{text}: not every earlier code of the {grid} grid ({remedy} would see them all)"


def evaluate_splits(model, data: dict, cfg: PriorConfig, device, prefix: str = "") -> dict:
    """{prefix + 'val_bits_per_code': ..., prefix + 'test_bits_per_code': ..., and the other figures} for `model`."""
    return {f"{prefix}{split}_{name}": value for split in ("val", "test")
            for name, value in split_bits(model, *data[split], device).items()}  # fp32 whatever cfg.precision


def train_epoch_and_log(parallel, model, optimization, data, cfg, device, progress, stop, curves) -> None:
    """One epoch, then validation and test figures, the best-so-far update, the log lines and the saved state."""
    out_dir, world = Path(cfg.out_dir), distributed.world_size()
    start, maps_left = time.perf_counter(), count(data["train"][0]) - progress.batch * cfg.batch_size * world
    train_bits = train_epoch(parallel, optimization, *data["train"], cfg, device, progress, stop)
    if train_bits is None:
        save_state(out_dir, STAGE, cfg, model, optimization, progress)
        stop.exit(progress)
    seconds = time.perf_counter() - start
    evaluated = optimization.averaged(model)
    figures = evaluate_splits(evaluated, data, cfg, device)
    if evaluated is not model:  # the raw weights' figures show what the average gains
        figures.update(evaluate_splits(model, data, cfg, device, prefix="raw_"))
    is_best = progress.record_epoch(figures["val_bits_per_code"], evaluated, figures)
    record = {"epoch": progress.epoch, "step": progress.step, "lr": optimization.scheduler.get_last_lr()[0],
              "train_bits_per_code": train_bits, **figures, "seconds": seconds, "maps_per_s": maps_left / seconds,
              "processes": world}
    if distributed.is_main():
        append_jsonl(out_dir / METRICS, record)
        curves.log(progress.epoch, record)
    save_state(out_dir, STAGE, cfg, model, optimization, progress)
    dropped = f" (with {cfg.label_dropout:.0%} of labels dropped)" if cfg.guidable else ""  # so not the val figure's kind
    say(f"epoch {progress.epoch}/{cfg.epochs}: train {train_bits:.3f}{dropped}  val {figures['val_bits_per_code']:.3f}  "
        f"test {figures['test_bits_per_code']:.3f} bits/code{level_text(figures, 'test_')}  ({maps_left / seconds:.0f} maps/s)"
        f"{'  *best' if is_best else ''}")


def level_text(figures: dict, prefix: str) -> str:
    """' (top 7.100, bottom 7.500)' for a two-level prior's figures, '' for one level."""
    keys = {name: f"{prefix}{name}_bits_per_code" for name in level_names(2)}
    parts = [f"{name} {figures[key]:.3f}" for name, key in keys.items() if key in figures]
    return f" ({', '.join(parts)})" if parts else ""


def train_sample(data: dict) -> tuple:
    """A fixed random sample of the train split, as many maps as the test split (for the train/test gap)."""
    codes, labels = data["train"]
    size = min(count(codes), count(data["test"][0]))
    index = torch.randperm(count(codes), generator=torch.Generator().manual_seed(0))[:size].to(labels.device)
    return take(codes, index), labels[index]


def report_selected(cfg: PriorConfig, progress, data: dict, device, path: Path) -> None:
    """Print the selected epoch's figures, with the train/test gap measured on the saved weights (train bits
    per code on a sample of the train maps as large as the test split: a full pass cost as much as an epoch)."""
    model = build_prior(cfg).to(device, memory_format=torch.channels_last)
    model.load_state_dict(progress.best_model)
    train_bits = split_bits(model, *train_sample(data), device)["bits_per_code"]
    best = progress.best_metrics
    say(f"selected epoch {progress.best_epoch} (lowest validation bits/code): train {train_bits:.3f}  "
        f"val {best['val_bits_per_code']:.3f}  test {best['test_bits_per_code']:.3f} bits/code"
        f"{level_text(best, 'test_')}, {best['test_bits_per_image']:.1f} bits per image on test; "
        f"train/test gap {best['test_bits_per_code'] - train_bits:.3f} -> {path}")
    say(f"logs in {cfg.out_dir}/ (metrics.jsonl, config.json)")


if __name__ == "__main__":
    main()

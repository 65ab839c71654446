"""Benchmark the pipeline's hot paths on the current device and compare with a plain baseline.

    python -m tools.bench [--device auto] [--repeats 5] [--out bench.json]     (or: make bench)

First the arithmetic limit (`tools.common.efficiency`): the fp32 and bf16 GEMM rates and each bare
training step's FLOP rate as a fraction of them, medians over interleaved rounds. Then, each as the
median over repeats after warm-up: stage-1 training img/s (resident uint8 data,
flips and scaling on the device, the stage's precision), the same model fed by a torchvision
DataLoader with per-image transforms in fp32 (the plain baseline) and the speed-up between them,
encoding img/s, prior training maps/s (bare steps, and the training command itself with its
evaluation and bookkeeping), and sampling grids/s at batch 64, naive and cached; then
stage-1 training img/s at 64 and 128 px (two levels), and sampling grids/s of a bottom prior
conditioned on a top map, naive and cached, for 16x16 and 32x32 bottom grids (batch 16), and of a
prior with attention blocks, naive and cached, at 8x8 (batch 64) and 16x16 (batch 16); last, what attention
costs in training: bare prior steps at 8x8 and 16x16, gated only and with attention blocks.
Peak memory is the CUDA allocator's peak per benchmark, or the process's peak RSS on CPU.
"""

import argparse
import datetime
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image

from foundation.cli import main_entry
from foundation.files import write_json
from foundation.optimization import Optimization
from foundation.runtime import autocast, configure_backend, maybe_compile, pick_device, resolve_precision
from foundation.training import Progress, optimize
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.data import make_shapes, to_model_range, train_batches
from stage1_vqvae.model import VQVAE
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from tools.common.efficiency import (ATTENTION_BLOCKS, arithmetic_report, attention_sampling_rate, device_name,
                                     median_rate, peak_memory_mb, prior_command_rate, reset_peak, sampler_operations)

BATCH = 128
SAMPLE_BATCH = 64
CONDITIONED_BATCH = 16
LARGE_IMAGES = 256  # images per size for the 64 and 128 px stage-1 benchmarks


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per benchmark (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved rounds of the GEMM and training-step rates (default: %(default)s)")
    parser.add_argument("--images", type=int, default=4096, help="images in the synthetic dataset (default: %(default)s)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the training steps (default: on with CUDA)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="precision of the pipeline's own paths; the baseline is always fp32 (default: %(default)s)")
    parser.add_argument("--limits-only", action="store_true",
                        help="only the arithmetic-limit table and the prior's bare-step and command rates (about a minute)")
    parser.add_argument("--out", default="bench.json", help="where the results go (default: %(default)s)")
    return parser.parse_args(argv)


def stage1_steps(model, optimizer, batches, device, precision, steps: int):
    """A function that trains `steps` steps on batches drawn from the endless iterator `batches`."""
    progress = Progress()

    def work():
        for _ in range(steps):
            x = next(batches)
            with autocast(device, precision):
                _, loss, _ = model(x)
            optimize(loss, model, optimizer, progress)

    return work


def endless(make_iterator):
    while True:
        yield from make_iterator()


def stage1_training(images_u8, device, args, compile_setting, steps: int, **model_args):
    """A function that trains `steps` stage-1 steps on resident images, as stage1_vqvae.train does."""
    cfg = VQVAEConfig(image_size=images_u8.shape[-1], **model_args)
    model = VQVAE(cfg).to(device, memory_format=torch.channels_last).train()
    maybe_compile([model.encoder, model.decoder], compile_setting, device)
    optimizer = Optimization.build(model, cfg.optimizer_settings(), 10**6, device)
    resident = images_u8.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = endless(lambda: train_batches(resident, BATCH, generator))
    return stage1_steps(model, optimizer, batches, device, args.precision, steps)


def bench_stage1_resident(images_u8, device, args, compile_setting, **model_args) -> float:
    steps = max(1, images_u8.shape[0] // BATCH // 4)
    work = stage1_training(images_u8, device, args, compile_setting, steps, **model_args)
    return median_rate(work, steps * BATCH, args.repeats, device, warmup=3 if compile_setting else 1)


def bench_stage1_size(size: int, device, args, compile_setting) -> float:
    """Two-level stage-1 training at `size` px (top and bottom levels, default channels)."""
    images = make_shapes(LARGE_IMAGES, seed=0, size=size).images
    return bench_stage1_resident(images, device, args, compile_setting, levels=2)


class PILImages(Dataset):
    """The textbook dataset: PIL images transformed one at a time."""

    def __init__(self, images_u8):
        self.images = [to_pil_image(img) for img in images_u8]
        self.transform = transforms.Compose([
            transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)
        ])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


def bench_stage1_baseline(images_u8, device, args) -> float:
    """Same model and optimizer steps, fed by a DataLoader with per-image transforms, in fp32."""
    cfg = VQVAEConfig()
    model = VQVAE(cfg).to(device).train()
    optimizer = Optimization.build(model, cfg.optimizer_settings(), 10**6, torch.device("cpu"))  # unfused, as the textbook has it
    loader = DataLoader(PILImages(images_u8), batch_size=BATCH, shuffle=True, num_workers=0,
                        pin_memory=device.type == "cuda", drop_last=True)
    batches = endless(lambda: (x.to(device, non_blocking=True) for x, _ in loader))
    steps = max(1, images_u8.shape[0] // BATCH // 4)
    work = stage1_steps(model, optimizer, batches, device, "fp32", steps)
    return median_rate(work, steps * BATCH, args.repeats, device)


@torch.no_grad()
def bench_encode(images_u8, device, args) -> float:
    model = VQVAE(VQVAEConfig()).to(device).eval()
    resident = images_u8.to(device)

    def work():
        for start in range(0, resident.shape[0], 1024):
            with autocast(device, args.precision):
                model.encode(to_model_range(resident[start : start + 1024]))

    return median_rate(work, resident.shape[0], args.repeats, device)


def prior_training(device, args, compile_setting, batches: int, side: int = 8,
                   attention_layers: int = PriorConfig.attention_layers):
    """A function that trains `batches` bare prior steps (default size, random side x side maps), as stage2_prior.train
    does; attention blocks as the defaults have them unless `attention_layers` says."""
    cfg = PriorConfig(grid_height=side, grid_width=side, attention_layers=attention_layers)
    model = GatedPixelCNN(cfg).to(device, memory_format=torch.channels_last).train()
    maybe_compile([model], compile_setting, device)
    optimizer = Optimization.build(model, cfg.optimizer_settings(), 10**6, device)
    codes = torch.randint(0, cfg.codebook_size, (BATCH * batches, cfg.grid_height, cfg.grid_width), device=device)
    progress = Progress()

    def work():
        for start in range(0, codes.shape[0], BATCH):
            with autocast(device, args.precision):
                _, loss = model(codes[start : start + BATCH])
            optimize(loss, model, optimizer, progress)

    return work


def bench_prior_training(device, args, compile_setting, side: int = 8,
                         attention_layers: int = PriorConfig.attention_layers) -> float:
    batches = max(1, 8 * 64 // side**2)  # as many codes per call at every grid size
    work = prior_training(device, args, compile_setting, batches, side, attention_layers)
    return median_rate(work, BATCH * batches, args.repeats, device, warmup=3 if compile_setting else 1)


def arithmetic(images, device, args, compile_setting) -> dict:
    """The GEMM rates and each bare training step's FLOP rate as a fraction of them (tools.common.efficiency)."""
    steps = {"stage1_step": stage1_training(images, device, args, compile_setting, steps=1),
             "prior_step": prior_training(device, args, compile_setting, batches=1)}
    return arithmetic_report(steps, resolve_precision(device, args.precision), device, args.rounds)


def bench_sampling(device, args, naive: bool) -> float:
    """A gated-only prior (default size): the attention rows time the same with attention blocks."""
    model = GatedPixelCNN(PriorConfig(attention_layers=0)).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    repeats = args.repeats if not naive or device.type == "cuda" else max(1, min(args.repeats, 3))
    return median_rate(lambda: model.sample(SAMPLE_BATCH, generator=generator, naive=naive), SAMPLE_BATCH,
                       repeats, device)


def bench_conditioned_sampling(device, args, side: int, naive: bool) -> float:
    """A gated-only bottom prior (default size) over side x side codes, conditioned on a random top map of half the side."""
    cfg = PriorConfig(grid_height=side, grid_width=side, condition_codebook_size=512, attention_layers=0)
    model = GatedPixelCNN(cfg).to(device).eval()
    top = torch.randint(512, (CONDITIONED_BATCH, side // 2, side // 2), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    repeats = args.repeats if not naive or device.type == "cuda" else 1
    return median_rate(lambda: model.sample(CONDITIONED_BATCH, generator=generator, naive=naive, cond=top),
                       CONDITIONED_BATCH, repeats, device, warmup=0 if naive and device.type != "cuda" else 1)


def run_benchmarks(device, args) -> dict:
    compile_setting = args.compile if args.compile is not None else device.type == "cuda"
    images = make_shapes(args.images, seed=0).images
    plan = [
        ("prior_train_maps_per_s", lambda: bench_prior_training(device, args, compile_setting)),
        ("prior_command_maps_per_s", lambda: prior_command_rate(device, args.precision)),
    ]
    if not args.limits_only:
        plan += full_plan(images, device, args, compile_setting)
    results, memory = arithmetic(images, device, args, compile_setting), {}
    for name in ("gemm_fp32", "gemm_bf16", "stage1_step", "prior_step"):
        share = results.get(f"{name}_fraction_of_gemm")
        print(f"  {name + '_gflops':28s} {results[name + '_gflops']:12.1f}" + (f"   ({share:.0%} of the GEMM rate)" if share else ""))
    for name, bench in plan:
        reset_peak(device)
        results[name] = bench()
        memory[name] = peak_memory_mb(device)
        print(f"  {name:28s} {results[name]:12.1f}   (peak memory {memory[name]:.0f} MiB)", flush=True)
    results["prior_command_fraction_of_bare_step"] = results["prior_command_maps_per_s"] / results["prior_train_maps_per_s"]
    if not args.limits_only:
        results.update(speedups(results))
    results["peak_memory_mib"] = memory
    return results


def full_plan(images, device, args, compile_setting) -> list:
    """(name, benchmark) of every other figure: stage-1 training and its baseline, encoding, sampling, 2 levels."""
    plan = [
        ("stage1_train_img_per_s", lambda: bench_stage1_resident(images, device, args, compile_setting)),
        ("baseline_train_img_per_s", lambda: bench_stage1_baseline(images, device, args)),
        ("encode_img_per_s", lambda: bench_encode(images, device, args)),
        ("sample_cached_grids_per_s", lambda: bench_sampling(device, args, naive=False)),
        ("sample_naive_grids_per_s", lambda: bench_sampling(device, args, naive=True)),
        ("stage1_train_img_per_s_64px", lambda: bench_stage1_size(64, device, args, compile_setting)),
        ("stage1_train_img_per_s_128px", lambda: bench_stage1_size(128, device, args, compile_setting)),
    ]
    for side in (16, 32):
        plan += [(f"conditioned_{side}x{side}_{kind}_grids_per_s",
                  lambda side=side, naive=kind == "naive": bench_conditioned_sampling(device, args, side, naive))
                 for kind in ("cached", "naive")]
    plan += [("sample_ops_per_position_gated", lambda: sampler_operations(0)),
             ("sample_ops_per_position_attention", lambda: sampler_operations(ATTENTION_BLOCKS))]
    for side, batch in ((8, SAMPLE_BATCH), (16, CONDITIONED_BATCH)):
        plan += [(f"attention_{side}x{side}_{kind}_grids_per_s", lambda side=side, batch=batch, naive=kind == "naive":
                  attention_sampling_rate(device, side, batch, naive, args.repeats)) for kind in ("cached", "naive")]
    for side in (8, 16):
        plan += [(f"prior_train_{side}x{side}_{kind}_maps_per_s", lambda side=side, blocks=blocks:
                  bench_prior_training(device, args, compile_setting, side, blocks))
                 for kind, blocks in (("gated", 0), ("attention", ATTENTION_BLOCKS))]
    return plan


def speedups(results: dict) -> dict:
    """The ratios the full run reports: resident vs baseline training, cached vs naive sampling."""
    ratios = {"train_speedup_vs_baseline": results["stage1_train_img_per_s"] / results["baseline_train_img_per_s"],
              "sampling_speedup_cached_vs_naive": results["sample_cached_grids_per_s"] / results["sample_naive_grids_per_s"]}
    for kind, side in (("conditioned", 16), ("conditioned", 32), ("attention", 8), ("attention", 16)):
        name = f"{kind}_{side}x{side}"
        cached, naive = results[f"{name}_cached_grids_per_s"], results[f"{name}_naive_grids_per_s"]
        ratios[f"{name}_speedup_cached_vs_naive"] = cached / naive
    for side in (8, 16):  # a training step's time with attention blocks, as a multiple of the gated-only step's
        rates = [results[f"prior_train_{side}x{side}_{kind}_maps_per_s"] for kind in ("gated", "attention")]
        ratios[f"attention_{side}x{side}_training_cost"] = rates[0] / rates[1]
    return ratios


@main_entry
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    configure_backend(device)
    torch.manual_seed(0)
    precision = resolve_precision(device, args.precision)
    print(f"benchmarking on {device_name(device)}, torch {torch.__version__}, precision {precision}, "
          f"median of {args.repeats} repeats")
    results = run_benchmarks(device, args)
    report = {"date": datetime.date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
              "precision": precision, "repeats": args.repeats, "command": "python -m tools.bench", **results}
    write_json(args.out, report)
    print(f"training steps at {results['stage1_step_fraction_of_gemm']:.0%} (stage 1) and "
          f"{results['prior_step_fraction_of_gemm']:.0%} (prior) of the {precision} GEMM rate; the stage-2 command at "
          f"{results['prior_command_fraction_of_bare_step']:.0%} of the bare step's rate")
    if args.limits_only:
        return print(f"wrote {args.out}")
    print(f"stage-1 training: {results['train_speedup_vs_baseline']:.2f}x the DataLoader/fp32 baseline; "
          f"cached sampling: {results['sampling_speedup_cached_vs_naive']:.1f}x naive (batch {SAMPLE_BATCH}); "
          f"conditioned 16x16: {results['conditioned_16x16_speedup_cached_vs_naive']:.1f}x, "
          f"32x32: {results['conditioned_32x32_speedup_cached_vs_naive']:.1f}x naive (batch {CONDITIONED_BATCH}); "
          f"with attention 8x8: {results['attention_8x8_speedup_cached_vs_naive']:.1f}x, "
          f"16x16: {results['attention_16x16_speedup_cached_vs_naive']:.1f}x naive; a training step with attention: "
          f"{results['attention_8x8_training_cost']:.2f}x (8x8), {results['attention_16x16_training_cost']:.2f}x (16x16) "
          "the gated-only step's time")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

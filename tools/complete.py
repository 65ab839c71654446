"""Complete test images: keep the top rows of their code maps and let the prior draw the rest, several times.

    python -m tools.complete --run-dir runs/demo --keep-rows 4 --n-completions 6   # or: make complete; see --help

The classic PixelCNN demonstration. Test images (one of each class in turn) are encoded; the first
--keep-rows rows of each code map are kept (default: half) and the prior draws the other rows
--n-completions times with the cached sampler (the same draws as the naive one); the maps are decoded.
With two levels the whole top map is kept and the rows refer to the bottom map. A class-conditional
prior is given each image's own class (and with --guidance S, classifier-free guidance). Writes to
OUT_DIR (default RUN_DIR/complete): completions.png (per image a row: the original, the kept part
with the rest greyed out, then the completions) and
completions.npy ((images, completions, H, W) drawn code maps, the bottom level's with two levels;
completions_top.npy then holds the kept top maps).
"""

from pathlib import Path

import torch

from foundation.cli import UserError, main_entry
from foundation.files import code_dtype, remove_stale_temporaries, save_array
from foundation.images import save_grid
from foundation.levels import top_first
from foundation.runtime import cpu_threads, pick_device
from stage1_vqvae.data import pick_per_class, to_model_range
from tools.common.drawing import add_guidance_flag, check_guidance
from tools.common.finished_run import load_finished_run, load_test_images, run_parser


def parse_args(argv):
    parser = run_parser(__doc__.split("\n")[0], "complete")
    parser.add_argument("--n-images", type=int, default=8, help="test images to complete (default: %(default)s)")
    parser.add_argument("--keep-rows", type=int, default=None, help="code rows kept from the top (default: half)")
    parser.add_argument("--n-completions", type=int, default=4, help="completions per image (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=None, help="draw only among the k most likely codes")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same completions (default: %(default)s)")
    add_guidance_flag(parser)
    return parser.parse_args(argv)


def check_args(args, grid_height: int) -> int:
    """The number of rows to keep, after checking every flag."""
    if args.n_images < 1 or args.n_completions < 1:
        raise UserError("--n-images and --n-completions must be at least 1")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--temperature must be >= 0 and --top-k at least 1")
    keep = grid_height // 2 if args.keep_rows is None else args.keep_rows
    if not 0 <= keep < grid_height:
        raise UserError(f"--keep-rows must be in [0, {grid_height - 1}] for {grid_height}-row code maps")
    return keep


def repeat_maps(codes: tuple, times: int) -> tuple:
    """Each map of each level `times` times in a row: (n, H, W) -> (n * times, H, W)."""
    return tuple(level.repeat_interleave(times, dim=0) for level in codes)


@torch.no_grad()
def complete(prior, codes: tuple, keep_rows: int, labels, n_completions: int, seed: int, device,
             temperature: float = 1.0, top_k: int | None = None, guidance: float | None = None, on_row=None) -> tuple:
    """`n_completions` completions of every map: the kept rows (and a top level) as given, the rest drawn;
    `on_row(level, i, codes)` as in `prior.complete_levels`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = None if labels is None else labels.repeat_interleave(n_completions)
    return prior.complete_levels(repeat_maps(codes, n_completions), keep_rows, labels, temperature, top_k, generator,
                                 guidance=guidance, on_row=on_row)


def grey_out(images: torch.Tensor, keep_rows: int, grid_height: int) -> torch.Tensor:
    """The images with the pixel rows below the kept code rows set to mid grey."""
    kept = images.clone()
    kept[:, :, keep_rows * images.shape[2] // grid_height :] = 0.0
    return kept


@torch.no_grad()
def save_picture(vqvae, x: torch.Tensor, codes, completed, keep_rows: int, grid_height: int, path: Path) -> None:
    """Per image a row: the original, the kept part (the rest greyed out), then its completions."""
    drawn = vqvae.decode_indices(completed).view(x.shape[0], -1, *x.shape[1:])
    kept = grey_out(vqvae.decode_indices(codes), keep_rows, grid_height)
    rows = torch.cat([x[:, None], kept[:, None], drawn], dim=1)  # (n, 2 + completions, 3, S, S)
    save_grid(rows.flatten(0, 1), path, nrow=rows.shape[1])


def save_outputs(out_dir: Path, prior_cfg, completed: tuple, n: int, times: int) -> list:
    """completions.npy (the drawn level), and completions_top.npy for two levels; returns the paths."""
    levels = len(completed)
    sizes = top_first(prior_cfg.top_codebook_size, prior_cfg.codebook_size, levels)
    names = top_first("completions_top.npy", "completions.npy", levels)
    for name, level, size in zip(names, completed, sizes):
        save_array(out_dir / name, level.view(n, times, *level.shape[1:]).cpu().numpy().astype(code_dtype(size)))
    return [out_dir / name for name in names]


@main_entry
def main(argv=None):
    args = parse_args(argv)
    with cpu_threads(args.threads):
        run_completion(args)


def run_completion(args) -> None:
    """Encode, complete, decode and write the picture and the codes."""
    device = pick_device(args.device)
    run = load_finished_run(args.run_dir, device)
    grid_height = run.prior.cfg.grid_height
    keep = check_args(args, grid_height)
    check_guidance(run.prior, args.guidance)
    test = load_test_images(run, args.dataset, args.data_dir)
    chosen = pick_per_class(test.labels, args.n_images)[: args.n_images]
    x = to_model_range(test.images[chosen].to(device))
    labels = test.labels[chosen].to(device) if run.prior.cfg.class_conditional else None
    codes = run.vqvae.encode_levels(x)
    completed = complete(run.prior, codes, keep, labels, args.n_completions, args.seed, device, args.temperature,
                         args.top_k, args.guidance)
    out_dir = Path(args.out_dir or run.run_dir / "complete")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    n, times = x.shape[0], args.n_completions
    save_picture(run.vqvae, x, codes, completed, keep, grid_height, out_dir / "completions.png")
    paths = save_outputs(out_dir, run.prior.cfg, completed, n, times)
    print(f"{n} test images x {times} completions, {keep} of {grid_height} code rows kept "
          f"(temperature {args.temperature}, seed {args.seed}) -> {out_dir}/completions.png, "
          + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

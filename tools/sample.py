"""Sample code maps from the prior and decode them with the frozen stage-1 decoder.

    python -m tools.sample --prior runs/prior/ckpt.pt --n 64 --temperature 1.0 --seed 0   # see --help

Writes OUT_DIR/samples.npy (the code maps), samples.png (the decoded grid) and, for a class-conditional
prior, samples_labels.npy. A two-level prior draws the top map first, then the bottom map given it, and
writes samples_top.npy and samples_bottom.npy instead of samples.npy. The same seed gives the same
samples. --guidance S samples a class-conditional prior with classifier-free guidance. Runs on the GPU
when there is one.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from foundation.cli import UserError, main_entry
from foundation.files import code_dtype, remove_stale_temporaries, save_array, sha256_file
from foundation.images import save_grid
from foundation.levels import level_names, name_suffix, take, top_first
from foundation.runtime import pick_device
from stage1_vqvae.checkpoint import load_vqvae
from stage2_prior.checkpoint import load_prior
from tools.common.drawing import add_guidance_flag, choose_labels, draw_samples


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="runs/prior/ckpt.pt", help="stage-2 checkpoint (default: %(default)s)")
    parser.add_argument("--vqvae", default=None, help="stage-1 checkpoint (default: the one the prior's codes came from)")
    parser.add_argument("--out-dir", default="runs/samples", help="where the samples go (default: %(default)s)")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely codes")
    parser.add_argument("--class", dest="label", type=int, default=None,
                        help="class to draw (class-conditional priors; default: every class in turn)")
    add_guidance_flag(parser)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same samples (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples drawn at once (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    return parser.parse_args(argv)


def check_args(args) -> None:
    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be >= 0")
    if args.top_k is not None and args.top_k < 1:
        raise UserError("--top-k must be at least 1")


def resolve_vqvae(args, prior) -> Path:
    """The stage-1 checkpoint to decode with, checked to be the one the prior's codes came from."""
    path = Path(args.vqvae or prior.cfg.stage1_checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: stage-1 checkpoint not found (pass --vqvae)")
    if prior.cfg.stage1_sha256 and sha256_file(path) != prior.cfg.stage1_sha256:
        raise UserError(f"{path} is not the stage-1 checkpoint whose codes trained {args.prior} "
                        "(sha256 differs): its decoder would give meaningless images")
    return path


@torch.no_grad()
def save_codes(codes: tuple, prior, out_dir: Path) -> list:
    """samples.npy, or samples_top.npy and samples_bottom.npy, in the smallest dtype; returns the paths."""
    levels = len(codes)
    paths = [out_dir / f"samples{name_suffix(name)}.npy" for name in level_names(levels)]
    sizes = top_first(prior.cfg.top_codebook_size, prior.cfg.codebook_size, levels)
    for path, level, size in zip(paths, codes, sizes):
        save_array(path, level.cpu().numpy().astype(code_dtype(size)))
    return paths


@main_entry
def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    device = pick_device(args.device)
    prior = load_prior(args.prior, device)
    vqvae = load_vqvae(resolve_vqvae(args, prior), device)
    labels = choose_labels(prior, args.label, args.n, device)
    codes = draw_samples(prior, labels, args.n, args.batch_size, args.seed, device, args.temperature, args.top_k,
                         args.guidance)
    images = torch.cat([vqvae.decode_indices(take(codes, slice(s, s + 256))) for s in range(0, args.n, 256)])
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    paths = save_codes(codes, prior, out_dir)
    if labels is not None:
        save_array(out_dir / "samples_labels.npy", labels.cpu().numpy().astype(np.int64))
    save_grid(images, out_dir / "samples.png", nrow=max(1, math.ceil(math.sqrt(args.n))))
    print(f"{args.n} samples (temperature {args.temperature}, top-k {args.top_k}, guidance "
          f"{prior.guidance_scale(args.guidance)}, seed {args.seed}) on {device} "
          f"-> {out_dir}/samples.png, " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

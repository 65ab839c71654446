"""Encode a dataset with a trained VQ-VAE into code maps for stage 2.

    python -m stage1_vqvae.encode --ckpt runs/vqvae/ckpt.pt --out-dir runs/codes

Writes train.npy, val.npy and test.npy ((N, H, W) integer maps, the smallest unsigned dtype that holds
the codebook), their *_labels.npy, and meta.json last (codebook size, grid shape, counts, dataset, the
validation split, and the sha256 of the stage-1 checkpoint). A two-level model writes one file per
level and split instead (train_top.npy, train_bottom.npy, ...); meta.json's `levels` lists each level's
grid shape, codebook size, dtype and file names (top level first) for one level and two alike.
The validation split is the one stage 1 chose its epoch on. The train split also gets the code maps
of its left-right mirrored images (`--mirror-train`, on by default: the encoder is not
mirror-equivariant, so these are new, valid maps for the prior); val and test are never augmented. Deterministic: re-encoding with the same checkpoint
gives identical files. Each array is written as it is computed, to a temporary file that is renamed
into place when complete.
"""

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from foundation.cli import main_entry
from foundation.files import atomic_path, code_dtype, remove_stale_temporaries, save_array, sha256_file, write_json
from foundation.levels import level_names, name_suffix
from foundation.runtime import autocast, pick_device, progress_disabled
from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import SPLITS, eval_batches, load_splits


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="runs/vqvae/ckpt.pt", help="stage-1 checkpoint (default: %(default)s)")
    parser.add_argument("--out-dir", default="runs/codes", help="where the code files go (default: %(default)s)")
    parser.add_argument("--dataset", choices=["cifar10", "folder", "shapes"], help="default: the checkpoint's")
    parser.add_argument("--data-dir", help="default: the checkpoint's")
    parser.add_argument("--mirror-train", action=argparse.BooleanOptionalAction, default=True,
                        help="also encode the train images mirrored left-right, doubling the train maps "
                             "(val and test never are; default: on)")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    return parser.parse_args(argv)


def level_files(split: str, levels: int) -> list:
    """Code file names of a split, top level first: 'train.npy', or 'train_top.npy', 'train_bottom.npy'."""
    return [f"{split}{name_suffix(name)}.npy" for name in level_names(levels)]


@torch.no_grad()
def encode_to_files(model, images: torch.Tensor, paths: list, batch_size: int, device, desc: str,
                    mirror: bool = False) -> None:
    """Encode uint8 images (N, 3, S, S) batch by batch straight into one .npy file per level.

    With `mirror`, each file holds 2N maps: the N images, then the same N images flipped left-right.
    """
    cfg, n = model.cfg, images.shape[0]
    passes = (False, True) if mirror else (False,)
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(atomic_path(path)) for path in paths]
        files = [np.lib.format.open_memmap(tmp, mode="w+", dtype=code_dtype(k), shape=(n * len(passes), *grid))
                 for tmp, k, grid in zip(temporaries, cfg.codebook_sizes, cfg.grid_shapes)]
        bar = tqdm(total=len(passes) * -(-n // batch_size), desc=desc, unit="batch", disable=progress_disabled())
        for offset, flip in zip(range(0, len(passes) * n, n), passes):
            for start, x in zip(range(offset, offset + n, batch_size), eval_batches(images, batch_size, device)):
                with autocast(device, cfg.precision):
                    codes = model.encode_levels(x.flip(3) if flip else x)
                for file, level_codes in zip(files, codes):
                    file[start : start + x.shape[0]] = level_codes.cpu().numpy()
                bar.update()
        bar.close()
        for file in files:
            file.flush()
        del files


def level_meta(cfg) -> list:
    """meta.json's description of each level, top level first."""
    return [{"name": name, "codebook_size": k, "grid_shape": list(grid), "dtype": np.dtype(code_dtype(k)).name,
             "files": {split: level_files(split, cfg.levels)[i] for split in SPLITS}}
            for i, (name, k, grid) in enumerate(zip(cfg.level_names, cfg.codebook_sizes, cfg.grid_shapes))]


@main_entry
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model = load_vqvae(args.ckpt, device)
    cfg = model.cfg
    dataset, data_dir = args.dataset or cfg.dataset, args.data_dir or cfg.data_dir
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    sets = load_splits(dataset, data_dir, SPLITS, (cfg.shapes_train, cfg.shapes_test), cfg.val_size, cfg.image_size)
    warn_if_split_moved(cfg, dataset, data_dir, sets["val"].note)
    counts = {}
    for split, data in sets.items():
        mirror = args.mirror_train and split == "train"
        encode_to_files(model, data.images, [out_dir / f for f in level_files(split, cfg.levels)], args.batch_size,
                        device, f"encoding {split}" + (" (and mirrored)" if mirror else ""), mirror)
        labels = data.labels.repeat(2) if mirror else data.labels
        save_array(out_dir / f"{split}_labels.npy", labels.numpy().astype(np.int64))
        counts[split] = labels.shape[0]
    levels = level_meta(cfg)
    meta = {
        **({k: levels[0][k] for k in ("codebook_size", "grid_shape", "dtype")} if cfg.levels == 1 else {}),
        "levels": levels,
        "image_size": cfg.image_size,
        "counts": counts,
        "dataset": dataset,
        "data_dir": str(data_dir),
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "train_mirrored": args.mirror_train,
        "val_split": sets["val"].note,
        "stage1_checkpoint": str(args.ckpt),
        "stage1_sha256": sha256_file(args.ckpt),
    }
    write_json(out_dir / "meta.json", meta)
    mirrored = " (half of them mirrored)" if args.mirror_train else ""
    described = " + ".join(f"{lv['name']} {lv['grid_shape'][0]}x{lv['grid_shape'][1]} (K={lv['codebook_size']}, "
                           f"{lv['dtype']})" for lv in levels)
    files = ", ".join(f for split in SPLITS for f in level_files(split, cfg.levels))
    print(f"encoded {counts['train']} train{mirrored}, {counts['val']} val and {counts['test']} test images into "
          f"{described} -> {out_dir}/ ({files}, *_labels.npy, meta.json)")


def warn_if_split_moved(cfg, dataset: str, data_dir: str, note: str) -> None:
    """Warn when the validation images differ from those stage 1 chose its epoch on (files changed?)."""
    same_data = (dataset, str(data_dir)) == (cfg.dataset, str(cfg.data_dir))
    if same_data and cfg.val_split and cfg.val_split != note:
        print(f"warning: the validation split differs from stage 1's (now: {note}; stage 1: {cfg.val_split})",
              file=sys.stderr)


if __name__ == "__main__":
    main()

"""Encode a dataset with a trained VQ-VAE into 8x8 code maps for stage 2.

    python -m stage1_vqvae.encode --ckpt runs/vqvae/ckpt.pt --out-dir runs/codes

Writes train.npy, val.npy and test.npy ((N, 8, 8) integer maps, the smallest unsigned dtype that holds
the codebook), their *_labels.npy, and meta.json last (codebook size, grid shape, counts, dataset, the
validation split, and the sha256 of the stage-1 checkpoint). The validation split is the one stage 1
chose its epoch on. The train split also gets the code maps of its left-right mirrored images
(`--mirror-train`, on by default: the encoder is not mirror-equivariant, so these are new, valid maps
for the prior); val and test are never augmented. Deterministic: re-encoding with the same checkpoint
gives identical files. Each array is written as it is computed, to a temporary file that is renamed
into place when complete.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import SPLITS, eval_batches, load_splits
from tools.common.cli import main_entry
from tools.common.files import atomic_path, remove_stale_temporaries, sha256_file, write_json
from tools.common.runtime import autocast, pick_device, progress_disabled


def code_dtype(codebook_size: int):
    """Smallest unsigned integer dtype that holds indices in [0, codebook_size)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.int64


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


@torch.no_grad()
def encode_to_file(model, images: torch.Tensor, path: Path, batch_size: int, device, dtype, desc: str,
                   mirror: bool = False) -> tuple:
    """Encode uint8 images (N, 3, 32, 32) batch by batch straight into an .npy file; returns the grid shape.

    With `mirror`, the file holds 2N maps: the N images, then the same N images flipped left-right.
    """
    n, h, w = images.shape[0], images.shape[-2] // 4, images.shape[-1] // 4
    passes = (False, True) if mirror else (False,)
    with atomic_path(path) as tmp:
        codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n * len(passes), h, w))
        bar = tqdm(total=len(passes) * -(-n // batch_size), desc=desc, unit="batch", disable=progress_disabled())
        for offset, flip in zip(range(0, len(passes) * n, n), passes):
            for start, x in zip(range(offset, offset + n, batch_size), eval_batches(images, batch_size, device)):
                with autocast(device, model.cfg.precision):
                    codes[start : start + x.shape[0]] = model.encode(x.flip(3) if flip else x).cpu().numpy().astype(dtype)
                bar.update()
        bar.close()
        codes.flush()
        del codes
    return (h, w)


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


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
    dtype = code_dtype(cfg.codebook_size)
    sets = load_splits(dataset, data_dir, SPLITS, (cfg.shapes_train, cfg.shapes_test), cfg.val_size)
    warn_if_split_moved(cfg, dataset, data_dir, sets["val"].note)
    counts = {}
    for split, data in sets.items():
        mirror = args.mirror_train and split == "train"
        grid = encode_to_file(model, data.images, out_dir / f"{split}.npy", args.batch_size, device, dtype,
                              f"encoding {split}" + (" (and mirrored)" if mirror else ""), mirror)
        labels = data.labels.repeat(2) if mirror else data.labels
        save_array(out_dir / f"{split}_labels.npy", labels.numpy().astype(np.int64))
        counts[split] = labels.shape[0]
    meta = {
        "codebook_size": cfg.codebook_size,
        "grid_shape": list(grid),
        "dtype": np.dtype(dtype).name,
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
    print(f"encoded {counts['train']} train{mirrored}, {counts['val']} val and {counts['test']} test maps of "
          f"{grid[0]}x{grid[1]} codes (K={cfg.codebook_size}, {meta['dtype']}) -> {out_dir}/ "
          "(train.npy, val.npy, test.npy, *_labels.npy, meta.json)")


def warn_if_split_moved(cfg, dataset: str, data_dir: str, note: str) -> None:
    """Warn when the validation images differ from those stage 1 chose its epoch on (files changed?)."""
    same_data = (dataset, str(data_dir)) == (cfg.dataset, str(cfg.data_dir))
    if same_data and cfg.val_split and cfg.val_split != note:
        print(f"warning: the validation split differs from stage 1's (now: {note}; stage 1: {cfg.val_split})",
              file=sys.stderr)


if __name__ == "__main__":
    main()

"""Encode a dataset with a trained VQ-VAE into 8x8 code maps for stage 2.

    python -m stage1_vqvae.encode --ckpt runs/vqvae/ckpt.pt --out-dir runs/codes

Writes train.npy and test.npy ((N, 8, 8) integer maps, the smallest unsigned dtype that holds the
codebook), train_labels.npy, test_labels.npy, and meta.json last (codebook size, grid shape, counts,
dataset, and the sha256 of the stage-1 checkpoint). No augmentation; deterministic: re-encoding with
the same checkpoint gives identical files. Each array is written as it is computed, to a temporary
file that is renamed into place when complete.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import eval_batches, load_split
from tools.cli import main_entry
from tools.files import atomic_path, remove_stale_temporaries, sha256_file, write_json
from tools.runtime import autocast, pick_device, progress_disabled


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
    parser.add_argument("--batch-size", type=int, default=1024, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    return parser.parse_args(argv)


@torch.no_grad()
def encode_to_file(model, images: torch.Tensor, path: Path, batch_size: int, device, dtype, desc: str) -> tuple:
    """Encode uint8 images (N, 3, 32, 32) batch by batch straight into an .npy file; returns the grid shape."""
    h = w = images.shape[-1] // 4
    with atomic_path(path) as tmp:
        codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(images.shape[0], h, w))
        batches = eval_batches(images, batch_size, device)
        bar = tqdm(batches, total=-(-images.shape[0] // batch_size), desc=desc, unit="batch", disable=progress_disabled())
        for start, x in zip(range(0, images.shape[0], batch_size), bar):
            with autocast(device, model.cfg.precision):
                codes[start : start + x.shape[0]] = model.encode(x).cpu().numpy().astype(dtype)
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
    counts = {}
    for split in ("train", "test"):
        data = load_split(dataset, data_dir, split, (cfg.shapes_train, cfg.shapes_test))
        grid = encode_to_file(model, data.images, out_dir / f"{split}.npy", args.batch_size, device, dtype, f"encoding {split}")
        save_array(out_dir / f"{split}_labels.npy", data.labels.numpy().astype(np.int64))
        counts[split] = len(data)
    meta = {
        "codebook_size": cfg.codebook_size,
        "grid_shape": list(grid),
        "dtype": np.dtype(dtype).name,
        "counts": counts,
        "dataset": dataset,
        "data_dir": str(data_dir),
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "stage1_checkpoint": str(args.ckpt),
        "stage1_sha256": sha256_file(args.ckpt),
    }
    write_json(out_dir / "meta.json", meta)
    print(f"encoded {counts['train']} train and {counts['test']} test images into {grid[0]}x{grid[1]} maps of "
          f"{cfg.codebook_size} codes ({meta['dtype']}) -> {out_dir}/ (train.npy, test.npy, *_labels.npy, meta.json)")


if __name__ == "__main__":
    main()

"""A finished run folder, as the cross-stage commands (evaluate, complete) read it.

RUN_DIR holds vqvae/ckpt.pt, codes/ (meta.json and the code maps) and prior/ckpt.pt, the artifacts
of the make targets. A missing one is a UserError naming the make target that writes it; a prior or
codes from another stage-1 checkpoint (sha256 recorded in them) are refused, since decoding their
codes with this decoder would give meaningless images.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from foundation.cli import UserError
from foundation.files import sha256_file
from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import ImageSet, load_splits
from stage2_prior.checkpoint import load_prior
from stage2_prior.data import read_meta

# artifact (relative to RUN_DIR) -> the make target that writes it
TARGETS = {"vqvae/ckpt.pt": "train-vqvae", "codes/meta.json": "encode-dataset", "prior/ckpt.pt": "train-prior"}


@dataclass
class FinishedRun:
    run_dir: Path
    vqvae: torch.nn.Module
    prior: torch.nn.Module
    meta: dict

    @property
    def codes_dir(self) -> Path:
        return self.run_dir / "codes"

    def class_names(self) -> list:
        """The class names meta.json records ('class 0', ... when it has none)."""
        names = self.meta.get("class_names") or []
        return names if len(names) == self.meta["num_classes"] else [f"class {i}" for i in range(self.meta["num_classes"])]


def run_parser(description: str, out_folder: str | None) -> argparse.ArgumentParser:
    """A parser with the flags every command over a finished run takes (run folder, output, data, device);
    no --out-dir when `out_folder` is None (a command that writes no files)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", default="runs", help="the run folder (default: %(default)s)")
    if out_folder is not None:
        parser.add_argument("--out-dir", default=None, help=f"where the results go (default: RUN_DIR/{out_folder})")
    parser.add_argument("--dataset", choices=["cifar10", "folder", "shapes"], help="default: the one the codes came from")
    parser.add_argument("--data-dir", help="default: the one the codes came from")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads, 0: torch's default (default: %(default)s: sampling is many small steps; "
                             "on a busy 2-core CPU one thread sampled 19x faster than two)")
    return parser


def require(run_dir: Path, artifact: str) -> Path:
    """RUN_DIR/artifact, or a UserError saying which make target writes it."""
    path = run_dir / artifact
    if not path.is_file():
        raise UserError(f"{path} not found: run `make {TARGETS[artifact]} RUN_DIR={run_dir}` first")
    return path


def load_finished_run(run_dir, device) -> FinishedRun:
    """The stage-1 model, the prior and the codes' meta.json of RUN_DIR, checked to belong together."""
    run_dir = Path(run_dir)
    paths = {artifact: require(run_dir, artifact) for artifact in TARGETS}
    vqvae_path = paths["vqvae/ckpt.pt"]
    digest = sha256_file(vqvae_path)
    meta = read_meta(run_dir / "codes")
    prior = load_prior(paths["prior/ckpt.pt"], device)
    for what, recorded, target in [(run_dir / "codes", meta["stage1_sha256"], "encode-dataset"),
                                   (paths["prior/ckpt.pt"], prior.cfg.stage1_sha256, "train-prior")]:
        if recorded and recorded != digest:
            raise UserError(f"{what} comes from another stage-1 checkpoint than {vqvae_path} (sha256 differs): "
                            f"run `make {target} RUN_DIR={run_dir}` again")
    return FinishedRun(run_dir, load_vqvae(vqvae_path, device), prior, meta)


def data_source(run: FinishedRun, dataset: str | None = None, data_dir: str | None = None) -> tuple:
    """(dataset, data dir): the ones given, else those the codes were encoded from (meta.json)."""
    cfg = run.vqvae.cfg
    return dataset or run.meta.get("dataset", cfg.dataset), data_dir or run.meta.get("data_dir", cfg.data_dir)


def load_image_splits(run: FinishedRun, splits, dataset: str | None = None, data_dir: str | None = None) -> dict:
    """{split: ImageSet} ('train', 'val', 'test') of the data the codes were encoded from (unless given), at the
    model's size; the training pool is decoded once for 'train' and 'val'."""
    cfg = run.vqvae.cfg
    return load_splits(*data_source(run, dataset, data_dir), tuple(splits), (cfg.shapes_train, cfg.shapes_test),
                       cfg.val_size, cfg.image_size)


def load_images(run: FinishedRun, split: str, dataset: str | None = None, data_dir: str | None = None) -> ImageSet:
    """One split ('train', 'val', 'test') of the data the codes were encoded from (unless given)."""
    return load_image_splits(run, (split,), dataset, data_dir)[split]


def load_test_images(run: FinishedRun, dataset: str | None = None, data_dir: str | None = None) -> ImageSet:
    """The test split the codes were encoded from (meta.json's dataset unless given), at the model's size."""
    return load_images(run, "test", dataset, data_dir)

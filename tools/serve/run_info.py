"""The "run" tab of the `tools.serve` page: configs, figures, training curves, test images and their reconstructions.

Reads the run folder's own files (the server picks them; the page never names one): each stage's config.json
and metrics.jsonl, codes/meta.json, eval/eval.json, vqvae/eval.json, guidance/guidance.json and the best
epoch's figures stored in each checkpoint. A file that is not there is left out. Used by `tools.serve.app`.
"""

import json
import math

import torch
from torchvision.transforms.functional import to_pil_image

from foundation.cli import UserError
from foundation.files import load_checkpoint
from foundation.images import comparison_grid
from stage1_vqvae.data import pick_per_class, to_model_range
from tools.evaluate import RECON_IMAGES
from tools.serve.draws import png_data_url

STAGES = {"vqvae": "stage 1 (VQ-VAE)", "prior": "stage 2 (prior)"}
FIGURES = {"eval/eval.json": "make evaluate", "vqvae/eval.json": "stage 1 --eval-only",
           "guidance/guidance.json": "make choose-guidance"}
PREVIEW_SCALE = 4  # a test image is shown this many times its size


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def numeric(record: dict) -> dict:
    """The finite numbers of a metrics record."""
    return {key: value for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def curves(path) -> list:
    """The numeric fields of each line of a metrics.jsonl (unreadable lines skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(numeric(record))
    return records


def stage_view(folder, stage: str, title: str) -> dict:
    """A stage's config (config.json, else the checkpoint's), its best epoch's figures (the checkpoint's) and curves."""
    try:
        ckpt = load_checkpoint(folder / "ckpt.pt", stage)
    except UserError:
        ckpt = {}
    best = {"epoch": ckpt["epoch"], **numeric(ckpt.get("metrics") or {})} if "epoch" in ckpt else None
    return {"title": title, "config": read_json(folder / "config.json") or ckpt.get("config"), "best": best,
            "curves": curves(folder / "metrics.jsonl")}


def describe(session) -> dict:
    """Everything the run tab shows but pictures (read once: a finished run does not change)."""
    run_dir = session.run_dir
    stages = {stage: stage_view(run_dir / stage, stage, title) for stage, title in STAGES.items()}
    figures = {f"{name} ({how})": read_json(run_dir / name) for name, how in FIGURES.items()}
    return {"run_dir": str(run_dir), "missing": session.missing, "stages": stages, "codes": session.meta or None,
            "figures": {name: value for name, value in figures.items() if value is not None}}


@torch.no_grad()
def reconstructions(session) -> dict:
    """Test images of every class above their reconstructions, as evaluate's recon.png."""
    test, vqvae = session.test_images(), session.vqvae
    classes = max(1, int(test.labels.max()) + 1)
    chosen = pick_per_class(test.labels, max(1, RECON_IMAGES // classes))
    x = to_model_range(test.images[chosen].to(session.device))
    grid = comparison_grid(x, vqvae.decode_indices(vqvae.encode(x)), per_row=min(classes, 10))
    return {"image": png_data_url(to_pil_image(grid))}


def test_image(session, index: int) -> dict:
    """Test image `index`, shown larger, with its class and the split's size."""
    test = session.test_images()
    if not 0 <= index < test.images.shape[0]:
        raise UserError(f"test image index must be in [0, {test.images.shape[0] - 1}]")
    label = int(test.labels[index])
    names = session.view().class_names() if session.meta else []
    picture = to_pil_image(test.images[index]).resize((test.images.shape[-1] * PREVIEW_SCALE,) * 2, 0)
    return {"image": png_data_url(picture), "index": index, "count": test.images.shape[0], "label": label,
            "class_name": names[label] if label < len(names) else f"class {label}"}

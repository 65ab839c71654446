"""The run a `tools.serve` page shows: its parts (whichever exist, and a line for each one missing) and the
page's controls, checked as the commands check their flags (`tools.sample`, `tools.complete`).

Used by `tools.serve.app` (run with `python -m tools.serve --run-dir RUN`). The client never names a file:
test images are picked by index, and an upload is image bytes checked with Pillow.
"""

import argparse
import base64
import binascii
import io
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from foundation.cli import UserError
from foundation.levels import top_first
from stage1_vqvae.checkpoint import load_vqvae
from stage2_prior.data import read_meta
from tools import complete, sample
from tools.common.drawing import check_guidance, choose_labels
from tools.common.finished_run import TARGETS, FinishedRun, load_finished_run, load_test_images, require

MAX_SAMPLES = 256  # samples in one draw (n, or classes x per class)
MAX_PER_CLASS = 16
MAX_COMPLETIONS = 16
MAX_UPLOAD_BYTES = 4 << 20
UPLOAD_FORMATS = ("PNG", "JPEG")


@dataclass
class Session:
    run_dir: Path
    device: torch.device
    vqvae: torch.nn.Module | None  # None when stage 1 is missing
    run: FinishedRun | None  # None unless every part is there and they belong together
    meta: dict
    missing: list  # one line per missing or unusable part, naming the make target that writes it
    data: tuple = (None, None)  # (dataset, data dir) to read test images from; None: those the codes came from
    _cache: dict = field(default_factory=dict)  # what `once` made: a value, or the UserError making it gave
    _lock: threading.RLock = field(default_factory=threading.RLock)  # `make` may call `once` itself

    def once(self, key: str, make):
        """make(), made on the first call only (a UserError too is remembered and raised again)."""
        with self._lock:
            if key not in self._cache:
                try:
                    self._cache[key] = make()
                except UserError as err:
                    self._cache[key] = err
        if isinstance(self._cache[key], UserError):
            raise self._cache[key]
        return self._cache[key]

    def require_prior(self) -> FinishedRun:
        """The whole run, or a UserError saying what drawing needs."""
        if self.run is None:
            raise UserError("drawing needs the whole run: " + "; ".join(self.missing))
        return self.run

    def view(self) -> FinishedRun:
        """The run's parts as a FinishedRun (prior None when missing), for the helpers that read its data."""
        return self.run or FinishedRun(self.run_dir, self.vqvae, None, self.meta)

    def test_images(self):
        """The run's test split (loaded once), or the UserError loading it gave."""
        if self.vqvae is None:
            raise UserError("test images need stage 1: " + "; ".join(self.missing))
        return self.once("test", lambda: load_test_images(self.view(), *self.data))

    def summary(self) -> dict:
        """What the page needs to build its controls."""
        prior = self.run.prior if self.run else None
        cfg = prior.cfg if prior else None
        summary = {"run_dir": str(self.run_dir), "device": str(self.device), "missing": self.missing,
                   "can_draw": prior is not None, "class_names": self.view().class_names() if self.meta else [],
                   "limits": {"n": MAX_SAMPLES, "per_class": MAX_PER_CLASS, "completions": MAX_COMPLETIONS,
                              "upload_bytes": MAX_UPLOAD_BYTES}}
        if self.vqvae is not None:
            summary.update(image_size=self.vqvae.cfg.image_size, levels=self.vqvae.cfg.levels)
        if cfg is not None:
            summary.update(class_conditional=cfg.class_conditional, guidable=guidable(prior),
                           guidance=prior.guidance_scale(), grid_height=cfg.grid_height,
                           levels=cfg.levels, rows=top_first(cfg.top_grid_height, cfg.grid_height, cfg.levels))
        return summary


def guidable(prior) -> bool:
    """Whether the prior takes a guidance scale (class-conditional, trained with label dropout)."""
    try:
        prior.guidance_scale(1.0)
    except ValueError:
        return False
    return True


def missing_parts(run_dir: Path) -> list:
    """A line for each artifact of the run that is not there, naming the make target that writes it."""
    lines = []
    for artifact in TARGETS:
        try:
            require(run_dir, artifact)
        except UserError as err:
            lines.append(str(err))
    return lines


def open_session(run_dir, device, dataset: str | None = None, data_dir: str | None = None) -> Session:
    """Load what RUN_DIR has; a missing or unusable part becomes a line in `missing` instead of an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    missing, vqvae, run, meta = missing_parts(run_dir), None, None, {}
    try:
        if not missing:
            run = load_finished_run(run_dir, device)
            vqvae, meta = run.vqvae, run.meta
        else:
            if (run_dir / "vqvae/ckpt.pt").is_file():
                vqvae = load_vqvae(run_dir / "vqvae/ckpt.pt", device)
            if (run_dir / "codes/meta.json").is_file():
                meta = read_meta(run_dir / "codes")
    except UserError as err:
        missing.append(str(err))
    return Session(run_dir, device, vqvae, run, meta, missing, (dataset, data_dir))


def integer(body: dict, key: str, default=None):
    """body[key] as an int (absent or null: `default`), or a UserError."""
    value = body.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{key} must be a whole number")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{key} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise UserError(f"{key} must be a whole number, got {value!r}")
    return int(number)


def real(body: dict, key: str, default=None):
    """body[key] as a finite float (absent or null: `default`), or a UserError."""
    value = body.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{key} must be a number, got {value!r}")
    return number


def drawing_controls(body: dict, run: FinishedRun, n: int = 1) -> argparse.Namespace:
    """n, temperature, top-k, guidance and seed, checked as `tools.sample` checks them."""
    args = argparse.Namespace(n=n, temperature=real(body, "temperature", 1.0), top_k=integer(body, "top_k"),
                              guidance=real(body, "guidance"), seed=integer(body, "seed", 0))
    sample.check_args(args)
    check_guidance(run.prior, args.guidance)
    return args


def at_most(value: int, limit: int, name: str) -> int:
    """`value`, or a UserError when it is over the page's limit."""
    if value > limit:
        raise UserError(f"{name} must be at most {limit} on this page (use the command for more)")
    return value


def sample_controls(session: Session, body: dict) -> tuple:
    """(controls, labels) of a draw of samples: n, class (null: any), and the drawing controls."""
    run = session.require_prior()
    args = drawing_controls(body, run, integer(body, "n", 16))
    at_most(args.n, MAX_SAMPLES, "--n")
    return args, choose_labels(run.prior, integer(body, "class"), args.n, session.device)


def class_controls(session: Session, body: dict) -> tuple:
    """(controls, labels) of a row per class: per class, and the drawing controls."""
    run = session.require_prior()
    if not run.prior.cfg.class_conditional:
        raise UserError("a row per class needs a class-conditional prior (train it with --class-conditional)")
    args = drawing_controls(body, run)
    args.per_class = integer(body, "per_class", 8)
    if args.per_class < 1:
        raise UserError("per class must be at least 1")
    at_most(args.per_class, MAX_PER_CLASS, "per class")
    classes = len(run.class_names())
    at_most(args.per_class * classes, MAX_SAMPLES, f"{classes} classes x per class")
    labels = torch.arange(classes, device=session.device).repeat_interleave(args.per_class)
    return args, labels


def completion_controls(session: Session, body: dict) -> tuple:
    """(controls with keep_rows, the image (1, 3, S, S) uint8, labels) of a completion."""
    run = session.require_prior()
    args = drawing_controls(body, run)
    args.n_images, args.n_completions = 1, integer(body, "n_completions", 4)
    args.keep_rows = integer(body, "keep_rows")
    args.keep_rows = complete.check_args(args, run.prior.cfg.grid_height)
    at_most(args.n_completions, MAX_COMPLETIONS, "--n-completions")
    image, own_label = chosen_image(session, body)
    label = integer(body, "class")
    if label is None and run.prior.cfg.class_conditional:
        if own_label is None:
            raise UserError("this prior is class-conditional: choose a class for an uploaded image")
        label = own_label
    labels = choose_labels(run.prior, label, 1, session.device) if label is not None else None
    return args, image, labels


def chosen_image(session: Session, body: dict) -> tuple:
    """(image (1, 3, S, S) uint8, its class or None): the upload, else the test image at body['index']."""
    if body.get("upload"):
        return decode_upload(body["upload"], session.vqvae.cfg.image_size), None
    test = session.test_images()
    index = integer(body, "index", 0)
    if not 0 <= index < test.images.shape[0]:
        raise UserError(f"test image index must be in [0, {test.images.shape[0] - 1}]")
    return test.images[index : index + 1], int(test.labels[index])


def decode_upload(data, size: int) -> torch.Tensor:
    """A PNG or JPEG data URL (or bare base64) of a `size` px square image -> (1, 3, size, size) uint8."""
    if not isinstance(data, str):
        raise UserError("the upload must be an image file's bytes, base64-encoded")
    if len(data) > MAX_UPLOAD_BYTES * 4 // 3 + 1024:
        raise UserError(f"the upload is over {MAX_UPLOAD_BYTES >> 20} MiB")
    try:
        raw = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=True)
        picture = Image.open(io.BytesIO(raw))
    except (binascii.Error, UnidentifiedImageError, ValueError):
        raise UserError("the upload is not an image (a PNG or JPEG file)") from None
    if picture.format not in UPLOAD_FORMATS:
        raise UserError(f"the upload is a {picture.format} image: send a PNG or JPEG file")
    if picture.size != (size, size):
        raise UserError(f"the upload is {picture.size[0]}x{picture.size[1]} pixels; this run's images are {size}x{size}")
    try:
        pixels = np.asarray(picture.convert("RGB"))
    except OSError:
        raise UserError("the upload is a damaged image file") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]  # (1, 3, S, S)

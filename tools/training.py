"""Bookkeeping both training stages share: resume, best-so-far, logs and the final checkpoint.

A run folder holds `config.json`, `metrics.jsonl` (one line per epoch), `state.pt` (everything needed
to resume, rewritten after every epoch) and, once training has finished, `ckpt.pt` (the best epoch's
weights). `ckpt.pt` appearing means "this stage is done", which is what the Makefile relies on.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tools.cli import UserError, config_from
from tools.files import load_checkpoint, remove_stale_temporaries, save_checkpoint, write_json

CKPT = "ckpt.pt"
STATE = "state.pt"
METRICS = "metrics.jsonl"


@dataclass
class Progress:
    """What a resumed run continues from."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float = math.inf
    best_epoch: int = -1
    best_model: dict = field(default_factory=dict)

    def record_epoch(self, metric: float, model: torch.nn.Module) -> bool:
        """Count a finished epoch; keep the weights if `metric` (lower is better) is the best finite one."""
        self.epoch += 1
        if math.isfinite(metric) and metric < self.best_metric:
            self.best_metric, self.best_epoch = metric, self.epoch
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        return False


def clear_run(out_dir: Path) -> None:
    """Remove what an earlier run left in `out_dir` (used by --fresh)."""
    for name in (CKPT, STATE, METRICS, "config.json"):
        (out_dir / name).unlink(missing_ok=True)
    for picture in out_dir.glob("*.png"):
        picture.unlink()


def prepare_run(config_cls, given: dict, stage: str, fresh: bool):
    """(config, resume state or None), or (None, None) when this run folder already finished training.

    The config is the saved one when resuming, else the defaults; the flags the user typed override it.
    """
    out_dir = Path(given.get("out_dir", config_cls().out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    if fresh:
        clear_run(out_dir)
    if (out_dir / CKPT).exists():
        return None, None
    state = load_checkpoint(out_dir / STATE, stage) if (out_dir / STATE).exists() else None
    saved = state["config"] if state else {}
    config = config_from(config_cls, {**dataclasses.asdict(config_cls()), **saved, **given})
    return config, state


def restore(state, model, optimizer) -> Progress:
    """Load a resume state into model and optimizer (and the RNG); a fresh Progress when there is none."""
    if state is None:
        return Progress()
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"cannot resume: the saved state does not fit this model ({err}); use --fresh") from None
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in state["rng"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Progress(**state["progress"])


def save_state(out_dir: Path, stage: str, config, model, optimizer, progress: Progress) -> None:
    """Write everything needed to resume after the epoch just finished."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    save_checkpoint(
        out_dir / STATE,
        stage,
        dataclasses.asdict(config),
        model.state_dict(),
        optimizer=optimizer.state_dict(),
        progress=dataclasses.asdict(progress),
        rng=rng,
    )


def finish(out_dir: Path, stage: str, config, progress: Progress, metrics: dict) -> Path:
    """Write the final checkpoint (the best epoch's weights) and return its path."""
    if not progress.best_model:
        raise UserError("training produced no finite validation loss; no checkpoint was written")
    path = out_dir / CKPT
    save_checkpoint(
        path, stage, dataclasses.asdict(config), progress.best_model, epoch=progress.best_epoch, metrics=metrics
    )
    return path


def write_config(out_dir: Path, config) -> None:
    """Save the resolved config next to the run."""
    write_json(out_dir / "config.json", dataclasses.asdict(config))

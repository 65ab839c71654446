"""Bookkeeping both training stages share: resume, best-so-far, logs, signals and the final checkpoint.

A run folder holds `config.json`, `metrics.jsonl` (one line per epoch), `state.pt` (everything needed
to resume: rewritten after every epoch and when SIGINT/SIGTERM stops the run mid-epoch) and, once
training has finished, `ckpt.pt` (the best epoch's weights). `ckpt.pt` appearing means "this stage is
done", which is what the Makefile relies on. A resumed run continues at the exact step it stopped at:
each epoch's data order comes from a generator seeded by (seed, epoch), and the global RNG, model,
optimizer, learning-rate schedule, weight average and running sums are restored, so on CPU it ends
bitwise equal to an uninterrupted run.
"""

import dataclasses
import json
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundation import distributed
from foundation.cli import UserError, config_from, saved_config_from
from foundation.files import atomic_path, load_checkpoint, remove_stale_temporaries, save_checkpoint, write_json
from foundation.optimization import Optimization
from foundation.pending_sums import PendingSums

CKPT = "ckpt.pt"
STATE = "state.pt"
METRICS = "metrics.jsonl"
READ_EVERY = 50  # training steps between reads of the logged sums on the host: a read waits for the device


@dataclass
class Progress:
    """What a resumed run continues from."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps taken
    sums: dict = field(default_factory=dict)  # running sums of the current epoch's losses
    best_metric: float = math.inf
    best_epoch: int = -1
    best_model: dict = field(default_factory=dict)
    best_metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        self.pending = PendingSums()  # not a field: what steps left on the device since the last read

    def add(self, **values: torch.Tensor) -> None:
        """Add one batch's scalars (tensors, left on their device) to the current epoch's running sums."""
        self.pending.add(self.sums, values)

    def read(self) -> None:
        """Bring the running sums to the host (one transfer); a UserError if a step since the last read was not
        finite (the optimizer skipped it on the device)."""
        self.sums, bad = self.pending.read(self.sums)
        if bad is not None:
            step, loss, grad = bad
            where = f"epoch {self.epoch + 1}, step {int(step) + 1}"
            advice = "state.pt keeps the last good state; try a lower --lr or --precision fp32"
            what = f"the loss became {loss}" if not math.isfinite(loss) else f"a gradient became {grad}"
            raise UserError(f"{what} at {where}; {advice}")

    def epoch_means(self) -> dict:
        self.read()
        return {name: total / max(self.batch, 1) for name, total in self.sums.items()}

    def record_epoch(self, metric: float, model: torch.nn.Module, metrics: dict) -> bool:
        """Close a finished epoch; keep the weights if `metric` (lower is better) is the best finite one."""
        self.read()
        self.epoch += 1
        self.batch, self.sums = 0, {}
        if math.isfinite(metric) and metric < self.best_metric:
            self.best_metric, self.best_epoch, self.best_metrics = metric, self.epoch, dict(metrics)
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        return False


def clear_run(out_dir: Path) -> None:
    """Remove what an earlier run left in `out_dir` (used by --fresh)."""
    for name in (CKPT, STATE, METRICS, "config.json"):
        (out_dir / name).unlink(missing_ok=True)
    for picture in out_dir.glob("*.png"):
        picture.unlink()


def train_in_process_group(config_cls, given: dict, fresh: bool, train) -> None:
    """Check the flags, join the process group when torchrun started this process, `train(given, fresh)`, leave it."""
    config_cls(**given)  # a bad flag stops here, before --fresh clears the run folder
    given["device"] = distributed.setup(given.get("device", config_cls().device))
    try:
        train(given, fresh)
    finally:
        distributed.teardown()


def prepare_run(config_cls, given: dict, stage: str, fresh: bool):
    """(config, resume state or None), or (None, None) when this run folder already finished training.

    The config is the saved one when resuming, else the defaults; the flags the user typed override it.
    """
    out_dir = Path(given.get("out_dir", config_cls().out_dir))
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        if fresh:
            clear_run(out_dir)
    distributed.barrier()
    if (out_dir / CKPT).exists():
        say(f"{out_dir / CKPT} exists: already trained (use --fresh to train again)")
        return None, None
    state = load_checkpoint(out_dir / STATE, stage) if (out_dir / STATE).exists() else None
    if state is None:
        return config_from(config_cls, given), None
    return saved_config_from(config_cls, {**state["config"], **given}), state


def epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    """The generator that decides one epoch's data order (and augmentation), the same on every run."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def optimize(loss: torch.Tensor, model: torch.nn.Module, optimization: Optimization, progress: Progress,
             **logged) -> None:
    """Backward and step, adding the loss (and `logged` scalars) to the epoch's sums on the device.

    Nothing here waits for the device: a non-finite loss or gradient makes the optimizer skip the step on the
    device, and the next `progress.read()` stops the run with a message.
    """
    optimization.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    optimization.step(distributed.unwrap(model), skip=~finite)
    progress.pending.note_finite(finite, progress.step, loss, grad_norm)
    progress.step += 1
    progress.batch += 1
    progress.add(loss=loss, **logged)


def read_now(progress: Progress) -> bool:
    """Whether the loop should read the sums at this step (every READ_EVERY steps), for the progress bar."""
    return progress.step % READ_EVERY == 0


class StopSignal:
    """SIGINT/SIGTERM set `requested`; the training loop saves its state after the current step and exits.

    A second signal stops at once (the state saved after the last epoch stays).
    """

    def __init__(self):
        self.requested = None  # the signal number once one arrived

    def should_stop(self, device, step: int) -> bool:
        """Whether to stop after this step, agreed by all ranks so they stop at the same step: under torchrun
        the ranks compare flags every READ_EVERY steps only (each comparison waits for the devices)."""
        if distributed.active() and step % READ_EVERY:
            return False
        return distributed.any_rank(self.requested is not None, device)

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: saving state after this step...", file=sys.stderr, flush=True)

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def exit(self, progress: Progress) -> None:
        """Tell the user where the run stopped and exit with the conventional status (128 + signal)."""
        if distributed.is_main():
            print(f"stopped at epoch {progress.epoch + 1}, step {progress.step}; state saved: run the same command "
                  "again to resume", file=sys.stderr)
        distributed.teardown()
        sys.exit(128 + (self.requested or signal.SIGTERM))


def trim_metrics(path: Path, epochs: int) -> None:
    """Drop log lines for epochs after the resume point (written just before a kill), atomically."""
    if not distributed.is_main() or not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= epochs]
    if len(kept) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))


def restore(state, model, optimization: Optimization, out_dir: Path) -> Progress:
    """Load a resume state into model, optimization and RNG, and say so; a fresh Progress when there is none."""
    if state is None:
        return Progress()
    if "scheduler" not in state:
        raise UserError("state.pt was written by an older version without a learning-rate schedule; "
                        "finish that run with the older version, or start over with --fresh")
    try:
        model.load_state_dict(state["model"])
        optimization.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"cannot resume: the saved state does not fit this model ({err}); use --fresh") from None
    set_rng_states(state["rng"])
    progress = Progress(**state["progress"])
    trim_metrics(out_dir / METRICS, progress.epoch)
    say(f"resuming from epoch {progress.epoch}, step {progress.step}")
    return progress


def rng_states() -> dict:
    """This process's generator states: CPU, and every CUDA device's when there is CUDA."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_states(rng: dict) -> None:
    """Restore this rank's own generator states from a state file's `rng`.

    Files written before per-rank states (no "ranks") hold rank 0's, which then serve every rank.
    """
    rng = rng.get("ranks", {}).get(distributed.rank(), rng)
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_state(out_dir: Path, stage: str, config, model, optimization: Optimization, progress: Progress,
               **extra) -> None:
    """Write (rank 0) everything needed to resume from this step, with the stage's `extra` states; all ranks
    wait for the write."""
    progress.read()  # the running sums, and a stop before anything non-finite is saved
    ranks = distributed.gather_objects(rng_states())
    if distributed.is_main():
        _write_state(out_dir, stage, config, model, optimization, progress, ranks, extra)
    distributed.barrier()


def _write_state(out_dir: Path, stage: str, config, model, optimization: Optimization, progress: Progress,
                 ranks: list, extra: dict) -> None:
    rng = {**ranks[0], "ranks": dict(enumerate(ranks))}  # rank 0's at the top level, as older versions read it
    save_checkpoint(
        out_dir / STATE,
        stage,
        dataclasses.asdict(config),
        model.state_dict(),
        **optimization.state_dict(),
        progress=dataclasses.asdict(progress),
        rng=rng,
        **extra,
    )


def finish(out_dir: Path, stage: str, config, progress: Progress) -> Path:
    """Write the final checkpoint (the best epoch's weights) and return its path."""
    if not progress.best_model:
        raise UserError("training produced no finite validation loss; no checkpoint was written")
    path = out_dir / CKPT
    if distributed.is_main():
        save_checkpoint(path, stage, dataclasses.asdict(config), progress.best_model, epoch=progress.best_epoch,
                        metrics=progress.best_metrics)
    distributed.barrier()
    return path


def write_config(out_dir: Path, config) -> None:
    """Save the resolved config next to the run (rank 0)."""
    if distributed.is_main():
        write_json(out_dir / "config.json", dataclasses.asdict(config))


def say(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if distributed.is_main():
        print(*args, **kwargs, flush=True)

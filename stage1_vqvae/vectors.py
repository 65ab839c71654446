"""Codes for any vectors: train a quantizer on an (N, D) .npy of embeddings and write each vector's codes.

    python -m stage1_vqvae.vectors --input EMB.npy --out-dir runs/vectors      # plain VQ: 1 code per vector
    python -m stage1_vqvae.vectors --input EMB.npy --groups 8    # product quantization: 8 codes per vector
    python -m stage1_vqvae.vectors --input EMB.npy --stages 4    # residual quantization: 4 codes per vector

The codebooks learn on the vectors themselves (EMA by default; `--quantizer codebook` for the codebook
loss), starting from data and re-seeding unused codes like the image stages; `--quantizer rotation` is EMA here
(the rotation trick only changes the gradient the fixed vectors get), and `factorized` and `fsq`
(`stage1_vqvae.modern_quantizers`) learn their projections by Adam on their loss plus the reconstruction MSE;
`stochastic` (SQ-VAE) learns its codebook and variance by Adam on its latent loss plus 0.5 log MSE.
After every epoch all vectors are coded and the relative MSE is measured, |x - x_hat|^2 / |x - mean(x)|^2
summed over the vectors (0: exact; 1: no better than the mean vector); the epoch with the lowest is kept.
Writes to --out-dir the run files of the training stages (config.json, metrics.jsonl, state.pt to
resume, ckpt.pt when done), then codes.npy ((N, C) with C = groups, stages or 1, in the smallest
unsigned dtype that holds K) and meta.json (sizes, relative MSE, codes used and perplexity per codebook).
Re-running resumes an interrupted run; a finished run is left alone unless --fresh is given.
`load_quantizer(ckpt)` turns codes back into vectors: `load_quantizer(path).embed_code(codes)`.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from foundation.cli import UserError, build_parser, derived, given_config_values, main_entry, opt, saved_config_from
from foundation.optimization import OptimizerSettings
from foundation.files import append_jsonl, code_dtype, load_checkpoint, save_array, sha256_file, write_json
from foundation.optimization import Optimization
from foundation.runtime import configure_backend, cpu_threads, pick_device, progress_disabled, seed_everything
from foundation.training import (METRICS, StopSignal, epoch_generator, finish, optimize, prepare_run, read_now,
                                  restore, save_state, say, write_config)
from stage1_vqvae.config import (FACTORIZED_DIM_HELP, FSQ_LEVELS_HELP, QUANTIZER_HELP, QUANTIZERS, SQ_TEMPERATURE_HELP,
                                 check_quantizer)
from stage1_vqvae.modern_quantizers import named_quantizer
from stage1_vqvae.multi_quantizer import build_quantizer
from stage1_vqvae.stochastic_quantizer import gaussian_reconstruction

STAGE = "vectors"
EVAL_BATCH = 8192
NPY_MAGIC = b"\x93NUMPY"
NO_OPTIMIZER = ("ema", "rotation")  # no parameters: the codebooks move in the forward pass
PROJECTS = ("factorized", "fsq")  # their projections learn from the reconstruction error too


@dataclass
class VectorsConfig:
    input: str = opt("", "the (N, D) float .npy of vectors to code (required; a resumed run remembers it)")
    out_dir: str = opt("runs/vectors", "where the run files, codes.npy and meta.json go")
    quantizer: str = opt("ema", QUANTIZER_HELP, choices=QUANTIZERS)
    factorized_dim: int = opt(16, FACTORIZED_DIM_HELP)
    fsq_levels: str = opt("8,8,8", FSQ_LEVELS_HELP)
    sq_temperature_decay: float = opt(1e-5, SQ_TEMPERATURE_HELP)
    codebook_size: int = opt(256, "K, codes in each codebook")
    groups: int = opt(1, "G > 1: product quantization, D split into G groups with a codebook each (G codes a vector)")
    stages: int = opt(1, "N > 1: residual quantization, each of N codebooks codes what the previous left (N codes)")
    beta: float = opt(0.25, "commitment weight")
    ema_decay: float = opt(0.99, "EMA decay (gamma) for --quantizer ema, rotation and factorized")
    dead_code_threshold: float = opt(1.0, "re-seed a code when its average use per batch (EMA) drops below this; "
                                          "0 disables")
    epochs: int = opt(20, "passes over the vectors")
    batch_size: int = opt(1024, "vectors per step")
    lr: float = opt(1e-3, "peak Adam learning rate of the codebooks or projections (--quantizer codebook, "
                          "factorized, fsq, stochastic)")
    lr_schedule: str = opt("cosine", "after the warm-up: cosine decay to 0, or constant", choices=["cosine", "constant"])
    warmup_fraction: float = opt(0.05, "share of the steps spent raising the learning rate linearly from 0")
    seed: int = opt(0, "seed for codebook initialisation and shuffling")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    threads: int = opt(1, "CPU threads (0: torch's default); raise it for large vectors and codebooks on an idle CPU")
    # recorded by the run
    embed_dim: int = derived(0)  # D, read from the input
    input_sha256: str = derived("")  # a resumed run must find the same vectors

    @property
    def kind(self) -> str:
        return "grouped" if self.groups > 1 else "residual" if self.stages > 1 else "plain"

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.warmup_fraction, self.lr_schedule)


def build_model(cfg: VectorsConfig) -> torch.nn.Module:
    """The quantizer the config describes, on channels-last (N, D) vectors."""
    quantizer, options = named_quantizer(cfg)
    return build_quantizer(cfg.codebook_size, cfg.embed_dim, cfg.groups, cfg.stages, dim=-1, quantizer=quantizer,
                           **options)


def load_quantizer(path, device="cpu") -> torch.nn.Module:
    """The trained quantizer saved at `path` (a `vectors` ckpt.pt), in eval mode."""
    ckpt = load_checkpoint(path, STAGE)
    model = build_model(saved_config_from(VectorsConfig, ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(pick_device(str(device))).eval()


def load_vectors(path) -> np.ndarray:
    """The (N, D) float array in `path`, or a UserError that says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:  # np.load would take any other file for a pickle
            raise UserError(f"{path}: not a readable .npy file (no NumPy header; save the vectors with np.save)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{path}: holds pickled Python objects, which are not loaded (they could run code); "
                            "save a plain float array, e.g. np.save(path, vectors.astype(np.float32))") from None
        raise UserError(f"{path}: not a readable .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npy file ({err})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path}: expected floating-point vectors, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{path}: expected an (N, D) array of N vectors, got shape {array.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise UserError(f"{path}: {bad_rows.size} vector(s) hold NaN or infinite values (first: row {bad_rows[0]})")
    return array


def check_config(cfg: VectorsConfig, vectors: np.ndarray, sha256: str) -> VectorsConfig:
    """The config with the input's size and hash recorded; a UserError when the sizes cannot work."""
    if cfg.input_sha256 and cfg.input_sha256 != sha256:
        raise UserError(f"{cfg.input} changed since this run started; use --fresh to start over")
    if cfg.groups > 1 and cfg.stages > 1:
        raise UserError("choose --groups (product quantization) or --stages (residual quantization), not both")
    if cfg.sq_temperature_decay < 0:
        raise UserError("--sq-temperature-decay must be >= 0")
    if min(cfg.groups, cfg.stages, cfg.codebook_size, cfg.epochs, cfg.batch_size, cfg.factorized_dim) < 1:
        raise UserError("--groups, --stages, --codebook-size, --epochs, --batch-size and --factorized-dim must be at "
                        "least 1")
    if cfg.stages > 1 and cfg.quantizer not in ("ema", "codebook"):
        raise UserError(f"--stages takes --quantizer ema or codebook, not {cfg.quantizer}")
    check_quantizer(cfg.quantizer, cfg.fsq_levels, (cfg.codebook_size,))
    if vectors.shape[1] % cfg.groups:
        raise UserError(f"--groups {cfg.groups} does not divide the vectors' size D = {vectors.shape[1]}")
    return dataclasses.replace(cfg, embed_dim=vectors.shape[1], input_sha256=sha256)


class EMAOnly:
    """Stands in for Optimization when the codebooks learn by EMA alone: nothing to step or save."""

    optimizer = None

    def state_dict(self) -> dict:
        return {"scheduler": {}}

    def load_state_dict(self, state: dict) -> None:
        pass


def step_loss(model, batch: torch.Tensor, quantizer: str) -> torch.Tensor:
    quantized, loss, _ = model(batch)
    return objective(quantizer, loss, quantized, batch)


def objective(quantizer: str, loss: torch.Tensor, quantized: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What the named quantizer minimises on fixed vectors x: its own loss, plus the reconstruction MSE for quantizers
    whose projections must learn to carry x, or for SQ-VAE's its Gaussian form (0.5 log MSE, against its latent loss
    in nats per dimension)."""
    if quantizer == "stochastic":
        return loss + gaussian_reconstruction(quantized, x)
    return loss + torch.nn.functional.mse_loss(quantized, x) if quantizer in PROJECTS else loss


def train_step(model, batch: torch.Tensor, optimization, progress, quantizer: str) -> None:
    """One step: the EMA update happens in the forward pass; the codebook loss needs an optimizer step.

    Nothing waits for the device: a non-finite loss is reported at the next `progress.read()`.
    """
    if optimization.optimizer is not None:
        return optimize(step_loss(model, batch, quantizer), model, optimization, progress)
    with torch.no_grad():
        loss = model(batch)[1]
    progress.pending.note_finite(torch.isfinite(loss), progress.step, loss, torch.zeros_like(loss))
    progress.step, progress.batch = progress.step + 1, progress.batch + 1
    progress.add(loss=loss)


def train_epoch(model, optimization, vectors: torch.Tensor, cfg: VectorsConfig, progress, stop) -> dict | None:
    """Train until the end of the current epoch (or a stop signal: then None); returns the mean loss."""
    model.train()
    order = torch.randperm(vectors.shape[0], generator=epoch_generator(cfg.seed, progress.epoch, vectors.device),
                           device=vectors.device)
    starts = range(progress.batch * cfg.batch_size, vectors.shape[0], cfg.batch_size)
    bar = tqdm(starts, initial=progress.batch, total=-(-vectors.shape[0] // cfg.batch_size), unit="batch",
               desc=f"epoch {progress.epoch + 1}/{cfg.epochs}", leave=False, disable=progress_disabled())
    for start in bar:
        train_step(model, vectors[order[start:start + cfg.batch_size]], optimization, progress, cfg.quantizer)
        if read_now(progress):
            bar.set_postfix(loss=f"{progress.epoch_means()['loss']:.4f}")
        if stop.should_stop(vectors.device, progress.step):
            return None
    return progress.epoch_means()


@torch.no_grad()
def encode(model, vectors: torch.Tensor) -> torch.Tensor:
    """Every vector's codes (N, C), in eval mode."""
    model.eval()
    return torch.cat([model(vectors[i:i + EVAL_BATCH])[2] for i in range(0, vectors.shape[0], EVAL_BATCH)])


@torch.no_grad()
def evaluate(model, vectors: torch.Tensor) -> dict:
    """Relative MSE of the coded vectors, and codes used and perplexity of each codebook."""
    codes = encode(model, vectors)
    error = (model.embed_code(codes) - vectors).pow(2).sum()
    spread = (vectors - vectors.mean(0)).pow(2).sum().clamp_min(1e-12)
    usage = model.usage(codes)
    return {"relative_mse": (error / spread).item(), "codes_used": [u["codes_used"] for u in usage],
            "perplexity": [round(u["perplexity"], 2) for u in usage]}


def write_codes(model, vectors: torch.Tensor, cfg: VectorsConfig, best: dict) -> None:
    """codes.npy and meta.json of the best epoch's quantizer."""
    out_dir = Path(cfg.out_dir)
    dtype = code_dtype(cfg.codebook_size)
    codes = encode(model, vectors).cpu().numpy().astype(dtype)
    save_array(out_dir / "codes.npy", codes)
    write_json(out_dir / "meta.json", {
        "input": str(cfg.input), "input_sha256": cfg.input_sha256, "count": codes.shape[0],
        "embed_dim": cfg.embed_dim, "kind": cfg.kind, "codes_per_vector": codes.shape[1],
        "codebook_size": cfg.codebook_size, "quantizer": cfg.quantizer, "dtype": np.dtype(dtype).name,
        **best, "checkpoint": "ckpt.pt"})


@main_entry
def main(argv=None):
    parser = build_parser(VectorsConfig, __doc__.split("\n")[0])
    parser.add_argument("--fresh", action="store_true", help="discard an earlier run in OUT_DIR and start over")
    args = parser.parse_args(argv)
    train(given_config_values(VectorsConfig, args), args.fresh)


def train(given: dict, fresh: bool) -> None:
    """Train (or resume) the quantizer in the run folder, then write the codes of its best epoch."""
    cfg, state = prepare_run(VectorsConfig, given, STAGE, fresh)
    if cfg is None:
        return
    with cpu_threads(cfg.threads):
        fit(cfg, state)


def fit(cfg: VectorsConfig, state) -> None:
    """Train from `state` (None: from the start) for the remaining epochs; write the codes, then ckpt.pt."""
    if not cfg.input:
        raise UserError("--input is required: an (N, D) float .npy of the vectors to code")
    array = load_vectors(cfg.input)
    cfg = check_config(cfg, array, sha256_file(cfg.input))
    out_dir, device = Path(cfg.out_dir), pick_device(cfg.device)
    configure_backend(device)
    seed_everything(cfg.seed)
    vectors = torch.from_numpy(array).float().to(device)
    model = build_model(cfg).to(device)
    total_steps = cfg.epochs * -(-vectors.shape[0] // cfg.batch_size)
    optimization = (EMAOnly() if cfg.quantizer in NO_OPTIMIZER
                    else Optimization.build(model, cfg.optimizer_settings(), total_steps, device))
    progress = restore(state, model, optimization, out_dir)
    write_config(out_dir, cfg)
    say(f"coding {vectors.shape[0]} vectors of D={cfg.embed_dim} with a {cfg.kind} {cfg.quantizer} quantizer "
        f"({model.num_codebooks} codebook(s) of K={cfg.codebook_size}), device {device}")
    with StopSignal() as stop:
        while progress.epoch < cfg.epochs:
            means = train_epoch(model, optimization, vectors, cfg, progress, stop)
            if means is None:
                save_state(out_dir, STAGE, cfg, model, optimization, progress)
                stop.exit(progress)
            metrics = evaluate(model, vectors)
            is_best = progress.record_epoch(metrics["relative_mse"], model, metrics)
            append_jsonl(out_dir / METRICS, {"epoch": progress.epoch, "step": progress.step,
                                             "train_loss": means["loss"], **metrics})
            save_state(out_dir, STAGE, cfg, model, optimization, progress)
            say(f"epoch {progress.epoch}/{cfg.epochs}: loss {means['loss']:.4f}  relative MSE "
                f"{metrics['relative_mse']:.4f}  codes used {metrics['codes_used']}{'  *best' if is_best else ''}")
    model.load_state_dict(progress.best_model)
    write_codes(model, vectors, cfg, {"best_epoch": progress.best_epoch, **progress.best_metrics})
    path = finish(out_dir, STAGE, cfg, progress)
    best = progress.best_metrics
    say(f"best epoch {progress.best_epoch}: relative MSE {best['relative_mse']:.4f}, codes used {best['codes_used']} "
        f"of {cfg.codebook_size}, perplexity {best['perplexity']} -> {out_dir}/codes.npy, meta.json, {path.name}")


if __name__ == "__main__":
    main()

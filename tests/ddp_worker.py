"""A few data-parallel stage-1 epochs through the real training loop; each rank saves its own state.

Launched by tests/test_distributed.py as
    torchrun --standalone --nproc_per_node=N tests/ddp_worker.py --out DIR [--batch-size B] [--images N] [--die-rank R]
        [--rank-generators] [--kill-after STEPS]
Like stage1_vqvae.train it writes DIR/state.pt after every epoch and resumes from it when it is there.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation import distributed  # noqa: E402
from foundation.files import load_checkpoint  # noqa: E402
from foundation.optimization import Optimization  # noqa: E402
from foundation.training import STATE, StopSignal, restore, save_state  # noqa: E402
from stage1_vqvae.checkpoint import STAGE  # noqa: E402
from stage1_vqvae.config import VQVAEConfig  # noqa: E402
from stage1_vqvae.data import make_shapes  # noqa: E402
from stage1_vqvae.model import VQVAE  # noqa: E402
from stage1_vqvae.train import train_epoch  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--quantizer", default="ema")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=512, help="training images (shapes)")
    parser.add_argument("--die-rank", type=int, default=None, help="this rank kills itself at its third step")
    parser.add_argument("--rank-generators", action="store_true",
                        help="after building the model, seed each rank's generator differently (as each GPU's differs)")
    parser.add_argument("--kill-after", type=int, default=None, help="every rank kills itself after this many steps")
    return parser.parse_args()


def kill_after(model, progress, steps: int) -> None:
    """SIGKILL this process once `steps` optimizer steps are done, before the next forward pass."""

    def hook(*_):  # returns None: a value would replace the forward's inputs
        if progress.step == steps:
            os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(hook)


def count_reseeds(quantizer) -> list:
    """A list that grows by the number of codes each dead-code re-seed moves (the initialisation not counted); it
    stays empty for a quantizer that never re-seeds (SQ-VAE's)."""
    if not hasattr(quantizer, "_set_codes"):
        return []
    moved, set_codes = [], quantizer._set_codes

    def counting(which, vectors):
        if bool(quantizer.initialized):
            moved.append(which.numel())
        set_codes(which, vectors)

    quantizer._set_codes = counting
    return moved


def main():
    args = parse_args()
    distributed.setup("cpu")
    device, out = torch.device("cpu"), Path(args.out)
    torch.manual_seed(0)
    cfg = VQVAEConfig(codebook_size=32, embed_dim=8, hidden_channels=16, batch_size=args.batch_size, epochs=args.epochs, lr=2e-4,
                      lr_schedule="constant", warmup_fraction=0.0,
                      quantizer=args.quantizer, dead_code_threshold=40.0, precision="fp32", device="cpu",
                      recon_loss="gaussian" if args.quantizer == "stochastic" else "l1")
    images = make_shapes(args.images, seed=0).images
    model = VQVAE(cfg)
    total_steps = cfg.epochs * distributed.batch_count(len(images), cfg.batch_size)
    optimization = Optimization.build(model, cfg.optimizer_settings(), total_steps, device)
    if args.rank_generators:
        torch.manual_seed(1000 + distributed.rank())
    state = load_checkpoint(out / STATE, STAGE) if (out / STATE).exists() else None
    progress = restore(state, model, optimization, out)
    parallel = distributed.wrap(model, device)
    if args.die_rank == distributed.rank():
        kill_after(model, progress, 2)
    if args.kill_after is not None:
        kill_after(model, progress, args.kill_after)
    reseeds = count_reseeds(model.quantizer)
    with StopSignal() as stop:
        while progress.epoch < cfg.epochs:
            train_epoch(parallel, optimization, images, cfg, device, progress, stop)
            progress.record_epoch(0.0, model, {})
            save_state(out, STAGE, cfg, model, optimization, progress)
    state = {"model": model.state_dict(), "optimizer": optimization.optimizer.state_dict(), "step": progress.step,
             "rng": torch.get_rng_state(), "reseeded_codes": sum(reseeds)}
    torch.save(state, out / f"rank{distributed.rank()}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main()

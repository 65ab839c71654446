"""A few data-parallel stage-1 epochs through the real training loop; each rank saves its own state.

Launched by tests/test_distributed.py as
    torchrun --standalone --nproc_per_node=N tests/ddp_worker.py --out DIR [--batch-size B] [--die-rank R]
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1_vqvae.config import VQVAEConfig  # noqa: E402
from stage1_vqvae.data import make_shapes  # noqa: E402
from stage1_vqvae.model import VQVAE  # noqa: E402
from stage1_vqvae.train import train_epoch  # noqa: E402
from tools.common import distributed  # noqa: E402
from tools.common.optimization import Optimization  # noqa: E402
from tools.common.training import Progress, StopSignal  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--quantizer", default="ema")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--die-rank", type=int, default=None, help="this rank kills itself at its third step")
    args = parser.parse_args()
    distributed.setup("cpu")
    device = torch.device("cpu")
    torch.manual_seed(0)
    # constant lr 2e-4: the trajectory on which 1-vs-2-process agreement was calibrated (< 1e-5, no argmin near-ties)
    cfg = VQVAEConfig(codebook_size=32, embed_dim=8, hidden_channels=16, batch_size=args.batch_size, epochs=args.epochs, lr=2e-4,
                      lr_schedule="constant", warmup_fraction=0.0,
                      quantizer=args.quantizer, dead_code_threshold=40.0, precision="fp32", device="cpu")
    images = make_shapes(512, seed=0).images
    model = VQVAE(cfg)
    optimization = Optimization.build(model, cfg, cfg.epochs * distributed.batch_count(len(images), cfg.batch_size), device)
    parallel = distributed.wrap(model, device)
    progress = Progress()
    if args.die_rank == distributed.rank():
        steps = []
        model.register_forward_pre_hook(lambda *_: steps.append(1) or (len(steps) == 3 and os.kill(os.getpid(), signal.SIGKILL)))
    with StopSignal() as stop:
        while progress.epoch < cfg.epochs:
            train_epoch(parallel, optimization, images, cfg, device, progress, stop)
            progress.record_epoch(0.0, model, {})
    state = {"model": model.state_dict(), "optimizer": optimization.optimizer.state_dict(), "step": progress.step,
             "reseeded": bool((model.quantizer.usage > 0).all())}
    torch.save(state, Path(args.out) / f"rank{distributed.rank()}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main()

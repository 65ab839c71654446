"""Compare the library's quantizers on the same real encoder outputs: how well each codes them, how many codes it uses.

    python -m tools.compare_quantizers --vqvae runs/cifar10-jpeg/vqvae/ckpt.pt --out quantizers.json

A trained stage 1's encoder turns the training images of its dataset into vectors z_e (one per code position,
D = embed_dim) and the test images into held-out ones. Each quantizer (`--quantizer` choices of stage 1, the
codebook size of the checkpoint) is fitted to the training vectors alone, as `stage1_vqvae.vectors` fits one:
its EMA statistics or codebook loss, and for quantizers that project (factorized, FSQ) the reconstruction MSE too,
with Adam; SQ-VAE's (stochastic) its latent loss and 0.5 log MSE. The table gives, on the held-out vectors, the relative squared error sum|q - z|^2 / sum|z - mean z|^2,
the codes used and their perplexity. On fixed vectors the rotation trick cannot differ from the EMA quantizer it
builds on (it changes only the gradient that reaches an encoder); its effect shows in a VQ-VAE's training.
With `pip install vector-quantize-pytorch` (not a dependency), that package's versions of the same ideas are
fitted the same way, as rows of their own; without it one line says they were skipped.
"""

import argparse
import dataclasses
import time

import torch

from foundation.cli import main_entry
from foundation.files import write_json
from foundation.runtime import cpu_threads, pick_device, seed_everything
from stage1_vqvae.checkpoint import load_vqvae
from stage1_vqvae.data import load_splits, to_model_range
from stage1_vqvae.modern_quantizers import named_quantizer
from stage1_vqvae.quantizer import code_usage
from stage1_vqvae.vectors import objective

OURS = ("ema", "codebook", "rotation", "factorized", "fsq", "stochastic")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vqvae", required=True, help="a one-level stage-1 checkpoint whose encoder gives the vectors")
    parser.add_argument("--data-dir", default=None, help="default: the checkpoint's")
    parser.add_argument("--train-vectors", type=int, default=200_000, help="training vectors used (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over them (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8192, help="vectors per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--fsq-levels", default=None, help="FSQ's levels, their product the codebook size (default: "
                                                           "the checkpoint's --fsq-levels, 8,8,8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads, 0: torch's default")
    parser.add_argument("--out", default="quantizers.json", help="where the table goes (default: %(default)s)")
    return parser.parse_args(argv)


@torch.no_grad()
def encoder_vectors(vqvae, images_u8: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    """Images (N, 3, S, S) uint8 -> the encoder's outputs as (N * H * W, D) float vectors on `device`."""
    parts = [vqvae.encoder(to_model_range(images_u8[s:s + batch].to(device))).float() for s in range(0, len(images_u8), batch)]
    return torch.cat(parts).permute(0, 2, 3, 1).flatten(0, 2)


def ours(name: str, cfg, device):
    """The library's quantizer `name` with the checkpoint's codebook size, on channels-last vectors."""
    pairing = {"recon_loss": "gaussian"} if name == "stochastic" else {}  # the config refuses SQ-VAE without it
    kind, options = named_quantizer(dataclasses.replace(cfg, quantizer=name, **pairing))
    return kind(cfg.codebook_size, cfg.embed_dim, dim=-1, **options).to(device)


def theirs(name: str, cfg, device):
    """vector-quantize-pytorch's version of the same idea, wrapped to (quantized, loss, indices); None without it."""
    try:
        from vector_quantize_pytorch import FSQ, VectorQuantize
    except ImportError:
        return None
    common = dict(dim=cfg.embed_dim, codebook_size=cfg.codebook_size, decay=cfg.ema_decay, commitment_weight=cfg.beta,
                  kmeans_init=True, threshold_ema_dead_code=cfg.dead_code_threshold)
    if name == "fsq":
        fsq = FSQ(levels=[int(v) for v in cfg.fsq_levels.split(",")], dim=cfg.embed_dim).to(device)
        return _Wrapped(fsq, lambda z: (*fsq(z[None]), None))
    options = {"ema": {}, "rotation": {"rotation_trick": True},
               "factorized": {"use_cosine_sim": True, "codebook_dim": cfg.factorized_dim}}[name]
    vq = VectorQuantize(**common, **options).to(device)
    return _Wrapped(vq, lambda z: vq(z[None]))


class _Wrapped(torch.nn.Module):
    """A third-party quantizer called on (N, D) vectors, returning (quantized (N, D), loss, indices (N,))."""

    def __init__(self, module, call):
        super().__init__()
        self.module, self.call = module, call

    def forward(self, z):
        quantized, indices, loss = self.call(z)
        loss = quantized.new_zeros(()) if loss is None else loss.sum()
        return quantized[0], loss, indices[0]


def fit(quantizer, vectors: torch.Tensor, args, name: str) -> float:
    """Fit `quantizer` (of the kind `name`) to `vectors` as the vectors command does; returns the seconds it took."""
    parameters = [p for p in quantizer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=args.lr) if parameters else None
    generator, start = torch.Generator().manual_seed(0), time.perf_counter()
    quantizer.train()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(vectors), generator=generator).split(args.batch_size):
            z = vectors[batch.to(vectors.device)]
            quantized, loss, _ = quantizer(z)
            if optimizer is not None:
                loss = objective(name, loss, quantized, z)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def held_out_figures(quantizer, vectors: torch.Tensor, codebook_size: int) -> dict:
    """Relative squared error, codes used and perplexity of `quantizer` on `vectors`, in eval mode."""
    quantizer.eval()
    quantized, _, indices = quantizer(vectors)
    error = (quantized - vectors).pow(2).sum() / (vectors - vectors.mean(0)).pow(2).sum()
    return {"relative_error": error.item(), **code_usage(indices, codebook_size)}


def compare(args) -> list:
    device = pick_device(args.device)
    vqvae = load_vqvae(args.vqvae, device).eval()
    cfg = dataclasses.replace(vqvae.cfg, fsq_levels=args.fsq_levels or vqvae.cfg.fsq_levels)
    splits = load_splits(cfg.dataset, args.data_dir or cfg.data_dir, ("train", "test"), image_size=cfg.image_size)
    train = encoder_vectors(vqvae, splits["train"].images, device)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.train_vectors]]
    test = encoder_vectors(vqvae, splits["test"].images, device)
    print(f"{len(train)} training and {len(test)} held-out vectors of {cfg.embed_dim} from {args.vqvae}")
    rows = []
    for name in OURS + ("ema", "rotation", "factorized", "fsq"):
        library = "this project" if len(rows) < len(OURS) else "vector-quantize-pytorch"
        seed_everything(0)
        quantizer = ours(name, cfg, device) if library == "this project" else theirs(name, cfg, device)
        if quantizer is None:
            print("vector-quantize-pytorch is not installed: its rows are skipped")
            break
        seconds = fit(quantizer, train, args, name)
        row = {"quantizer": name, "library": library, **held_out_figures(quantizer, test, cfg.codebook_size),
               "fit_seconds": seconds}
        rows.append(row)
        print(f"{library:24s} {name:10s} relative error {row['relative_error']:.4f}  codes used {row['codes_used']:4d}  "
              f"perplexity {row['perplexity']:6.1f}  ({seconds:.0f} s)", flush=True)
    return rows


@main_entry
def main(argv=None):
    args = parse_args(argv)
    with cpu_threads(args.threads):
        rows = compare(args)
    write_json(args.out, {"vqvae": args.vqvae, "epochs": args.epochs, "train_vectors": args.train_vectors, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

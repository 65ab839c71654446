"""How good is a finished run: reconstructions, bits per code, full-model bits per dimension, FID/KID, pictures.

    python -m tools.evaluate --run-dir runs/demo          # or: make evaluate RUN_DIR=runs/demo; see --help

Reads RUN_DIR/vqvae/ckpt.pt, RUN_DIR/codes/ and RUN_DIR/prior/ckpt.pt, and the test split of the
dataset the codes came from. Writes to OUT_DIR (default RUN_DIR/eval): eval.json, recon.png (test
images of every class above their reconstructions), samples.png and, for a class-conditional prior,
classes.png (one row per class, labelled with its name); and prints a table.

Bits per dimension is the VQ-VAE paper's measure (arXiv:1711.00937): (-log2 p(x | z) - log2 p(z)) / (3 H W),
with z the test image's code map (codes/test*.npy), p(x | z) the decoder's likelihood of the 8-bit image
and p(z) the prior's, an upper bound on -log2 p(x) per sub-pixel. Beside it, the same bound with a
uniform prior (log2 K bits per code) shows what the prior gains. Only a categorical decoder
(`--recon-loss categorical`) gives p(x | z); otherwise the figures are null, with the reason in
eval.json's "unavailable". FID and KID compare --n-samples samples with the test images through the
optional Inception features (`pip install -e '.[metrics]'`); without them, one line says so and
everything else is written. A small classifier trained on the real training images (cached in
OUT_DIR/classifier.pt; one stage 1 or choose_guidance cached in the run serves when trained on the same images) judges
the reconstructions and --judge-samples samples: GAN-test and GAN-train (`tools.common.sample_judge`).
"""

import math
from pathlib import Path

import torch

from foundation.cli import UserError, main_entry
from foundation.files import remove_stale_temporaries, write_json
from foundation.images import labelled_rows, save_comparison, save_grid, save_png
from foundation.levels import take, to_device
from foundation.runtime import cpu_threads, pick_device
from stage1_vqvae.classifier import accuracy, predict
from stage1_vqvae.data import pick_per_class, to_model_range
from stage1_vqvae.likelihood import models_likelihood
from stage1_vqvae.metrics import eval_batch_size, evaluate
from stage2_prior.data import level_specs, load_codes
from stage2_prior.metrics import split_bits
from tools.common.drawing import add_guidance_flag, choose_labels, decode_uint8, draw_images
from tools.common.finished_run import data_source, load_finished_run, load_images, load_test_images, run_parser
from tools.common.sample_judge import judge_samples, run_classifier
from tools.common.sample_metrics import Unavailable, fid_and_kid, inception_features

PICTURE_SAMPLES = 64
RECON_IMAGES = 20  # about this many test images in recon.png, spread over the classes
PER_CLASS_ROW = 10  # samples per row of classes.png
FEATURE_BATCH = 100


def parse_args(argv):
    parser = run_parser(__doc__.split("\n")[0], "eval")
    parser.add_argument("--n-samples", type=int, default=10000,
                        help="samples compared with the test images by FID and KID; 0 skips them (default: "
                             "%(default)s; on a CPU, 1000 already takes minutes)")
    parser.add_argument("--inception-weights", default=None,
                        help="the Inception weights file for FID/KID (default: torch's hub cache, downloaded when missing)")
    parser.add_argument("--judge-samples", type=int, default=1000,
                        help="samples a small classifier of the real training images judges (GAN-test) and another is "
                             "trained on (GAN-train); 0 skips every classifier figure (default: %(default)s: a few CPU "
                             "minutes, plus a few more the first time, to train the classifier cached in OUT_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="code maps sampled at once (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                        help="fp32 keeps the likelihoods exact (default: %(default)s)")
    add_guidance_flag(parser)
    return parser.parse_args(argv)


@torch.no_grad()
def decoder_bits_per_image(vqvae, images: torch.Tensor, codes, device) -> float:
    """Mean -log2 p(x | z) over the test images (uint8) given their code maps, in bits per image."""
    batch, nats = eval_batch_size(vqvae.cfg), 0.0
    for start in range(0, images.shape[0], batch):
        x = to_model_range(images[start : start + batch].to(device))
        z = to_device(take(codes, slice(start, start + batch)), device)
        nats -= vqvae.log_likelihood(x, z).double().sum().item()
    return nats / images.shape[0] / math.log(2)


def uniform_bits(meta: dict) -> tuple:
    """(bits per image, bits per code) of any code map under a uniform prior: log2 K per code of each level."""
    specs = level_specs(meta)
    per_image = sum(math.prod(spec["grid_shape"]) * math.log2(spec["codebook_size"]) for spec in specs)
    return per_image, per_image / sum(math.prod(spec["grid_shape"]) for spec in specs)


def bits_per_dim(run, images: torch.Tensor, codes, prior_bits_per_image: float, device) -> tuple:
    """({decoder_bits_per_dim, bits_per_dim, bits_per_dim_uniform_prior}, {key: why it is null})."""
    keys = ("decoder_bits_per_dim", "bits_per_dim", "bits_per_dim_uniform_prior")
    kind = run.vqvae.cfg.recon_loss
    if not models_likelihood(kind):
        why = (f"the stage-1 decoder was trained with --recon-loss {kind}, which defines no likelihood p(x | z); "
               "train stage 1 with --recon-loss categorical")
        return dict.fromkeys(keys), dict.fromkeys(keys, why)
    dims = images[0].numel()  # 3 * H * W sub-pixels
    decoder = decoder_bits_per_image(run.vqvae, images, codes, device)
    figures = {"decoder_bits_per_dim": decoder / dims, "bits_per_dim": (decoder + prior_bits_per_image) / dims,
               "bits_per_dim_uniform_prior": (decoder + uniform_bits(run.meta)[0]) / dims}
    return figures, {}


def save_pictures(run, test, args, out_dir: Path, device, sample_images: torch.Tensor) -> list:
    """recon.png, samples.png and, for a class-conditional prior, classes.png; returns their paths."""
    classes = max(1, int(test.labels.max()) + 1)
    chosen = pick_per_class(test.labels, max(1, RECON_IMAGES // classes))
    x = to_model_range(test.images[chosen].to(device))
    save_comparison(x, run.vqvae.decode_indices(run.vqvae.encode(x)), out_dir / "recon.png", per_row=min(classes, 10))
    save_grid(to_model_range(sample_images[:PICTURE_SAMPLES]), out_dir / "samples.png")
    paths = [out_dir / "recon.png", out_dir / "samples.png"]
    if run.prior.cfg.class_conditional:
        save_png(class_rows(run, args, device), out_dir / "classes.png")
        paths.append(out_dir / "classes.png")
    return paths


def class_rows(run, args, device):
    """One labelled row of samples per class, as a picture."""
    names = run.class_names()
    labels = torch.arange(len(names), device=device).repeat_interleave(PER_CLASS_ROW)
    _, images = draw_images(run, labels.shape[0], labels, args.seed, args.batch_size, device, args.guidance)
    rows = [to_model_range(images[c * PER_CLASS_ROW : (c + 1) * PER_CLASS_ROW]) for c in range(len(names))]
    return labelled_rows(rows, names)


def inception_or_reason(args, device) -> tuple:
    """(the Inception feature extractor, or None and the reason it is unavailable, said in one printed line)."""
    if args.n_samples < 1:
        return None, "--n-samples 0"
    try:
        return inception_features(device, args.inception_weights), ""
    except Unavailable as why:
        print(f"FID/KID skipped: {why}")
        return None, str(why)


def in_batches(images: torch.Tensor, size: int = FEATURE_BATCH):
    return (images[start : start + size] for start in range(0, images.shape[0], size))


def sample_figures(run, test_images: torch.Tensor, args, device) -> tuple:
    """({fid, kid, kid_std, n_samples}, {key: why it is null}, the sample images (uint8))."""
    extract, why = inception_or_reason(args, device)
    n = args.n_samples if extract else PICTURE_SAMPLES
    _, images = draw_images(run, n, choose_labels(run.prior, None, n, device), args.seed, args.batch_size, device,
                     args.guidance)
    if extract is None:
        return {"fid": None, "kid": None, "n_samples": 0}, {"fid": why, "kid": why}, images
    return {**fid_and_kid(extract, in_batches(test_images), in_batches(images)), "n_samples": n}, {}, images


JUDGE_KEYS = ("classifier_test_accuracy", "recon_classifier_accuracy", "gan_test_accuracy", "gan_train_accuracy",
              "sample_mean_confidence", "sample_class_entropy_bits")


def judge_figures(run, test, codes, args, device, out_dir: Path) -> tuple:
    """(the classifier's figures on the test images, their reconstructions and samples, {key: why it is null})."""
    n = args.judge_samples
    if n == 0:
        skipped = {**dict.fromkeys(JUDGE_KEYS), "judge_samples": 0, "guidance": None}
        return skipped, dict.fromkeys(JUDGE_KEYS, "--judge-samples 0")
    train = load_images(run, "train", args.dataset, args.data_dir)
    judge, classes = run_classifier(run, train, out_dir, *data_source(run, args.dataset, args.data_dir), device)
    labels = choose_labels(run.prior, None, n, device)
    _, samples = draw_images(run, n, labels, args.seed, args.batch_size, device, args.guidance)
    figures, unavailable = judge_samples(judge, samples, labels, test.images, test.labels, classes, device)
    recon = decode_uint8(run.vqvae, to_device(codes, device), device)
    guidance = None if labels is None else run.prior.guidance_scale(args.guidance)
    return {**figures, "classifier_test_accuracy": accuracy(predict(judge, test.images, device), test.labels),
            "recon_classifier_accuracy": accuracy(predict(judge, recon, device), test.labels),
            "judge_samples": n, "guidance": guidance}, unavailable


def test_codes(run, test_images: torch.Tensor) -> tuple:
    """(codes, labels) of the test split from RUN_DIR/codes, checked to be as many as the test images."""
    codes, labels = load_codes(run.codes_dir, "test", run.meta)
    if labels.shape[0] != test_images.shape[0]:
        raise UserError(f"{run.codes_dir} holds {labels.shape[0]} test maps but the test split has "
                        f"{test_images.shape[0]} images: run `make encode-dataset RUN_DIR={run.run_dir}` again")
    return codes, labels


def run_evaluation(args) -> tuple:
    """(every figure, as written to eval.json, and the paths written)."""
    device = pick_device(args.device)
    run = load_finished_run(args.run_dir, device)
    out_dir = Path(args.out_dir or run.run_dir / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    test = load_test_images(run, args.dataset, args.data_dir)
    codes, labels = test_codes(run, test.images)
    results = {"run_dir": str(run.run_dir), "test_images": test.images.shape[0], "recon_loss": run.vqvae.cfg.recon_loss,
               **evaluate(run.vqvae, test.images, device, args.precision),
               **split_bits(run.prior, to_device(codes, device), labels.to(device), device, args.precision),
               "uniform_bits_per_code": uniform_bits(run.meta)[1]}
    figures, unavailable = bits_per_dim(run, test.images, codes, results["bits_per_image"], device)
    samples, samples_unavailable, images = sample_figures(run, test.images, args, device)
    judged, judge_unavailable = judge_figures(run, test, codes, args, device, out_dir)
    results.update(**figures, **samples, **judged, unavailable={**unavailable, **samples_unavailable, **judge_unavailable})
    pictures = save_pictures(run, test, args, out_dir, device, images)
    write_json(out_dir / "eval.json", results)
    return results, [out_dir / "eval.json", *pictures]


def per_level(r: dict, key: str, fmt: str) -> str:
    """'500' for one level, 'top 240  bottom 500' for two."""
    suffixes = ["_top", "_bottom"] if f"{key}_top" in r else [""]
    return "  ".join(f"{suffix[1:] + ' ' if suffix else ''}{r[key + suffix]:{fmt}}" for suffix in suffixes)


def or_reason(r: dict, key: str, text: str) -> str:
    return f"n/a: {r['unavailable'][key]}" if r[key] is None else text


def judge_rows(r: dict) -> list:
    """The classifier's rows of the table."""
    if r["classifier_test_accuracy"] is None:
        return [("classifier", f"n/a: {r['unavailable']['classifier_test_accuracy']}")]
    gan = (f"{r['gan_test_accuracy']:.3f}, {r['gan_train_accuracy']:.3f}  ({r['judge_samples']} samples, "
           f"guidance {r['guidance']})" if r["gan_test_accuracy"] is not None else "")
    return [("classifier accuracy", f"test {r['classifier_test_accuracy']:.3f}; "
                                    f"reconstructions {r['recon_classifier_accuracy']:.3f}"),
            ("GAN-test, GAN-train", or_reason(r, "gan_test_accuracy", gan)),
            ("classifier on samples", f"mean confidence {r['sample_mean_confidence']:.3f}; "
                                      f"class entropy {r['sample_class_entropy_bits']:.2f} bits")]


def table(r: dict) -> str:
    """The figures as a two-column table."""
    levels = f" (top {r['top_bits_per_code']:.3f}, bottom {r['bottom_bits_per_code']:.3f})" if "top_bits_per_code" in r else ""
    bits_per_dim_text = (f"{r['bits_per_dim']:.3f}  (decoder {r['decoder_bits_per_dim']:.3f}; with a uniform prior "
                         f"{r['bits_per_dim_uniform_prior']:.3f})" if r["bits_per_dim"] is not None else "")
    rows = [
        ("stage 1, test MSE [0, 1]", f"{r['mse']:.5f}  (PSNR {r['psnr']:.2f} dB; mean per image {r['psnr_per_image']:.2f} dB)"),
        ("codes used", per_level(r, "codes_used", "d")),
        ("perplexity", per_level(r, "perplexity", ".1f")),
        ("stage 2, test bits per code", f"{r['bits_per_code']:.3f}{levels}; uniform prior {r['uniform_bits_per_code']:.3f}"),
        ("bits per image", f"{r['bits_per_image']:.1f}"),
        ("bits per dimension", or_reason(r, "bits_per_dim", bits_per_dim_text)),
        ("FID", or_reason(r, "fid", f"{r['fid']:.2f}  ({r['n_samples']} samples)" if r["fid"] is not None else "")),
        ("KID", or_reason(r, "kid", f"{r['kid']:.4f} +- {r.get('kid_std', 0):.4f}" if r["kid"] is not None else "")),
        *judge_rows(r),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@main_entry
def main(argv=None):
    args = parse_args(argv)
    if args.n_samples < 0 or args.n_samples == 1:
        raise UserError("--n-samples must be 0 (no FID/KID) or at least 2")
    if args.judge_samples < 0 or args.judge_samples == 1:
        raise UserError("--judge-samples must be 0 (no classifier figures) or at least 2")
    with cpu_threads(args.threads):
        results, paths = run_evaluation(args)
    print(f"{results['run_dir']} on {results['test_images']} test images:")
    print(table(results))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

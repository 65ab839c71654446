"""Choose a class-conditional prior's default guidance scale on the validation images, and store it in the prior.

    python -m tools.choose_guidance --run-dir runs/demo     # or: make choose-guidance RUN_DIR=runs/demo

For each scale of --scales, draws --judge-samples class-conditional samples (every class equally often, the
same seed, offset by CHOOSING_STREAM so that `make evaluate` never reports on them) and judges them as `make
evaluate` does (`tools.common.sample_judge`), with the validation images in place of the test images:
GAN-test (the run's classifier, trained on its training images, puts a sample in the class it was drawn for)
and GAN-train (a classifier trained on the samples alone, tested on the validation images). Guidance raises GAN-test; past some scale the samples lose variety, which GAN-train sees. The scale
with the highest GAN-test + GAN-train wins (the smaller on a tie) and becomes the `guidance` of
RUN_DIR/prior/ckpt.pt's config, so sampling, evaluation and completion use it without --guidance
(--dry-run leaves the prior as it is). OUT_DIR (default RUN_DIR/guidance) gets guidance.json, every figure,
and guidance.png, one row of samples per scale, one column per class (in class order).
"""

from pathlib import Path

from foundation.cli import UserError, main_entry
from foundation.files import remove_stale_temporaries, write_json
from foundation.images import labelled_rows, save_png
from foundation.runtime import cpu_threads, pick_device
from stage1_vqvae.data import pick_per_class, to_model_range
from stage2_prior.checkpoint import store_guidance
from tools.common.drawing import choose_labels, draw_images
from tools.common.finished_run import data_source, load_finished_run, load_image_splits, run_parser
from tools.common.sample_judge import judge_samples, run_classifier

RULE = "the highest GAN-test + GAN-train on the validation images (the smaller scale on a tie)"
# added to --seed: `make evaluate` and `make sample` draw from --seed itself, so the samples that choose the scale are
# never the samples that report it
CHOOSING_STREAM = 1_000_003


def parse_args(argv):
    parser = run_parser(__doc__.split("\n")[0], "guidance")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0], metavar="S",
                        help="guidance scales to compare (default: 1 2 3 4 5)")
    parser.add_argument("--judge-samples", type=int, default=1000,
                        help="samples drawn and judged at each scale (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples, drawn from seed + %d: never those make evaluate draws with the same "
                             "seed (default: %%(default)s)" % CHOOSING_STREAM)
    parser.add_argument("--batch-size", type=int, default=256, help="code maps sampled at once (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="measure and report; leave the prior's default as it is")
    return parser.parse_args(argv)


def chosen_scale(figures: list) -> float:
    """The scale of the row (dicts with scale, gan_test_accuracy, gan_train_accuracy) that wins by RULE."""
    best = max(figures, key=lambda row: (row["gan_test_accuracy"] + row["gan_train_accuracy"], -row["scale"]))
    return best["scale"]


def measure_scales(run, args, device) -> tuple:
    """([{scale, gan_test_accuracy, gan_train_accuracy, ...}], validation images, [one sample per class per scale])."""
    images = load_image_splits(run, ("train", "val"), args.dataset, args.data_dir)
    judge, classes = run_classifier(run, images["train"], args.out_dir, *data_source(run, args.dataset, args.data_dir),
                                    device)
    val = images["val"]
    labels = choose_labels(run.prior, None, args.judge_samples, device)
    one_per_class = pick_per_class(labels.cpu(), 1)
    figures, rows = [], []
    for scale in args.scales:
        _, samples = draw_images(run, args.judge_samples, labels, args.seed + CHOOSING_STREAM, args.batch_size, device,
                                 scale)
        judged, _ = judge_samples(judge, samples, labels, val.images, val.labels, classes, device)
        figures.append({"scale": scale, **judged})
        rows.append(to_model_range(samples[one_per_class]))
        print(f"guidance {scale:g}: GAN-test {judged['gan_test_accuracy']:.3f}, "
              f"GAN-train {judged['gan_train_accuracy']:.3f} (on {val.images.shape[0]} validation images)")
    return figures, val, rows


def check_arguments(run, args) -> None:
    """UserError for a prior that cannot be guided or for flags that cannot be measured."""
    try:
        run.prior.guidance_scale(2.0)
    except ValueError as err:
        raise UserError(f"no guidance scale to choose: {err}") from None
    if args.judge_samples < run.prior.cfg.num_classes:
        raise UserError(f"--judge-samples must be at least the number of classes ({run.prior.cfg.num_classes})")
    if any(scale < 0 for scale in args.scales):
        raise UserError("--scales must be 0 or more (0: unconditional, 1: plain conditional)")


def choose(args) -> dict:
    """Measure every scale, store the winner in the prior (unless --dry-run); returns what guidance.json holds."""
    device = pick_device(args.device)
    run = load_finished_run(args.run_dir, device)
    check_arguments(run, args)
    args.out_dir = args.out_dir or str(run.run_dir / "guidance")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    figures, val, rows = measure_scales(run, args, device)
    scale = chosen_scale(figures)
    result = {"run_dir": str(run.run_dir), "rule": RULE, "chosen": scale, "stored": not args.dry_run,
              "previous_default": run.prior.guidance_scale(), "judge_samples": args.judge_samples, "seed": args.seed,
              "validation_images": val.images.shape[0], "validation_note": val.note, "figures": figures}
    save_png(labelled_rows(rows, [f"s = {row['scale']:g}" for row in figures]), out_dir / "guidance.png")
    if not args.dry_run:  # before guidance.json, so that make sees the choice newer than the prior it was made for
        store_guidance(run.run_dir / "prior" / "ckpt.pt", scale)
    write_json(out_dir / "guidance.json", result)
    return result


@main_entry
def main(argv=None):
    args = parse_args(argv)
    if args.judge_samples < 2:
        raise UserError("--judge-samples must be at least 2")
    with cpu_threads(args.threads):
        result = choose(args)
    where = "stored in the prior" if result["stored"] else "not stored (--dry-run)"
    print(f"chosen guidance {result['chosen']:g} by {RULE}; {where} (was {result['previous_default']:g})")
    print(f"wrote {args.out_dir}/guidance.json, {args.out_dir}/guidance.png")


if __name__ == "__main__":
    main()

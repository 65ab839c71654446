"""Judge samples by their class: the measures of Shmelkov et al., "How good is my GAN?" (ECCV 2018).

The judge is the run's small classifier (`stage1_vqvae.classifier`), trained on its real training images
(`run_classifier`: trained once, cached in the run folder).
- **GAN-test**: its accuracy on class-conditional samples (each against the label it was drawn with), beside its
  accuracy on the real test images (the ceiling). Low: the samples do not look like their class.
- **GAN-train**: the same architecture trained on samples alone, tested on the real test images. Low while
  GAN-test is high: the samples are recognisable but lack the variety of the real images.
- For any prior: the classifier's mean confidence (max softmax) on samples, and the entropy of its predicted-class
  histogram in bits (log2 of the class count when every class is predicted equally often).
"""

from pathlib import Path

import torch
from torch import nn

from foundation.runtime import cpu_threads
from stage1_vqvae import classifier
from stage1_vqvae.classifier import accuracy, cached_classifier, classifier_source, predict

# the classifiers train on every core whatever a command's --threads says (measured: a 45,000-image classifier on
# one thread of the 2-core CPU took over 15 minutes); --threads is for sampling, many small steps
TRAINING_THREADS = torch.get_num_threads()
# the run folders where stage 1 (adversarial runs), evaluate and choose_guidance cache the run's classifier
CACHES = ("vqvae", "eval", "guidance")

NOT_CONDITIONAL = "the prior is not class-conditional: its samples have no label to check (see sample_mean_confidence)"


def mean_confidence(logits: torch.Tensor) -> float:
    """Mean over the rows of the largest softmax probability."""
    return logits.double().softmax(dim=1).max(dim=1).values.mean().item()


def class_entropy_bits(logits: torch.Tensor) -> float:
    """Entropy in bits of the histogram of predicted classes (argmax of each row)."""
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log2()).sum().item()

def run_classifier(run, train, out_dir, dataset: str, data_dir: str, device) -> tuple:
    """(the small CNN of the run's training images `train`, the number of classes): the one cached in
    OUT_DIR/classifier.pt or in another of the run's CACHES when trained on the same images, else trained now."""
    classes = max(run.meta["num_classes"], int(train.labels.max()) + 1)
    path = Path(out_dir) / "classifier.pt"
    elsewhere = tuple(place for place in (run.run_dir / folder / "classifier.pt" for folder in CACHES) if place != path)
    with cpu_threads(TRAINING_THREADS):
        judge = cached_classifier(path, train.images, train.labels, classes, device, also_at=elsewhere,
                                  **classifier_source(dataset, data_dir))
    return judge, classes


def judge_samples(judge: nn.Module, samples: torch.Tensor, labels: torch.Tensor | None, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, device) -> tuple:
    """({gan_test_accuracy, gan_train_accuracy, sample_mean_confidence, sample_class_entropy_bits}, {key: why null}).

    `samples` are uint8 images drawn with `labels` (None for an unconditional prior: no GAN-test, no GAN-train).
    """
    logits = predict(judge, samples, device)
    figures = {"sample_mean_confidence": mean_confidence(logits), "sample_class_entropy_bits": class_entropy_bits(logits)}
    if labels is None:
        return {**figures, "gan_test_accuracy": None, "gan_train_accuracy": None}, dict.fromkeys(
            ("gan_test_accuracy", "gan_train_accuracy"), NOT_CONDITIONAL)
    labels = labels.cpu()
    with cpu_threads(TRAINING_THREADS):
        trained, _ = classifier.train_classifier(samples, labels, num_classes, device, desc="GAN-train classifier")
    figures["gan_test_accuracy"] = accuracy(logits, labels)
    figures["gan_train_accuracy"] = accuracy(predict(trained, test_images, device), test_labels)
    return figures, {}

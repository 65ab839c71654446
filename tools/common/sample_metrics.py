"""FID and KID between two sets of images, from the standard Inception features (an optional extra).

The features are torch-fidelity's port of the TensorFlow Inception graph that FID is defined with (the
2048 pool features): `pip install -e '.[metrics]'`. Its weights (about 100 MB) are downloaded once into
torch's hub cache (`~/.cache/torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`); offline,
copy that file there or pass its path. When the package or the weights are missing, `inception_features`
raises `Unavailable` with a one-line reason, and the caller goes on without sample metrics.

The distances are computed here from the features, so any feature extractor can stand in (the tests
use a small one): FID is the Fréchet distance between Gaussians fitted to the two feature sets, KID
the unbiased squared MMD with the cubic polynomial kernel, averaged over random subsets (both as in
torch-fidelity, whose defaults are 100 subsets of 1,000).
"""

import contextlib
import io

import torch

INSTALL = "pip install -e '.[metrics]'"
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class Unavailable(Exception):
    """Sample metrics cannot be computed here; the message says why in one line."""


def inception_features(device, weights_path=None):
    """A function uint8 images (B, 3, H, W) -> (B, 2048) Inception features, or Unavailable saying why not."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise Unavailable(f"torch-fidelity is not installed ({INSTALL})") from None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the download's progress lines
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=weights_path)
    except Exception as err:  # offline: URLError (an OSError); a bad weights file: RuntimeError and others
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Unavailable(f"the Inception weights could not be loaded ({reason}); see README, 'Sample metrics'") from None
    model = model.to(device).eval()
    return lambda images: model(images.to(device))[0]


@torch.no_grad()
def features_of(extract, batches) -> torch.Tensor:
    """Features of every batch, concatenated: (N, F) float64 on the CPU."""
    return torch.cat([extract(batch).double().cpu() for batch in batches])


def gaussian_frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians.

    tr((C1 C2)^(1/2)) is the sum of the square roots of the eigenvalues of C1 C2 (real and >= 0 in exact
    arithmetic; rounding can leave tiny imaginary or negative parts, hence the complex root's real part).
    """
    mean1, cov1, mean2, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mean1, cov1, mean2, cov2))
    root_trace = torch.linalg.eigvals(cov1 @ cov2).sqrt().real.sum()
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * root_trace)


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID of two feature sets (N, F): the Fréchet distance between their fitted Gaussians."""
    fitted = [(f.mean(dim=0), torch.cov(f.T)) for f in (features1.double(), features2.double())]
    return gaussian_frechet_distance(*fitted[0], *fitted[1])


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between equal-sized sets (m, F) with the kernel k(a, b) = (a.b / F + 1)^3."""
    m, dims = x.shape
    kernel = lambda a, b: (a @ b.T / dims + 1) ** 3  # noqa: E731
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    same = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (m * (m - 1))
    return float(same - 2 * k_xy.sum() / (m * m))


def kernel_distance(features1: torch.Tensor, features2: torch.Tensor, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple:
    """KID: (mean, standard deviation) of `polynomial_mmd2` over random subsets of both sets."""
    size = min(subset_size, features1.shape[0], features2.shape[0])
    generator = torch.Generator().manual_seed(seed)
    pick = lambda f: f[torch.randperm(f.shape[0], generator=generator)[:size]].double()  # noqa: E731
    values = torch.tensor([polynomial_mmd2(pick(features1), pick(features2)) for _ in range(subsets)])
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


def fid_and_kid(extract, real_batches, fake_batches, kid_subsets: int = KID_SUBSETS) -> dict:
    """{"fid", "kid", "kid_std"} between two sets of images given as batches the extractor takes."""
    real, fake = features_of(extract, real_batches), features_of(extract, fake_batches)
    kid, kid_std = kernel_distance(real, fake, kid_subsets)
    return {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std}

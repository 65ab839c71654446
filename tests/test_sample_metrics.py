"""FID and KID from features: the closed form for Gaussians, a naive MMD, and the one-line message offline."""

import math
import sys
import types

import pytest
import torch

from tests.tiny_run import one_thread  # noqa: F401 (autouse)
from tools.common import sample_metrics
from tools.common.sample_metrics import (Unavailable, fid_and_kid, frechet_distance, gaussian_frechet_distance,
                                         inception_features, polynomial_mmd2)


def batches(x: torch.Tensor, size: int = 1000):
    return [x[s : s + size] for s in range(0, x.shape[0], size)]


def test_fid_through_a_stand_in_extractor_matches_the_gaussian_closed_form():
    generator = torch.Generator().manual_seed(0)
    n = 40000
    mean1, mean2 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, -0.5, 2.0])
    std1, std2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    real = mean1 + std1 * torch.randn(n, 3, generator=generator)
    fake = mean2 + std2 * torch.randn(n, 3, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    extractor = torch.nn.Linear(3, 3)  # a rotation and a shift: the Frechet distance is unchanged by both
    with torch.no_grad():
        extractor.weight.copy_(rotation)
        extractor.bias.fill_(3.0)
    # Diagonal covariances commute: d^2 = |m1 - m2|^2 + sum_i (s1_i - s2_i)^2
    closed_form = (mean1 - mean2).square().sum() + (std1 - std2).square().sum()
    got = fid_and_kid(extractor, batches(real), batches(fake), kid_subsets=4)
    assert got["fid"] == pytest.approx(closed_form.item(), rel=0.03)
    same = fid_and_kid(extractor, batches(real[: n // 2]), batches(real[n // 2 :]), kid_subsets=4)
    assert abs(same["fid"]) < 0.01 and abs(same["kid"]) < 0.05 * got["kid"] and got["kid_std"] > 0


def test_frechet_distance_of_general_gaussians_matches_the_symmetric_form():
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(5, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mean1, mean2 = (torch.randn(5, generator=generator, dtype=torch.float64) for _ in range(2))
    values, vectors = torch.linalg.eigh(cov1)
    root1 = vectors @ torch.diag(values.sqrt()) @ vectors.T
    root_trace = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()  # tr (C1^1/2 C2 C1^1/2)^1/2
    expected = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * root_trace
    assert gaussian_frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected.item(), rel=1e-9)
    features = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    shifted = features @ a + 1
    direct = gaussian_frechet_distance(features.mean(0), torch.cov(features.T), shifted.mean(0), torch.cov(shifted.T))
    assert frechet_distance(features, shifted) == pytest.approx(direct, rel=1e-9)


def test_kid_is_the_unbiased_polynomial_mmd():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 4, generator=generator).double(), torch.randn(7, 4, generator=generator).double() + 0.5
    k = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    m = x.shape[0]
    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert polynomial_mmd2(x, y) == pytest.approx((same - 2 * cross).item(), rel=1e-9)


def test_missing_extra_is_one_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(Unavailable) as info:
        inception_features(torch.device("cpu"))
    assert str(info.value) == f"torch-fidelity is not installed ({sample_metrics.INSTALL})"


def test_weights_that_cannot_be_downloaded_are_one_reason(monkeypatch, capsys):
    class Offline:
        def __init__(self, *args, **kwargs):
            print("Downloading: https://example/weights.pth", file=sys.stderr)
            raise OSError("<urlopen error [Errno -2] Name or service not known>\nmore detail")

    fake = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    fake.FeatureExtractorInceptionV3 = Offline
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", fake)
    with pytest.raises(Unavailable) as info:
        inception_features(torch.device("cpu"))
    reason = str(info.value)
    assert "\n" not in reason and "Name or service not known" in reason and "weights" in reason
    assert capsys.readouterr().err == ""  # the download's own lines are not shown


def test_kid_over_subsets_is_finite_with_fewer_items_than_a_subset():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 8, generator=generator), torch.randn(40, 8, generator=generator)
    kid, std = sample_metrics.kernel_distance(x, y, subsets=5)
    assert math.isfinite(kid) and math.isfinite(std)

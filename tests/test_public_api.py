"""The public API a user expects: the names the README uses import from the package roots, and its examples run."""

import re

import stage1_vqvae
import stage2_prior
from tests.conftest import ROOT

STAGE1 = ["VQVAE", "VQVAEConfig", "load_vqvae", "VectorQuantizer", "EMAVectorQuantizer", "GroupedQuantizer",
          "ResidualQuantizer", "build_quantizer", "load_quantizer", "RotationQuantizer", "FactorizedQuantizer",
          "FiniteScalarQuantizer"]
STAGE2 = ["GatedPixelCNN", "HierarchicalPrior", "PriorConfig", "build_prior", "load_prior"]


def test_each_stage_exports_its_models_quantizers_and_loaders():
    for package, names in [(stage1_vqvae, STAGE1), (stage2_prior, STAGE2)]:
        assert set(names) <= set(package.__all__), package.__name__
        assert all(callable(getattr(package, name)) for name in names)


def test_the_readme_quantizer_example_runs_from_the_package_root(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (example,) = [block for block in blocks if "Quantizer(" in block]
    assert "from stage1_vqvae import" in example
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["EMAVectorQuantizer", "GroupedQuantizer", "ResidualQuantizer"]

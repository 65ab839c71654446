"""Every package the code imports is declared in pyproject.toml (a runtime dependency or an optional extra)."""

import ast
import re
import sys
import tomllib

from tests.conftest import ROOT

OWN = {"foundation", "stage1_vqvae", "stage2_prior", "tools", "tests"}
DISTRIBUTION = {"PIL": "pillow", "torch_fidelity": "torch-fidelity", "torch": "torch",
                "vector_quantize_pytorch": "vector-quantize-pytorch"}  # import name -> package


def imported_top_names(folders) -> set:
    names = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - OWN - set(sys.stdlib_module_names)


def declared(requirements) -> set:
    return {re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower() for line in requirements}


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = declared(project["dependencies"])
    extras = declared(line for lines in project["optional-dependencies"].values() for line in lines)
    source = imported_top_names(["foundation", "stage1_vqvae", "stage2_prior", "tools"])
    assert {"torch", "PIL"} <= source
    missing = {name for name in source if DISTRIBUTION.get(name, name).lower() not in runtime | extras}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert "pillow" in runtime  # the folder datasets and every picture need it

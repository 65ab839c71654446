"""The house's floors point one way: commands (tools) on top, the two stages in the middle, the foundation below.

No module imports a module of a higher floor, the two stages do not import each other, and no chain of
imports comes back to where it started.
"""

import ast

from tests.conftest import ROOT

FLOORS = {"foundation": 0, "stage1_vqvae": 1, "stage2_prior": 1, "tools": 2}


def project_modules() -> dict:
    """{dotted module name: path} of every module of the four packages."""
    modules = {}
    for package in FLOORS:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(path, modules: dict) -> set:
    """The project modules `path` imports (an imported name resolves to the module that holds it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def test_no_module_imports_a_higher_floor_or_the_other_stage():
    wrong = [(a, b) for a, targets in import_graph().items() for b in targets
             if FLOORS[package(b)] > FLOORS[package(a)]
             or (FLOORS[package(b)] == FLOORS[package(a)] and package(a) != package(b))]
    assert wrong == []


def test_no_import_cycle():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []
    assert len(graph) > 40 and "foundation.training" in graph["stage2_prior.train"]  # the graph was read

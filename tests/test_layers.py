"""The import rule of the layers, read from the source (ast), so that a lazy import inside a function
counts as much as one at the top of a module:

    running.py → grids → training → dataset / models / privacy → utils

A module may import its own package and any package of a lower layer, never one above it (utils
imports no training, no grids), and no module of the tool imports tests or benchmarks. Packages of
one layer (dataset, models, privacy) may use each other, but their imports must not form a cycle.
``importlib.import_module`` counts as an import: a literal module name (or an f-string's literal
prefix) is checked like any other; a name the source does not spell cannot be checked and is refused.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {"utils": 0, "dataset": 1, "models": 1, "privacy": 1, "training": 2,
                          "grids": 3, "running": 4}
"""Each top-level package (and the entry module running.py) with its layer: higher may import lower."""

NOT_IMPORTABLE = ("tests", "benchmarks")
"""Project folders the tool itself never imports."""

UPWARD = "{module} imports {target} ({target_layer}, layer {high}) from layer {low} ({layer}): {rule}"
RULE = ("the rule is running.py → grids → training → dataset / models / privacy → utils; move the "
        "code that needs it up, or the thing it needs down")
UNCHECKABLE = ("{module}:{line} calls importlib.import_module with a module name the source does not "
               "spell (not a literal, nor an f-string with a literal package prefix), so the layer "
               "rule cannot be checked; spell the module")


def layered_files() -> list[Path]:
    """Every Python file of the layered packages, and running.py."""
    files = [ROOT / "running.py"]
    for package in LAYERS:
        if (ROOT / package).is_dir():
            files += sorted((ROOT / package).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _literal_prefix(node: ast.expr) -> str | None:
    """The module a call's argument names: a string literal, or an f-string's literal start
    (``f"training.{name}"`` names a module of ``training``); None when the source does not say."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        prefix = str(node.values[0].value)
        if "." in prefix:
            return prefix.rsplit(".", 1)[0]
    return None


def imports_of(path: Path) -> Iterator[tuple[str | None, int]]:
    """``(imported module, line)`` for every import in the file, wherever it stands (None for an
    ``importlib.import_module`` whose module the source does not spell)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package[:len(package) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])]), node.lineno
            elif node.module != "__future__":
                yield node.module, node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and isinstance(node.func.value, ast.Name)
              and node.func.value.id == "importlib" and node.args):
            yield _literal_prefix(node.args[0]), node.lineno


def package_of(module: str) -> str:
    return module.split(".")[0]


def project_edges() -> dict[str, set[tuple[str, int]]]:
    """For each layered module, the project modules it imports, with the line."""
    project = {*LAYERS, *NOT_IMPORTABLE}
    edges: dict[str, set[tuple[str, int]]] = {}
    for path in layered_files():
        name = module_name(path)
        mine = edges.setdefault(name, set())
        for target, line in imports_of(path):
            if target is None or package_of(target) in project:
                mine.add((target, line))
    return edges


def layer_violations() -> list[str]:
    problems = []
    for module, targets in sorted(project_edges().items()):
        low = package_of(module)
        for target, line in sorted(targets, key=lambda t: (t[1], t[0] or "")):
            where = f"{module}:{line}"
            if target is None:
                problems.append(UNCHECKABLE.format(module=module.replace(".", "/") + ".py", line=line))
            elif package_of(target) in NOT_IMPORTABLE:
                problems.append(f"{where} imports {target}: the tool never imports "
                                f"{'/'.join(NOT_IMPORTABLE)}")
            elif LAYERS[package_of(target)] > LAYERS[low]:
                problems.append(UPWARD.format(module=where, target=target, low=LAYERS[low], layer=low,
                                              target_layer=package_of(target),
                                              high=LAYERS[package_of(target)], rule=RULE))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each holds an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in project_edges().items():
        graph.setdefault(package_of(module), set()).update(
            package_of(t) for t, _ in targets if t is not None and package_of(t) != package_of(module))
    return graph


def module_graph() -> dict[str, set[str]]:
    """Module to module (``from pkg import mod`` counted as the package's ``__init__``)."""
    known = {module_name(path) for path in layered_files()}
    graph: dict[str, set[str]] = {}
    for module, targets in project_edges().items():
        graph[module] = {t for t, _ in targets if t in known and t != module}
    return graph


def test_no_module_imports_from_a_layer_above_it():
    assert layer_violations() == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph()) == []


def test_every_layered_package_is_read():
    # A package the test no longer finds (renamed, moved) would pass every check above unread.
    files = {module_name(path) for path in layered_files()}
    for package in LAYERS:
        assert package in files, f"{package} has no module: update LAYERS in tests/test_layers.py"


@pytest.mark.parametrize("source, expected", [
    ("from grids.sweep import run_grid\n", "UPWARD"),
    ("def f():\n    from training.experiment import run\n", "UPWARD"),
    ("import importlib\nimportlib.import_module(f'training.{x}')\n", "UPWARD"),
    ("import importlib\nimportlib.import_module(name)\n", "UNCHECKABLE"),
    ("from tests.cli import run_cli\n", "never imports"),
    ("from utils.errors import ConfigError\nimport numpy\n", None),
])
def test_the_check_sees_lazy_and_dynamic_imports(tmp_path, monkeypatch, source, expected):
    # A throwaway tree with a utils module of the given source: what the check says about it.
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "probe.py").write_text(source)
    (tmp_path / "running.py").write_text("from utils import probe\n")
    problems = layer_violations()
    if expected is None:
        assert problems == []
    else:
        marker = {"UPWARD": RULE, "UNCHECKABLE": "cannot be checked"}.get(expected, expected)
        assert len(problems) == 1 and marker in problems[0] and "utils" in problems[0]


def test_a_cycle_between_packages_is_found():
    graph = {"dataset": {"privacy"}, "privacy": {"models"}, "models": {"dataset"}, "utils": set()}
    assert cycles(graph) == [["dataset", "models", "privacy"]]
    assert cycles({"dataset": {"utils"}, "utils": set()}) == []

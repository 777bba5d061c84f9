"""startup.ipynb is committed clean and its Python is valid against the project's current API."""

from __future__ import annotations

import ast
import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "startup.ipynb"


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_no_outputs_committed():
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None


def test_cells_parse_and_import_what_exists():
    for source in code_cells():
        python = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
        tree = ast.parse(python)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {
                    "utils", "training", "dataset", "models", "privacy"}:
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"

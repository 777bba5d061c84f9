"""startup.ipynb is committed clean, its Python is valid against the project's current API, and it
runs: executed headless end to end (set-up, storage, CelebA check, wandb, one run, a grid, its
results), then again to show that complete runs are skipped."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parent.parent / "startup.ipynb"


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_no_outputs_committed():
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None


# What a committed notebook must never hold: an API key (wandb's are 40 hexadecimal characters;
# other services' long base64 tokens), a key assigned in code, or a path of someone's own machine.
SECRETS = {
    "a 40-character hex key": r"\b[0-9a-f]{40}\b",
    "a long token": r"\b[A-Za-z0-9_\-]{48,}\b",
    "a key assigned in code": r"(API_KEY|api_key)\s*=\s*[\"'][^\"']+[\"']",
    "a personal path": r"(/home/[a-z_][\w-]*/|/Users/\w+/|[A-Z]:\\\\Users\\\\|/content/drive/MyDrive/(?!dp-fairness))",
}


@pytest.mark.parametrize("what", SECRETS)
def test_no_key_or_personal_path_is_committed(what):
    import re

    assert not re.search(SECRETS[what], NOTEBOOK.read_text()), f"startup.ipynb holds {what}"


@pytest.mark.parametrize("what, text", [
    ("a 40-character hex key", "0123456789abcdef0123456789abcdef01234567"),
    ("a key assigned in code", 'os.environ["X"]; WANDB_API_KEY = "abc"'),
    ("a personal path", "/home/alice/celeba"), ("a personal path", "/Users/bob/runs")])
def test_the_secret_patterns_catch_what_they_name(what, text):
    import re

    assert re.search(SECRETS[what], text)


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


# --------------------------------------------------------------------------------------------------
# The notebook executed, headless, as a user would run it (nbclient, the python3 kernel of this
# environment), with its Parameters cell overridden the way papermill does: a cell right after it.

TINY_RUNS = ["training.epochs=1", "data.train_size=2000", "evaluation.bootstrap_resamples=20"]


def parameters_index(notebook) -> int:
    tagged = [index for index, cell in enumerate(notebook.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and notebook.cells[tagged[0]].cell_type == "code"
    return tagged[0]


def execute(parameters: dict, tmp_path: Path):
    """The notebook run with ``parameters`` injected after its parameters cell; returns the
    executed notebook (raises nbclient's CellExecutionError when a cell fails)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    notebook.cells.insert(parameters_index(notebook) + 1, nbformat.v4.new_code_cell(source))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return notebook


def outputs(notebook, kind: str = "text") -> str:
    """Everything the cells printed (``text``) or the MIME types they displayed (``mime``)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "text":
                parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
            else:
                parts += list(output.get("data", {}))
    return "\n".join(parts) if kind == "text" else parts


@pytest.fixture
def no_wandb_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_and_a_second_run_skips_what_is_complete(tmp_path, no_wandb_key):
    from tests.celeba_fake import make_fake_celeba

    make_fake_celeba(tmp_path / "upload", n_images=60)
    archive = tmp_path / "celeba.zip"
    with zipfile.ZipFile(archive, "w") as handle:  # a user's upload of the CelebA files
        for path in sorted((tmp_path / "upload").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(tmp_path / "upload"))
    output_dir = tmp_path / "drive" / "runs"
    parameters = {"OUTPUT_DIR": str(output_dir), "OVERRIDES": TINY_RUNS, "GRID_SHARES": [0.3, 0.1],
                  "CELEBA_ROOT": str(tmp_path / "celeba"), "CELEBA_ZIP": str(archive),
                  "INSTALL": False, "SHOW_TENSORBOARD": False}
    first = execute(parameters, tmp_path)
    printed = outputs(first)
    assert ("No GPU found" in printed) != torch.cuda.is_available()
    assert f"unpacked {archive}" in printed and "CelebA: 60 images" in printed
    assert "wandb: no key" in printed and "wandb sync " in printed
    run = output_dir / "adult_dpsgd_eps3"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["privacy/epsilon"] <= 3.0 and list((run / "wandb").glob("offline-run-*"))
    grid = output_dir / "notebook_grid"
    summaries = sorted(grid.glob("*/summary.json"))
    assert len(summaries) == 2 * 2  # two shares, non-private and DP-SGD
    for name in ("report.md", "report.csv", "accuracy.png", "gaps.png"):
        assert (grid / name).is_file()
    shown = outputs(first, "mime")
    assert shown.count("text/html") >= 2  # the summary and the grid's table, as DataFrames
    assert shown.count("image/png") >= 3  # the report's figures, inline
    assert "%tensorboard --logdir" in printed

    stamps = {path: path.stat().st_mtime_ns for path in [run / "summary.json", *summaries]}
    again = outputs(execute(parameters, tmp_path))
    assert "already complete" in again and "4 of 4 points complete" in again
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


@pytest.mark.slow
def test_the_data_check_names_a_missing_celeba_image_before_anything_trains(tmp_path, no_wandb_key):
    from tests.celeba_fake import make_fake_celeba

    make_fake_celeba(tmp_path / "celeba", n_images=30)
    image = sorted((tmp_path / "celeba" / "img_align_celeba").iterdir())[4]
    image.unlink()
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match=rf"1 of the 30 images .*{image.name}"):
        execute({"OUTPUT_DIR": str(tmp_path / "runs"), "CELEBA_ROOT": str(tmp_path / "celeba"),
                 "INSTALL": False, "SHOW_TENSORBOARD": False}, tmp_path)
    assert not (tmp_path / "runs" / "adult_dpsgd_eps3").exists()


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the notebook's data-check run)
def test_a_wandb_key_from_the_environment_is_used_and_never_lands_in_the_notebook(tmp_path,
                                                                                   monkeypatch):
    key = "notebook0test0key0" + "0123456789abcdef" * 2  # 50 characters, never a real key
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    # wandb online fails fast here (tests/conftest.py points it at a closed local port) and the run
    # falls back to offline, so the run still completes with its files.
    executed = execute({"OUTPUT_DIR": str(tmp_path / "runs"), "OVERRIDES": TINY_RUNS,
                        "RUN_GRID": False, "INSTALL": False, "SHOW_TENSORBOARD": False}, tmp_path)
    printed = outputs(executed)
    assert "wandb: key found, runs go online" in printed and "wandb sync" not in printed
    assert key not in json.dumps(executed)  # neither printed nor kept in a cell
    assert (tmp_path / "runs" / "adult_dpsgd_eps3" / "summary.json").is_file()

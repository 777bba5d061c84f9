"""Shared test set-up, and the helpers that run the CLI.

Set-up: GPU-only tests are skipped where there is no CUDA device, and wandb can never reach a
server. wandb reads its base URL once per process (its setup singleton), so a test that sets
WANDB_BASE_URL after another test has started wandb would still talk to wandb's default host.
The whole session therefore points wandb at a closed port on this machine before anything imports
it: a test that makes wandb fail online fails on loopback, and no test sends anything elsewhere.

Helpers (``from tests.conftest import ...``; ``tests`` is a package, so this module is imported
once, as ``tests.conftest``): running ``running.py`` in this process (``running.main``) or as a
subprocess, building its argument list, and reading back what a run wrote. Every test module that
drives the CLI uses these instead of a copy of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

# Before wandb is imported or set up by any test (conftest is imported first).
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"
os.environ["WANDB_INIT_TIMEOUT"] = "2"  # an online attempt fails in seconds, not wandb's 90
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

ROOT = Path(__file__).resolve().parent.parent
RUNNING_PY = ROOT / "running.py"

# Overrides that keep a run small and quiet where the test reads neither intervals nor dashboards.
QUIET = ("evaluation.bootstrap_resamples=20", "logging.tensorboard=false",
         "logging.wandb.mode=disabled", "logging.progress=never")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------------
# The command line


def cli_args(params: str | Path, *overrides: str, output_dir: str | Path | None = None,
             extra: tuple[str, ...] = ()) -> list[str]:
    """``running.py``'s arguments: ``--params params``, ``--set output_dir=...`` when given, one
    ``--set`` per override (in order), then ``extra`` (``--dry-run``, ``--stack 2``, ...)."""
    argv = ["--params", str(params)]
    if output_dir is not None:
        argv += ["--set", f"output_dir={output_dir}"]
    for override in overrides:
        argv += ["--set", override]
    return [*argv, *extra]


def main_on_yaml(tmp_path: Path, params_text: str, *overrides: str) -> int:
    """``running.main`` on ``params_text`` written to tmp_path/params.yaml, its runs under
    tmp_path/out, each override passed as ``--set``; the exit code."""
    import running

    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    return running.main(cli_args(params, *overrides, output_dir=tmp_path / "out"))


class CliResult(NamedTuple):
    rc: int
    out: str
    err: str
    seconds: float


def main_captured(capsys, argv: list[str]) -> CliResult:
    """``running.main(argv)`` in this process: its exit code, what it printed (captured by
    pytest's ``capsys``, emptied first) and how long it took."""
    import running

    capsys.readouterr()
    started = time.perf_counter()
    rc = running.main(argv)
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    return CliResult(rc, captured.out, captured.err, seconds)


def quiet_run(output_dir: Path, params: str | Path, name: str, *overrides: str) -> dict:
    """``running.py --params params`` into output_dir/name, small and quiet (:data:`QUIET`), in
    this process; asserts exit 0 and returns the run's summary."""
    import running

    assert running.main(cli_args(params, f"name={name}", *QUIET, *overrides,
                                 output_dir=output_dir)) == 0
    return read_summary(Path(output_dir) / name)


def running_py(*args: str) -> list[str]:
    """The command line of ``running.py`` with ``args``, run by this interpreter."""
    return [sys.executable, str(RUNNING_PY), *args]


def run_running_py(*args: str, cwd: Path, env: dict | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """``running.py`` with ``args`` as a subprocess in ``cwd`` (its output captured as text)."""
    return subprocess.run(running_py(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


# --------------------------------------------------------------------------------------------------
# What a run wrote


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def straight_and_resumed(config, units: int):
    """Two trainers of ``config`` on the CPU after ``units`` units: one trained straight through,
    one rebuilt from the state of a third after unit 0 and trained on from unit 1 (the resume
    path in memory, without the CLI). Returns ``(straight, resumed)``."""
    import copy

    from training.experiment import build_components

    _, _, straight = build_components(config, torch.device("cpu"))
    for unit in range(units):
        straight.train_unit(unit)
    _, _, first = build_components(config, torch.device("cpu"))
    first.train_unit(0)
    state = copy.deepcopy(first.state_dict())
    _, _, resumed = build_components(config, torch.device("cpu"))
    resumed.load_state_dict(state)
    for unit in range(1, units):
        resumed.train_unit(unit)
    return straight, resumed

"""Running the CLI in-process from a test: one helper for the tests that write a small YAML."""

from __future__ import annotations

from pathlib import Path

import running


def main_on_yaml(tmp_path: Path, params_text: str, *overrides: str) -> int:
    """``running.main`` on ``params_text`` written to tmp_path/params.yaml, its runs under
    tmp_path/out, each override passed as ``--set``; the exit code."""
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    argv = ["--params", str(params), "--set", f"output_dir={tmp_path / 'out'}"]
    for override in overrides:
        argv += ["--set", override]
    return running.main(argv)

"""The benchmark scripts run and print their tables (in tiny form: the measured numbers themselves
live in the README, never in a timed test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from training.repair import METHODS

ROOT = Path(__file__).resolve().parent.parent


def test_repair_step_benchmark_prints_every_method_against_vanilla():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_repair_step.py"), "--batch", "64",
         "--repeats", "1", "--rounds", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line and "method" not in line]
    cells = {(name.strip(), target.strip()): (float(ms), float(ratio))
             for name, target, ms, ratio in rows}
    assert set(cells) == {(name, target) for name in METHODS for target in ("dp", "eo")}
    for target in ("dp", "eo"):
        assert cells[("none", target)][1] == 1.0  # Vanilla's ratio to itself, round by round
    assert all(ms > 0 for ms, _ in cells.values())

"""The benchmark scripts run and print their tables (in tiny form: the measured numbers themselves
live in docs/results/, never in a timed test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.repair import METHODS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # runs the benchmark script (the default tier keeps the stacking benchmark)
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


@pytest.mark.slow  # runs the benchmark script (the default tier keeps the stacking benchmark)
def test_dp_throughput_benchmark_writes_every_variant_with_versions(tmp_path):
    import json

    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_throughput.py"), "--device", "cpu",
         "--models", "mlp", "cnn32", "--batches", "8", "--steps", "1", "--rounds", "2",
         "--json", str(out)], capture_output=True, text=True, timeout=600, check=True)
    table = [line for line in result.stdout.splitlines() if line.startswith("| mlp") or
             line.startswith("| cnn32")]
    assert len(table) == 2
    report = json.loads(out.read_text())
    assert report["torch"] and report["opacus"] and report["dtype"] == "float32"
    variants = {(row["model"], row["variant"]): row for row in report["results"]}
    assert set(variants) == {(model, variant) for model in ("mlp", "cnn32")
                             for variant in ("non-private", "opacus hooks", "opacus ghost", "fast")}
    for (_, variant), row in variants.items():
        assert row["batch"] == 8 and len(row["rounds"]) == 2 and row["samples_per_s"] > 0
        assert row["peak_memory_mib"] >= 0
        if variant == "non-private":
            assert row["ratio_to_non_private"] == 1.0


@pytest.mark.slow  # a subprocess importing torch and Opacus: seconds
def test_dp_throughput_times_the_engine_at_a_git_revision_beside_the_working_trees(tmp_path):
    import json

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "throughput.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_throughput.py"), "--device", "cpu",
         "--models", "mlp", "--batches", "8", "--steps", "1", "--rounds", "2",
         "--variants", "non-private", "fast", "--baseline", "HEAD", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.read_text())
    assert report["baseline"] == "HEAD" and report["date"] and report["threads"] >= 1
    assert [row["variant"] for row in report["results"]] == ["non-private", "fast", "fast@HEAD"]
    assert all(row["samples_per_s"] > 0 for row in report["results"])


def test_stacking_benchmark_prints_both_modes_and_keeps_epsilon(tmp_path):
    import json

    out = tmp_path / "stacking.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_stacking.py"), "--k", "2",
         "--epochs", "1", "--train-size", "600", "--hidden", "8", "--bootstrap", "0",
         "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
        check=True)
    rows = [line for line in result.stdout.splitlines()
            if line.startswith("| dpsgd") or line.startswith("| none")]
    assert len(rows) == 2
    report = json.loads(out.read_text())
    assert report["torch"] and report["machine"]
    for row in report["results"]:
        assert row["k"] == 2
        assert row["sequential"]["train_samples_per_s"] > 0 and row["stacked"]["wall_s"] > 0
        # The same runs: ε run by run (None without privacy) is the sequential runs'.
        assert row["stacked"]["epsilon"] == row["sequential"]["epsilon"]
        assert (row["stacked"]["epsilon"][0] is None) == (row["mode"] == "none")


@pytest.mark.slow  # runs the benchmark script (the default tier keeps the stacking benchmark)
def test_clipping_benchmark_prints_every_rule_against_flat(tmp_path):
    import json

    out = tmp_path / "clipping.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_clipping.py"), "--rounds", "1",
         "--rules", "flat", "dpsgd_f", "global_adapt", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=True)
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line and "rule" not in line}
    assert set(rows) == {"flat", "dpsgd_f", "global_adapt"}
    report = json.loads(out.read_text())
    ratios = {row["rule"]: row["time_ratio_to_flat"] for row in report["results"]}
    assert ratios["flat"] == 1.0 and all(ratio > 0 for ratio in ratios.values())

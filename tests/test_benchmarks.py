"""The benchmark scripts run and print their tables (in tiny form: the measured numbers themselves
live in docs/results/, never in a timed test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
                             for variant in ("non-private", "opacus hooks", "opacus ghost", "fast",
                                             "fast padded")}
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
         "--variants", "non-private", "fast", "fast hooks", "--baseline", "HEAD", "--json",
         str(out)], capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.read_text())
    assert report["baseline"] == "HEAD" and report["date"] and report["threads"] >= 1
    assert [row["variant"] for row in report["results"]] == ["non-private", "fast", "fast hooks",
                                                             "fast@HEAD"]
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


@pytest.mark.slow  # the whole command in its tiny mode: pytest -m gpu, throughput, step, run (~90 s)
def test_gpu_checks_runs_every_section_on_a_cpu_in_quick_mode(tmp_path):
    import json

    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_checks.py"), "--device", "cpu",
                    "--quick", "--out", str(out)], capture_output=True, text=True, timeout=900,
                   check=True)
    report = json.loads(out.read_text())
    assert report["quick"] and report["torch"] and report["opacus"] and report["date"]
    assert "CPU" in report["device"]
    # Every gpu-marked test was collected and none failed; without a GPU, every one skipped
    checks = report["checks"]
    assert checks["exit_code"] == 0 and checks["failed"] == 0 and len(checks["cases"]) > 0
    if not torch.cuda.is_available():
        assert checks["skipped"] == len(checks["cases"])
    assert any("test_static_shapes" in case for case in checks["cases"])
    variants = {(row["model"], row["variant"]) for row in report["throughput"]}
    assert variants == {(model, variant) for model in ("mlp", "cnn32")
                        for variant in ("non-private", "opacus hooks", "fast", "fast padded")}
    steps = report["paper_step"]["variants"]
    assert set(steps) | set(report["paper_step"]["skipped"]) == {
        "non-private fp32", "non-private bf16", "fast fp32", "fast padded fp32", "fast padded bf16",
        "fast padded bf16 channels_last", "fast padded bf16 cuda graph", "fast padded compiled"}
    assert report["paper_step"]["skipped"]["fast padded bf16 cuda graph"] == "needs CUDA"
    assert steps["non-private fp32"]["ratio_to_non_private_fp32"] == 1.0
    assert all(row["ms_per_step"] > 0 for row in steps.values())
    run = report["paper_run"]
    assert run["total_steps"] == 60 * 60  # 480 images at expected batch 8: 60 steps an epoch
    for row in run["variants"].values():
        assert row["estimated_run_s"] == pytest.approx(row["ms_per_step"] / 1e3 * 3600)
    # every ratio, flat, one per variant and comparison
    assert report["ratios"]["paper_step/fast padded bf16/to_non_private_fp32"] > 0
    assert report["ratios"]["throughput/cnn32/fast padded/to_fast"] > 0
    assert report["ratios"]["throughput/mlp/fast/to_opacus_hooks"] > 0

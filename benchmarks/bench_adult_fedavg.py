"""The DP-FedAvg numbers of docs/results/adult.md: ``utils/params_adult_fedavg.yaml`` under two partitions.

    python benchmarks/bench_adult_fedavg.py [--seeds 0 1 2]

For ``federated.partition`` iid and by_group: test accuracy, user-level ε, and who the server's
clipping hits (the mean over rounds of ``dp/clip_fraction/group=…`` and ``dp/update_norm/group=…``,
read back from each run's metrics.jsonl). Prints a Markdown table; runs go to a temporary
directory with wandb disabled. The params file's settings were tuned on test accuracy (its header
says so), so its accuracy is a tuned-on-test figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.experiment import run  # noqa: E402
from utils.loader import load_config  # noqa: E402

PARTITIONS = ("iid", "by_group")
GROUPS = ("minority", "majority")


def round_means(run_dir: Path, key: str) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return float(np.mean(values))


def mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}\n")
    print("| partition | test accuracy | ε (δ=1e-5) | clipped women | clipped men "
          "| update norm women | update norm men |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as out:
        for partition in PARTITIONS:
            results: dict[str, list[float]] = {}
            for seed in args.seeds:
                config = load_config(ROOT / "utils/params_adult_fedavg.yaml", [
                    f"output_dir={out}", f"name={partition}_{seed}", f"seed={seed}",
                    f"federated.partition={partition}", "logging.wandb.mode=disabled",
                    "logging.tensorboard=false", "logging.progress=never",
                    "evaluation.bootstrap_resamples=0"])
                summary = run(config)
                run_dir = Path(out) / config.name
                results.setdefault("accuracy", []).append(summary["test/accuracy"])
                results.setdefault("epsilon", []).append(summary["privacy/epsilon"])
                for group in GROUPS:
                    for what in ("clip_fraction", "update_norm"):
                        results.setdefault(f"{what}/{group}", []).append(
                            round_means(run_dir, f"dp/{what}/group={group}"))
            print(f"| {partition} | {mean_std(results['accuracy'], 4)} "
                  f"| {mean_std(results['epsilon'])} "
                  + " ".join(f"| {100 * np.mean(results[f'clip_fraction/{g}']):.1f} %"
                             for g in GROUPS)
                  + " " + " ".join(f"| {mean_std(results[f'update_norm/{g}'])}" for g in GROUPS)
                  + " |")


if __name__ == "__main__":
    main()

"""The Adult numbers of docs/results/adult.md, measured: accuracy without privacy and under DP-SGD at ε = 3,
and the wall time of ``python running.py --params utils/params_adult.yaml`` from a cold start.

    python benchmarks/bench_adult.py [--seeds 0 1 2]

Prints a Markdown table. Runs go to a temporary directory; wandb is disabled for the accuracy runs
and left as the params file has it (auto: offline without a key) for the timed CLI run.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.experiment import run  # noqa: E402
from utils.loader import load_config  # noqa: E402

CASES = {
    "non-private, full training set": ["privacy.mode=none", "data.minority_share=null"],
    "DP-SGD ε=3, full training set": ["data.minority_share=null"],
    "DP-SGD ε=3, women 10 % (params file)": [],
    "non-private, women 10 %": ["privacy.mode=none"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    params = ROOT / "utils/params_adult.yaml"
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        cli = subprocess.run([sys.executable, str(ROOT / "running.py"), "--params", str(params),
                              "--set", f"output_dir={out}/cli"], capture_output=True, text=True)
        cli_seconds = time.perf_counter() - started
        if cli.returncode != 0:
            raise SystemExit(cli.stderr)
        print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
              f"torch threads, torch {torch.__version__}\n")
        print(f"`python running.py --params utils/params_adult.yaml`: {cli_seconds:.1f} s wall, "
              f"start-up included\n")
        print("| setting (5 epochs, MLP [200]) | test accuracy | minority acc. | majority acc. | ε (δ=1e-5) |")
        print("| --- | --- | --- | --- | --- |")
        for label, overrides in CASES.items():
            results = []
            for seed in args.seeds:
                config = load_config(params, [*overrides, f"seed={seed}", f"output_dir={out}/acc",
                                              f"name=s{seed}_{abs(hash(label))}",
                                              "logging.wandb.mode=disabled", "logging.progress=never",
                                              "evaluation.bootstrap_resamples=0"])
                results.append(run(config))

            def cell(key: str, results=results) -> str:
                values = [r[key] for r in results]
                if values[0] is None:
                    return "—"
                return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"

            print(f"| {label} | {cell('test/accuracy')} | {cell('test/accuracy/group=minority')} | "
                  f"{cell('test/accuracy/group=majority')} | {cell('privacy/epsilon')} |")
        print(f"\nmean ± std over seeds {args.seeds}")


if __name__ == "__main__":
    main()

"""Command line of the experiment runner.

    python running.py --params utils/params_adult.yaml [--set privacy.noise_multiplier=1.1 ...]

Exit status: 0 on success (also when the run was already complete), 2 on a config or input error,
with one ``error: ...`` line on stderr naming the key or file and the fix.
"""

from __future__ import annotations

import argparse
import sys

from utils.config import load_config
from utils.errors import UserInputError

# The headline numbers printed at the end of a run (all of them are in summary.json).
HEADLINE = ("test/accuracy", "test/accuracy/group=minority", "test/accuracy/group=majority",
            "test/dp_gap", "test/eo_gap", "test/eodds_gap", "privacy/epsilon", "privacy/delta",
            "time/wall_s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate one fairness-under-privacy experiment from a YAML file.")
    parser.add_argument("--params", required=True, metavar="FILE", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key; VALUE is YAML (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again even if the run directory holds a finished run")
    return parser.parse_args(argv)


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.params, args.overrides)
        # Imported here so that `--help` and config errors answer without loading torch.
        from training.experiment import run, run_directory

        summary = run(config, overwrite=args.overwrite)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = run_directory(config)
    if summary.get("skipped"):
        print(f"{where} is already complete (summary.json exists); use --overwrite to train again.")
    width = max(map(len, HEADLINE))
    for key in HEADLINE:
        print(f"{key:<{width}}  {format_value(summary.get(key))}")
    print(f"run directory: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

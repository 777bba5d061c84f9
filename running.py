"""Command line of the experiment runner.

    python running.py --params utils/params_adult.yaml [--set privacy.noise_multiplier=1.1 ...]
    python running.py --params configs/paper_adult.yaml [--dry-run]   # a grid (sweep:/zip:)
    python running.py --params configs/paper_adult.yaml --backend ray [--address auto]
    python running.py --report runs/paper_adult                       # report.md, report.csv, PNGs
                                                  # (also to wandb and TensorBoard: grids/dashboards.py)

A params file with a ``sweep:`` or ``zip:`` section is a grid (grids/sweep.py): every point is an
ordinary run under ``{output_dir}/{name}/{point}``, ``--set`` applies to every point, complete points
are skipped, and ``--dry-run`` lists the points and their run directories without running anything.
``--backend ray [--address ADDR] [--gpus-per-run N]`` runs a grid's points as Ray tasks, on this
machine or on a Ray cluster, with the same run directories, status file and exit status.
``--stack K`` trains up to K points (mlp, cnn, resnet18 non-private or DP-SGD; DP-FedAvg on tabular
data) that differ only in
seed, share, noise or clipping bound as one batched computation in this process
(training/stacking.py), each with its own run directory.

Exit status: 0 on success (also when the run or every grid point was already complete); 1 when a
grid ran but some of its points failed (each failure is an ``error: grid point ...`` line on stderr
and is recorded in ``grid_status.json``; the other points still ran); 2 on a config or input error
before anything ran (a bad key in ``sweep:`` included), with one ``error: ...`` line on stderr
naming the key or file and the fix, and likewise when the machine refuses (a full disk, a file size
limit, a read-only file system, memory exhausted) or another process holds the run directory or
grid; 130 when interrupted (Ctrl-C), with one line saying how to continue.
"""

from __future__ import annotations

import argparse
import sys

from grids.sweep import describe, load_grid, ray_executor, run_grid, stacked_executor
from utils.errors import INTERRUPTED, INTERRUPTED_REPORT, UserInputError, describe_fault
from utils.loader import load_config

# The headline numbers printed at the end of a run (all of them are in summary.json).
HEADLINE = ("test/accuracy", "test/accuracy/group=minority", "test/accuracy/group=majority",
            "test/dp_gap", "test/eo_gap", "test/eodds_gap", "privacy/epsilon", "privacy/delta",
            "time/wall_s")


BACKEND_NEEDS_GRID = ("--backend ray: {params} is one experiment, not a grid; Ray runs a grid's "
                      "points as tasks, and a single run would quietly run here instead. Add a "
                      "sweep: section, or leave out --backend ray.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate a fairness-under-privacy experiment (or a grid of them) "
                    "from a YAML file, or report on a grid's runs.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", metavar="FILE", help="experiment or grid YAML file")
    source.add_argument("--report", metavar="RUNS_DIR",
                        help="write report.md, report.csv and figures for the runs in RUNS_DIR "
                             "(and put them in wandb and TensorBoard where the runs log)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key (of every grid point); VALUE is YAML "
                             "(repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again even if the run directory holds a finished run")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, list the run directories, and run nothing")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="how a grid's points run: one after the other in this process "
                             "(local, the default) or as Ray tasks (ray; pip install -r "
                             "requirements-ray.txt)")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --backend ray: the Ray cluster to use (auto, ray://host:10001); "
                             "default: start Ray on this machine")
    parser.add_argument("--gpus-per-run", type=float, metavar="N",
                        help="with --backend ray: GPUs per grid point, fractions allowed (default: "
                             "1 when the Ray cluster has GPUs, else 0)")
    parser.add_argument("--stack", type=int, metavar="K",
                        help="train up to K grid points at a time as one batched computation "
                             "(points differing only in seed, minority share, noise multiplier or "
                             "target epsilon, clipping bound; mlp, cnn and resnet18 runs "
                             "without privacy or with DP-SGD's fast engine, and DP-FedAvg runs on "
                             "tabular data); every point keeps its own run directory")
    args = parser.parse_args(argv)
    if args.stack is not None and (args.stack < 1 or args.backend == "ray"):
        parser.error(f"--stack: got {args.stack} with --backend {args.backend}; give K >= 1 "
                     f"(runs in this process, so not with --backend ray)")
    if args.backend != "ray" and (args.address is not None or args.gpus_per_run is not None):
        parser.error("--address and --gpus-per-run need --backend ray")
    if args.gpus_per_run is not None and args.gpus_per_run < 0:
        parser.error(f"--gpus-per-run: got {args.gpus_per_run}; give 0 or more (0.5 shares a GPU)")
    return args


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.report is not None:
            # Imported here so that a run never loads matplotlib.
            from grids.dashboards import publish_report
            from grids.report import write_report

            written = write_report(args.report)
            for path in written:
                print(f"wrote {path}")
            # The report where researchers look too: TensorBoard's grid log, wandb's report run.
            for line in publish_report(args.report, written):
                print(line)
            return 0
        grid = load_grid(args.params, args.overrides)
        if grid is not None and args.dry_run:
            print("\n".join(describe(grid)))
            return 0
        if grid is not None:
            executor = (ray_executor(args.address, args.gpus_per_run) if args.backend == "ray"
                        else stacked_executor(args.stack) if args.stack else None)
            results = run_grid(grid, overwrite=args.overwrite, executor=executor)
            failed = [r for r in results if r.status == "failed"]
            print(f"grid {grid.name}: {len(grid.points) - len(failed)} of {len(grid.points)} points "
                  f"complete, {len(failed)} failed; status in {grid.directory}/grid_status.json; "
                  f"report: python running.py --report {grid.directory}")
            # The grid in the dashboards: with wandb on, its report and report run; else its
            # TensorBoard HParams experiment (grids/dashboards.py). matplotlib only loads for a report.
            from grids.dashboards import publish_grid

            for line in publish_grid(grid.directory, grid.keys):
                print(line)
            return 1 if failed else 0
        if args.stack is not None:
            raise UserInputError(f"--stack {args.stack}: {args.params} is one experiment, not a "
                                 f"grid; --stack trains a grid's points together (add a sweep: "
                                 f"section, or leave out --stack).")
        if args.backend == "ray":
            raise UserInputError(BACKEND_NEEDS_GRID.format(params=args.params))
        config = load_config(args.params, args.overrides)
        # Imported here so that `--help` and YAML errors answer without loading torch (the
        # validation step asks the registries, and so imports the training stack).
        from training.experiment import run, run_directory
        from training.validation import validate

        config = validate(config)  # names, settings sub-sections, rules across sections

        if args.dry_run:
            print(run_directory(config))
            return 0
        summary = run(config, overwrite=args.overwrite)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {INTERRUPTED_REPORT if args.report else INTERRUPTED}", file=sys.stderr)
        return 130
    except (OSError, MemoryError, RuntimeError) as error:
        message = describe_fault(error)
        if message is None:  # a bug: its traceback is the report
            raise
        print(f"error: {message}", file=sys.stderr)
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

"""``--stack K`` measured: K small Adult runs trained as one batched computation against the same K
runs one after the other, in one process on the same data (and, with ``--paper``, the wall time of
the paper_adult grid with and without ``--stack 8``).

    python benchmarks/bench_stacking.py [--k 8] [--modes dpsgd none] [--repeats 2] [--paper]
                                        [--json stacking.json]

``--modes dpfedavg`` stacks K DP-FedAvg runs in utils/params_adult_fedavg.yaml's setting (1,000
clients, q = 0.05, 2 local epochs, σ = 1, S = 0.25, ``--rounds`` rounds). The centralized K runs
are the paper_adult setting (MLP [200], 20,000 training examples, batch 256, 5 epochs,
Adam; DP-SGD at σ = 0.83, C = 1) and differ in seed and minority share, as a grid's points do.
Two numbers per mode: the training throughput (all runs' training examples over the seconds spent
in their training epochs; a stack's epochs are timed once for all its runs) and the end-to-end wall
time of the K runs (data, training, evaluation with ``--bootstrap`` resamples, files). Sequential and
stacked alternate ``--repeats`` times and the best of each is kept, so other load on the machine
biases neither. TensorBoard and wandb are off: they cost the same per run either way.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.experiment import open_run  # noqa: E402
from training.stacking import train_together  # noqa: E402
from utils.config import config_from_mapping  # noqa: E402

SHARES = (0.3, 0.2, 0.1, 0.05, 0.01)
NOISE = 0.83  # paper_adult's ε ≈ 3 level


def run_configs(mode: str, k: int, out: Path, args: argparse.Namespace) -> list:
    """K runs of one stack: seeds 0…K-1 at the paper grid's shares in turn."""
    privacy = ({"mode": "dpsgd", "noise_multiplier": NOISE, "max_grad_norm": 1.0}
               if mode == "dpsgd" else {"mode": "none"})
    if mode == "dpfedavg":  # utils/params_adult_fedavg.yaml's setting, --rounds rounds
        return [config_from_mapping({
            "name": f"{mode}_{i}", "seed": i, "output_dir": str(out), "device": "cpu",
            "data": {"name": "adult", "minority_share": SHARES[i % len(SHARES)]},
            "model": {"name": "mlp", "hidden": [args.hidden]},
            "training": {"batch_size": 16},
            "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.25},
            "federated": {"num_clients": 1000, "client_sample_rate": 0.05, "local_epochs": 2,
                          "rounds": args.rounds, "client_lr": 0.1, "server_momentum": 0.5,
                          "eval_every": 10},
            "evaluation": {"bootstrap_resamples": args.bootstrap},
            "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}},
        }) for i in range(k)]
    return [config_from_mapping({
        "name": f"{mode}_{i}", "seed": i, "output_dir": str(out), "device": "cpu",
        "data": {"name": "adult", "train_size": args.train_size,
                 "minority_share": SHARES[i % len(SHARES)]},
        "model": {"name": "mlp", "hidden": [args.hidden]},
        "training": {"epochs": args.epochs, "batch_size": 256, "optimizer": "adam", "lr": 1e-3},
        "privacy": privacy,
        "evaluation": {"bootstrap_resamples": args.bootstrap},
        "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}},
    }) for i in range(k)]


def measure(mode: str, stacked: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        configs = run_configs(mode, args.k, Path(out), args)
        started = time.perf_counter()
        if stacked:
            sessions = [open_run(config, concurrent=True) for config in configs]
            summaries = train_together(sessions)
        else:
            sessions, summaries = [], []
            for config in configs:
                sessions.append(open_run(config))
                summaries.append(sessions[-1].train_to_end())
        wall = time.perf_counter() - started
    for summary in summaries:
        if not isinstance(summary, dict):
            raise SystemExit(f"a run failed: {summary!r}")
    if stacked and any(s["trainer/info"].get("stacked_runs") != args.k for s in summaries):
        raise SystemExit("the runs were not stacked together")
    trainers = [session.trainer for session in sessions]
    samples = sum(trainer.train_samples for trainer in trainers)
    # A stack's members each record the stack's epoch time: count it once.
    train_s = (trainers[0].train_seconds if stacked else
               sum(trainer.train_seconds for trainer in trainers))
    return {"wall_s": wall, "train_s": train_s, "train_samples_per_s": samples / train_s,
            "epsilon": [s.get("privacy/epsilon") for s in summaries]}


def paper_grid(stack: int | None, out: Path) -> float:
    """Wall time of ``running.py --params configs/paper_adult.yaml`` (60 runs) from a cold start."""
    command = [sys.executable, str(ROOT / "running.py"), "--params",
               str(ROOT / "configs/paper_adult.yaml"), "--set", f"output_dir={out}"]
    if stack:
        command += ["--stack", str(stack)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["dpsgd", "none"],
                        choices=["dpsgd", "none", "dpfedavg"])
    parser.add_argument("--rounds", type=int, default=100, help="DP-FedAvg's rounds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--paper", action="store_true",
                        help="also time the paper_adult grid with and without --stack 8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
               f"threads, torch {torch.__version__}")
    results = []
    for mode in args.modes:
        rounds: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for stacked in (False, True):
                rounds[stacked].append(measure(mode, stacked, args))
        if any(r["epsilon"] != rounds[False][0]["epsilon"] for r in rounds[True]):
            raise SystemExit("stacked and sequential runs report different ε")
        # The best of the repeats for each number on its own (the least disturbed measurement).
        best = {stacked: {"train_samples_per_s": max(r["train_samples_per_s"] for r in runs),
                          "wall_s": min(r["wall_s"] for r in runs),
                          "epsilon": runs[0]["epsilon"], "rounds": runs}
                for stacked, runs in rounds.items()}
        results.append({
            "mode": mode, "k": args.k, "sequential": best[False], "stacked": best[True],
            "throughput_ratio": best[True]["train_samples_per_s"] / best[False]["train_samples_per_s"],
            "wall_ratio": best[False]["wall_s"] / best[True]["wall_s"]})

    print(f"machine: {machine}\n")
    print(f"{args.k} Adult runs (MLP [{args.hidden}], {args.train_size} examples, batch 256, "
          f"{args.epochs} epochs, {args.bootstrap} bootstrap resamples), best of {args.repeats}\n")
    print("| mode | sequential train samples/s | stacked train samples/s | throughput × | "
          "sequential wall s | stacked wall s | wall × |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        seq, stk = r["sequential"], r["stacked"]
        print(f"| {r['mode']} | {seq['train_samples_per_s']:,.0f} | {stk['train_samples_per_s']:,.0f} "
              f"| {r['throughput_ratio']:.2f} | {seq['wall_s']:.1f} | {stk['wall_s']:.1f} "
              f"| {r['wall_ratio']:.2f} |")
    report = {"machine": machine, "torch": torch.__version__, "args": {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "results": results}
    if args.paper:
        out = Path(tempfile.mkdtemp())
        try:
            alone = paper_grid(None, out / "alone")
            stacked = paper_grid(8, out / "stacked")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        report["paper_adult"] = {"alone_s": alone, "stack8_s": stacked}
        print(f"\n`configs/paper_adult.yaml` (60 runs, wandb as the file has it): {alone:.0f} s "
              f"one by one, {stacked:.0f} s with --stack 8 ({alone / stacked:.2f}×)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

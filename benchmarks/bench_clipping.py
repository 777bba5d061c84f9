"""Training throughput of every clipping rule (``privacy.clipping``) against flat, in one process.

    python benchmarks/bench_clipping.py [--rounds 5] [--share 0.5] [--device cpu] [--json out.json]

The setting is ``configs/dp_mitigation_adult.yaml``'s (fair-dp's Adult: MLP 256-256 tanh, batch 256,
SGD, σ 1, C 0.5, 19,000 training examples, the real Adult data) under DP-SGD on the fast engine.
One trainer per rule is built on the same data and initialization; then each round trains every
rule one epoch (Poisson batches, the trainer's own loop: groups, the rule's releases, the per-group
diagnostics, noise, the accountant), rule after rule, so that the machine's load falls on all of
them alike. Reported per rule: examples per second (the trainer's ``train_samples`` over
``train_seconds`` of the round; median over rounds) and the ratio of its time per example to
flat's within each round (median over rounds; > 1 is slower than flat). Prints a Markdown table
and, with ``--json``, writes it with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privacy.clipping import RULES  # noqa: E402
from training.experiment import build_components  # noqa: E402
from training.validation import validated_config  # noqa: E402
from utils.config import GRID_KEYS  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

STUDY = ROOT / "configs" / "dp_mitigation_adult.yaml"
LEARNING_RATES = {"global": 0.2, "global_adapt": 0.2}  # fair-dp's, as in the study


def trainer_for(rule: str, share: float, rounds: int, device: str):
    raw = {key: value for key, value in yaml.safe_load(STUDY.read_text()).items()
           if key not in GRID_KEYS}
    raw["name"], raw["device"] = f"bench_{rule}", device
    raw["data"]["minority_share"] = share
    raw["training"].update(epochs=rounds, lr=LEARNING_RATES.get(rule, 0.01))
    raw["privacy"].update(mode="dpsgd", clipping=rule)
    raw["logging"] = {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"}
    config = validated_config(raw)
    return build_components(config, resolve_device(device))[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rules", nargs="+", default=None, help="default: every registered rule")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rules = args.rules or ["flat", *(name for name in RULES if name != "flat")]
    if rules[0] != "flat":
        parser.error("--rules must start with flat, the reference")
    trainers = {rule: trainer_for(rule, args.share, args.rounds, args.device) for rule in rules}
    rates: dict[str, list[float]] = {rule: [] for rule in rules}
    ratios: dict[str, list[float]] = {rule: [] for rule in rules}
    for unit in range(args.rounds):
        per_example = {}
        for rule, trainer in trainers.items():
            seconds, samples = trainer.train_seconds, trainer.train_samples
            trainer.train_unit(unit)
            seconds, samples = trainer.train_seconds - seconds, trainer.train_samples - samples
            rates[rule].append(samples / seconds)
            per_example[rule] = seconds / samples
        for rule in rules:
            ratios[rule].append(per_example[rule] / per_example["flat"])
    results = [{"rule": rule, "samples_per_s": statistics.median(rates[rule]),
                "time_ratio_to_flat": statistics.median(ratios[rule]),
                "rounds_samples_per_s": rates[rule], "rounds_ratio": ratios[rule]}
               for rule in rules]
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"share {args.share}, {args.rounds} interleaved rounds of one epoch each")
    print("| rule | examples/s (median) | time per example / flat's (median) |")
    print("|---|---|---|")
    for row in results:
        print(f"| {row['rule']} | {row['samples_per_s']:.0f} | {row['time_ratio_to_flat']:.3f} |")
    if args.json is not None:
        facts = {"device": args.device, "torch": torch.__version__, "python": platform.python_version(),
                 "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "machine": platform.machine(), "share": args.share, "rounds": args.rounds,
                 "results": results}
        args.json.write_text(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

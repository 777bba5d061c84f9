"""``--stack K`` for image models measured: one step of K stacked runs (:class:`training.stacking.
ImageStackedTrainer`) against one step of each of the K runs alone (the fast engine under DP-SGD),
in one process, interleaved rounds.

    python benchmarks/bench_stacking_images.py [--k 4] [--models cnn32 resnet32] [--batch 256]
                                               [--modes dpsgd none] [--rounds 3] [--steps 2]

The runs differ in seed (and under DP-SGD in σ), as a grid's points do; their data are random
uint8 images through CelebA's training transform (random flips), 4 × batch of them, so that the
timings hold no data loading. Each round times ``--steps`` steps of every lone run, then as many
of the stack; the step times are each side's best round (the least disturbed one), and the ratio
is K lone steps over one stacked step (> 1: the stack is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataset.base import DataBundle  # noqa: E402
from dataset.celeba import celeba_transform  # noqa: E402
from models import build_model  # noqa: E402
from training.centralized import CentralizedTrainer  # noqa: E402
from training.stacking import build_stack  # noqa: E402
from utils.config import config_from_mapping  # noqa: E402

# As benchmarks/dp_throughput.py: the CNN at its default width (64), the ResNet at width 16.
MODELS = {"cnn32": (dict(name="cnn"), 32), "resnet32": (dict(name="resnet18", width=16), 32)}


def trainers(model: str, mode: str, k: int, batch: int, steps: int) -> list[CentralizedTrainer]:
    spec, size = MODELS[model]
    rng = np.random.default_rng(0)
    n = 4 * batch
    data = DataBundle(
        x_train=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        y_train=rng.integers(0, 2, n), minority_train=rng.random(n) < 0.2,
        x_test=np.zeros((1, 3, size, size), dtype=np.uint8), y_test=np.zeros(1, dtype=np.int64),
        minority_test=np.zeros(1, dtype=bool), input_shape=(3, size, size),
        transform=celeba_transform)
    out = []
    for i in range(k):
        privacy = ({"mode": "dpsgd", "noise_multiplier": 0.8 + 0.1 * i, "max_grad_norm": 1.0}
                   if mode == "dpsgd" else {"mode": "none"})
        config = config_from_mapping({
            "name": f"bench{i}", "seed": i, "device": "cpu", "model": spec, "privacy": privacy,
            "training": {"epochs": 1000, "batch_size": batch, "steps_per_epoch": steps},
            "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}}})
        torch.manual_seed(i)
        net = build_model(config.model, (3, size, size))
        out.append(CentralizedTrainer(config, net, data, torch.device("cpu")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["dpsgd", "none"], choices=["dpsgd", "none"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print("\n| model | mode | K | batch | one lone step ms | K lone steps ms | one stacked step ms "
          "| stacked speed-up × |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        for mode in args.modes:
            lone = trainers(model, mode, args.k, args.batch, args.steps)
            stack = build_stack(trainers(model, mode, args.k, args.batch, args.steps))
            lone_times, stacked_times = [], []
            for r in range(args.rounds):
                started = time.perf_counter()
                for trainer in lone:
                    trainer.train_unit(r)
                lone_times.append((time.perf_counter() - started) / args.steps)
                started = time.perf_counter()
                stack.train_unit(r)
                stacked_times.append((time.perf_counter() - started) / args.steps)
            k_lone, stacked = min(lone_times) * 1e3, min(stacked_times) * 1e3
            print(f"| {model} | {mode} | {args.k} | {args.batch} | {k_lone / args.k:.0f} | "
                  f"{k_lone:.0f} | {stacked:.0f} | {k_lone / stacked:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

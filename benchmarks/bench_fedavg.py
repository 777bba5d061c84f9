"""Rounds per second of DP-FedAvg: clients trained side by side (vmap) against one after another.

    python benchmarks/bench_fedavg.py [--clients 50] [--client-size 30] [--rounds 30] [--threads N]

The setting is Adult-sized: 50 clients per round (every client of 50 takes part, q = 1, so every
round has exactly 50), about 30 examples each, 103 features, the MLP with one hidden layer of 200,
the local schedule of utils/params_adult_fedavg.yaml (2 local epochs, batches of 16). Both
implementations run in the same process on the same data and seed, on the CPU and, when present,
on CUDA. A round is the whole of ``FederatedTrainer.train_unit``: sampling, local training,
clip-and-noise and the server step.

Each implementation is timed over several blocks of rounds, taken in turns, and the table shows
the best block (the least disturbed by other work on the machine) and the median. On a CPU with few
cores, another process competing for them slows the batched path most (its matrix products use
every thread), so benchmark on a quiet machine or pass ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.base import DataBundle
from models.mlp import MLP
from training.federated import FederatedTrainer
from utils.config import FederatedConfig, PrivacyConfig


def synthetic_adult(clients: int, client_size: int, features: int, seed: int = 0) -> DataBundle:
    """Random standardized features and a linear label, sized like Adult split over clients."""
    rng = np.random.default_rng(seed)
    n = clients * client_size
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x @ rng.normal(size=features) > 0).astype(np.int64)
    minority = rng.random(n) < 0.1
    return DataBundle(x, y, minority, x[:100], y[:100], minority[:100], (features,))


def make_trainer(data: DataBundle, device: str, vectorized: bool, args) -> FederatedTrainer:
    torch.manual_seed(0)
    federated = FederatedConfig(num_clients=args.clients, client_sample_rate=1.0,
                                local_epochs=args.local_epochs, rounds=args.rounds, client_lr=0.1)
    privacy = PrivacyConfig(mode="dpfedavg", max_grad_norm=0.5, delta=1e-5, noise_multiplier=1.0)
    return FederatedTrainer(MLP(data.input_shape[0], args.hidden), data, device,
                            federated=federated, privacy=privacy, batch_size=args.batch_size,
                            vectorized=vectorized)


def timed_rounds(trainer: FederatedTrainer, rounds: int, device: str) -> float:
    """Rounds per second over ``rounds`` consecutive rounds."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for unit in range(rounds):
        trainer.train_unit(unit)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rounds / (time.perf_counter() - started)


def measure(data: DataBundle, device: str, args) -> dict[str, list[float]]:
    """Rounds/s of each implementation over ``args.repeats`` blocks, taken in turns so that a
    passing load on the machine hits both alike."""
    trainers = {"batched": make_trainer(data, device, True, args),
                "loop": make_trainer(data, device, False, args)}
    for trainer in trainers.values():
        timed_rounds(trainer, args.warmup, device)
    speeds: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            speeds[name].append(timed_rounds(trainer, args.rounds, device))
    return speeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="clients per round")
    parser.add_argument("--client-size", type=int, default=30, help="examples per client")
    parser.add_argument("--features", type=int, default=103, help="input features (Adult: 103)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[200])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = synthetic_adult(args.clients, args.client_size, args.features)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    steps = args.local_epochs * -(-args.client_size // args.batch_size)
    print(f"{args.clients} clients/round x {args.client_size} examples, MLP {args.features}-"
          f"{'-'.join(map(str, args.hidden))}-1, {steps} local steps per client, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"best (median) of {args.repeats} blocks of {args.rounds} rounds")
    print(f"{'device':<8} {'batched r/s':>16} {'loop r/s':>16} {'speed-up':>9}")
    for device in devices:
        speeds = measure(data, device, args)
        cells = {name: f"{max(v):.1f} ({statistics.median(v):.1f})" for name, v in speeds.items()}
        ratio = max(speeds["batched"]) / max(speeds["loop"])
        print(f"{device:<8} {cells['batched']:>16} {cells['loop']:>16} {ratio:>8.1f}x")

if __name__ == "__main__":
    main()

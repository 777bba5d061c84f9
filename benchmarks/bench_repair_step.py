"""The cost of one training step of each repair method against a Vanilla step on the same batch.

    python benchmarks/bench_repair_step.py [--batch 1000] [--repeats 50] [--rounds 15] [--device auto]

RUNNER's settings (MLP 200-200, Adam lr 1e-3, batch 1,000, RUNNER's 120 inputs), one step =
forward, the method's loss, backward and the optimizer step. After a warm-up every method's
blocks of ``--repeats`` steps are interleaved for ``--rounds`` rounds; the table gives the median
time and the median of each round's ratio to Vanilla. The released RUNNER code deep-copies the
model every step; this project's runner computes the neuron importance with one extra backward
pass of the fairness loss.
Prints a Markdown table of milliseconds per step and the ratio to Vanilla.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import build_model  # noqa: E402
from training.repair import METHODS  # noqa: E402
from training.repair.base import Batch  # noqa: E402
from utils.config import ModelConfig  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

INPUTS = 120


def make_step(name: str, target: str, x, y, minority, device):
    """One training step of ``name`` on the fixed batch, as a closure (model and optimizer inside)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[200, 200]), (INPUTS,)).to(device)
    method = METHODS.get(name)(METHODS.get(name).Settings(), target=target,
                               rng=np.random.default_rng(0))
    activations: dict[str, torch.Tensor] = {}
    for layer, module in method.hidden_layers(model).items() if method.wants_activations else ():
        module.register_forward_hook(lambda m, i, o, layer=layer: activations.__setitem__(layer, o))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.ones(len(y), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(x).reshape(-1)
        batch = Batch(logits=logits, targets=y, minority=minority, weights=weights,
                      losses=F.binary_cross_entropy_with_logits(logits, y, reduction="none"),
                      activations=activations)
        method.loss(batch, model).total().backward()
        optimizer.step()

    return step


def block_seconds(step, device, repeats: int) -> float:
    """Seconds per step over one block of ``repeats`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def measure(target: str, x, y, minority, device, repeats: int, rounds: int
            ) -> dict[str, tuple[float, float]]:
    """Per method: (median seconds per step, median ratio to Vanilla). The methods' blocks are
    interleaved round by round and each ratio is taken within its round, so a slow spell of a
    shared machine slows both sides of a ratio instead of biasing it."""
    steps = {name: make_step(name, target, x, y, minority, device) for name in METHODS}
    for step in steps.values():  # warm-up: allocator, kernels, Adam's state
        for _ in range(10):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(block_seconds(step, device, repeats))
    base = np.array(seconds["none"])
    return {name: (float(np.median(times)), float(np.median(np.array(times) / base)))
            for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=50, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved blocks per method")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, INPUTS, generator=generator).round().to(device)
    y = (torch.rand(args.batch, generator=generator) < 0.25).float().to(device)
    minority = (torch.rand(args.batch, generator=generator) < 0.33).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"device {name}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"MLP {INPUTS}-200-200-1, batch {args.batch}; median of {args.rounds} interleaved "
          f"blocks of {args.repeats} steps\n")
    print("| method | target | ms per step | × Vanilla |")
    print("| --- | --- | --- | --- |")
    for target in ("dp", "eo"):
        for method, (seconds, ratio) in measure(target, x, y, minority, device, args.repeats,
                                                args.rounds).items():
            print(f"| {method} | {target} | {1000 * seconds:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

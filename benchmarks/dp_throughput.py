"""DP-SGD throughput: non-private training, Opacus' hooks, Opacus' ghost clipping and this project's
fast engine, side by side, in one process, on the same device and data.

    python benchmarks/dp_throughput.py [--device auto] [--steps 30] [--rounds 3] [--batches 32 256 1024]
                                       [--models mlp cnn32 ...] [--json out.json] [--baseline REV]

(``--baseline REV`` also times the fast engine as committed at git REV, ``fast@REV``: before and
after a change to privacy/fast_dpsgd.py in one process. On a CPU shared with other jobs, run it
with ``OMP_NUM_THREADS=1``: OpenMP threads spin against other processes and make steps erratic.)

For each model and batch size, every variant trains ``--rounds`` interleaved rounds of ``--steps``
steps (after 3 of warm-up) of Adam on the same fixed random batch (inputs of the model's data shape; the step's cost does not
depend on the values): forward, the mean cross-entropy, backward, the engine's clipping and noise,
the optimizer step. Reported: samples per second (median over rounds), the ratio to non-private
(median of the ratios within each round), and peak memory
(``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the growth of the process's peak resident
set, reset before each variant through /proc/self/clear_refs). Prints a Markdown table and writes
the same as JSON with the device, versions and dtype.

``fast padded`` is the fast engine on a padded physical batch (``training.pad_batches``: the batch
plus 4 standard deviations of its binomial at q = 1/100, 320 rows for 256, the padding masked out).

``fast`` is the engine as the trainer runs it: for an MLP the pass written out and its
records handed to the engine (``trainer/info.dp_step``, :mod:`training.mlp_pass`), for every other
model a forward and backward pass through the engine's hooks. ``fast hooks`` (opt-in) is the
engine through its hooks on every model; ``fast@REV`` runs each revision's engine as it ran then
(the pass written out only where the revision has ``record_pass``).

Models: ``mlp`` (Adult's shape: 104 inputs, one hidden layer of 200), ``cnn32`` / ``cnn64`` (the
registry's CNN at 32 / 64 px), ``resnet64`` / ``resnet128`` (the GroupNorm ResNet-18); the default
list is the CPU's (mlp, cnn32, resnet32 at width 16) or the GPU's (all, width 64).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import build_model  # noqa: E402
from privacy import dpsgd, fast_dpsgd  # noqa: E402
from training.mlp_pass import mlp_activation, mlp_pass  # noqa: E402
from utils.config import ModelConfig, PrivacyConfig  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

MODELS = {  # name -> (model config, input shape)
    "mlp": (dict(name="mlp", hidden=[200]), (104,)),
    "cnn32": (dict(name="cnn"), (3, 32, 32)),
    "cnn64": (dict(name="cnn"), (3, 64, 64)),
    "resnet32": (dict(name="resnet18", width=16), (3, 32, 32)),
    "resnet64": (dict(name="resnet18", width=64), (3, 64, 64)),
    "resnet128": (dict(name="resnet18", width=64), (3, 128, 128)),
}
CPU_MODELS = ["mlp", "cnn32", "resnet32"]
GPU_MODELS = ["mlp", "cnn32", "cnn64", "resnet64", "resnet128"]
VARIANTS = ["non-private", "opacus hooks", "opacus ghost", "fast", "fast padded"]
# Opt-in: the fast engine through its hooks where the trainer writes the pass out (MLPs).
EXTRA_VARIANTS = ["fast hooks"]


def _peak_rss_reset() -> int:
    """Reset the peak resident set to the current one (Linux) and return it, in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except OSError:
        return 0


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def engine_at(revision: str):
    """The fast engine's module as committed at git ``revision`` (privacy/fast_dpsgd.py only; its
    imports resolve to the working tree), for before/after ratios taken in one process."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "show", f"{revision}:privacy/fast_dpsgd.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"fast_dpsgd_at_{revision}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{revision}:privacy/fast_dpsgd.py", "exec"), module.__dict__)
    return module


ENGINES = {"fast": fast_dpsgd}  # variant -> engine module; --baseline adds "fast@REV"


def make_step(variant: str, model_config: dict, shape, batch: int, device):
    """A closure running one training step of ``variant``, with its model and engine."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**model_config), shape).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, *shape, device=device)
    y = (torch.rand(batch, device=device) < 0.5).float()
    # The batch is fixed; q = batch / N with N = 100 batches, so the scaling is DP-SGD's.
    loader = dpsgd.index_loader(100 * batch, batch, shuffle=False)
    config = PrivacyConfig(mode="dpsgd", noise_multiplier=1.0, max_grad_norm=1.0)
    noise = torch.Generator(device=device).manual_seed(1)
    criterion = torch.nn.BCEWithLogitsLoss()

    if variant == "non-private":
        def step():
            optimizer.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(x).reshape(-1), y).backward()
            optimizer.step()
    elif variant == "fast padded":
        # training.pad_batches: the batch padded to the default physical size at q = 1/100
        # (256 -> 320 rows), the padding masked out; the cost of static shapes.
        private = fast_dpsgd.make_private(model, optimizer, loader, config, epochs=1,
                                          noise_generator=noise)
        rows = fast_dpsgd.physical_capacity(batch, 1 / 100)
        private.use_static_shapes(rows)
        padded_x = torch.cat([x, torch.randn(rows - batch, *shape, device=device)])
        padded_y = torch.cat([y, torch.zeros(rows - batch, device=device)])
        mask = torch.arange(rows, device=device) < batch

        def step():
            private.optimizer.zero_grad(set_to_none=True)
            private.set_padding(mask)
            losses = F.binary_cross_entropy_with_logits(private.module(padded_x).reshape(-1),
                                                        padded_y, reduction="none")
            private.padded_loss(losses).backward()
            private.accumulate()
            private.optimizer.step()
    elif variant in ENGINES or variant == "fast hooks":
        engine = ENGINES.get(variant, fast_dpsgd)
        private = engine.make_private(model, optimizer, loader, config, epochs=1,
                                      noise_generator=noise)
        activation = mlp_activation(model)
        if variant != "fast hooks" and hasattr(private, "record_pass") and activation:
            # What the trainer runs for an MLP (trainer/info.dp_step: written out): the pass
            # written out, its records handed to the engine (training.mlp_pass).
            params, weights = list(model.parameters()), torch.ones_like(y)

            def step():
                private.optimizer.zero_grad(set_to_none=True)
                logits, inputs, deltas = mlp_pass(params, x, y, weights, activation)
                F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # the logged loss
                private.record_pass(inputs, deltas)
                private.optimizer.step()
        else:
            def step():
                private.optimizer.zero_grad(set_to_none=True)
                F.binary_cross_entropy_with_logits(private.module(x).reshape(-1), y).backward()
                private.optimizer.step()
    else:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        mode = "hooks" if variant == "opacus hooks" else "ghost"
        wrapped = engine.make_private(module=model, optimizer=optimizer, criterion=criterion,
                                      data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
                                      poisson_sampling=False, grad_sample_mode=mode,
                                      noise_generator=noise)
        if mode == "hooks":
            module, dp_optimizer, _ = wrapped

            def step():
                dp_optimizer.zero_grad(set_to_none=True)
                F.binary_cross_entropy_with_logits(module(x).reshape(-1), y).backward()
                dp_optimizer.step()
        else:
            module, dp_optimizer, dp_criterion, _ = wrapped

            def step():
                dp_optimizer.zero_grad(set_to_none=True)
                dp_criterion(module(x).reshape(-1), y).backward()
                dp_optimizer.step()
    return step


def sync(device) -> None:
    """Wait for the device's queued work (a CUDA step returns before it is done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict, device, count: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each closure, ``rounds`` rounds of ``count`` steps, variant after
    variant within a round (other load hits them alike)."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            started = time.perf_counter()
            for _ in range(count):
                step()
            sync(device)
            times[name].append((time.perf_counter() - started) / count)
    return times


def measure(name: str, batch: int, device, steps: int, rounds: int, variants: list[str]) -> list[dict]:
    """Every variant of one model and batch size: peak memory while each is built and warmed up,
    then ``rounds`` interleaved timings of ``steps`` steps (variant after variant, so that other
    load on the machine hits all of them alike); samples/s is the median over rounds, and the ratio
    to non-private the median of the ratios taken within each round."""
    model_config, shape = MODELS[name]
    built, results = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant in variants:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                base = _peak_rss_reset()
            step = make_step(variant, model_config, shape, batch, device)
            for _ in range(3):
                step()
            sync(device)
            peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                    else _status("VmHWM")) - base
            built[variant] = step
            results[variant] = {"model": name, "batch": batch, "variant": variant,
                                "peak_memory_mib": max(peak, 0) / 2**20, "rounds": []}
        for variant, seconds in time_interleaved(built, device, steps, rounds).items():
            results[variant]["rounds"] = [batch / per_step for per_step in seconds]
    for result in results.values():
        result["samples_per_s"] = float(np.median(result["rounds"]))
        if "non-private" in results:
            reference = results["non-private"]["rounds"]
            result["ratio_to_non_private"] = float(np.median(
                [mine / base for mine, base in zip(result["rounds"], reference)]))
    return list(results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS + EXTRA_VARIANTS,
                        default=VARIANTS)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also time the fast engine as committed at git REV (variant fast@REV)")
    args = parser.parse_args()
    if args.baseline:
        ENGINES[f"fast@{args.baseline}"] = engine_at(args.baseline)
        args.variants = [*args.variants, f"fast@{args.baseline}"]
    device = resolve_device(args.device)
    names = args.models or (GPU_MODELS if device.type == "cuda" else CPU_MODELS)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    import opacus

    # The date and the load at the start: timings on a shared machine mean little without them.
    header = {"device": machine, "torch": torch.__version__, "opacus": opacus.__version__,
              "dtype": "float32", "steps": args.steps, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "baseline": args.baseline,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    print(f"{machine}; torch {torch.__version__}, opacus {opacus.__version__}, float32; median of "
          f"{args.rounds} interleaved rounds of {args.steps} steps\n")
    print("| model | batch | " + " | ".join(f"{v} samples/s (×, MiB)" for v in args.variants) + " |")
    print("| --- | --- |" + " --- |" * len(args.variants))
    rows = []
    for name in names:
        for batch in args.batches:
            results = measure(name, batch, device, args.steps, args.rounds, args.variants)
            rows += results
            cells = []
            for result in results:
                ratio = result.get("ratio_to_non_private")
                cells.append(f"{result['samples_per_s']:,.0f}"
                             + (f" ({ratio:.2f}×" if ratio is not None else " (")
                             + f", {result['peak_memory_mib']:.0f})")
            print(f"| {name} | {batch} | " + " | ".join(cells) + " |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({**header, "results": rows}, indent=2))
    fast = {(r["model"], r["batch"]): r for r in rows if r["variant"] == "fast"}
    hooks = {(r["model"], r["batch"]): r for r in rows if r["variant"] == "opacus hooks"}
    speedups = [fast[k]["samples_per_s"] / hooks[k]["samples_per_s"] for k in fast if k in hooks]
    if speedups:
        print(f"\nfast / Opacus hooks: {np.min(speedups):.2f}× to {np.max(speedups):.2f}×")


if __name__ == "__main__":
    main()

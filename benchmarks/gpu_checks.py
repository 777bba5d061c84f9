"""Every GPU check and GPU benchmark of issue 30, one command, one JSON.

    python benchmarks/gpu_checks.py --out results.json [--device auto] [--quick] [--compile]
                                    [--skip-tests] [--steps 20] [--rounds 3]

Runs, on the device:

1. **checks**: every ``gpu``-marked test (``pytest -m gpu``; on a CPU they skip, and the JSON says
   so), outcome by test;
2. **throughput** at batch 256: non-private, Opacus' hooks, the fast engine and the fast engine on
   padded physical batches (``training.pad_batches``: the batch plus 4 standard deviations of its
   binomial at q = 1/100, so 320 rows for 256), for the CNN at 64 px and the GroupNorm ResNet-18
   (width 64) at 128 px (:mod:`benchmarks.dp_throughput`'s interleaved rounds);
3. **the paper's CelebA step** (ResNet-18 GroupNorm width 64, 128 px, batch 32, Adam): non-private
   fp32 and bf16; the fast engine fp32, padded fp32, padded bf16, padded bf16 channels-last, padded
   bf16 as one CUDA graph (CUDA only), padded compiled (``--compile`` on a CPU, always on CUDA):
   milliseconds per step and the ratio to non-private fp32, from interleaved rounds;
4. **the paper's run time** (ResNet-18, 128 px, 24,000 images, 60 epochs, expected batch 32: 45,000
   Poisson steps): a timed fraction of an epoch of the real loop on fake uint8 images held on the
   device (Poisson sampling, physical batches, gather, scaling to [0, 1], the DP step), for the
   fp32 fast engine and the padded bf16 one, extrapolated to the whole run (training only: the
   evaluation passes are not included), and the CUDA graph's step time times 45,000.

``--quick`` shrinks everything to seconds (the MLP and a 32-px CNN at batch 8, a width-8 ResNet at
32 px, a 480-image run) so that the command itself is tested on a CPU; its numbers mean nothing.
The JSON holds the device, the versions, the date and load, every measurement and every ratio
(``ratios``: flat ``section/name`` keys).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ElementTree
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import dp_throughput  # noqa: E402

from models import build_model  # noqa: E402
from privacy import dpsgd, fast_dpsgd  # noqa: E402
from utils.config import ModelConfig, PrivacyConfig  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

PAPER = {"model": dict(name="resnet18", width=64), "shape": (3, 128, 128), "batch": 32,
         "images": 24_000, "epochs": 60}
QUICK_PAPER = {"model": dict(name="resnet18", width=8), "shape": (3, 32, 32), "batch": 8,
               "images": 480, "epochs": 60}
THROUGHPUT_MODELS = ["cnn64", "resnet128"]
QUICK_THROUGHPUT_MODELS = ["mlp", "cnn32"]
# (name, private, padded, bf16, channels_last, compiled, graphed)
STEP_VARIANTS = [
    ("non-private fp32", False, False, False, False, False, False),
    ("non-private bf16", False, False, True, False, False, False),
    ("fast fp32", True, False, False, False, False, False),
    ("fast padded fp32", True, True, False, False, False, False),
    ("fast padded bf16", True, True, True, False, False, False),
    ("fast padded bf16 channels_last", True, True, True, True, False, False),
    ("fast padded bf16 cuda graph", True, True, True, False, False, True),
    ("fast padded compiled", True, True, False, False, True, False),
]


def header(device: torch.device, quick: bool) -> dict:
    import opacus

    return {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "opacus": opacus.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "quick": quick,
    }


def run_gpu_tests() -> dict:
    """``pytest -m gpu`` in a subprocess; the outcome of every test (skipped without a GPU)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", str(ROOT / "tests")], cwd=ROOT, capture_output=True,
            text=True)
        seconds = time.perf_counter() - started
        cases = {}
        if report.exists():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = "failed" if child.tag == "error" else child.tag
                cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    counts = {key: sum(1 for value in cases.values() if value == key)
              for key in ("passed", "failed", "skipped")}
    return {"command": "pytest -m gpu tests", "exit_code": result.returncode, "seconds": seconds,
            **counts, "cases": cases, "tail": result.stdout[-2000:]}


def build_step(model_config: dict, shape, batch: int, num_examples: int, device, *,
               private: bool, padded: bool, bf16: bool, channels_last: bool, compiled: bool,
               graphed: bool, noise_multiplier: float = 1.0):
    """One training step of the variant on a fixed random batch of ``batch`` examples (Adam; DP-SGD
    at q = batch / num_examples, σ = 1, C = 1), as a closure. Padded: the batch in one physical
    batch of the default capacity (:func:`privacy.fast_dpsgd.physical_capacity`), the rest
    masked. Graphed: the whole step (forward, backward, clipping, noise, Adam) captured once as a
    CUDA graph and replayed (the accountant's Python step is recorded at capture only). Returns
    the closure and the model it trains."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**model_config), shape).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3,
                                 **({"capturable": True} if graphed else {}))
    sample_rate = batch / num_examples
    rows = fast_dpsgd.physical_capacity(batch, sample_rate) if padded else batch
    x = torch.randn(rows, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(rows, device=device) < 0.5).float()
    mask = torch.arange(rows, device=device) < batch
    precision = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    forward = torch.compile(model) if compiled else model

    if not private:
        def step():
            optimizer.zero_grad(set_to_none=True)
            with precision():
                logits = forward(x).reshape(-1).float()
            F.binary_cross_entropy_with_logits(logits, y).backward()
            optimizer.step()
        return step, model

    loader = dpsgd.index_loader(num_examples, batch, shuffle=False)
    noise = torch.Generator(device=device).manual_seed(1)
    engine = fast_dpsgd.make_private(model, optimizer, loader,
                                     PrivacyConfig(mode="dpsgd", noise_multiplier=noise_multiplier,
                                                   max_grad_norm=1.0),
                                     epochs=1, noise_generator=noise)
    if padded:
        engine.use_static_shapes(rows, compiled=compiled)

        def step():
            engine.optimizer.zero_grad(set_to_none=True)
            engine.set_padding(mask)
            with precision():
                logits = forward(x).reshape(-1).float()
            engine.padded_loss(F.binary_cross_entropy_with_logits(logits, y,
                                                                  reduction="none")).backward()
            engine.accumulate()
            engine.optimizer.step()
    else:
        def step():
            engine.optimizer.zero_grad(set_to_none=True)
            with precision():
                logits = forward(x).reshape(-1).float()
            F.binary_cross_entropy_with_logits(logits, y).backward()
            engine.optimizer.step()
    if not graphed:
        return step, model
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up outside the graph (Adam's state, cuBLAS workspaces)
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(noise)  # the noise's draws advance on every replay
    with torch.cuda.graph(graph):
        step()
    return graph.replay, model


def paper_step(paper: dict, device, count: int, rounds: int, compile_on_cpu: bool) -> dict:
    """Section 3: ms per step and the ratio to non-private fp32, each from interleaved rounds."""
    built, skipped = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, private, padded, bf16, channels_last, compiled, graphed in STEP_VARIANTS:
            if graphed and device.type != "cuda":
                skipped[name] = "needs CUDA"
                continue
            if compiled and device.type != "cuda" and not compile_on_cpu:
                skipped[name] = "compiling takes minutes on a CPU: pass --compile"
                continue
            step, _ = build_step(paper["model"], paper["shape"], paper["batch"], paper["images"],
                              device, private=private, padded=padded, bf16=bf16,
                              channels_last=channels_last, compiled=compiled, graphed=graphed)
            for _ in range(3):  # warm-up (and compilation)
                step()
            built[name] = step
    times = dp_throughput.time_interleaved(built, device, count, rounds)
    reference = times["non-private fp32"]
    rows = {name: {"ms_per_step": 1e3 * float(np.median(seconds)),
                   "ratio_to_non_private_fp32": float(np.median(
                       [base / mine for mine, base in zip(seconds, reference)]))}
            for name, seconds in times.items()}
    return {"model": paper["model"], "shape": list(paper["shape"]), "batch": paper["batch"],
            "steps_per_round": count, "rounds": rounds, "variants": rows, "skipped": skipped}


def paper_run_estimate(paper: dict, device, steps: int, best_ms: float | None) -> dict:
    """Section 4: the real Poisson loop on fake images for ``steps`` steps, extrapolated."""
    num_examples, batch, shape = paper["images"], paper["batch"], paper["shape"]
    sample_rate = batch / num_examples
    steps_per_epoch = round(1 / sample_rate)
    total_steps = paper["epochs"] * steps_per_epoch
    images = torch.randint(0, 256, (num_examples, *shape), dtype=torch.uint8, device=device)
    labels = (torch.rand(num_examples, device=device) < 0.5).float()
    out = {"images": num_examples, "image_shape": list(shape), "expected_batch": batch,
           "epochs": paper["epochs"], "steps_per_epoch": steps_per_epoch,
           "total_steps": total_steps, "timed_steps": steps, "variants": {}}
    for name, padded, bf16 in (("fast fp32", False, False), ("fast padded bf16", True, True)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(**paper["model"]), shape).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = dpsgd.index_loader(num_examples, batch, shuffle=False)
        private = fast_dpsgd.make_private(
            model, optimizer, loader, PrivacyConfig(mode="dpsgd", noise_multiplier=1.0,
                                                    max_grad_norm=1.0),
            epochs=paper["epochs"], noise_generator=torch.Generator(device=device).manual_seed(1))
        if padded:
            private.use_static_shapes(fast_dpsgd.physical_capacity(batch, sample_rate))
        poisson = fast_dpsgd.PoissonIndexLoader(num_examples, sample_rate, steps + 3,
                                                torch.Generator().manual_seed(2))
        precision = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16
                     else nullcontext)
        started = None
        for step, (indices,) in enumerate(poisson):
            if step == 3:  # after three warm-up steps
                dp_throughput.sync(device)
                started = time.perf_counter()
            indices = indices.to(device)
            private.optimizer.zero_grad(set_to_none=True)
            if padded:
                for rows, mask in private.physical_batches(indices):
                    private.set_padding(mask)
                    with precision():
                        logits = model(images[rows].float().div_(255)).reshape(-1).float()
                    private.padded_loss(F.binary_cross_entropy_with_logits(
                        logits, labels[rows], reduction="none")).backward()
                    private.accumulate()
            else:
                logits = model(images[indices].float().div_(255)).reshape(-1)
                F.binary_cross_entropy_with_logits(logits, labels[indices]).backward()
            private.optimizer.step()
        dp_throughput.sync(device)
        seconds = (time.perf_counter() - started) / steps
        out["variants"][name] = {"ms_per_step": 1e3 * seconds,
                                 "estimated_run_s": seconds * total_steps,
                                 "under_10_minutes": seconds * total_steps < 600}
    if best_ms is not None:
        out["variants"]["fast padded bf16 cuda graph (step time x steps)"] = {
            "ms_per_step": best_ms, "estimated_run_s": best_ms / 1e3 * total_steps,
            "under_10_minutes": best_ms / 1e3 * total_steps < 600}
    return out


def throughput(names: list[str], batch: int, device, count: int, rounds: int) -> list[dict]:
    """Section 2, through dp_throughput's harness (plus its padded variant)."""
    rows = []
    for name in names:
        rows += dp_throughput.measure(name, batch, device, count, rounds,
                                      ["non-private", "opacus hooks", "fast", "fast padded"])
    return rows


def ratios_of(report: dict) -> dict[str, float]:
    """Every ratio of the report, flat."""
    ratios = {}
    by = {(row["model"], row["variant"]): row for row in report["throughput"]}
    for (model, variant), row in by.items():
        ratios[f"throughput/{model}/{variant}/to_non_private"] = row["ratio_to_non_private"]
        if variant != "opacus hooks" and (model, "opacus hooks") in by:
            ratios[f"throughput/{model}/{variant}/to_opacus_hooks"] = (
                row["samples_per_s"] / by[(model, "opacus hooks")]["samples_per_s"])
        if variant == "fast padded":
            ratios[f"throughput/{model}/fast padded/to_fast"] = (
                row["samples_per_s"] / by[(model, "fast")]["samples_per_s"])
    for name, row in report["paper_step"]["variants"].items():
        ratios[f"paper_step/{name}/to_non_private_fp32"] = row["ratio_to_non_private_fp32"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a test of the command")
    parser.add_argument("--compile", action="store_true",
                        help="also the compiled variant on a CPU (minutes of compiling)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    quick = args.quick
    steps = args.steps or (2 if quick else 20)
    report = header(device, quick)
    print(f"{report['device']}; torch {report['torch']}; {'quick' if quick else 'full'} mode",
          flush=True)
    report["checks"] = ({"skipped": "--skip-tests"} if args.skip_tests else run_gpu_tests())
    if not args.skip_tests:
        print(f"checks: {report['checks']['passed']} passed, {report['checks']['failed']} failed, "
              f"{report['checks']['skipped']} skipped", flush=True)
    batch = 8 if quick else 256
    report["throughput"] = throughput(QUICK_THROUGHPUT_MODELS if quick else THROUGHPUT_MODELS,
                                      batch, device, steps, args.rounds)
    for row in report["throughput"]:
        print(f"throughput {row['model']} {row['batch']} {row['variant']}: "
              f"{row['samples_per_s']:,.0f} samples/s ({row['ratio_to_non_private']:.2f}x)",
              flush=True)
    paper = QUICK_PAPER if quick else PAPER
    report["paper_step"] = paper_step(paper, device, steps, args.rounds, args.compile)
    for name, row in report["paper_step"]["variants"].items():
        print(f"paper step {name}: {row['ms_per_step']:.2f} ms "
              f"({row['ratio_to_non_private_fp32']:.2f}x non-private fp32)", flush=True)
    graph = report["paper_step"]["variants"].get("fast padded bf16 cuda graph")
    report["paper_run"] = paper_run_estimate(paper, device, 3 if quick else 100,
                                             graph["ms_per_step"] if graph else None)
    for name, row in report["paper_run"]["variants"].items():
        print(f"paper run {name}: {row['ms_per_step']:.2f} ms/step, estimated "
              f"{row['estimated_run_s'] / 60:.1f} min", flush=True)
    report["ratios"] = ratios_of(report)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Share of a CelebA training epoch spent waiting for data, under DP-SGD.

The training images live on the device as uint8; a batch is a gather by index plus the on-device
transform (float, normalize, random flip). This measures, for one epoch of the trainer:

* the epoch's wall time through ``CentralizedTrainer.train_unit`` (DP-SGD, Poisson sampling), and
* the time of the data path alone: one more pass over the trainer's own loader (Opacus' Poisson
  sampler drawing the indices, their collation and copy to the device), each batch gathered from
  the device-resident uint8 images and transformed, synchronized, with no model,

and reports data time / epoch time. The pixels are random: the data path's cost depends on shapes,
not content, and the JPEG decoding is paid once by the cache (``bench_celeba_preprocess.py``).

    python benchmarks/bench_celeba_epoch.py --paper          # 24,000 images, 128 px, ResNet-18, batch 32 (GPU)
    python benchmarks/bench_celeba_epoch.py                  # a CPU-sized default: 1,024 images, 64 px, cnn
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.base import DataBundle, gather_rows  # noqa: E402
from dataset.celeba import celeba_transform  # noqa: E402
from models import build_model  # noqa: E402
from training import build_trainer  # noqa: E402
from utils.config import config_from_mapping  # noqa: E402
from utils.seeding import resolve_device, seed_global_generators  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="the paper's sizes (24,000 × 128 px, resnet18, batch 32)")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    n, size, model_name = (24_000, 128, "resnet18") if args.paper else (args.n, args.size, args.model)

    config = config_from_mapping({
        "data": {"name": "celeba", "celeba": {"image_size": size}},
        "model": {"name": model_name},
        "training": {"epochs": 1, "batch_size": args.batch_size, "lr": 5e-5, "weight_decay": 5e-4},
        "privacy": {"mode": "dpsgd", "noise_multiplier": 0.7, "max_grad_norm": 5.0, "delta": 1e-6},
        "logging": {"progress": "never"},
    })
    device = resolve_device("auto")
    seed_global_generators(0, "init")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, 2, size=n)
    bundle = DataBundle(x_train=images, y_train=labels, minority_train=rng.random(n) < 0.1,
                        x_test=images[:64], y_test=labels[:64], minority_test=np.zeros(64, bool),
                        input_shape=(3, size, size), transform=celeba_transform)
    trainer = build_trainer(config, build_model(config.model, bundle.input_shape), bundle, device)

    synchronize(device)
    started = time.perf_counter()
    trainer.train_unit(0)
    synchronize(device)
    epoch_s = time.perf_counter() - started
    steps = trainer.privacy_metrics()["privacy/steps"]

    # The data path alone, as the trainer runs it (training/centralized.py), minus the model. Run
    # in isolation it cannot overlap with the GPU's compute, so this is an upper bound on the wait.
    synchronize(device)
    started = time.perf_counter()
    for (indices,) in trainer.loader:
        indices = indices.to(device)
        trainer.transform(gather_rows(trainer.x, indices), True)
    synchronize(device)
    data_s = time.perf_counter() - started

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; {n} images at {size} px on the device; {model_name}; DP-SGD, expected batch "
          f"{args.batch_size}; {steps} steps")
    print(f"epoch {epoch_s:.2f} s ({n / epoch_s:.0f} images/s); data path {data_s:.3f} s "
          f"= {100 * data_s / epoch_s:.2f} % of the epoch")


if __name__ == "__main__":
    main()

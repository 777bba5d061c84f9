"""Throughput of CelebA's one-time pre-processing (decode, center crop, resize, write the cache).

Writes N fake CelebA JPEGs of the real size (178×218, about 8 KB each, near CelebA's 7 KB average;
see tests/celeba_fake.py) into a temporary folder, then times ``dataset.celeba_cache.load_image_cache``
building a fresh cache with each backend: Pillow on a pool of CPU threads (one thread, then all
cores), TorchCodec's and torchvision's ``decode_jpeg`` batched on the CPU, and both on CUDA (nvJPEG)
when there is a GPU. The time
includes reading the files and writing and fsyncing the ``.npy``, i.e. exactly what a first run pays.

    python benchmarks/bench_celeba_preprocess.py [--n 2000] [--sizes 128 64]

To estimate a real run: the protocol caches 30,000 images (6,000 test + 24,000 training), so at
R images/s the first run spends 30,000 / R seconds decoding; later runs memory-map the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for the imports below

from dataset.celeba_cache import available_batch_decoders, load_image_cache, usable_cores
from dataset.celeba_files import IMAGE_FOLDER
from tests.celeba_fake import make_fake_celeba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of fake JPEGs (default 2000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64], help="output sides (default 128 64)")
    args = parser.parse_args()

    cores = usable_cores()
    decoders = available_batch_decoders()
    setups = [("pillow", "cpu", 1), ("pillow", "cpu", cores), *((name, "cpu", 1) for name in decoders)]
    if torch.cuda.is_available():
        setups += [(name, "cuda", 1) for name in decoders]

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        written = make_fake_celeba(Path(folder) / "celeba", n_images=args.n, seed=0)
        image_dir = written["directory"] / IMAGE_FOLDER
        mean_kb = sum(os.path.getsize(image_dir / f) for f in written["filenames"]) / args.n / 1024
        print(f"{args.n} fake JPEGs, {mean_kb:.1f} KB on average, written in {time.perf_counter() - started:.1f} s; "
              f"{cores} usable CPU cores; torch {torch.__version__}")
        if torch.cuda.is_available():
            print(f"GPU: {torch.cuda.get_device_name()}")
        print(f"{'backend':<12} {'device':<7} {'threads':>7} {'size':>5} {'seconds':>8} {'images/s':>9}")
        for size in args.sizes:
            for backend, device, workers in setups:
                # A first call imports torchvision and initializes CUDA and nvJPEG (seconds, once per
                # process); keep that out of the timing.
                load_image_cache(image_dir, written["filenames"][:8], size=size, backend=backend, device=device,
                                 cache_dir=Path(folder) / f"warmup_{backend}_{device}", progress_mode="never")
                cache_dir = Path(folder) / f"cache_{backend}_{device}_{workers}_{size}"
                started = time.perf_counter()
                cache = load_image_cache(image_dir, written["filenames"], size=size, cache_dir=cache_dir,
                                         backend=backend, device=device, workers=workers, progress_mode="never")
                seconds = time.perf_counter() - started
                assert cache.built
                print(f"{backend:<12} {device:<7} {workers:>7} {size:>5} {seconds:>8.2f} {args.n / seconds:>9.0f}")
                cache.path.unlink()


if __name__ == "__main__":
    main()

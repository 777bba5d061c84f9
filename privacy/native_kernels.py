"""The fast engine's native loop for per-example convolution weight gradients on the CPU
(``privacy/native/per_example_conv.c``), built once per process with the machine's C compiler.

Why native code: a convolution's per-example weight gradients are the batch's weight gradient
without the sum over examples, the same multiply-adds, but no library kernel computes them at
that speed. oneDNN's grouped backward-weights kernel (one group per example, the engine's route
before) ran a ResNet-18 stem (3 input channels, 7×7, stride 2, 32 px) at about a fifth of the
batch gradient's speed: 15-17 ms against 3.7 ms at batch 256 on the project's CPU. The C loop keeps
16 output channels × up to 24 kernel taps of sums in vector registers while it runs over each
example's output positions, and took 3.3 ms there; it was faster than the grouped kernel at every
shape measured (0.22 to 0.95 of its time: stems of 16 and 64 channels at 32, 64 and 128 px, 3×3
layers of 3 to 64 channels on 4×4 to 32×32 maps, 1×1, dilated and 11×11 kernels; issue 30,
docs/results/throughput.md).

Building: the source is compiled with ``$CC`` (else Python's configured compiler, else ``cc``),
``-O3 -march=native`` (then plain ``-O3`` if the compiler refuses that), into a private temporary
directory that is removed as soon as the library is loaded; nothing is left on disk and nothing is
written anywhere else. Where no compiler is found or the build fails, :func:`weight_gradients`
returns None and the engine keeps oneDNN's grouped kernel: the same gradients to float rounding
(the two sum in different orders), and :func:`status` says which one a run used (the engine
records it; ``trainer/info.per_example_conv``).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).resolve().parent / "native" / "per_example_conv.c"
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
COMMON_FLAGS = ["-std=gnu11", "-shared", "-fPIC"]

# "library" (ctypes.CDLL or None) and "status", once built; "pool": (threads, count, process id)
_state: dict = {}


def _compiler() -> list[str] | None:
    configured = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    command = shlex.split(configured)
    return command if command and shutil.which(command[0]) else None


def _build() -> tuple[ctypes.CDLL | None, str]:
    compiler = _compiler()
    if compiler is None:
        return None, "oneDNN grouped kernel (no C compiler found for the native loop)"
    error = ""
    with tempfile.TemporaryDirectory(prefix="per-example-conv-") as folder:
        library = Path(folder) / "per_example_conv.so"
        for flags in FLAG_SETS:
            command = compiler + flags + COMMON_FLAGS + ["-o", str(library), str(SOURCE)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as failure:
                error = str(failure)
                continue
            if done.returncode == 0:
                try:
                    loaded = ctypes.CDLL(str(library))  # stays mapped once the file is removed
                except OSError as failure:  # a temporary folder mounted noexec, say
                    return None, f"oneDNN grouped kernel (the native loop did not load: {failure})"
                function = loaded.per_example_conv_weight_grad
                function.restype = ctypes.c_int
                function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 13
                return loaded, f"native loop ({SOURCE.name}, {' '.join(flags)})"
            error = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return None, f"oneDNN grouped kernel (the native loop did not build: {error})"


def _library() -> ctypes.CDLL | None:
    if "status" not in _state:
        _state["library"], _state["status"] = _build()
    return _state["library"]


def status() -> str:
    """Which kernel forms per-example convolution gradients on this machine's CPU (builds the native
    loop if that has not been tried yet)."""
    _library()
    return _state["status"]


# Run eagerly inside a compiled step (training.compile's padded clipping): TorchDynamo cannot trace
# a foreign function or a thread pool, and the loop is already compiled.
@torch.compiler.disable
def weight_gradients(a: torch.Tensor, delta: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor | None:
    """Each example's weight gradient (B, out, in, kh, kw) of ``conv`` (zero padding given as
    numbers, no groups) from its input ``a`` (B, in, H, W) and output gradient ``delta`` (B, out,
    H', W'), by the native loop; None where it does not apply (not float32 on the CPU) or did not
    build, for the caller's fallback."""
    if not (a.device.type == "cpu" and a.dtype == torch.float32 and delta.dtype == torch.float32):
        return None
    if isinstance(conv.padding, str) or conv.groups != 1 or conv.padding_mode != "zeros":
        return None  # the loop reads numeric zero padding of an ungrouped convolution only
    library = _library()
    if library is None:
        return None
    a, delta = a.contiguous(), delta.contiguous()
    batch, channels, height, width = a.shape
    out_channels = delta.shape[1]
    expected = tuple((size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                     for size, kernel, stride, pad, dilation in zip(
                         (height, width), conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation))
    if tuple(delta.shape[2:]) != expected or delta.shape[0] != batch:
        raise ValueError(f"output gradient of shape {tuple(delta.shape)} for a convolution whose "
                         f"output is {(batch, out_channels, *expected)}")
    grads = torch.empty(batch, out_channels, channels, *conv.kernel_size, dtype=torch.float32)
    if batch == 0:
        return grads
    # Examples are independent: torch's thread count of contiguous pieces of the batch, one call
    # each (ctypes releases the GIL for the call). Each example's sums are the same whatever the
    # pieces, so the result does not depend on the number of threads.
    sizes = [a[0].numel(), delta[0].numel(), grads[0].numel()]

    def piece(start: int, stop: int) -> int:
        return library.per_example_conv_weight_grad(
            *(t.data_ptr() + start * n * 4 for t, n in zip((a, delta, grads), sizes)),
            stop - start, channels, height, width, out_channels, *conv.kernel_size,
            *conv.stride, *conv.padding, *conv.dilation)

    threads = min(torch.get_num_threads(), batch)
    if threads == 1:
        failed = piece(0, batch)
    else:
        bounds = [batch * k // threads for k in range(threads + 1)]
        failed = any(list(_pool(threads).map(piece, bounds[:-1], bounds[1:])))
    if failed:
        raise MemoryError("the native per-example convolution loop could not allocate its "
                          "per-example buffers")
    return grads


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, kept while torch's thread count and the process stay the same
    (a forked child has the parent's pool object but none of its threads: it would wait forever)."""
    pool, workers, process = _state.get("pool", (None, 0, 0))
    if pool is None or workers != threads or process != os.getpid():
        if pool is not None and process == os.getpid():
            pool.shutdown(wait=True)
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="per-example-conv")
        _state["pool"] = (pool, threads, os.getpid())
    return pool

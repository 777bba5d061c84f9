"""CelebA's pixels: each image decoded, centre-cropped and resized once, into a cached array.

Each image is center-cropped to its central 178×178 square and resized to ``data.celeba.image_size``
(antialiased bilinear), once, into a uint8 N×3×H×W ``.npy`` file that later runs memory-map
(:func:`load_image_cache`), named by :func:`cache_key` of the images it holds and checked against
the SHA-256 written beside it. On CUDA the JPEGs are decoded in batches on the GPU
(:data:`BATCH_DECODERS`), on the CPU by Pillow in threads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataset.celeba_files import ALIGNED_SIZE, ATTRIBUTE_FILE, CELEBA_URL, IMAGE_FOLDER
from utils.errors import DataError, warn_user
from utils.progress import progress

# Part of the cache key: bump it whenever the pre-processing changes what lands in the array, so
# that no run reads a cache made by different code.
_CACHE_FORMAT = "celeba-center-crop-bilinear-antialias-v1"


@dataclass(frozen=True)
class ImageCache:
    """A pre-processed image array and how it was obtained.

    Attributes:
        images: uint8 array (N × 3 × size × size), memory-mapped from ``path``.
        path: the ``.npy`` file.
        built: True when this call decoded the JPEGs, False when it found the file already made.
        seconds: time spent building (0 when the cache was found).
    """

    images: np.ndarray
    path: Path
    built: bool
    seconds: float


def cache_key(filenames: list[str] | np.ndarray, size: int) -> str:
    """The hex SHA-256 naming the cache of these images, in this order, at this size.

    It covers the pre-processing version too, so a change to the pre-processing never reads an old
    cache. It does not cover the image bytes: replacing JPEGs in place needs the cache deleted.
    """
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\n{size}\n".encode())
    digest.update("\n".join(map(str, filenames)).encode())
    return digest.hexdigest()


def load_image_cache(
    image_dir: str | Path,
    filenames: list[str] | np.ndarray,
    *,
    size: int,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    workers: int | None = None,
    chunk_size: int = 256,
    progress_mode: str = "auto",
) -> ImageCache:
    """The pre-processed images of ``filenames``, from the cache or decoded once into it.

    Only the listed images are cached, in the listed order, in a file named by their
    :func:`cache_key`: ``celeba_{size}px_{N}img_{key[:16]}.npy``. A run of the protocol needs
    30,000 of the 202,599 images, 1.5 GB at 128 px (all of CelebA would be 10 GB and 7× the decoding
    time for images the run never reads). Runs that differ only in privacy, model or optimizer
    share the file; a new share or seed selects other images and makes a new file.

    The array is built under a temporary name in the same folder, flushed to disk, and only then
    renamed (``os.replace``, atomic on one file system) to its final name. A run that is interrupted
    or killed leaves at most a ``*.tmp`` file, which no run reads, and a file under the final name is
    always complete. Two runs building the same file at once each write their own temporary file;
    the rename of the second replaces an identical array. (A run killed outright, by SIGKILL or a
    power cut, leaves its ``*.tmp`` file behind: harmless, but delete it to get the space back.)

    The file is then memory-mapped copy-on-write (``mmap_mode="c"``): pages are read on demand and
    the array is writable in memory (so torch can wrap it without a read-only warning), but nothing
    is ever written back to the file.

    Each cache has its SHA-256 beside it (``{name}.sha256``, written when it is built). A cache
    whose content no longer matches (a flipped byte on disk, a file edited or swapped), or that has
    no checksum (made before checksums existed), is built again with a warning, never read as it is.

    Pre-processing (identical on every backend up to the JPEG decoder's rounding): the central
    178×178 square of the 178×218 image, resized to ``size`` with an antialiased bilinear filter.
    On CUDA the JPEGs are decoded in batches on the GPU (nvJPEG, through TorchCodec's
    ``decode_jpeg`` or, without TorchCodec, torchvision's) and cropped and resized there; on the
    CPU, with Pillow in a pool of threads (Pillow releases the GIL while it decodes and resizes, so
    threads use every core without the start-up and copying costs of processes; see
    benchmarks/bench_celeba_preprocess.py).

    Args:
        image_dir: folder of the JPEGs.
        filenames: the images to cache, in the order of the returned array.
        size: side of the square output.
        cache_dir: folder of the cache files (made if missing).
        device: where a batched backend decodes (a CUDA device, or "cpu").
        backend: "pillow" (CPU threads), or a batched ``decode_jpeg`` on ``device`` from
            :data:`BATCH_DECODERS` ("torchcodec", "torchvision"); None picks
            :func:`default_backend`. All give the same pixels up to the decoders' rounding (at most
            a few levels).
        workers: CPU threads (default: the cores this process may use).
        chunk_size: images per task (and per GPU batch).
        progress_mode: ``logging.progress`` (auto | always | never).

    Raises:
        DataError: an image that is missing, unreadable or not 178×218, or a cache folder that
            cannot be written or lacks the space.
    """
    device = torch.device(device)
    backend = default_backend(device) if backend is None else backend
    if backend != "pillow" and backend not in BATCH_DECODERS:
        raise ValueError(f"backend must be 'pillow', one of {sorted(BATCH_DECODERS)} or None, "
                         f"not {backend!r}")
    filenames = [str(name) for name in filenames]
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(filenames, size)
    path = cache_dir / f"celeba_{size}px_{len(filenames)}img_{key[:16]}.npy"
    shape = (len(filenames), 3, size, size)
    if path.is_file() and (images := _trusted_cache(path, shape)) is not None:
        return ImageCache(images, path, built=False, seconds=0.0)
    _check_cache_space(cache_dir, shape)

    started = time.perf_counter()
    paths = [Path(image_dir) / name for name in filenames]

    def decode(out: np.ndarray) -> None:
        if backend != "pillow":
            _decode_in_batches(BATCH_DECODERS[backend](), paths, out, size, device, chunk_size, progress_mode)
        else:
            _decode_with_pillow(paths, out, size, workers or usable_cores(), chunk_size, progress_mode)

    _write_cache(path, shape, decode)
    images = _open_cache(path, shape)
    assert images is not None, f"{path} was just written with shape {shape}"
    return ImageCache(images, path, built=True, seconds=time.perf_counter() - started)


def _trusted_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The memory-mapped cache at ``path`` when it is a uint8 array of ``shape`` whose content
    matches its recorded SHA-256; otherwise None, with a warning that it is built again."""
    images = _open_cache(path, shape)
    problem = (f"not a {shape} uint8 array" if images is None else _checksum_problem(path))
    if problem is None:
        return images
    del images  # the memory map, before the file is replaced
    warn_user(f"{path}: {problem}; {CACHE_REBUILT}.")
    return None


def _check_cache_space(cache_dir: Path, shape: tuple[int, ...]) -> None:
    """Make ``cache_dir``; a DataError when it cannot be made or lacks the space for a uint8 ``shape``."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
    except OSError as error:
        raise DataError(f"{cache_dir}: cannot create the image cache folder ({error.strerror}). Set "
                        "data.celeba.cache_dir to a writable folder.") from None
    needed = int(np.prod(shape))
    if needed > free:
        raise DataError(f"{cache_dir}: the image cache needs {needed / 2**30:.2f} GiB but {free / 2**30:.2f} GiB "
                        "are free. Set data.celeba.cache_dir to a folder with more space, or lower data.celeba.image_size.")


def _write_cache(path: Path, shape: tuple[int, ...], decode: Callable[[np.ndarray], None]) -> None:
    """Build the cache at ``path``: ``decode`` fills a uint8 ``shape`` array in a temporary file of
    the same folder, which is flushed, fsynced, checksummed and only then renamed into place
    (:func:`load_image_cache`); whatever stops it, no partial array is left behind."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        decode(out)
        out.flush()
        del out
        # fsync before the rename: otherwise a power cut could leave the final name pointing at
        # data that never reached the disk, a cache that would be trusted and wrong.
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        # The checksum first: whatever moment this stops at, the file under the final name and
        # the checksum beside it agree only when both are this build's.
        _write_checksum(path, _sha256_of(temporary))
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial array behind
        temporary.unlink(missing_ok=True)
        raise


CHECKSUM_SUFFIX = ".sha256"
CACHE_REBUILT = "building it again"
CACHE_CHECKSUM_MISMATCH = "its content does not match the SHA-256 recorded when it was built"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksum(path: Path, digest: str) -> None:
    """``{path}.sha256``, written to a new temporary file and renamed into place."""
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    temporary = checksum.with_name(f"{checksum.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        temporary.write_text(digest + "\n")
        os.replace(temporary, checksum)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _checksum_problem(path: Path) -> str | None:
    """Why the cache at ``path`` cannot be trusted (its checksum is missing, or the content no
    longer matches it: a flipped byte, a file edited or swapped), or None. Reading the file once
    costs about a second per GB, against minutes to decode the JPEGs again."""
    try:
        recorded = path.with_name(path.name + CHECKSUM_SUFFIX).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return f"no checksum ({path.name}{CHECKSUM_SUFFIX}) to verify it by"
    if _sha256_of(path) != recorded:
        return CACHE_CHECKSUM_MISMATCH
    return None


def _open_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The memory-mapped array at ``path``, or None when it is not a uint8 array of ``shape``."""
    try:
        images = np.load(path, mmap_mode="c")
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.shape != shape:
        return None
    return images


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def preprocess_image(path: str | Path, size: int) -> np.ndarray:
    """One JPEG, center-cropped to its central square and resized: uint8 array (3 × size × size).

    Pillow's bilinear filter widens its support by the downscaling factor, i.e. it is antialiased,
    as is ``torch.nn.functional.interpolate(..., antialias=True)`` on the GPU path.

    Raises:
        DataError: the file is missing or unreadable, or not an aligned 178×218 CelebA image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.size != ALIGNED_SIZE:
                raise DataError(_size_message(path, image.size))
            image = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(_missing_message(path)) from None
    except OSError as error:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path}: not a readable JPEG ({error}). Replace it from img_align_celeba.zip "
                        f"({CELEBA_URL}).") from None
    width, height = image.size
    top = (height - width) // 2
    square = image.crop((0, top, width, top + width))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def crop_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The GPU path's pre-processing of a uint8 batch (N × 3 × 218 × 178), on the batch's device.

    The central square, then antialiased bilinear resizing in float32, rounded back to uint8.
    """
    height, width = images.shape[-2:]
    top = (height - width) // 2
    square = images[..., top: top + width, :].float()
    resized = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _decode_with_pillow(paths: list[Path], out: np.ndarray, size: int, workers: int, chunk_size: int,
                        progress_mode: str) -> None:
    """Fill ``out`` with :func:`preprocess_image` of each path, ``chunk_size`` images per thread task."""

    def fill(start: int) -> None:
        for i in range(start, min(start + chunk_size, len(paths))):
            out[i] = preprocess_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fill, start) for start in range(0, len(paths), chunk_size)]
        try:
            for future in progress(as_completed(futures), total=len(futures), mode=progress_mode,
                                   desc=f"CelebA {size}px, {len(paths)} images in chunks of {chunk_size}"):
                future.result()
        except BaseException:
            # Tasks not yet started are dropped; running ones finish before the pool closes, so the
            # caller can delete the array knowing no thread still writes into it.
            for future in futures:
                future.cancel()
            raise


BatchDecode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _load_torchcodec() -> BatchDecode:
    from torchcodec.decoders import decode_jpeg

    return lambda data, device: decode_jpeg(data, mode="RGB", device=device)


def _load_torchvision() -> BatchDecode:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec's, which this module
            # prefers; torchvision's stay the fallback while they exist.
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


BATCH_DECODERS: dict[str, Callable[[], BatchDecode]] = {
    "torchcodec": _load_torchcodec,
    "torchvision": _load_torchvision,
}
"""Batched JPEG decoders, in order of preference, each as a loader that imports it (raising
ImportError where it is missing) and returns ``decode(data, device)``: encoded bytes (1-D uint8 CPU
tensors) to uint8 C × H × W RGB tensors on the device (nvJPEG on CUDA). TorchCodec holds PyTorch's
image decoders since torchvision 0.29 deprecated its own."""


def available_batch_decoders() -> list[str]:
    """The :data:`BATCH_DECODERS` that load here (TorchCodec's native library can fail to load
    next to a torch it was not built for; a future torchvision drops ``decode_jpeg``)."""
    available = []
    for name, load in BATCH_DECODERS.items():
        try:
            load()
        except (ImportError, OSError, RuntimeError):
            continue
        available.append(name)
    return available


def default_backend(device: torch.device, available: list[str] | None = None) -> str:
    """Pre-processing backend for ``device``: the first batched decoder that imports on CUDA
    (nvJPEG), Pillow's threads on the CPU (as fast there, and no per-batch stacking)."""
    if device.type != "cuda":
        return "pillow"
    available = available_batch_decoders() if available is None else available
    if not available:
        warnings.warn("neither TorchCodec nor torchvision offers decode_jpeg here; decoding CelebA "
                      "with Pillow on the CPU. `pip install torchcodec` to decode on the GPU.",
                      stacklevel=3)
        return "pillow"
    return available[0]


def _decode_in_batches(decode: BatchDecode, paths: list[Path], out: np.ndarray, size: int, device: torch.device,
                       chunk_size: int, progress_mode: str) -> None:
    """Fill ``out`` by decoding batches of JPEGs with ``decode`` (a loaded :data:`BATCH_DECODERS`
    entry) on ``device``, then :func:`crop_resize` there.

    A reader thread loads the next batch's bytes from disk while the device decodes the current one.
    A batch the decoder refuses is checked with Pillow: a broken file is a DataError naming it, and
    a batch of good files (a JPEG variant nvJPEG lacks) is decoded with Pillow, with a warning.
    """

    def read(start: int) -> list[torch.Tensor]:
        data = []
        for path in paths[start: start + chunk_size]:
            try:
                data.append(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))
            except FileNotFoundError:
                raise DataError(_missing_message(path)) from None
        return data

    starts = range(0, len(paths), chunk_size)
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0)
        for start in progress(starts, desc=f"CelebA {size}px on {device}, batches of {chunk_size}", mode=progress_mode):
            data = pending.result()
            if start + chunk_size < len(paths):
                pending = reader.submit(read, start + chunk_size)
            try:
                decoded = decode(data, device)
            except RuntimeError as error:
                # The batch call does not say which file failed: Pillow finds it and its DataError
                # names it. A batch Pillow reads fine is one the GPU decoder cannot handle (nvJPEG
                # lacks some JPEG variants, e.g. some progressive or CMYK files a re-encoded copy of
                # CelebA may hold); Pillow's pixels for it agree to a few levels, so use them.
                batch = paths[start: start + len(data)]
                pixels = np.stack([preprocess_image(path, size) for path in batch])
                warnings.warn(f"{device} decode_jpeg failed on the batch from {batch[0].name} "
                              f"({str(error).splitlines()[0]}); decoded it with Pillow instead.",
                              stacklevel=2)
                out[start: start + len(data)] = pixels
                continue
            for offset, image in enumerate(decoded):
                if tuple(image.shape[1:]) != ALIGNED_SIZE[::-1]:
                    path = paths[start + offset]
                    raise DataError(_size_message(path, (image.shape[2], image.shape[1])))
            out[start: start + len(data)] = crop_resize(torch.stack(decoded), size).cpu().numpy()


def _missing_message(path: Path) -> str:
    return (f"{path}: image listed in {ATTRIBUTE_FILE} is missing; {IMAGE_FOLDER}/ is incomplete. Extract "
            f"img_align_celeba.zip ({CELEBA_URL}) again.")


def _size_message(path: Path, size: tuple[int, int]) -> str:
    return (f"{path}: image is {size[0]}×{size[1]}, expected the aligned CelebA size "
            f"{ALIGNED_SIZE[0]}×{ALIGNED_SIZE[1]}. data.root must hold {IMAGE_FOLDER}/ from img_align_celeba.zip "
            f"({CELEBA_URL}), not the in-the-wild images.")

"""CelebA (Liu et al., ICCV 2015): the data set built from ``data.*``, from its files, split and image cache.

The parts live by job: :mod:`dataset.celeba_files` finds a copy and reads its attribute, partition
and identity lists; :mod:`dataset.celeba_split` draws the rows of a run (``data.celeba.split``: the
identity-disjoint protocol of Farrand et al. 2020, or CelebA's own partition, with the registry
:data:`~dataset.celeba_split.SPLITS`); :mod:`dataset.celeba_cache` decodes, crops and resizes the
chosen images once into a memory-mapped cache. This module holds what joins them: the builder
filed in :data:`dataset.DATASETS` as "celeba" (:func:`build_celeba`) and the per-batch transform.

Any of the 40 attributes can be the target (``data.target``) or define the groups
(``data.protected``, with ``data.minority_value`` "1" or "-1" naming the minority's value).
The training loop keeps the uint8 arrays on the device and converts each batch with
:func:`celeba_transform` (scale to [-1, 1], random horizontal flip).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset import DATASETS
from dataset.base import DataBundle
from dataset.celeba_cache import cache_key, load_image_cache
from dataset.celeba_files import (
    ALIGNED_SIZE,
    ATTRIBUTE_FILE,
    CELEBA_URL,
    IDENTITY_FILE,
    PARTITION_FILE,
    locate_celeba,
    read_attributes,
    read_identities,
    read_partition,
)
from dataset.celeba_split import SPLITS, cell_counts, official_split, protocol_split
from dataset.imbalance import validation_info
from dataset.preprocessing import column_record, document
from utils.config import ExperimentConfig, check
from utils.errors import ConfigError, DataError


def celeba_transform(images: torch.Tensor, training: bool) -> torch.Tensor:
    """uint8 batch (N × 3 × H × W, on any device) to float32 in [-1, 1], flipped at random in training.

    Normalization with mean 0.5 and standard deviation 0.5 per channel: ``x / 127.5 - 1``. In
    training each example is mirrored left-right with probability 1/2 (faces are roughly symmetric
    and the attributes do not depend on the side), drawn from torch's global generator of the
    batch's device, so the run seed fixes it. Under DP-SGD this augmentation is a function applied
    to one example at a time, so the per-example gradient and its clipping still bound that one
    example's influence. Evaluation never flips.
    """
    x = images.to(torch.float32) / 127.5 - 1.0  # not in place: a float input must not be modified
    if training:
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def _minority_value(value: str) -> int:
    if str(value).strip() not in ("1", "-1"):
        raise ConfigError(
            f"data.minority_value: got {value!r}; expected \"1\" or \"-1\", the CelebA attribute value of the "
            "minority group (with data.protected: Male, \"1\" makes men the minority, as in arXiv 2009.06389)."
        )
    return int(value)


@dataclass(frozen=True, kw_only=True)
class CelebASettings:
    """CelebA's own settings, the config's ``data.celeba`` section.

    Attributes:
        split: "protocol" (balanced test set, then resampled training set, as in arXiv 2009.06389)
            or "official" (CelebA's own partition); a name of :data:`SPLITS`.
        image_size: side of the square images (128 or 64; at least 32).
        cache_dir: where pre-processed image arrays are kept (null: ``{data.root}/cache``).
        test_size: size of the balanced test set of the protocol split (null: 6,000, the paper's).
    """

    split: str = "protocol"
    image_size: int = 128
    cache_dir: str | None = None
    test_size: int | None = None

    def validate(self) -> None:
        SPLITS.get(self.split)  # the registry's error: the closest name and every valid one
        check(self.image_size >= 32, "data.celeba.image_size", self.image_size, "at least 32 pixels")
        check(self.test_size is None or self.test_size > 0, "data.celeba.test_size", self.test_size,
              "a positive integer or null")


@DATASETS.register("celeba")
def build_celeba(config: ExperimentConfig) -> DataBundle:
    """The CelebA bundle of ``config.data``: read, split, pre-process (cached), and wrap.

    ``x_train``, ``x_val`` and ``x_test`` are uint8 N × 3 × S × S views of one memory-mapped cache
    file (test images first, then validation, then training); ``transform`` is
    :func:`celeba_transform`. ``info`` carries the split's counts (``val_count/...`` for the
    validation set) per group and label, whether the split is disjoint by identity
    (``identity_disjoint``, with the identity counts where ``identity_CelebA.txt`` was read), the
    cache file and whether this run built it, and ``selection_sha256``, the cache key, which is
    the same for two runs exactly when they use the same images.
    """
    data, own = config.data, config.data.settings  # own: data.celeba, a CelebASettings
    if own.image_size > ALIGNED_SIZE[0]:
        raise ConfigError(f"data.celeba.image_size: got {own.image_size}; expected at most {ALIGNED_SIZE[0]}, the "
                          "side of the aligned crop (larger would only upsample). The paper uses 128; 64 is faster.")
    if own.split == "official" and own.test_size is not None:
        raise ConfigError(f"data.celeba.test_size: got {own.test_size}, but data.celeba.split: official tests on "
                          "CelebA's whole test partition. Set data.celeba.test_size: null, or use "
                          "data.celeba.split: protocol.")
    if data.target == data.protected:
        raise ConfigError(f"data.target and data.protected are both {data.target!r}; the groups would be the "
                          "labels. Choose two different attributes.")
    minority_value = _minority_value(data.minority_value)
    files = locate_celeba(data.root)
    attributes = read_attributes(files.attribute_file)
    targets = (attributes.column(data.target, "data.target") == 1).astype(np.int64)
    minority = attributes.column(data.protected, "data.protected") == minority_value
    identities = None if files.identity_file is None else read_identities(files.identity_file, attributes.filenames)

    if own.split == "protocol":
        if identities is None:
            warnings.warn(
                f"{files.directory / IDENTITY_FILE}: file not found, so the CelebA protocol split is disjoint by "
                "image only: the same person can be in the training and the test set, which inflates test "
                f"accuracy and can hide or create group gaps. Place {IDENTITY_FILE} from CelebA's Anno folder "
                f"({CELEBA_URL}) next to {ATTRIBUTE_FILE} to split by identity.",
                stacklevel=2,
            )
        split = protocol_split(targets, minority, share=data.minority_share, train_size=data.train_size,
                               test_size=own.test_size, seed=config.seed, identities=identities,
                               val_fraction=data.val_fraction)
    else:
        if files.partition_file is None:
            raise DataError(f"{files.directory / PARTITION_FILE}: file not found; data.celeba.split: official needs "
                            f"CelebA's partition file ({CELEBA_URL}). Put it next to {ATTRIBUTE_FILE}, or use "
                            "data.celeba.split: protocol.")
        partition = read_partition(files.partition_file, attributes.filenames)
        split = official_split(targets, minority, partition, share=data.minority_share,
                               train_size=data.train_size, seed=config.seed, identities=identities,
                               val_fraction=data.val_fraction)

    # One cache: test images first, then validation (none without data.val_fraction, so the cache of
    # a run without one is the one made before validation sets existed), then training.
    rows = np.concatenate([split.test_rows, split.val_rows, split.train_rows])
    cache_dir = own.cache_dir if own.cache_dir is not None else Path(data.root).expanduser() / "cache"
    cache = load_image_cache(files.image_dir, attributes.filenames[rows], size=own.image_size,
                             cache_dir=cache_dir, device=_preprocessing_device(config.device),
                             progress_mode=config.logging.progress)
    n_test, n_val = len(split.test_rows), len(split.val_rows)
    y_train, minority_train = targets[split.train_rows], minority[split.train_rows]

    info: dict[str, Any] = {
        "source": "celeba",
        "directory": str(files.directory),
        "rows": len(attributes.filenames),
        "target": data.target,
        "protected": data.protected,
        "minority_value": data.minority_value,
        "image_size": own.image_size,
        **split.info,
        **cell_counts("train_count", y_train, minority_train),
        "minority_share": data.minority_share,
        "train_size": len(split.train_rows),
        "train_share": float(minority_train.mean()) if len(minority_train) else None,
        "selection_sha256": cache_key(attributes.filenames[rows], own.image_size),
        "cache/path": str(cache.path),
        "cache/built": cache.built,
        "cache/seconds": round(cache.seconds, 2),
    }
    if not n_val:
        info.update(validation_info(split.val_rows, np.zeros(0, dtype=bool), data.val_fraction, None))
    return DataBundle(
        x_train=cache.images[n_test + n_val:],
        y_train=y_train,
        minority_train=minority_train,
        x_test=cache.images[:n_test],
        y_test=targets[split.test_rows],
        minority_test=minority[split.test_rows],
        input_shape=(3, own.image_size, own.image_size),
        transform=celeba_transform,
        info=info,
        x_val=cache.images[n_test:n_test + n_val],
        y_val=targets[split.val_rows],
        minority_val=minority[split.val_rows],
        # Fixed constants, no statistic of the images: nothing to fit, nothing outside ε.
        preprocessing=document("public", [column_record(
            "pixels", f"centre crop 178x178, resize to {own.image_size}x{own.image_size} "
            "(cached as uint8); per batch x / 127.5 - 1, training batches flipped left-right "
            "with probability 1/2", {"crop": 178, "size": own.image_size, "mean": 0.5, "std": 0.5},
            "public", "constants of this loader (celeba_transform)")]),
    )


def _preprocessing_device(device: str) -> torch.device:
    """Where to decode: the run's CUDA device when it has one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")  # the trainer reports the missing GPU; decoding need not fail first
    return torch.device(device)


# CelebA's own settings: the config's data.celeba section (training.validation types it).
build_celeba.Settings = CelebASettings

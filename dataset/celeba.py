"""CelebA (Liu et al., ICCV 2015): reading the files, the paper's split, and a pre-processed image cache.

What a run needs from the user's copy of CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html),
in ``data.root`` or, as torchvision lays it out, in ``data.root/celeba``:

* ``img_align_celeba/``: the 202,599 aligned and cropped JPEGs, 178 px wide and 218 px high;
* ``list_attr_celeba.txt``: the 40 binary attributes (1 / -1) of every image;
* ``list_eval_partition.txt``: CelebA's own train / valid / test partition (0 / 1 / 2), read only
  with ``data.split: official``;
* ``identity_CelebA.txt`` (optional, from the release's ``Anno`` folder, next to the attribute
  file): the person (an integer identity) of every image, which keeps each person on one side of
  the protocol's split; see below.

Nothing else (boxes, landmarks) is read. Any of the 40 attributes can be the target
(``data.target``) or define the groups (``data.protected``, with ``data.minority_value`` "1" or "-1"
naming the minority's value).

**The split.** ``data.split: protocol`` follows "Neither Private Nor Fair: Impact of Data Imbalance
on Utility and Fairness in Differential Privacy" (Farrand, Mireshghallah, Singh and Trask, 2020,
arXiv 2009.06389): a fixed test set balanced over target × group, then a training set of fixed size
in which the minority is ``data.minority_share`` and each group is half positive; see
:func:`protocol_split`. ``data.split: official`` uses CelebA's partition; see :func:`official_split`.
Either way ``data.val_fraction`` > 0 holds out a validation set from the training pool before the
resampling (stratified by group and label; by person where identities are known).

**Identities.** CelebA holds about 20 images of each of its 10,177 celebrities. A test set that
shares people with the training set measures recognition of faces the model has seen, not
generalization to new people: test accuracy is inflated, and unevenly so (the more images a group
has per person, the more of its test faces were seen in training), which can hide or create group
gaps. With ``identity_CelebA.txt`` present, the protocol draws its test set by identity and leaves
every image of a test identity out of the training pool, so that no person is on both sides;
``DataBundle.info`` records ``identity_disjoint: true`` and the identity counts. Without the file
the split is disjoint by image only: a warning says so and ``info`` records ``identity_disjoint:
false``. CelebA's official partition is disjoint by identity by construction; with the file present
that is checked.

**The pixels.** Each image is center-cropped to its central 178×178 square and resized to
``data.image_size`` (antialiased bilinear), once, into a uint8 N×3×H×W ``.npy`` file that later runs
memory-map (:func:`load_image_cache`). The training loop keeps the uint8 arrays on the device and
converts each batch with :func:`celeba_transform` (scale to [-1, 1], random horizontal flip).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataset import DATASETS
from dataset.base import DataBundle
from dataset.imbalance import resample_to_share, validation_counts, validation_info, validation_split
from dataset.preprocessing import column_record, document
from utils.config import ExperimentConfig, check
from utils.errors import ConfigError, DataError, warn_user
from utils.progress import progress
from utils.registry import Registry
from utils.seeding import numpy_generator

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
# (width, height) of every aligned CelebA image; the crop is the central width × width square.
ALIGNED_SIZE = (178, 218)
DEFAULT_TEST_SIZE = 6000
# The 40 attributes in the order of list_attr_celeba.txt (for reference and the fake test data; the
# reader takes the names from the file itself).
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)  # fmt: skip

# The splits by name (``data.split``): each entry is the function that draws the split's rows
# (:func:`protocol_split`, :func:`official_split`), and the registry is what the config checks
# ``data.split`` against, so the valid names are exactly these.
SPLITS: Registry = Registry("split", "data.split")

# The protocol's random orders each draw from a stream of their own (utils.seeding.STREAMS): the
# test set's cells, the pool's cells, and the order in which the test set takes identities (when
# identity_CelebA.txt is present).
_TEST_STREAM, _POOL_STREAM, _IDENTITY_STREAM = "celeba_test", "celeba_pool", "celeba_identity"
# The validation set (data.val_fraction) takes identities in an order of its own.
_VAL_IDENTITY_STREAM = "celeba_val_identity"
# Part of the cache key: bump it whenever the pre-processing changes what lands in the array, so
# that no run reads a cache made by different code.
_CACHE_FORMAT = "celeba-center-crop-bilinear-antialias-v1"


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelebAFiles:
    """Where the parts of one CelebA copy are.

    Attributes:
        directory: the folder holding the files (``data.root`` or ``data.root/celeba``).
        image_dir: ``img_align_celeba/``.
        attribute_file: ``list_attr_celeba.txt``.
        partition_file: ``list_eval_partition.txt``, or None where it is absent (it is needed only by
            ``data.split: official``).
        identity_file: ``identity_CelebA.txt``, or None where it is absent (then the protocol split
            is disjoint by image only, and the official split's identity check is skipped).
    """

    directory: Path
    image_dir: Path
    attribute_file: Path
    partition_file: Path | None
    identity_file: Path | None = None


def locate_celeba(root: str | Path | None) -> CelebAFiles:
    """Find CelebA's files in ``root`` (standard layout) or ``root/celeba`` (torchvision's layout).

    Raises:
        ConfigError: ``root`` is None (CelebA is not shipped with this repository).
        DataError: the folder, the attribute file or the image folder is missing; the message names
            the path looked for and where CelebA is published.
    """
    if root is None:
        raise ConfigError(
            f"data.root: null, but CelebA is not shipped with this repository. Download it from {CELEBA_URL} "
            f"(img_align_celeba.zip, {ATTRIBUTE_FILE}, {PARTITION_FILE}, {IDENTITY_FILE}) and set data.root to "
            "the folder holding them."
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: data.root is not a directory. Set it to the folder holding {IMAGE_FOLDER}/ and "
            f"{ATTRIBUTE_FILE} (CelebA, published at {CELEBA_URL})."
        )
    candidates = (root, root / "celeba")
    directory = next((c for c in candidates if (c / ATTRIBUTE_FILE).is_file()), None)
    if directory is None:
        raise DataError(
            f"{root / ATTRIBUTE_FILE}: file not found (nor {root / 'celeba' / ATTRIBUTE_FILE}, torchvision's "
            f"layout). data.root must hold CelebA's {IMAGE_FOLDER}/ and {ATTRIBUTE_FILE}, as published at "
            f"{CELEBA_URL}."
        )
    image_dir = directory / IMAGE_FOLDER
    if not image_dir.is_dir():
        raise DataError(
            f"{image_dir}: folder not found. Extract img_align_celeba.zip (the aligned 178×218 JPEGs, from "
            f"{CELEBA_URL}) next to {ATTRIBUTE_FILE}."
        )
    partition, identity = directory / PARTITION_FILE, directory / IDENTITY_FILE
    return CelebAFiles(directory, image_dir, directory / ATTRIBUTE_FILE, partition if partition.is_file() else None,
                       identity if identity.is_file() else None)


@dataclass(frozen=True)
class CelebAAttributes:
    """The contents of ``list_attr_celeba.txt``.

    Attributes:
        path: the file read.
        filenames: image file names, in file order (str array).
        names: attribute names, in column order.
        values: int8 array (images × attributes) of 1 and -1.
    """

    path: Path
    filenames: np.ndarray
    names: tuple[str, ...]
    values: np.ndarray

    def column(self, name: str, key: str) -> np.ndarray:
        """The ±1 values of attribute ``name``, asked for by config key ``key``.

        An unknown name is a ConfigError that lists the valid names, the closest first, since the
        likely mistake is a misspelling ("smiling", "Eyeglass").
        """
        if name not in self.names:
            ranked = sorted(self.names, key=lambda n: -difflib.SequenceMatcher(None, name.lower(), n.lower()).ratio())
            raise ConfigError(
                f"{key}: {name!r} is not a CelebA attribute of {self.path}. Valid attribute names, closest first: "
                f"{', '.join(ranked)}."
            )
        return self.values[:, self.names.index(name)]


def read_attributes(path: str | Path) -> CelebAAttributes:
    """Read and check ``list_attr_celeba.txt``.

    The format: the number of images on the first line, the attribute names on the second, then one
    line per image: its file name and one value, 1 or -1, per attribute, separated by any whitespace
    (CelebA pads the values to two characters, so there are double spaces before the 1s).

    The body is parsed as one token stream (about a second for the 202,599 rows, several times
    faster than splitting line by line); only when a check fails is it scanned line by line to name
    the offending line.

    Raises:
        DataError: a file that is missing, not text, or not in this format.
    """
    path = Path(path)
    what = (f"expected CelebA's {ATTRIBUTE_FILE}: the image count, a line of attribute names, then "
            f"'filename v1 ... vK' rows of 1/-1 (published at {CELEBA_URL})")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); {what}.") from None
    parts = raw.split(b"\n", 2)
    if len(parts) < 3:
        raise DataError(f"{path}: fewer than three lines; {what}.")
    head, name_line, body = parts
    try:
        count = int(head.strip())
        names = tuple(name_line.decode("ascii").split())
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}, line 1-2: {head[:40]!r} / {name_line[:60]!r} is not a count and a line of "
                        f"attribute names; {what}.") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}, line 2: attribute names are empty or repeated; {what}.")
    width = len(names) + 1
    tokens = body.split()
    rows = len(tokens) // width
    table = np.array(tokens[: rows * width]).reshape(rows, width) if rows else np.empty((0, width), "S1")
    values = table[:, 1:]
    positive, negative = values == b"1", values == b"-1"
    aligned = len(tokens) == rows * width and (positive | negative).all()
    # A row with a value missing shifts the next file name into a value slot, which the check above
    # catches; a name such as "000001.jpg" is never a valid value, so the alignment is certain.
    if not aligned:
        raise DataError(f"{path}, {_first_bad_line(body, width, offset=3)}; {what}.")
    if rows == 0:
        raise DataError(f"{path}: no image rows after the two header lines; {what}.")
    if rows != count:
        raise DataError(
            f"{path}: line 1 announces {count} images but {rows} rows follow; the file is truncated or edited. "
            f"Download it again from {CELEBA_URL}."
        )
    filenames = table[:, 0].astype(str)
    if len(np.unique(filenames)) != rows:
        raise DataError(f"{path}: some image file names occur on more than one row; {what}.")
    return CelebAAttributes(path, filenames, names, np.where(positive, 1, -1).astype(np.int8))


def _first_bad_line(body: bytes, width: int, offset: int) -> str:
    """'line N: what is wrong' for the first row that does not have a name and ``width - 1`` ±1 values."""
    for number, line in enumerate(body.split(b"\n"), start=offset):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            return f"line {number}: {len(fields)} fields, expected {width} (file name and {width - 1} values)"
        bad = [v for v in fields[1:] if v not in (b"1", b"-1")]
        if bad:
            return f"line {number}: value {bad[0].decode(errors='replace')!r}, expected 1 or -1"
    return "the rows do not split into file name and values"  # unreachable for a file that failed the checks


def read_partition(path: str | Path, filenames: np.ndarray) -> np.ndarray:
    """CelebA's partition (0 train, 1 valid, 2 test) of each of ``filenames``, from ``list_eval_partition.txt``.

    Raises:
        DataError: a malformed file, or one that lacks some of the attribute file's images.
    """
    path = Path(path)
    what = f"expected CelebA's {PARTITION_FILE}: 'filename 0|1|2' per line (published at {CELEBA_URL})"
    try:
        tokens = path.read_bytes().split()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); {what}.") from None
    if not tokens or len(tokens) % 2:
        raise DataError(f"{path}: {len(tokens)} fields, not pairs of file name and partition; {what}.")
    table = np.array(tokens).reshape(-1, 2)
    if not np.isin(table[:, 1], (b"0", b"1", b"2")).all():
        bad = table[~np.isin(table[:, 1], (b"0", b"1", b"2"))][0]
        raise DataError(f"{path}: partition {bad[1].decode(errors='replace')!r} for "
                        f"{bad[0].decode(errors='replace')!r}; {what}.")
    names = table[:, 0].astype(str)
    split = table[:, 1].astype(np.int8)
    if len(names) == len(filenames) and (names == filenames).all():
        return split  # the usual case: both files list the images in the same order
    order = np.argsort(names)
    position = np.searchsorted(names, filenames, sorter=order).clip(max=len(names) - 1)
    found = names[order[position]] == filenames
    if not found.all():
        raise DataError(
            f"{path}: {np.count_nonzero(~found)} images of {ATTRIBUTE_FILE} have no partition (e.g. "
            f"{str(filenames[~found][0])!r}); use the {PARTITION_FILE} of the same CelebA release ({CELEBA_URL})."
        )
    return split[order[position]]


def read_identities(path: str | Path, filenames: np.ndarray) -> np.ndarray:
    """The identity (an integer naming the person) of each of ``filenames``, from ``identity_CelebA.txt``.

    The format: one line per image, its file name and its identity (``000001.jpg 2880``), no header.
    As in :func:`read_attributes` the file is parsed as one token stream, and only when a check
    fails is it scanned line by line to name the offending line.

    Returns:
        int64 array, one identity per entry of ``filenames`` (matched by file name, so the file may
        list the images in any order).

    Raises:
        DataError: a file that is missing, not in this format, lists an image twice, or lacks some
            of the attribute file's images.
    """
    path = Path(path)
    what = (f"expected CelebA's {IDENTITY_FILE} (Anno folder of the release, {CELEBA_URL}): 'filename identity' "
            "per line, the identity a non-negative integer. Replace it with the release's file, or remove it "
            "(the protocol split is then disjoint by image only, not by person)")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); {what}.") from None
    tokens = raw.split()
    table = np.array(tokens).reshape(-1, 2) if tokens and len(tokens) % 2 == 0 else np.empty((0, 2), "S1")
    # A line with a field missing or added shifts a file name into an identity slot or an identity
    # into a name slot; names such as "000001.jpg" are never all digits and identities always are,
    # so these two checks catch every misalignment, as in read_attributes.
    aligned = len(table) > 0 and np.char.isdigit(table[:, 1]).all() and not np.char.isdigit(table[:, 0]).any()
    if aligned:
        try:
            identities = table[:, 1].astype(np.int64)
        except (ValueError, OverflowError):  # digits beyond int64
            aligned = False
    if not aligned:
        raise DataError(f"{path}, {_first_bad_identity_line(raw)}; {what}.")
    names = table[:, 0].astype(str)
    if len(names) == len(filenames) and (names == filenames).all():
        return identities  # the usual case: both files list the images in the same order
    order = np.argsort(names, kind="stable")
    sorted_names = names[order]
    repeated = sorted_names[1:][sorted_names[1:] == sorted_names[:-1]]
    if len(repeated):
        raise DataError(f"{path}: image {str(repeated[0])!r} is listed on more than one line; {what}.")
    position = np.searchsorted(sorted_names, filenames).clip(max=len(names) - 1)
    found = sorted_names[position] == filenames
    if not found.all():
        raise DataError(
            f"{path}: {np.count_nonzero(~found)} images of {ATTRIBUTE_FILE} have no identity (e.g. "
            f"{str(filenames[~found][0])!r}); use the {IDENTITY_FILE} of the same CelebA release ({CELEBA_URL}), "
            "or remove it (the protocol split is then disjoint by image only)."
        )
    return identities[order[position]]


def _first_bad_identity_line(raw: bytes) -> str:
    """'line N: what is wrong' for the first line of ``identity_CelebA.txt`` not of the form 'name id'."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            return f"line {number}: {len(fields)} fields, expected 2 (file name and identity)"
        name, identity = (f.decode(errors="replace") for f in fields)
        if name.isdigit():
            return f"line {number}: file name {name!r} is a number (are the columns swapped?)"
        if not identity.isdigit():
            return f"line {number}: identity {identity!r} is not a non-negative integer"
        if int(identity) >= 2**63:
            return f"line {number}: identity {identity} is too large for a 64-bit integer"
    return "no image lines"


# ---------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Rows of the attribute file chosen for one run.

    Attributes:
        test_rows: sorted row indices of the test set.
        train_rows: sorted row indices of the training set (disjoint from ``test_rows``, and by
            identity too where ``info["identity_disjoint"]`` is True).
        info: the counts behind the choice (per cell of group × label, and of identities), for
            ``DataBundle.info``.
        val_rows: sorted row indices of the validation set (``data.val_fraction``; empty without
            one), disjoint from both, and by identity too where identities were read.
    """

    test_rows: np.ndarray
    train_rows: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@SPLITS.register("protocol")
def protocol_split(
    targets: np.ndarray,
    minority: np.ndarray,
    *,
    share: float | None,
    train_size: int | None,
    test_size: int | None,
    seed: int,
    identities: np.ndarray | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """The test and training rows of the protocol of Farrand et al. (2020, arXiv 2009.06389).

    1. **Test set**, drawn from all rows: ``test_size`` (default 6,000) examples split evenly over
       the four cells (minority, majority) × (positive, negative), ``test_size // 4`` each; when
       ``test_size`` is not a multiple of 4 the first cells in the order (minority, positive),
       (minority, negative), (majority, positive), (majority, negative) get one more. Each cell is a
       prefix of a random order fixed by the seed (and the identities) alone, so the test set is the
       same at every share and training size: results across a sweep of shares are scored on the
       same images. Without ``identities`` the order is one of images; with them, see below.
    2. **Balanced pool**, from the remaining rows (less, with ``identities``, every image of a test
       identity): within each group, the larger of its two label cells is cut (again a prefix of a
       seeded order) to the size of the smaller, so each group of the pool is exactly half positive.
       The pool does not depend on the share either.
    3. **Training set**: :func:`dataset.imbalance.resample_to_share` of the pool. Because each group
       of the pool is half positive and the resampler keeps each group's label rate, every group of
       the training set is half positive (to within one example for an odd group size), and the
       resampler's nesting carries over: for one seed, the training set at a smaller share takes
       fewer minority examples from the same prefix, and all shares share one pool and test set.

    **Validation set** (``val_fraction`` > 0; the paper has none): drawn from the balanced pool
    after step 2 and before step 3, ``round(val_fraction * len(pool))`` images stratified by
    (group, label) as :func:`dataset.imbalance.validation_counts` says (so half positive in each
    group, like the pool, and the pool's group shares). Without ``identities`` each cell's
    validation images are a prefix of a seeded order of the cell (stream ``validation``); with
    them they are taken person by person, as the test set is (stream ``celeba_val_identity``),
    and every other pool image of a validation person is left out of training, so no person is in
    two of the three sets. What is left is balanced again (within each group the larger label
    cell is cut to the smaller, keeping the pool's order), so each group of the training pool
    stays exactly half positive, and step 3 resamples it. With ``val_fraction`` 0 nothing of this
    happens and the selection is the one made before validation sets existed.

    **Disjoint by identity.** A person in both sets lets the model be scored on a face it has
    trained on, which inflates test accuracy, and more so for a group with more images per person.
    With ``identities`` the test set is drawn *by identity*: the identities are walked in a random
    order fixed by the seed (images within an identity in random order too), and each identity's
    images go into the test cells they belong to while those cells have room; each cell is then the
    prefix of this identity-major order restricted to the cell. Every other image of an identity
    that gave the test set at least one image is then left out of the pool. Why by identity rather
    than drawing images as without ``identities`` and excluding their identities afterwards: CelebA
    has about 20 images per person, so 6,000 images drawn one by one touch more than 4,000 of its
    10,177 persons, and excluding those would throw away about 45 % of the data; drawn by identity,
    the test set takes (nearly) all images of about 300 persons, and only the images of the last
    persons that fall into cells already full are lost (about 0.2 % of CelebA; both figures from a
    simulation with CelebA's sizes and rates). That matters most with ``train_size: None``, where
    the pool's size is the training set's. The price is a test set of fewer persons: its images are
    a cluster sample (persons drawn at random, each with all its images in the cell), which
    estimates a cell's per-image accuracy without systematic bias but more noisily than as many
    independent images would, so intervals that resample test images as if independent are
    somewhat too narrow; ``info["identities_test"]`` says how many persons they rest on. CelebA's
    own test partition is built the same way (whole persons). The training set is drawn from the
    pool as above, so its nesting across shares is untouched.

    Args:
        targets: 0/1 label per row of the attribute file.
        minority: True where the row belongs to the minority group.
        share: ``data.minority_share`` (None keeps the pool's own share).
        train_size: ``data.train_size`` (None keeps every majority example of the pool).
        test_size: ``data.test_size`` (None: 6,000 as in the paper).
        seed: the run seed.
        identities: the identity (person) of each row, from :func:`read_identities`, or None where
            ``identity_CelebA.txt`` is absent: then the split is disjoint by image only.
        val_fraction: ``data.val_fraction``, the share of the balanced pool held out for validation.

    Returns:
        The split; its ``info`` has the cell counts of the test set and the pool, and
        ``identity_disjoint`` (whether ``identities`` were used). With identities, also
        ``identities_test`` and ``identities_train`` (distinct persons in each set) and
        ``identity_overlap_excluded`` (images not in the test set whose person is, left out of the
        pool).

    Raises:
        DataError: a test set or training set the data cannot supply, with the feasible sizes
            (of the pool after the identity exclusion).
    """
    targets = np.asarray(targets, dtype=np.int64)
    minority = np.asarray(minority, dtype=bool)
    n_test = DEFAULT_TEST_SIZE if test_size is None else test_size
    cells = [(True, 1), (True, 0), (False, 1), (False, 0)]
    wanted = {cell: n_test // 4 + (i < n_test % 4) for i, cell in enumerate(cells)}
    members = {cell: np.flatnonzero((minority == cell[0]) & (targets == cell[1])) for cell in cells}
    smallest = min(len(rows) for rows in members.values())
    for cell in cells:
        if wanted[cell] > len(members[cell]):
            raise DataError(
                f"data.test_size: {n_test} needs {wanted[cell]} test images of the {_cell_name(cell)} cell, but "
                f"the data has {len(members[cell])}. Use data.test_size <= {4 * smallest}."
            )
    if identities is None:
        test_parts = [_seeded_order(members[cell], _TEST_STREAM, seed, cell)[: wanted[cell]] for cell in cells]
    else:
        identities = np.asarray(identities)
        if identities.shape != targets.shape:
            raise ValueError(f"identities {identities.shape} and targets {targets.shape} must be equally long")
        # Every image is reachable in this order, so the test-size check above stays exact.
        order = _identity_order(identities, seed)
        test_parts = [order[(minority[order] == group) & (targets[order] == label)][: wanted[group, label]]
                      for group, label in cells]
    test_rows = np.sort(np.concatenate(test_parts))
    unavailable = np.zeros(len(targets), dtype=bool)
    unavailable[test_rows] = True
    if identities is not None:
        test_identities = np.unique(identities[test_rows])
        # The rest of each test person's images: training on them would put that person on both sides.
        excluded = np.isin(identities, test_identities) & ~unavailable
        unavailable |= excluded
    rest = {cell: members[cell][~unavailable[members[cell]]] for cell in cells}  # sorted, as members are

    pool_orders = {}
    for group in (True, False):
        keep = min(len(rest[group, 1]), len(rest[group, 0]))
        for label in (1, 0):
            pool_orders[group, label] = _seeded_order(rest[group, label], _POOL_STREAM, seed, (group, label))[:keep]
    pool = np.sort(np.concatenate(list(pool_orders.values())))
    train_pool, val_rows, val_info = pool, np.zeros(0, dtype=np.int64), {}
    if val_fraction > 0:
        val_rows, removed, val_info = _draw_validation(pool, targets, minority, val_fraction, seed, identities)
        gone = np.zeros(len(targets), dtype=bool)
        gone[removed] = True
        parts = []
        for group in (True, False):  # balanced again: the pool's order, the larger label cell cut
            left = {label: pool_orders[group, label][~gone[pool_orders[group, label]]] for label in (1, 0)}
            keep = min(len(left[1]), len(left[0]))
            parts += [left[1][:keep], left[0][:keep]]
        train_pool = np.sort(np.concatenate(parts))
        val_info["val_rebalance_left_out"] = len(pool) - len(removed) - len(train_pool)
    try:
        chosen = resample_to_share(minority[train_pool], targets[train_pool], share, train_size=train_size,
                                   seed=seed)
    except DataError as error:
        n_min = int(np.count_nonzero(minority[train_pool]))
        left_out = ("" if identities is None else
                    f" (after leaving out {np.count_nonzero(excluded)} more images of the test set's "
                    f"{len(test_identities)} identities)")
        after_val = "" if not len(val_rows) else f" and the {len(val_rows)}-image validation set"
        raise DataError(
            f"CelebA protocol: after the {n_test}-image test set{left_out}{after_val}, the training pool balanced "
            f"on the target within each group holds {n_min} minority and {len(train_pool) - n_min} majority "
            f"images. {error}"
        ) from None
    train_rows = train_pool[chosen]

    info: dict[str, Any] = {"split": "protocol", "test_size": len(test_rows),
                            "identity_disjoint": identities is not None}
    if identities is not None:
        info["identities_test"] = len(test_identities)
        info["identities_train"] = len(np.unique(identities[train_rows]))
        info["identity_overlap_excluded"] = int(np.count_nonzero(excluded))
    info.update(_cell_counts("test_count", targets[test_rows], minority[test_rows]))
    info.update(_cell_counts("pool_count", targets[pool], minority[pool]))
    info.update(val_info)
    return Split(test_rows, train_rows, info, val_rows)


@SPLITS.register("official")
def official_split(
    targets: np.ndarray,
    minority: np.ndarray,
    partition: np.ndarray,
    *,
    share: float | None,
    train_size: int | None,
    seed: int,
    identities: np.ndarray | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """CelebA's own partition: the training partition (0) resampled, the test partition (2) whole.

    The training set is :func:`dataset.imbalance.resample_to_share` of partition 0 (162,770 images),
    which keeps each group's label rate from the partition rather than balancing it. The validation
    partition (1) is not used. The test set is all of partition 2 (19,962 images), unbalanced.
    With ``val_fraction`` > 0 a validation set is drawn from partition 0 first, as in
    :func:`protocol_split` (stratified; by person when ``identities`` are given, the other
    partition-0 images of its persons then left out of training), and the rest is resampled.

    CelebA built its partition from whole persons, so it is disjoint by identity. With
    ``identities`` that is checked rather than trusted: ``info["identity_overlap"]`` counts the
    identities found in both partition 0 and partition 2, ``identity_disjoint`` is True when there
    are none (the training set is a subset of partition 0, so it is then disjoint too), and any
    overlap is warned about, since it means the partition and identity files do not come from one
    release and the test accuracy may be inflated by faces seen in training. Without
    ``identities``, ``identity_disjoint`` is "by CelebA's construction": asserted, not verified.
    """
    targets = np.asarray(targets, dtype=np.int64)
    minority = np.asarray(minority, dtype=bool)
    pool = np.flatnonzero(partition == 0)
    test_rows = np.flatnonzero(partition == 2)
    if not len(pool) or not len(test_rows):
        raise DataError(f"{PARTITION_FILE}: the partition has {len(pool)} training (0) and {len(test_rows)} test (2) "
                        "images; data.split: official needs both. Use the file of the CelebA release, or "
                        "data.split: protocol.")
    val_rows, val_info = np.zeros(0, dtype=np.int64), {}
    if val_fraction > 0:
        val_rows, removed, val_info = _draw_validation(pool, targets, minority, val_fraction, seed, identities)
        pool = np.setdiff1d(pool, removed, assume_unique=True)
    chosen = resample_to_share(minority[pool], targets[pool], share, train_size=train_size, seed=seed)
    info: dict[str, Any] = {"split": "official", "test_size": len(test_rows),
                            "identity_disjoint": "by CelebA's construction"}
    if identities is not None:
        identities = np.asarray(identities)
        shared = np.intersect1d(identities[pool], identities[test_rows])
        info["identity_disjoint"] = len(shared) == 0
        info["identity_overlap"] = len(shared)
        info["identities_test"] = len(np.unique(identities[test_rows]))
        info["identities_train"] = len(np.unique(identities[pool[chosen]]))
        if len(shared):
            warnings.warn(
                f"CelebA official split: {len(shared)} identities (e.g. {shared[0]}) have images in both the "
                f"training partition (0) and the test partition (2) of {PARTITION_FILE}, which CelebA's release "
                f"does not; the partition and {IDENTITY_FILE} are likely from different copies, and test accuracy "
                "may be inflated by faces seen in training. Use both files of one release, or data.split: protocol "
                "(disjoint by identity).",
                stacklevel=2,
            )
    info.update(_cell_counts("test_count", targets[test_rows], minority[test_rows]))
    info.update(_cell_counts("pool_count", targets[pool], minority[pool]))
    info.update(val_info)
    return Split(test_rows, pool[chosen], info, val_rows)


def _draw_validation(pool: np.ndarray, targets: np.ndarray, minority: np.ndarray, fraction: float, seed: int,
                     identities: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A validation set of ``fraction`` of the ``pool`` rows, stratified by (group, label).

    Returns ``(validation rows, rows to leave out of training, info)``, rows sorted. Without
    ``identities`` the second is the first (:func:`dataset.imbalance.validation_split` of the
    pool). With them the cells' counts are the same, but filled person by person in a seeded
    order of the pool's identities (as the test set is); the rows left out of training are then
    every pool row of a validation person, those that did not fit into a full cell included, and
    ``info["val_identity_overlap_excluded"]`` counts the latter.
    """
    if identities is None:
        local, _ = validation_split(minority[pool], targets[pool], fraction, seed=seed)
        val_rows = pool[local]
        removed, extra = val_rows, {}
    else:
        counts = validation_counts(minority[pool], targets[pool], fraction)
        order = pool[_identity_order(identities[pool], seed, _VAL_IDENTITY_STREAM)]
        parts = [order[(minority[order] == bool(group)) & (targets[order] == label)][:count]
                 for (group, label), count in counts.items()]
        val_rows = np.sort(np.concatenate(parts))
        people = np.unique(identities[val_rows])
        removed = pool[np.isin(identities[pool], people)]
        extra = {"identities_val": len(people), "val_identity_overlap_excluded": len(removed) - len(val_rows)}
    info = {**validation_info(targets[val_rows], minority[val_rows], fraction, "val_fraction"),
            **_cell_counts("val_count", targets[val_rows], minority[val_rows]), **extra}
    return val_rows, removed, info


def _seeded_order(rows: np.ndarray, stream: str, seed: int, cell: tuple[bool, int]) -> np.ndarray:
    """``rows`` in a random order fixed by (stream, seed, cell) alone, so prefixes of it nest."""
    rng = numpy_generator(seed, stream, int(cell[0]), cell[1])
    return rng.permutation(rows)


def _identity_order(identities: np.ndarray, seed: int, stream: str = _IDENTITY_STREAM) -> np.ndarray:
    """All row indices, identity by identity in a random order, each identity's rows in a random order.

    Fixed by (``stream``, seed) and the identities alone, not by labels, groups or share.
    """
    rng = numpy_generator(seed, stream)
    _, person = np.unique(identities, return_inverse=True)
    rank = rng.permutation(int(person.max()) + 1 if len(person) else 0)  # each identity's place in the walk
    rows = rng.permutation(len(identities))
    return rows[np.argsort(rank[person[rows]], kind="stable")]


def _cell_name(cell: tuple[bool, int]) -> str:
    return f"{'minority' if cell[0] else 'majority'} {'positive' if cell[1] else 'negative'}"


def _cell_counts(prefix: str, targets: np.ndarray, minority: np.ndarray) -> dict[str, int]:
    """Counts per group and per (group, label), named like the project's metric keys."""
    counts = {}
    for group, mask in (("minority", minority), ("majority", ~minority)):
        counts[f"{prefix}/group={group}"] = int(np.count_nonzero(mask))
        counts[f"{prefix}/group={group}/label=1"] = int(np.count_nonzero(mask & (targets == 1)))
        counts[f"{prefix}/group={group}/label=0"] = int(np.count_nonzero(mask & (targets == 0)))
    return counts


# ---------------------------------------------------------------------------------------------------
# Pre-processing and the image cache
# ---------------------------------------------------------------------------------------------------


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
    if path.is_file():
        images = _open_cache(path, shape)
        problem = (f"not a {shape} uint8 array" if images is None else _checksum_problem(path))
        if problem is None:
            return ImageCache(images, path, built=False, seconds=0.0)
        del images  # the memory map, before the file is replaced
        warn_user(f"{path}: {problem}; {CACHE_REBUILT}.")

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
    except OSError as error:
        raise DataError(f"{cache_dir}: cannot create the image cache folder ({error.strerror}). Set "
                        "data.cache_dir to a writable folder.") from None
    needed = int(np.prod(shape))
    if needed > free:
        raise DataError(f"{cache_dir}: the image cache needs {needed / 2**30:.2f} GiB but {free / 2**30:.2f} GiB "
                        "are free. Set data.cache_dir to a folder with more space, or lower data.image_size.")

    started = time.perf_counter()
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    paths = [Path(image_dir) / name for name in filenames]
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        if backend != "pillow":
            _decode_in_batches(BATCH_DECODERS[backend](), paths, out, size, device, chunk_size,
                               progress_mode)
        else:
            _decode_with_pillow(paths, out, size, workers or usable_cores(), chunk_size, progress_mode)
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
    images = _open_cache(path, shape)
    assert images is not None, f"{path} was just written with shape {shape}"
    return ImageCache(images, path, built=True, seconds=time.perf_counter() - started)


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


# ---------------------------------------------------------------------------------------------------
# Transform and the data set builder
# ---------------------------------------------------------------------------------------------------


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
        **_cell_counts("train_count", y_train, minority_train),
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

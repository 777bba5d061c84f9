"""CelebA's files: where a copy keeps them, and reading its attribute, partition and identity lists.

What a run needs from the user's copy of CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html),
in ``data.root`` or, as torchvision lays it out, in ``data.root/celeba`` (:func:`locate_celeba`):

* ``img_align_celeba/``: the 202,599 aligned and cropped JPEGs, 178 px wide and 218 px high;
* ``list_attr_celeba.txt``: the 40 binary attributes (1 / -1) of every image (:func:`read_attributes`);
* ``list_eval_partition.txt``: CelebA's own train / valid / test partition (0 / 1 / 2), read only
  with ``data.celeba.split: official`` (:func:`read_partition`);
* ``identity_CelebA.txt`` (optional, from the release's ``Anno`` folder, next to the attribute
  file): the person (an integer identity) of every image, which keeps each person on one side of
  the protocol's split (:func:`read_identities`; :mod:`dataset.celeba_split`).

Nothing else (boxes, landmarks) is read. Every problem is a DataError naming the file, the line
where there is one, and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import ConfigError, DataError

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
# (width, height) of every aligned CelebA image; the crop is the central width × width square.
ALIGNED_SIZE = (178, 218)
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


@dataclass(frozen=True)
class CelebAFiles:
    """Where the parts of one CelebA copy are.

    Attributes:
        directory: the folder holding the files (``data.root`` or ``data.root/celeba``).
        image_dir: ``img_align_celeba/``.
        attribute_file: ``list_attr_celeba.txt``.
        partition_file: ``list_eval_partition.txt``, or None where it is absent (it is needed only by
            ``data.celeba.split: official``).
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

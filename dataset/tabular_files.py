"""Reading a tabular source's files: where they are, their bytes, their text, their CSV rows.

Shared by the sources' read hooks (:mod:`dataset.compas`, :mod:`dataset.german`,
:mod:`dataset.lsac`; UCI Adult keeps its own messages, :mod:`dataset.adult`). Files are read by
content (gzip or plain); a shipped copy is checked against the md5 of the original, a user's copy
(``data.root``) for format only. Every problem is a :class:`~utils.errors.DataError` naming the
file (and line) and the fix.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

from utils.errors import DataError, file_problem

DATA_DIR = Path(__file__).resolve().parent / "data"

# Message parts the tests import (fairlearn's habit: constants, not regexes copied by hand).
FILE_NOT_FOUND = "file not found"
SHIPPED_MISSING = "the shipped copy"
CHECKSUM_MISMATCH = "checksum mismatch"
MISSING_COLUMNS = "the header lacks"
FIELD_COUNT = "fields, expected"
NOT_A_NUMBER = "expected a number"
NON_FINITE = "expected a finite number"
BAD_VALUE = "expected one of"


def locate(root: str | Path | None, name: str, *, shipped_dir: Path | None, title: str,
           where: str) -> tuple[Path, bool]:
    """The file to read and whether it is the shipped copy.

    ``root`` None means the shipped ``{name}.gz`` (a DataError if there is none or it is gone);
    otherwise ``root/name`` or ``root/name.gz``. ``where`` says where to get the file.
    """
    if root is None:
        if shipped_dir is None:
            raise DataError(f"data.root: null, but {title} is not shipped with this repository; set data.root to "
                            f"a directory holding your copy of {name}. {where}")
        path = shipped_dir / f"{name}.gz"
        if not path.is_file():
            raise DataError(f"{path}: {SHIPPED_MISSING} of {title} is missing from this checkout. Restore it "
                            f"from the repository, or set data.root to a directory holding {name}. {where}")
        return path, True
    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise DataError(f"data.root: {str(directory)!r} is not a directory; set it to the directory holding "
                        f"{name} (plain or .gz).")
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate, False
        if os.path.lexists(candidate) and (problem := file_problem(candidate)) != "does not exist":
            raise DataError(f"{candidate}: {problem}; put your copy of {name} there. {where}")
    raise DataError(f"{directory / name}: {FILE_NOT_FOUND} (nor {name}.gz) in data.root {str(directory)!r}. "
                    f"{where}")


def read_text(path: Path, *, shipped: bool, md5: str | None, title: str) -> tuple[str, str]:
    """The file's text and the md5 of its (decompressed) bytes; the shipped copy must match ``md5``.

    gzip is recognized by content, not by name. UTF-8 (with or without a byte-order mark) is tried
    first, then Latin-1, which decodes any byte: the values the sources read are ASCII, and a
    binary file still fails at the header check with a message that lists what was expected.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); check its permissions or replace it.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: not a readable gzip file ({error}); replace it with an intact copy.") from None
    digest = hashlib.md5(raw).hexdigest()
    if shipped and digest != md5:
        raise DataError(f"{path}: {CHECKSUM_MISMATCH}, md5 of the decompressed file is {digest}, the original's "
                        f"is {md5}. The shipped copy of {title} is corrupted or was edited; restore it from the "
                        "repository, or set data.root to a directory holding an original copy.")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: not a text file (it holds NUL bytes); expected the {title} file.")
    try:
        return raw.decode("utf-8-sig"), digest
    except UnicodeDecodeError:
        return raw.decode("latin-1"), digest


def csv_rows(text: str, path: Path, title: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank data row, each row as wide as the header."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected the comma-separated {title} file with a header.")
        header = [name.strip() for name in header]
        rows = []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(fields)} comma-separated {FIELD_COUNT} "
                                f"{len(header)} as in the header (line 1). Fix or remove that line.")
            rows.append((reader.line_num, fields))
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None
    if not rows:
        raise DataError(f"{path}: no data rows after the header; expected the {title} file.")
    return header, rows


def columns(header: Sequence[str], wanted: Sequence[str], path: Path, title: str, hint: str = "") -> dict[str, int]:
    """Index of the first occurrence of each wanted column, or a DataError listing what is missing."""
    missing = [name for name in wanted if name not in header]
    if missing:
        found = ", ".join(name for name in header if name) or "(none)"
        raise DataError(f"{path}, line 1: {MISSING_COLUMNS} {', '.join(missing)}. Expected the {title} file with "
                        f"columns {', '.join(wanted)}; found: {found}.{hint}")
    return {name: list(header).index(name) for name in wanted}


def number(value: str, path: Path, line: int, column: str) -> float:
    """``value`` as a finite float, or a DataError naming the file, line and column."""
    try:
        parsed = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: column {column} is {value!r}, {NOT_A_NUMBER}. "
                        "Fix or remove that line.") from None
    # float() also reads "nan", "inf" and "1e999"; such a value would turn the standardized features
    # (and the loss) into NaN, blamed later on training.lr.
    if not math.isfinite(parsed):
        raise DataError(f"{path}, line {line}: column {column} is {value!r}, {NON_FINITE}. Fix or remove that line.")
    return parsed


def code(value: str) -> str:
    """A category code written as a number ("1", "1.0", " 2 ") in one spelling ("1", "2")."""
    value = value.strip()
    try:
        parsed = float(value)
    except ValueError:
        return value
    return str(int(parsed)) if math.isfinite(parsed) and parsed.is_integer() else value

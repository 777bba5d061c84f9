"""Progress bars that show on a terminal and stay quiet in logs, CI and notebooks' captured output."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, mode: str = "auto", leave: bool = True,
             total: int | None = None) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar; ``mode`` is ``logging.progress`` (auto | always | never).

    ``auto`` shows the bar only when stderr is a terminal, so files and CI logs get no bar noise.
    """
    disable = mode == "never" or (mode == "auto" and not sys.stderr.isatty())
    return tqdm(items, desc=desc, leave=leave, disable=disable, total=total, dynamic_ncols=True)

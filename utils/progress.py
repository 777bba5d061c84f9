"""Progress bars that show on a terminal and stay quiet in logs, CI and notebooks' captured output."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from typing import TypeVar

from tqdm.std import TqdmExperimentalWarning

# The notebook bar in Jupyter/Colab, the console bar elsewhere; NOT tqdm.auto, whose asyncio class
# calls iter() on the iterable when the bar is built and again when it is iterated: for a
# DataLoader that is two iterators per epoch, each drawing a seed from the loader's generator, so
# the batch order of a run depended on the progress bar library (the batch_sampling stream
# advanced by one extra draw per epoch).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
    from tqdm.autonotebook import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, mode: str = "auto", leave: bool = True,
             total: int | None = None) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar; ``mode`` is ``logging.progress`` (auto | always | never).

    ``auto`` shows the bar only when stderr is a terminal, so files and CI logs get no bar noise.
    ``items`` is iterated exactly once, bar or not (a DataLoader's iterator draws from its
    generator when it is made, so a second iterator would change the run's batches).
    """
    disable = mode == "never" or (mode == "auto" and not sys.stderr.isatty())
    return tqdm(items, desc=desc, leave=leave, disable=disable, total=total, dynamic_ncols=True)

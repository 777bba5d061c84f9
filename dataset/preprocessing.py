"""How the tabular features are scaled and encoded, and where every parameter of it comes from.

``data.preprocessing`` picks one of two pipelines (``auto``, the default, is ``public`` under
``privacy.mode`` dpsgd or dpfedavg and ``fitted`` without privacy):

- **public**: no parameter is read off a row of the data. A numeric column is clipped to public
  bounds [low, high] and mapped to [-1, 1], linearly or, for heavy-tailed amounts and counts, on
  the log1p scale (:class:`PublicRange`; centred on the range: on ``utils/params_adult.yaml`` that
  trains as well as standardization, where [0, 1] cost 0.7 points of accuracy); a categorical
  column is one-hot over a documented list of its categories (:class:`PublicCategories`), so a
  category that only one person has creates no column of its own (a value outside the list, in a
  user's copy, encodes as all zeros and is counted in ``data/info``); RUNNER's protocol puts each numeric column into 10 equal-width bins
  of its public range. Each data set's bounds and lists are declared beside its loader with their
  source, and copied into its data notes (``dataset/data/*/README.md``). Many upper bounds are not
  documented anywhere; those are assumptions fixed from the column's meaning (a two-digit field, a
  five-digit dollar amount), written down as such. A wrong bound costs information (values beyond
  it are clipped), never privacy: the transform of one row depends on that row alone, so it needs
  no sensitivity analysis and adds nothing to ε.
- **fitted**: the statistics of the data, as before this module existed: numeric columns
  standardized with the mean and standard deviation of the run's selected training rows, one-hot
  over the categories that occur in the training pool, RUNNER's bins at the training pool's deciles.
  These are computed from private rows without noise (capital-gain reaches 99,999, so a mean has
  no bounded sensitivity); under privacy such a run still trains, but it warns, its summary says
  ``privacy/private: false`` and its public-data list says the preprocessing is not covered by ε.

Every run writes what it applied to ``preprocessing.json`` (:func:`document`): per column the
transform, its parameters and their source (``public`` with its reference, or ``fitted`` on which
rows). With ``logging.private_stats: false`` the fitted parameters are left out of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.config import PREPROCESSING_MODES

__all__ = ["PREPROCESSING_MODES", "PublicCategories", "PublicRange", "PublicSchema", "document",
           "resolved_mode"]

PUBLIC, FITTED = "public", "fitted"

# Message part of a fitted preprocessing under privacy (tests import it).
FITTED_UNDER_PRIVACY = (
    "data.preprocessing: fitted under privacy.mode {mode!r}: the feature scaling and the category "
    "lists are computed from the private training rows without noise, so epsilon does not cover "
    "the released model (its summary says privacy/private: false). Use data.preprocessing: public "
    "(or auto) for a run meant to be private.")


def resolved_mode(config) -> str:
    """``data.preprocessing`` with ``auto`` resolved: public under privacy, fitted without."""
    mode = config.data.preprocessing
    if mode == "auto":
        return PUBLIC if config.privacy.private else FITTED
    return mode


@dataclass(frozen=True)
class PublicRange:
    """A numeric column's public bounds and the scale it is mapped on.

    Attributes:
        low, high: the bounds; a value outside is clipped to them.
        log: map on the log1p scale (amounts and counts whose values span orders of magnitude).
        source: where the bounds come from (a document, or "assumed: ..." with the reason).
    """

    low: float
    high: float
    log: bool = False
    source: str = ""

    def __post_init__(self):
        if not self.high > self.low or (self.log and self.low <= -1):
            raise ValueError(f"bad public range [{self.low}, {self.high}] (log={self.log})")

    def _forward(self, values: np.ndarray) -> np.ndarray:
        return np.log1p(values) if self.log else values

    def scale(self, values: np.ndarray) -> np.ndarray:
        """``values`` clipped to [low, high] and mapped to [-1, 1] (float64)."""
        clipped = np.clip(np.asarray(values, dtype=np.float64), self.low, self.high)
        low, high = self._forward(np.float64(self.low)), self._forward(np.float64(self.high))
        return 2.0 * (self._forward(clipped) - low) / (high - low) - 1.0

    def bin_edges(self, bins: int) -> np.ndarray:
        """The ``bins - 1`` inner edges of ``bins`` equal-width bins of the range on its scale."""
        low, high = self._forward(self.low), self._forward(self.high)
        inner = np.linspace(low, high, bins + 1)[1:-1]
        return np.expm1(inner) if self.log else inner

    def transform_name(self) -> str:
        return ("clip to [low, high], then 2 (log1p(x) - log1p(low)) / (log1p(high) - log1p(low)) - 1"
                if self.log else "clip to [low, high], then 2 (x - low) / (high - low) - 1")

    def record(self, column: str) -> dict[str, Any]:
        return column_record(column, self.transform_name(),
                             {"low": self.low, "high": self.high, "log1p": self.log}, PUBLIC,
                             self.source)


@dataclass(frozen=True)
class PublicCategories:
    """A categorical column's documented categories.

    Attributes:
        values: every category the documentation lists (encoded in sorted order).
        source: the document.
    """

    values: tuple[str, ...]
    source: str

    def sorted(self) -> np.ndarray:
        return np.array(sorted(self.values), dtype=str)


@dataclass(frozen=True)
class PublicSchema:
    """A data set's public preprocessing: its numeric columns' bounds and its categorical columns'
    documented categories, by column name."""

    ranges: dict[str, PublicRange]
    categories: dict[str, PublicCategories]


def column_record(column: str, transform: str, parameters: dict[str, Any] | None, source: str,
                  reference: str) -> dict[str, Any]:
    """One column's entry of preprocessing.json."""
    return {"column": column, "transform": transform, "parameters": parameters, "source": source,
            "reference": reference}


def one_hot_record(column: str, categories, *, public: PublicCategories | None) -> dict[str, Any]:
    """The entry of a one-hot column: its categories, from the documentation or the pool."""
    values = [str(value) for value in categories]
    if public is not None:
        return column_record(column, "one-hot", {"categories": values}, PUBLIC, public.source)
    return column_record(column, "one-hot", {"categories": values}, FITTED,
                         "the categories that occur in the training pool")


def standardized_record(column: str, mean: float, std: float) -> dict[str, Any]:
    """The entry of a numeric column standardized with the training rows' statistics."""
    return column_record(column, "(x - mean) / std", {"mean": float(mean), "std": float(std)},
                         FITTED, "mean and standard deviation (ddof 0) of the run's training rows")


def document(mode: str, columns: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The content of preprocessing.json: the mode, whether every parameter is public (``source``:
    public, or fitted when any column's is), and the columns' entries."""
    sources = {entry["source"] for entry in columns}
    return {"mode": mode, "source": FITTED if FITTED in sources else PUBLIC, **extra,
            "columns": columns}


def without_fitted_parameters(record: dict[str, Any]) -> dict[str, Any]:
    """preprocessing.json for a run recorded without its non-private statistics
    (``logging.private_stats: false``): the fitted parameters are left out."""
    columns = [{**entry, "parameters": None, "withheld": "logging.private_stats: false"}
               if entry["source"] == FITTED else entry for entry in record["columns"]]
    return {**record, "columns": columns}

"""The project's one definition of every test metric: accuracy, fairness gaps, per-group rates.

Everything the run reports under ``test/`` is computed here, from the test set's labels ``y_true``
(0/1), the model's scores ``y_score`` (probabilities of class 1) and the group flag ``minority``
(True for the minority group). A prediction is ``ŷ = 1`` when ``y_score >= threshold`` (0.5 by
default), the same "at or above the threshold" rule as sklearn's ``precision_recall_curve``.

Definitions
-----------
Per group ``g`` (``minority`` or ``majority``), from the group's confusion counts
(TN, FP, FN, TP), as in the table :data:`GROUP_RATES`:

================  =====================  =====================================
name              meaning                counts
================  =====================  =====================================
accuracy          P(ŷ = y | g)           (TN + TP) / (TN + FP + FN + TP)
tpr               P(ŷ = 1 | y = 1, g)    TP / (FN + TP)     (recall)
fpr               P(ŷ = 1 | y = 0, g)    FP / (TN + FP)
selection_rate    P(ŷ = 1 | g)           (FP + TP) / (TN + FP + FN + TP)
count             number of examples     TN + FP + FN + TP  (kept apart: an int, never None)
================  =====================  =====================================

Gaps, as in the table :data:`GAPS`, are absolute differences minority − majority of one rate:

- ``dp_gap`` = |selection_rate(min) − selection_rate(maj)|: demographic parity difference
  (Calders & Verwer 2010; Dwork et al. 2012, "Fairness through awareness").
- ``eo_gap`` = |tpr(min) − tpr(maj)|: equal opportunity difference (Hardt, Price & Srebro 2016,
  "Equality of Opportunity in Supervised Learning", Def. 2).
- ``fpr_gap`` = |fpr(min) − fpr(maj)|.
- ``accuracy_gap`` = |accuracy(min) − accuracy(maj)|: the disparity studied by Bagdasaryan,
  Poursaeed & Shmatikov 2019, "Differential Privacy Has Disparate Impact on Model Accuracy".
- ``eodds_gap`` = max(eo_gap, fpr_gap) (table :data:`WORST_CASE_GAPS`): equalized odds
  (Hardt et al. 2016, Def. 1) measured as fairlearn's ``equalized_odds_difference`` does with its
  default ``agg="worst_case"``.
- ``eodds_gap_sum`` = eo_gap + fpr_gap (table :data:`SUM_GAPS`): the equalized-odds gap as the
  RUNNER paper (Li et al.) reports it; twice fairlearn's ``agg="mean"``.

``constant_prediction`` is true when every decision is the same class (every example ŷ = 0, or
every one ŷ = 1; None for an empty set). Such a model's gaps are 0 by construction or undefined,
which reads as "fair" in any table: a run flags it (summary.json, stderr, every report view), and a
gap-based model selection can be told to pass such epochs over (``training.select_skip_constant``).

Overall: ``accuracy`` on the whole test set, and ``average_precision``
AP = Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct score thresholds, where Pₙ and Rₙ are the precision and
recall at the n-th threshold: sklearn's ``average_precision_score`` definition (no interpolation
of the precision-recall curve), reimplemented here in numpy and tested against sklearn.

With two groups, fairlearn's ``MetricFrame.difference()`` (max − min over groups) is exactly the
absolute difference above, so every gap equals fairlearn's number whenever both are defined.

When a value is null (None here, ``null`` in metrics.jsonl / summary.json)
-------------------------------------------------------------------------
A rate whose denominator is zero is undefined, and we report None, never a number:

- ``tpr/group=g`` is None when group g has no positive example in the test set (FN + TP = 0);
- ``fpr/group=g`` is None when group g has no negative example (TN + FP = 0);
- every rate of a group with no test example is None (its ``count`` is 0);
- a gap is None when the rate on either side is None; ``eodds_gap`` and ``eodds_gap_sum`` are
  None when either of ``eo_gap`` and ``fpr_gap`` is None (the worst case, or the sum, of two
  numbers, one unknown, is unknown);
- ``accuracy`` is None for an empty test set; ``average_precision`` is None when ``y_true`` has
  no positive example (precision and recall are undefined at every threshold).

NaN never appears in the output: Python's json writes it as the bare token ``NaN``, which is not
JSON and which strict readers (jq, JavaScript, many plotting tools) reject.

Where this differs from fairlearn 0.15 / sklearn 1.x, and why:

- fairlearn's ``true_positive_rate`` and ``false_positive_rate`` return 0.0 for a group with no
  positives (resp. no negatives): they normalise sklearn's confusion matrix, which writes 0 for an
  empty row. ``equal_opportunity_difference`` and ``equalized_odds_difference`` then compare that
  0.0 with the other group's rate and return a number. A TPR of 0.0 reads as "the model misses every
  positive of this group", a claim made on no evidence, and the gap built on it is invented; in a
  study of small minority groups this case is real (a 1 % minority in a small test set can have
  no positives), so we report None instead.
- fairlearn's ``selection_rate`` raises ValueError on an empty group, and a ``MetricFrame`` over
  data in which one group is absent has a single row, so its ``difference()`` (and every fairlearn
  gap) is 0.0: "perfectly fair" for a comparison that was never made. We report None.
- sklearn's ``average_precision_score`` returns 0.0 (with a warning) when there is no positive
  label; we report None.

When every value involved is defined, every number here equals the sklearn/fairlearn one
(``tests/test_fairness_metrics.py`` checks this on random data).

Uncertainty
-----------
:func:`bootstrap_intervals` gives percentile bootstrap intervals (Efron & Tibshirani 1993, "An
Introduction to the Bootstrap", ch. 13) for accuracy and every per-group rate, resampling within
each group. A gap's interval is built from the signed difference minority − majority and then
mapped through |·|, because the percentile interval of an absolute value almost never contains
0 when the true gap is 0 (details in :func:`bootstrap_intervals`). The minority group is small by
design, so its rates and every gap carry much more sampling noise than the overall accuracy;
:func:`small_group_warnings` says so in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GROUPS = ("minority", "majority")
"""The two groups, named by role; the order in which every per-group key is emitted."""

CELLS = ("tn", "fp", "fn", "tp")
"""Confusion cells in the order of the last axis of a counts array: cell index = 2·y + ŷ."""


@dataclass(frozen=True)
class GroupRate:
    """A per-group rate: the share of the cells in ``denominator`` that also fall in ``numerator``.

    A rate is defined on confusion counts rather than directly on examples so that the same
    definition serves the point estimate (one set of counts) and the bootstrap (one set of counts
    per resample, computed for all resamples at once). Calling the object on a group's
    ``(y_true, y_pred)`` gives the point value, float or None.

    Attributes:
        meaning: the probability the rate estimates, for readers of the table.
        numerator: confusion cells (names from :data:`CELLS`) counted above the fraction bar.
        denominator: confusion cells counted below it; the rate is undefined when they are empty.
    """

    meaning: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]

    def __post_init__(self) -> None:
        for cell in (*self.numerator, *self.denominator):
            if cell not in CELLS:
                raise ValueError(f"unknown confusion cell {cell!r}; cells are {CELLS}")
        if not set(self.numerator) <= set(self.denominator):
            raise ValueError("a rate's numerator cells must be a subset of its denominator cells")

    def from_counts(self, counts: np.ndarray) -> np.ndarray:
        """The rate for every row of ``counts`` (shape ``(..., 4)``), NaN where undefined.

        NaN is the internal marker for "undefined"; public functions turn it into None.
        """
        counts = np.asarray(counts, dtype=np.float64)
        numerator = counts[..., [CELLS.index(c) for c in self.numerator]].sum(axis=-1)
        denominator = counts[..., [CELLS.index(c) for c in self.denominator]].sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / denominator, np.nan)

    def __call__(self, y_true, y_pred) -> float | None:
        """The rate of one group from its labels and 0/1 predictions; None when undefined."""
        return _to_python(self.from_counts(confusion_counts(y_true, y_pred)))


GROUP_RATES: dict[str, GroupRate] = {
    "accuracy": GroupRate("P(ŷ = y)", ("tn", "tp"), CELLS),
    "tpr": GroupRate("P(ŷ = 1 | y = 1)", ("tp",), ("fn", "tp")),
    "fpr": GroupRate("P(ŷ = 1 | y = 0)", ("fp",), ("tn", "fp")),
    "selection_rate": GroupRate("P(ŷ = 1)", ("fp", "tp"), CELLS),
}
"""Per-group rates, by metric name. Adding a rate here adds its per-group keys and intervals."""

COUNT = "count"
"""The per-group example count, reported next to the rates (an int, never None)."""

GAPS: dict[str, str] = {
    "dp_gap": "selection_rate",
    "eo_gap": "tpr",
    "fpr_gap": "fpr",
    "accuracy_gap": "accuracy",
}
"""Each gap is |rate(minority) − rate(majority)| of the rate named here."""

WORST_CASE_GAPS: dict[str, tuple[str, ...]] = {
    "eodds_gap": ("eo_gap", "fpr_gap"),
}
"""Each is the largest of the gaps named here, all keys of :data:`GAPS` (fairlearn's
``equalized_odds_difference`` with ``agg="worst_case"``)."""

SUM_GAPS: dict[str, tuple[str, ...]] = {
    "eodds_gap_sum": ("eo_gap", "fpr_gap"),
}
"""Each is the sum of the gaps named here: |ΔTPR| + |ΔFPR|, the equalized-odds gap of the RUNNER
paper (twice fairlearn's ``equalized_odds_difference`` with ``agg="mean"``)."""

COMPOSITE_GAPS = {**WORST_CASE_GAPS, **SUM_GAPS}
"""Gaps made of other gaps, by name: their parts."""

OVERALL_RATES = ("accuracy",)
"""Rates from :data:`GROUP_RATES` also reported on the whole test set, under their bare name."""

AVERAGE_PRECISION = "average_precision"
CONSTANT_PREDICTION = "constant_prediction"
"""True when every decision is one class: a model whose gaps say nothing about fairness."""


def group_key(name: str, group: str) -> str:
    """The key of a per-group value: ``group_key("tpr", "minority") == "tpr/group=minority"``."""
    return f"{name}/group={group}"


def _gap_names() -> tuple[str, ...]:
    return (*GAPS, *COMPOSITE_GAPS)


# Every key compute_metrics returns, in its order; generated from the tables above so that a new
# rate or gap is one table entry. Code elsewhere should iterate over these tuples rather than
# spell metric names out.
METRIC_NAMES: tuple[str, ...] = (
    *OVERALL_RATES,
    AVERAGE_PRECISION,
    *_gap_names(),
    *(group_key(rate, group) for rate in (*GROUP_RATES, COUNT) for group in GROUPS),
    CONSTANT_PREDICTION,
)

# The metrics bootstrap_intervals covers: all of the above but the counts (fixed by the
# stratified resampling) and average precision (it depends on the order of the scores, not
# only on the confusion counts the fast bootstrap resamples).
INTERVAL_METRICS: tuple[str, ...] = (
    *OVERALL_RATES,
    *_gap_names(),
    *(group_key(rate, group) for rate in GROUP_RATES for group in GROUPS),
)
INTERVAL_NAMES: tuple[str, ...] = tuple(f"{name}_ci" for name in INTERVAL_METRICS)


def predictions(y_score, threshold: float = 0.5) -> np.ndarray:
    """Hard 0/1 predictions: 1 where ``y_score >= threshold``.

    The one thresholding rule of the project; ``predictions.csv`` and every metric use it.
    """
    return (np.asarray(y_score, dtype=np.float64) >= threshold).astype(np.int64)


def _decisions(y_score: np.ndarray, threshold: float, y_pred) -> np.ndarray:
    """``y_pred`` as 0/1 int64 (checked against the scores' length), or the thresholded scores."""
    if y_pred is None:
        return predictions(y_score, threshold)
    y_pred = np.asarray(y_pred)
    if y_pred.shape != y_score.shape or not np.isin(y_pred, (0, 1)).all():
        raise ValueError(f"y_pred must be 0/1 of shape {y_score.shape}, got {y_pred.shape}")
    return y_pred.astype(np.int64)


def confusion_counts(y_true, y_pred) -> np.ndarray:
    """Counts of (TN, FP, FN, TP) for 0/1 labels and predictions, as an int array of shape (4,)."""
    cell = 2 * np.asarray(y_true, dtype=np.int64) + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(cell, minlength=4)


def compute_metrics(y_true, y_score, minority, threshold: float = 0.5,
                    y_pred=None) -> dict[str, float | int | None]:
    """Every test metric of one test set, keyed as in :data:`METRIC_NAMES` (no ``test/`` prefix).

    Args:
        y_true: true labels, 0/1 (or bool), shape (n,).
        y_score: the model's probability of class 1, finite, shape (n,).
        minority: True (or 1) for examples of the minority group, shape (n,).
        threshold: ``ŷ = 1`` where ``y_score >= threshold``.
        y_pred: the decisions, 0/1, when they are not the thresholded scores (a repair method's
            post-processing, e.g. reject option classification); average precision still ranks
            the scores.

    Returns:
        ``{name: value}``: rates and gaps as float, per-group counts as int, None where a value is
        undefined (the rules are in this module's docstring). Never NaN.

    Raises:
        ValueError: arrays of different lengths or not 1-D, labels or group flags other than 0/1,
            or non-finite scores (a diverged model: its metrics would be those of a constant
            classifier and look plausible, so we refuse to report them silently).
    """
    y_true, y_score, minority = _check_inputs(y_true, y_score, minority)
    y_pred = _decisions(y_score, threshold, y_pred)
    counts = {group: confusion_counts(y_true[mask], y_pred[mask])
              for group, mask in zip(GROUPS, (minority, ~minority))}
    metrics: dict[str, float | int | None] = {
        name: _to_python(value) for name, value in _metrics_from_counts(counts).items()}
    metrics[AVERAGE_PRECISION] = average_precision(y_true, y_score)
    for group in GROUPS:
        metrics[group_key(COUNT, group)] = int(counts[group].sum())
    metrics[CONSTANT_PREDICTION] = is_constant(y_pred)
    return {name: metrics[name] for name in METRIC_NAMES}


def is_constant(y_pred) -> bool | None:
    """Whether every decision in ``y_pred`` is the same class (None when there is none)."""
    y_pred = np.asarray(y_pred)
    return None if y_pred.size == 0 else bool((y_pred == y_pred.flat[0]).all())


def _metrics_from_counts(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Overall rates, per-group rates and gaps from per-group confusion counts.

    ``counts[group]`` has shape ``(..., 4)``: one row per resample in the bootstrap, a single row
    for the point estimate. Undefined values are NaN; NaN propagates through ``abs(a - b)`` and
    ``np.maximum``, which is exactly the rule "a gap is undefined when either side is".
    """
    values: dict[str, np.ndarray] = {}
    pooled = sum(counts[group] for group in GROUPS)
    for name in OVERALL_RATES:
        values[name] = GROUP_RATES[name].from_counts(pooled)
    for name, rate in GROUP_RATES.items():
        for group in GROUPS:
            values[group_key(name, group)] = rate.from_counts(counts[group])
    for gap, difference in _signed_differences(values).items():
        values[gap] = np.abs(difference)
    for gap, parts in WORST_CASE_GAPS.items():
        # np.maximum (unlike np.fmax) returns NaN if any part is NaN: the worst case is unknown.
        values[gap] = np.maximum.reduce([values[part] for part in parts])
    for gap, parts in SUM_GAPS.items():
        values[gap] = np.add.reduce([values[part] for part in parts])  # NaN if any part is
    return values


def _signed_differences(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """rate(minority) − rate(majority) for every gap in :data:`GAPS`, keyed by the gap's name."""
    minority, majority = GROUPS
    return {gap: values[group_key(rate, minority)] - values[group_key(rate, majority)]
            for gap, rate in GAPS.items()}


def average_precision(y_true, y_score) -> float | None:
    """sklearn's average precision AP = Σₙ (Rₙ − Rₙ₋₁) Pₙ; None when ``y_true`` has no positive.

    The sum runs over the distinct score values taken as thresholds, from the highest down; tied
    scores enter together (one step of the precision-recall curve), as in sklearn's
    ``precision_recall_curve``. No interpolation: this is not the trapezoidal area under the curve,
    which is optimistic (see sklearn's ``average_precision_score`` documentation).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    n_positive = int(y_true.sum())
    if n_positive == 0:
        return None
    order = np.argsort(-y_score, kind="stable")
    sorted_scores, sorted_labels = y_score[order], y_true[order]
    # The last position of each run of equal scores: the point on the curve for that threshold.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_tie]
    predicted_positives = last_of_tie + 1
    precision = true_positives / predicted_positives
    recall = true_positives / n_positive
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def bootstrap_intervals(y_true, y_score, minority, *, n_resamples: int = 1000,
                        confidence: float = 0.95, seed: int | np.random.SeedSequence = 0,
                        threshold: float = 0.5, y_pred=None) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals ``[low, high]`` for accuracy, every gap and per-group rate.

    Keys are ``<metric>_ci`` for every name in :data:`INTERVAL_METRICS`
    (``accuracy_ci``, ``dp_gap_ci``, ``tpr/group=minority_ci``, ...), as listed in
    :data:`INTERVAL_NAMES`.

    Resampling is stratified by group: each resample draws, with replacement, exactly as many
    minority examples from the minority examples as the test set holds, and likewise for the
    majority. How many test examples each group has is a choice made when the experiment is
    designed, not sampling noise, so the interval must not let it vary (an unstratified
    resample of a small minority would sometimes contain almost none of it and widen the
    minority's intervals with noise the experiment does not have).

    Every covered metric depends on the test set only through each group's confusion counts
    (TN, FP, FN, TP). The counts in a with-replacement resample of a group's n_g examples follow
    Multinomial(n_g, observed cell shares of the group), so we draw those counts directly, which
    gives the same bootstrap distribution as drawing example indices at O(resamples × 4) cost
    instead of O(resamples × n): 16,000 examples × 1,000 resamples take a few milliseconds.

    For accuracy and the per-group rates, the interval is the (1 − confidence)/2 and
    (1 + confidence)/2 quantiles (numpy's default linear interpolation) of the metric over the
    resamples.

    The gaps are absolute values, and the percentile interval of |d| fails exactly where a fairness
    study needs it: when the true difference d is zero (or within a standard error or two of it),
    every resampled |d*| is positive, the interval is pushed away from zero and covers a true gap
    of 0 almost never (under 1 % of simulated test sets at 95 % confidence; the bootstrap is not
    consistent at the kink of |·|, Andrews 2000, Econometrica 68(2)). A fair model would look
    "significantly unfair". So a gap's interval is built from the signed difference
    d = rate(minority) − rate(majority), a smooth statistic: its percentile interval [L, U] is
    mapped through |·|, giving [0, max(|L|, |U|)] when L ≤ 0 ≤ U and [min, max] of |L|, |U|
    otherwise. It covers |d| whenever [L, U] covers d, so at least as often. ``eodds_gap`` is the
    larger of two absolute gaps; its interval is [max of the lows, max of the highs] of the two
    parts' intervals, each taken at level 1 − (1 − confidence)/2 (Bonferroni), so that it covers
    with probability at least ``confidence`` (it is conservative when the two gaps are close).
    ``eodds_gap_sum``'s is [sum of the lows, sum of the highs] of the same two parts' intervals:
    valid by the same Bonferroni argument, and conservative (about 100 % coverage in the
    tests' simulation, for a nominal 95 %).

    A metric undefined in some resamples
    (the TPR of a group that has few positives: a resample may draw none) gets the interval of the
    resamples where it is defined, i.e. conditional on the group having a positive; that
    conditioning is harmless unless the group has only a handful of positives, when the interval
    says little anyway. A metric undefined on the full test set is undefined in every resample
    (resampling cannot create a positive), and gets None.

    Args:
        y_true, y_score, minority, threshold, y_pred: as in :func:`compute_metrics` (the
            resamples draw examples with their decisions).
        n_resamples: number of bootstrap resamples (≥ 1; 1000 or more for 95 % intervals).
        confidence: nominal coverage, in (0, 1).
        seed: seed of ``np.random.default_rng``, an int or a ``SeedSequence`` (a run passes its
            ``bootstrap`` stream, utils.seeding); the same inputs and seed give the same intervals.

    Returns:
        ``{"<metric>_ci": [low, high] or None}``.
    """
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    y_true, y_score, minority = _check_inputs(y_true, y_score, minority)
    y_pred = _decisions(y_score, threshold, y_pred)
    rng = np.random.default_rng(seed)

    resampled_counts = {}
    for group, mask in zip(GROUPS, (minority, ~minority)):
        observed = confusion_counts(y_true[mask], y_pred[mask])
        size = int(observed.sum())
        if size == 0:
            resampled_counts[group] = np.zeros((n_resamples, 4), dtype=np.int64)
        else:
            resampled_counts[group] = rng.multinomial(size, observed / size, size=n_resamples)
    values = _metrics_from_counts(resampled_counts)

    signed = _signed_differences(values)

    intervals: dict[str, list[float] | None] = {}
    for name in INTERVAL_METRICS:
        if name in GAPS:
            interval = _absolute_value_image(_percentile_interval(signed[name], confidence))
        elif name in COMPOSITE_GAPS:
            parts = COMPOSITE_GAPS[name]
            # Bonferroni: each part at level 1 − (1 − confidence)/k, so that all k parts hold
            # together with probability >= confidence, and then so does their maximum (or sum).
            part_confidence = 1.0 - (1.0 - confidence) / len(parts)
            part_intervals = [
                _absolute_value_image(_percentile_interval(signed[part], part_confidence))
                for part in parts]
            combine = max if name in WORST_CASE_GAPS else sum
            interval = (None if any(part is None for part in part_intervals)
                        else [combine(low for low, _ in part_intervals),
                              combine(high for _, high in part_intervals)])
        else:
            interval = _percentile_interval(values[name], confidence)
        intervals[f"{name}_ci"] = interval
    return intervals


def _percentile_interval(resampled: np.ndarray, confidence: float) -> list[float] | None:
    """The central ``confidence`` quantile range of the defined (non-NaN) resampled values."""
    defined = resampled[~np.isnan(resampled)]
    if defined.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return [float(low), float(high)]


def _absolute_value_image(interval: list[float] | None) -> list[float] | None:
    """{|d| : d in [low, high]}: an interval for |d| from an interval for the signed d."""
    if interval is None:
        return None
    low, high = interval
    if low <= 0.0 <= high:
        return [0.0, max(-low, high)]
    return sorted([abs(low), abs(high)])


def small_group_warnings(counts: Mapping[str, int], minimum: int = 100) -> list[str]:
    """Plain-language warnings for groups with fewer than ``minimum`` test examples.

    Args:
        counts: test examples per group, keyed by group name (``{"minority": 37, ...}``), e.g.
            ``{g: metrics[group_key("count", g)] for g in GROUPS}``.
        minimum: the size below which a group's rates are flagged. At 100 examples the standard
            error of a rate near 0.5 is already 0.05, as large as many of the gaps being studied.

    Returns:
        One message per group below the minimum, in the order of ``counts``; empty if none.
    """
    messages = []
    for group, count in counts.items():
        count = int(count)
        if count == 0:
            messages.append(f"the {group} group has no test examples: its rates and every gap "
                            f"are undefined (null)")
        elif count < minimum:
            examples = "example" if count == 1 else "examples"
            messages.append(f"the {group} group has only {count} test {examples} (fewer than "
                            f"{minimum}): its rates and every gap are very uncertain "
                            f"(see the _ci intervals)")
    return messages


def with_prefix(metrics: Mapping[str, object], prefix: str) -> dict[str, object]:
    """The same metrics with keys ``prefix/name``: ``with_prefix(m, "test")["test/accuracy"]``.

    A trailing slash on ``prefix`` is accepted (``"test/"`` gives the same keys).
    """
    prefix = prefix.rstrip("/")
    return {f"{prefix}/{name}": value for name, value in metrics.items()}


def _to_python(value) -> float | None:
    """A 0-d float array or numpy scalar as a Python float, NaN as None."""
    value = float(value)
    return None if np.isnan(value) else value


def _check_inputs(y_true, y_score, minority) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated copies: labels as int 0/1, scores as finite float, the group flag as bool."""
    arrays = {"y_true": np.asarray(y_true), "y_score": np.asarray(y_score),
              "minority": np.asarray(minority)}
    for name, array in arrays.items():
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    lengths = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"y_true, y_score and minority must have the same length, got {lengths}")
    for name in ("y_true", "minority"):
        if not np.isin(arrays[name], (0, 1)).all():
            raise ValueError(f"{name} must contain only 0/1 (or False/True) values, "
                             f"got {np.unique(arrays[name])[:10]}")
    scores = arrays["y_score"].astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"y_score has {int((~np.isfinite(scores)).sum())} non-finite values: "
                         f"the model diverged (or produced NaN) and its predictions are not "
                         f"meaningful")
    return arrays["y_true"].astype(np.int64), scores, arrays["minority"].astype(bool)

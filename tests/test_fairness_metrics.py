"""Tests of utils/fairness.py against independent references.

References: sklearn's metrics and fairlearn's group metrics on random data, hand-counted confusion
tables, a literal example-index bootstrap, and coverage of a known population quantity by
simulation.
"""

import json
import math

import fairlearn.metrics as flm
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    recall_score,
)

from utils.fairness import (
    COMPOSITE_GAPS,
    GROUP_RATES,
    GROUPS,
    INTERVAL_NAMES,
    METRIC_NAMES,
    average_precision,
    bootstrap_intervals,
    compute_metrics,
    group_key,
    is_constant,
    predictions,
    small_group_warnings,
    with_prefix,
)

# The metric names of the user-facing contract (DESIGN.md, "Metric names"), written out once here
# on purpose: the module generates them from its tables, and this is the check that it generates
# exactly the contract.
CONTRACT_NAMES = {
    "accuracy", "average_precision", "dp_gap", "eo_gap", "fpr_gap", "eodds_gap", "eodds_gap_sum",
    "accuracy_gap",
    "accuracy/group=minority", "accuracy/group=majority",
    "tpr/group=minority", "tpr/group=majority",
    "fpr/group=minority", "fpr/group=majority",
    "selection_rate/group=minority", "selection_rate/group=majority",
    "count/group=minority", "count/group=majority",
    "constant_prediction",
}


def random_test_set(seed, n=1500, minority_share=0.1, threshold_ties=True):
    """Labels, scores and an imbalanced group flag; the scores carry signal and (optionally) ties."""
    rng = np.random.default_rng(seed)
    minority = rng.random(n) < minority_share
    # Different base rates per group so that the gaps are not all near zero.
    y_true = (rng.random(n) < np.where(minority, 0.3, 0.5)).astype(int)
    y_score = np.clip(0.35 * y_true + 0.65 * rng.random(n) - 0.1 * minority, 0.0, 1.0)
    if threshold_ties:
        y_score = np.round(y_score, 2)  # ties exercise average precision's tie handling
    return y_true, y_score, minority


def sensitive(minority):
    return np.where(minority, "minority", "majority")


def assert_no_nan(metrics):
    """Every value is a number or None, and the dict is strict JSON."""
    json.dumps(metrics, allow_nan=False)
    for value in metrics.values():
        assert value is None or not math.isnan(value)


# --- point estimates against sklearn and fairlearn -----------------------------------------


def test_names_are_the_contract_and_generated_in_one_place():
    y_true, y_score, minority = random_test_set(0)
    metrics = compute_metrics(y_true, y_score, minority)
    assert set(METRIC_NAMES) == CONTRACT_NAMES
    assert tuple(metrics) == METRIC_NAMES
    expected_intervals = {f"{name}_ci" for name in CONTRACT_NAMES
                          if name not in ("average_precision", "constant_prediction")
                          and not name.startswith("count/")}
    assert set(INTERVAL_NAMES) == expected_intervals
    assert set(bootstrap_intervals(y_true, y_score, minority, n_resamples=20)) == expected_intervals


@pytest.mark.parametrize("seed,minority_share,threshold", [
    (0, 0.1, 0.5), (1, 0.05, 0.5), (2, 0.2, 0.5), (3, 0.1, 0.3), (4, 0.02, 0.6),
])
def test_every_metric_matches_sklearn_and_fairlearn(seed, minority_share, threshold):
    y_true, y_score, minority = random_test_set(seed, minority_share=minority_share)
    y_pred = (y_score >= threshold).astype(int)
    metrics = compute_metrics(y_true, y_score, minority, threshold=threshold)
    assert_no_nan(metrics)
    groups = sensitive(minority)

    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["average_precision"] == pytest.approx(average_precision_score(y_true, y_score))

    frame = flm.MetricFrame(
        metrics={"accuracy": accuracy_score, "tpr": flm.true_positive_rate,
                 "fpr": flm.false_positive_rate, "selection_rate": flm.selection_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    for group, mask in zip(GROUPS, (minority, ~minority)):
        tn, fp, fn, tp = confusion_matrix(y_true[mask], y_pred[mask], labels=[0, 1]).ravel()
        assert metrics[group_key("count", group)] == mask.sum()
        assert metrics[group_key("accuracy", group)] == pytest.approx(
            accuracy_score(y_true[mask], y_pred[mask]))
        assert metrics[group_key("tpr", group)] == pytest.approx(
            recall_score(y_true[mask], y_pred[mask]))
        assert metrics[group_key("tpr", group)] == pytest.approx(tp / (tp + fn))
        assert metrics[group_key("fpr", group)] == pytest.approx(fp / (fp + tn))
        assert metrics[group_key("selection_rate", group)] == pytest.approx((fp + tp) / mask.sum())
        for rate in GROUP_RATES:
            assert metrics[group_key(rate, group)] == pytest.approx(frame.by_group.loc[group, rate])

    differences = frame.difference()
    assert metrics["accuracy_gap"] == pytest.approx(differences["accuracy"])
    assert metrics["fpr_gap"] == pytest.approx(differences["fpr"])
    assert metrics["eo_gap"] == pytest.approx(differences["tpr"])
    assert metrics["dp_gap"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, sensitive_features=groups))
    assert metrics["eodds_gap"] == pytest.approx(
        flm.equalized_odds_difference(y_true, y_pred, sensitive_features=groups))
    assert metrics["eodds_gap_sum"] == pytest.approx(
        2 * flm.equalized_odds_difference(y_true, y_pred, sensitive_features=groups, agg="mean"))
    if hasattr(flm, "equal_opportunity_difference"):  # fairlearn >= 0.11
        assert metrics["eo_gap"] == pytest.approx(
            flm.equal_opportunity_difference(y_true, y_pred, sensitive_features=groups))


def test_hand_counted_example():
    # minority: y = 1 1 0 0, scores .9 .4 .6 .1 -> ŷ = 1 0 1 0: TP 1, FN 1, FP 1, TN 1.
    # majority: y = 1 1 1 0 0 0, scores .8 .7 .5 .3 .2 .55 -> ŷ = 1 1 1 0 0 1 (0.5 is >= 0.5):
    #           TP 3, FN 0, FP 1, TN 2.
    y_true = [1, 1, 0, 0, 1, 1, 1, 0, 0, 0]
    y_score = [0.9, 0.4, 0.6, 0.1, 0.8, 0.7, 0.5, 0.3, 0.2, 0.55]
    minority = [True] * 4 + [False] * 6
    metrics = compute_metrics(y_true, y_score, minority)
    expected = {
        "accuracy": 7 / 10,
        "accuracy/group=minority": 2 / 4, "accuracy/group=majority": 5 / 6,
        "tpr/group=minority": 1 / 2, "tpr/group=majority": 3 / 3,
        "fpr/group=minority": 1 / 2, "fpr/group=majority": 1 / 3,
        "selection_rate/group=minority": 2 / 4, "selection_rate/group=majority": 4 / 6,
        "count/group=minority": 4, "count/group=majority": 6,
        "dp_gap": 1 / 6, "eo_gap": 1 / 2, "fpr_gap": 1 / 6, "eodds_gap": 1 / 2,
        "eodds_gap_sum": 1 / 2 + 1 / 6, "accuracy_gap": 1 / 3,
        # Scores from the top: .9+ .8+ .7+ .6- .55- .5+ .4+ (then only negatives), 5 positives.
        # Recall steps of 1/5 at precisions 1/1, 2/2, 3/3, 4/6, 5/7.
        "average_precision": (1 + 1 + 1 + 4 / 6 + 5 / 7) / 5,
    }
    assert metrics.pop("constant_prediction") is False
    assert metrics == pytest.approx(expected)
    assert isinstance(metrics["count/group=minority"], int)


def test_average_precision_with_tied_scores():
    # Thresholds .9, .5, .2: (TP, predicted) = (1, 1), (2, 3), (3, 5); recall steps of 1/3.
    y_true, y_score = [0, 1, 1, 0, 1], [0.5, 0.5, 0.2, 0.2, 0.9]
    assert average_precision(y_true, y_score) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision(y_true, y_score) == pytest.approx(
        average_precision_score(y_true, y_score))


def test_rate_table_entries_are_callable_on_one_group():
    y_true, y_score, _ = random_test_set(5, n=200)
    y_pred = predictions(y_score)
    assert GROUP_RATES["tpr"](y_true, y_pred) == pytest.approx(recall_score(y_true, y_pred))
    assert GROUP_RATES["accuracy"](y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    assert GROUP_RATES["tpr"](np.zeros(5, int), np.ones(5, int)) is None


def test_predictions_threshold_is_inclusive():
    assert predictions([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]
    assert predictions([0.2, 0.5, 0.7], 0.7).tolist() == [0, 0, 1]


# --- undefined values --------------------------------------------------------------------


def test_group_without_positives():
    y_true, y_score, minority = random_test_set(6, minority_share=0.15)
    y_true = np.where(minority, 0, y_true)
    y_pred = predictions(y_score)
    metrics = compute_metrics(y_true, y_score, minority)
    assert_no_nan(metrics)
    assert metrics["tpr/group=minority"] is None
    assert metrics["eo_gap"] is None
    assert metrics["eodds_gap"] is None

    groups = sensitive(minority)
    # fairlearn returns 0.0 for the undefined TPR (the difference the module docstring explains).
    assert flm.true_positive_rate(y_true[minority], y_pred[minority]) == 0.0
    frame = flm.MetricFrame(
        metrics={"accuracy": accuracy_score, "fpr": flm.false_positive_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["average_precision"] == pytest.approx(average_precision_score(y_true, y_score))
    assert metrics["tpr/group=majority"] == pytest.approx(
        recall_score(y_true[~minority], y_pred[~minority]))
    assert metrics["fpr/group=minority"] == pytest.approx(frame.by_group.loc["minority", "fpr"])
    assert metrics["fpr_gap"] == pytest.approx(frame.difference()["fpr"])
    assert metrics["accuracy_gap"] == pytest.approx(frame.difference()["accuracy"])
    assert metrics["dp_gap"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, sensitive_features=groups))

    intervals = bootstrap_intervals(y_true, y_score, minority, n_resamples=50)
    assert intervals["tpr/group=minority_ci"] is None
    assert intervals["eo_gap_ci"] is None and intervals["eodds_gap_ci"] is None
    assert intervals["fpr_gap_ci"] is not None and intervals["dp_gap_ci"] is not None


def test_group_without_negatives():
    y_true, y_score, minority = random_test_set(7)
    y_true = np.where(~minority, 1, y_true)
    metrics = compute_metrics(y_true, y_score, minority)
    assert_no_nan(metrics)
    assert metrics["fpr/group=majority"] is None
    assert metrics["fpr_gap"] is None and metrics["eodds_gap"] is None
    y_pred = predictions(y_score)
    assert metrics["eo_gap"] == pytest.approx(flm.equal_opportunity_difference(
        y_true, y_pred, sensitive_features=sensitive(minority)))


def test_group_without_examples():
    y_true, y_score, _ = random_test_set(8, n=300)
    minority = np.zeros(300, dtype=bool)
    metrics = compute_metrics(y_true, y_score, minority)
    assert_no_nan(metrics)
    assert metrics["count/group=minority"] == 0
    assert metrics["count/group=majority"] == 300
    for rate in GROUP_RATES:
        assert metrics[group_key(rate, "minority")] is None
    for gap in ("dp_gap", "eo_gap", "fpr_gap", "eodds_gap", "accuracy_gap"):
        assert metrics[gap] is None
    y_pred = predictions(y_score)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["accuracy/group=majority"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["average_precision"] == pytest.approx(average_precision_score(y_true, y_score))

    intervals = bootstrap_intervals(y_true, y_score, minority, n_resamples=50)
    assert intervals["accuracy/group=minority_ci"] is None and intervals["dp_gap_ci"] is None
    assert intervals["accuracy_ci"] is not None


def test_no_positive_label_at_all_and_empty_test_set():
    y_score = np.array([0.1, 0.6, 0.3, 0.8])
    metrics = compute_metrics(np.zeros(4, int), y_score, [True, False, True, False])
    assert_no_nan(metrics)
    assert metrics["average_precision"] is None
    assert metrics["tpr/group=minority"] is None and metrics["tpr/group=majority"] is None
    assert metrics["accuracy"] == pytest.approx(0.5)

    empty = compute_metrics([], [], [])
    assert_no_nan(empty)
    assert empty["count/group=minority"] == 0 and empty["count/group=majority"] == 0
    assert all(value is None for name, value in empty.items() if not name.startswith("count/"))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics([0, 1], [0.2, float("nan")], [True, False])
    with pytest.raises(ValueError, match="same length"):
        compute_metrics([0, 1, 1], [0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="y_true"):
        compute_metrics([0, 2], [0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals([0, 1], [0.2, 0.3], [True, False], confidence=95)


# --- bootstrap ---------------------------------------------------------------------------


def population_test_set(rng, n_minority, n_majority, rates):
    """A test set drawn from a known population: per group P(y=1), TPR and FPR.

    The scores are the 0/1 predictions themselves, so ``ŷ`` is drawn directly.
    """
    y_true, y_score, minority = [], [], []
    for is_minority, n in ((True, n_minority), (False, n_majority)):
        base_rate, tpr, fpr = rates[is_minority]
        y = rng.random(n) < base_rate
        y_hat = rng.random(n) < np.where(y, tpr, fpr)
        y_true.append(y.astype(int))
        y_score.append(y_hat.astype(float))
        minority.append(np.full(n, is_minority))
    return np.concatenate(y_true), np.concatenate(y_score), np.concatenate(minority)


# True population: minority P(y=1)=.5, TPR .5, FPR .1; majority P(y=1)=.5, TPR .85, FPR .25.
POPULATION = {True: (0.5, 0.5, 0.1), False: (0.5, 0.85, 0.25)}
TRUE_VALUES = {
    "tpr/group=minority": 0.5,
    "eo_gap": 0.35,
    "fpr_gap": 0.15,
    "dp_gap": abs(0.5 * 0.5 + 0.5 * 0.1 - (0.5 * 0.85 + 0.5 * 0.25)),  # 0.30 vs 0.55
    "accuracy_gap": abs(0.5 * 0.5 + 0.5 * 0.9 - (0.5 * 0.85 + 0.5 * 0.75)),  # 0.70 vs 0.80
    "eodds_gap": max(0.35, 0.15),
    "eodds_gap_sum": 0.35 + 0.15,
    "accuracy": (150 * (0.5 * 0.5 + 0.5 * 0.9) + 600 * (0.5 * 0.85 + 0.5 * 0.75)) / 750,
}


def test_bootstrap_is_deterministic_for_a_seed():
    y_true, y_score, minority = random_test_set(9)
    first = bootstrap_intervals(y_true, y_score, minority, n_resamples=200, seed=3)
    assert first == bootstrap_intervals(y_true, y_score, minority, n_resamples=200, seed=3)
    assert first != bootstrap_intervals(y_true, y_score, minority, n_resamples=200, seed=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intervals_contain_the_point_estimate(seed):
    rng = np.random.default_rng(seed)
    y_true, y_score, minority = population_test_set(rng, 300, 1500, POPULATION)
    metrics = compute_metrics(y_true, y_score, minority)
    intervals = bootstrap_intervals(y_true, y_score, minority, seed=seed)
    for name in INTERVAL_NAMES:
        low, high = intervals[name]
        assert 0.0 <= low <= metrics[name[: -len("_ci")]] <= high <= 1.0, name


def absolute_interval(signed_low, signed_high):
    """The set {|d| : signed_low <= d <= signed_high}, written out case by case."""
    if signed_high < 0:
        return [-signed_high, -signed_low]
    if signed_low > 0:
        return [signed_low, signed_high]
    return [0.0, max(-signed_low, signed_high)]


def test_intervals_match_a_literal_example_bootstrap():
    """The multinomial shortcut against resampling example indices and recomputing the metrics.

    The reference also rebuilds the documented interval rules independently: quantiles for the
    rates, the |·| image of the signed difference's quantiles for a gap, and for eodds_gap the
    maximum of its two parts' intervals at the Bonferroni level 97.5 %.
    """
    rng = np.random.default_rng(10)
    y_true, y_score, minority = population_test_set(rng, 80, 320, POPULATION)
    n_resamples = 2000
    groups = [np.flatnonzero(minority), np.flatnonzero(~minority)]
    rate_names = ["accuracy"] + [group_key(rate, group) for rate in GROUP_RATES for group in GROUPS]
    gap_rates = {"dp_gap": "selection_rate", "eo_gap": "tpr", "fpr_gap": "fpr",
                 "accuracy_gap": "accuracy"}
    resampled = {name: [] for name in (*rate_names, *gap_rates)}
    for _ in range(n_resamples):
        index = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        metrics = compute_metrics(y_true[index], y_score[index], minority[index])
        for name in rate_names:
            resampled[name].append(metrics[name])
        for gap, rate in gap_rates.items():
            # Signed minority - majority difference; every rate is defined in these resamples.
            resampled[gap].append(metrics[group_key(rate, "minority")]
                                  - metrics[group_key(rate, "majority")])
    reference = {f"{name}_ci": list(np.quantile(resampled[name], [0.025, 0.975]))
                 for name in rate_names}
    for gap in gap_rates:
        reference[f"{gap}_ci"] = absolute_interval(*np.quantile(resampled[gap], [0.025, 0.975]))
    eo, fpr = (absolute_interval(*np.quantile(resampled[gap], [0.0125, 0.9875]))
               for gap in ("eo_gap", "fpr_gap"))
    reference["eodds_gap_ci"] = [max(eo[0], fpr[0]), max(eo[1], fpr[1])]
    reference["eodds_gap_sum_ci"] = [eo[0] + fpr[0], eo[1] + fpr[1]]

    ours = bootstrap_intervals(y_true, y_score, minority, n_resamples=n_resamples, seed=11)
    assert set(ours) == set(reference)
    for name in INTERVAL_NAMES:
        # Two Monte Carlo estimates of the same quantiles: each is off by ~0.005 here.
        assert ours[name] == pytest.approx(reference[name], abs=0.03), name


def test_intervals_narrow_as_the_test_set_grows():
    rng = np.random.default_rng(12)
    small = bootstrap_intervals(*population_test_set(rng, 100, 400, POPULATION))
    large = bootstrap_intervals(*population_test_set(rng, 1600, 6400, POPULATION))
    for name in INTERVAL_NAMES:
        small_width = small[name][1] - small[name][0]
        large_width = large[name][1] - large[name][0]
        # 16 times the data: widths shrink by about 4 (1/sqrt(n)); demand at least 2.
        assert large_width < 0.5 * small_width, name


# A population in which both groups have the same rates: every true gap is 0.
EQUAL_POPULATION = {True: (0.5, 0.7, 0.2), False: (0.5, 0.7, 0.2)}
ZERO_GAPS = dict.fromkeys(("dp_gap", "eo_gap", "fpr_gap", "eodds_gap", "accuracy_gap"), 0.0)


@pytest.mark.parametrize("population,true_values", [
    (POPULATION, TRUE_VALUES),
    # The case where a percentile interval of |gap| would fail (it covers 0 under 1 % of the time).
    (EQUAL_POPULATION, ZERO_GAPS),
], ids=["unequal", "equal"])
def test_interval_coverage_of_known_population_values(population, true_values):
    rng = np.random.default_rng(13)
    n_sets = 200
    covered = dict.fromkeys(true_values, 0)
    for i in range(n_sets):
        test_set = population_test_set(rng, 150, 600, population)
        intervals = bootstrap_intervals(*test_set, n_resamples=500, seed=i)
        for name, truth in true_values.items():
            low, high = intervals[f"{name}_ci"]
            covered[name] += low <= truth <= high
    for name, hits in covered.items():
        # Nominal 95 %; the composite gaps' Bonferroni intervals may be conservative (the sum's
        # is: it adds two intervals' ends), never below nominal.
        upper = 1.0 if name in COMPOSITE_GAPS else 0.995
        assert 0.90 <= hits / n_sets <= upper, f"{name}: coverage {hits / n_sets:.3f}"


# --- warnings and prefixes ---------------------------------------------------------------


def test_small_group_warnings():
    assert small_group_warnings({"minority": 100, "majority": 5000}) == []
    messages = small_group_warnings({"minority": 99, "majority": 5000})
    assert len(messages) == 1 and "minority" in messages[0] and "99" in messages[0]
    assert small_group_warnings({"minority": 3, "majority": 20}, minimum=10) == [
        ("the minority group has only 3 test examples (fewer than 10): its rates and every gap "
         "are very uncertain (see the _ci intervals)")]
    assert "no test examples" in small_group_warnings({"minority": 0, "majority": 5})[0]
    assert len(small_group_warnings({"minority": 0, "majority": 5})) == 2


def test_with_prefix():
    metrics = {"accuracy": 0.5, "tpr/group=minority": None}
    expected = {"test/accuracy": 0.5, "test/tpr/group=minority": None}
    assert with_prefix(metrics, "test") == expected
    assert with_prefix(metrics, "test/") == expected


@pytest.mark.parametrize("label", [0, 1])
def test_a_constant_classifier_is_flagged_and_its_gaps_are_what_fairlearn_says(label):
    # Every decision one class: gaps 0 (fairlearn agrees), which is why the flag must say so.
    y_true, y_score, minority = random_test_set(3)
    y_pred = np.full(len(y_true), label)
    metrics = compute_metrics(y_true, y_score, minority, y_pred=y_pred)
    assert metrics["constant_prediction"] is True
    assert metrics["dp_gap"] == flm.demographic_parity_difference(
        y_true, y_pred, sensitive_features=sensitive(minority)) == 0.0
    assert metrics["eodds_gap"] == flm.equalized_odds_difference(
        y_true, y_pred, sensitive_features=sensitive(minority)) == 0.0
    assert metrics["selection_rate/group=minority"] == metrics["selection_rate/group=majority"] == label


def test_one_decision_of_the_other_class_is_not_constant_and_an_empty_set_is_undefined():
    y_true, y_score, minority = random_test_set(4)
    y_pred = np.zeros(len(y_true), dtype=int)
    y_pred[len(y_pred) // 2] = 1
    assert compute_metrics(y_true, y_score, minority, y_pred=y_pred)["constant_prediction"] is False
    assert is_constant(np.zeros(0)) is None

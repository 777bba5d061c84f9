"""The statistics defects of the privacy audit, each checked through a real run.

- an infinite ε (no noise) is stored as "inf", distinct from a non-private run's null;
- predictions.csv and the metrics threshold with one rule, and the file's scores are exact;
- the training loss stays defined when Poisson sampling draws empty batches;
- ``poisson_sampling: false`` warns and marks its ε as not a guarantee;
- the non-private statistics are listed in summary.json, and ``logging.private_stats: false``
  leaves every one of them out of the run directory;
- ``secure_rng`` runs are not reproducible, reproducible runs are, and summaries say which.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score

from privacy.dpsgd import SecurePoissonSampler
from privacy.noise import SecureRandom
from tests.conftest import read_jsonl
from training.base import POISSON_VIOLATED_WARNING
from training.experiment import run
from training.validation import validated_config
from utils import fairness
from utils.sink import (
    INFINITY,
    NON_PRIVATE_LIST_KEY,
    NON_PRIVATE_PREFIXES,
    PREDICTION_COLUMNS,
    as_number,
    read_predictions,
    to_jsonable,
)


def tiny_run(tmp_path: Path, name: str = "run", **sections) -> tuple[dict, Path]:
    raw = {
        "name": name, "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "batch_size": 100, "optimizer": "sgd", "lr": 0.1},
        "evaluation": {"bootstrap_resamples": 20},
        "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    config = validated_config(raw)
    summary = run(config)
    return summary, Path(config.output_dir) / config.name




def test_infinite_epsilon_is_stored_as_inf_not_null(tmp_path):
    summary, run_dir = tiny_run(tmp_path, privacy={"mode": "dpsgd", "noise_multiplier": 0.0})
    assert summary["privacy/epsilon"] == float("inf")
    stored = json.loads((run_dir / "summary.json").read_text())
    assert stored["privacy/epsilon"] == INFINITY and as_number(stored["privacy/epsilon"]) == np.inf
    assert stored["privacy/private"] is False
    assert all(row["privacy/epsilon"] == INFINITY for row in read_jsonl(run_dir / "metrics.jsonl"))
    # A non-private run's ε stays null: the two cannot be confused.
    plain, plain_dir = tiny_run(tmp_path, name="plain")
    assert json.loads((plain_dir / "summary.json").read_text())["privacy/epsilon"] is None
    assert plain["privacy/private"] is False


def test_to_jsonable_keeps_nan_null_and_infinities_distinct():
    assert to_jsonable({"a": float("nan"), "b": float("inf"), "c": -np.float64("inf")}) == {
        "a": None, "b": "inf", "c": "-inf"}
    assert [as_number(v) for v in (None, "inf", "-inf", 2, 0.5, "x", True)] == [
        None, np.inf, -np.inf, 2.0, 0.5, None, None]


def test_predictions_file_thresholds_like_the_metrics_and_keeps_exact_scores(tmp_path,
                                                                              monkeypatch):
    # Threshold 0.7: a float32 score equal to float32(0.7) = 0.69999998... lies below 0.7. The old
    # code thresholded float32 scores against 0.7 (float32(0.7) >= float32(0.7): 1 in the file)
    # while the metrics thresholded in float64 (0): one rule now decides both. The real model's
    # first test score is set to exactly that value to put an example on the edge.
    from training.evaluation import TestSetEvaluator

    real_scores = TestSetEvaluator.scores

    def scores_with_an_edge(self, model):
        scores = real_scores(self, model)
        scores[0] = np.float32(0.7)
        return scores

    monkeypatch.setattr(TestSetEvaluator, "scores", scores_with_an_edge)
    summary, run_dir = tiny_run(tmp_path, evaluation={"threshold": 0.7})
    table = read_predictions(run_dir / "predictions.csv")
    y_true, y_score, y_pred, minority = (table[c] for c in PREDICTION_COLUMNS)
    np.testing.assert_array_equal(y_pred, fairness.predictions(y_score, 0.7))
    assert y_score[0] == np.float32(0.7) and y_pred[0] == 0
    # Exact scores: every metric recomputed from the file equals the run's, to the last bit.
    recomputed = fairness.compute_metrics(y_true, y_score, minority, threshold=0.7)
    for name, value in recomputed.items():
        assert summary[f"test/{name}"] == value, name
    # sklearn sums in another order: equal to rounding.
    assert summary["test/average_precision"] == pytest.approx(
        average_precision_score(y_true, y_score), rel=1e-12)
    # And the file holds the float32 scores exactly: each reads back to a float32 value.
    np.testing.assert_array_equal(y_score.astype(np.float32).astype(np.float64), y_score)


def test_training_loss_is_defined_when_poisson_batches_are_empty(tmp_path):
    # q = 1/200 on 200 examples: the expected batch is one example, and about e⁻¹ of the 200
    # steps of an epoch draw an empty batch, whose mean loss is NaN.
    summary, run_dir = tiny_run(
        tmp_path, data={"train_size": 200}, training={"epochs": 1, "batch_size": 1},
        privacy={"mode": "dpsgd", "noise_multiplier": 1.0})
    loss = summary["train/loss"]
    assert isinstance(loss, float) and np.isfinite(loss) and 0 < loss < 5
    assert read_jsonl(run_dir / "metrics.jsonl")[0]["train/loss"] == loss


def test_fixed_size_batches_warn_and_mark_epsilon_as_no_guarantee(tmp_path, capsys):
    summary, _ = tiny_run(tmp_path, privacy={"mode": "dpsgd", "noise_multiplier": 1.0,
                                             "poisson_sampling": False})
    assert f"warning: {POISSON_VIOLATED_WARNING}" in capsys.readouterr().err.splitlines()
    assert summary["privacy/accounting_assumption"] == "poisson_violated"
    assert summary["privacy/private"] is False
    assert POISSON_VIOLATED_WARNING in summary["warnings"]
    poisson, _ = tiny_run(tmp_path, name="poisson",
                          privacy={"mode": "dpsgd", "noise_multiplier": 1.0})
    assert poisson["privacy/accounting_assumption"] == "poisson"
    assert poisson["privacy/private"] is True and poisson["privacy/secure_rng"] is False


@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_non_private_statistics_are_listed_and_can_be_left_out(tmp_path, mode):
    federated = {"num_clients": 50, "client_sample_rate": 0.2, "rounds": 3, "eval_every": 3}
    sections = {"privacy": {"mode": mode, "noise_multiplier": 1.0}, "federated": federated}
    summary, run_dir = tiny_run(tmp_path, name="full", **sections)
    listed = summary[NON_PRIVATE_LIST_KEY]
    assert listed == sorted(k for k in summary if k.startswith(NON_PRIVATE_PREFIXES))
    assert {"train/loss", "data/info", "trainer/info"} <= set(listed)
    assert any(k.startswith("dp/clip_fraction") for k in listed)
    assert (run_dir / "clients.csv").is_file() == (mode == "dpfedavg")

    released, release_dir = tiny_run(tmp_path, name="release",
                                     logging={"private_stats": False}, **sections)
    records = [json.loads((release_dir / "summary.json").read_text()),
               *read_jsonl(release_dir / "metrics.jsonl")]
    for record in records:
        leaked = [k for k in record if k.startswith(NON_PRIVATE_PREFIXES)]
        assert not leaked, leaked
        assert "privacy/epsilon" in record and "time/wall_s" in record
    assert "test/accuracy" in records[0] and "test/accuracy" in records[-1]
    assert not (release_dir / "clients.csv").exists()
    # Leaving the statistics out changes no result: the same training, the same test metrics.
    assert released["test/accuracy"] == summary["test/accuracy"]
    assert released["privacy/epsilon"] == summary["privacy/epsilon"]


@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_reproducible_runs_repeat_and_secure_runs_do_not(tmp_path, mode):
    federated = {"num_clients": 50, "client_sample_rate": 0.2, "rounds": 3, "eval_every": 3}
    sections = {"privacy": {"mode": mode, "noise_multiplier": 1.0}, "federated": federated}
    first, _ = tiny_run(tmp_path, name="a", **sections)
    again, _ = tiny_run(tmp_path, name="b", **sections)
    assert first["test/accuracy"] == again["test/accuracy"]
    assert first["train/loss"] == again["train/loss"]
    secure = {"privacy": {"mode": mode, "noise_multiplier": 1.0, "secure_rng": True},
              "federated": federated}
    one, one_dir = tiny_run(tmp_path, name="s1", **secure)
    two, two_dir = tiny_run(tmp_path, name="s2", **secure)
    assert one["privacy/secure_rng"] is True and one["privacy/private"] is True
    scores = [np.loadtxt(d / "predictions.csv", delimiter=",", skiprows=1, usecols=1)
              for d in (one_dir, two_dir)]
    assert not np.array_equal(*scores)
    # The same ε: the accountant does not care where the draws came from.
    assert one["privacy/epsilon"] == first["privacy/epsilon"]


def test_secure_uniforms_and_gaussians_have_their_laws():
    source = SecureRandom()
    uniform = source.uniform(100_000)
    assert uniform.min() >= 0 and uniform.max() < 1
    assert stats.kstest(uniform, "uniform").pvalue > 1e-4
    gaussian = source.gaussian((200, 500), 2.5, device=torch.device("cpu"), dtype=torch.float64)
    assert gaussian.shape == (200, 500)
    assert stats.kstest(gaussian.numpy().ravel() / 2.5, "norm").pvalue > 1e-4
    # Two draws are not equal (no fixed seed behind them).
    assert not np.array_equal(source.uniform(16), source.uniform(16))


def test_secure_poisson_sampler_includes_each_example_with_probability_q():
    n, q, steps = 400, 0.05, 400
    sampler = SecurePoissonSampler(n, q, steps, SecureRandom())
    assert len(sampler) == steps
    counts = np.zeros(n)
    sizes = []
    for batch in sampler:
        counts[batch] += 1
        sizes.append(len(batch))
    # Each example's inclusion count ~ Binomial(steps, q); the batch size ~ Binomial(n, q).
    expected = steps * q
    chi2 = np.sum((counts - expected) ** 2 / (expected * (1 - q)))
    assert stats.chi2.ppf(1e-4, n) < chi2 < stats.chi2.ppf(1 - 1e-4, n)
    assert abs(np.mean(sizes) - n * q) < 5 * np.sqrt(n * q * (1 - q) / steps)


def test_report_shows_infinite_epsilon_as_infinity(tmp_path):
    from grids.report import write_report

    for seed in (0, 1):
        tiny_run(tmp_path, name=f"noiseless_{seed}", seed=seed,
                 privacy={"mode": "dpsgd", "noise_multiplier": 0.0})
        tiny_run(tmp_path, name=f"noisy_{seed}", seed=seed,
                 privacy={"mode": "dpsgd", "noise_multiplier": 1.0})
    write_report(tmp_path / "runs")
    report = (tmp_path / "runs" / "report.md").read_text()
    # Only the noise varies, so it is the table's first column.
    noiseless = [line for line in report.splitlines() if line.startswith("| 0 |")]
    noisy = [line for line in report.splitlines() if line.startswith("| 1 |")]
    assert len(noiseless) == len(noisy) == 1, report
    assert "| ∞ |" in noiseless[0] and "| ∞ |" not in noisy[0]

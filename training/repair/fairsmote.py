"""``fairsmote`` (Chakraborty, Majumder & Menzies, "Bias in Machine Learning Software: Why? How?
What to Do?", ESEC/FSE 2021): balance the (group, label) cells with synthetic examples, then remove
the examples a model judges by their group.

1. **Synthesis.** Every (group, label) cell smaller than the largest grows to the largest's size.
   Each new example starts from a random member of its cell (the parent) and one of the parent's
   ``neighbours`` nearest neighbours in the same cell (Euclidean, on the training features):
   numeric columns are interpolated, parent + u·(neighbour − parent) with u ~ U(0, 1) per example,
   and each one-hot block (the columns ``name=value`` of one attribute) is copied whole from the
   parent or the neighbour, at random, so a synthetic example is always a valid encoding.
2. **Situation testing.** A logistic regression fitted to the grown set predicts every example
   twice: as it is, and with its protected attribute switched to the other group (the protected
   one-hot block set to the other group's most common encoding). Examples whose prediction
   changes are dropped, real and synthetic alike. Where the protected attribute is not an input
   (RUNNER's Adult protocol, German credit's sex from a combined code) there is nothing to switch,
   and this step is skipped; ``data/info`` says so.

Tabular data only: the method reads ``data/info/feature_names``. Its choices draw from the
method's own stream. Refuses DP: synthesis and situation testing read individual private records
(each synthetic example copies parts of two of them), with no clipping or noise; no sound DP
variant is known to this project.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from training.repair import METHODS
from training.repair.base import RepairMethod
from utils.config import check
from utils.errors import ConfigError

READS_RECORDS = ("its synthetic examples copy parts of individual private records, and its "
                 "situation testing reads them, with no clipping or noise.")
NEEDS_TABULAR = ("fairness.method 'fairsmote' needs tabular data with named features "
                 "(data/info/feature_names), and this data set has none. Use a tabular data set "
                 "(adult, compas, german, lsac).")


@dataclass(frozen=True, kw_only=True)
class FairSmoteSettings:
    """``fairness.fairsmote``.

    Attributes:
        neighbours: how many nearest neighbours in the cell a parent interpolates towards.
        situation_testing: drop the examples whose prediction changes with the group (step 2).
    """

    neighbours: int = 5
    situation_testing: bool = True

    def validate(self) -> None:
        check(self.neighbours >= 1, "fairness.fairsmote.neighbours", self.neighbours,
               "a positive integer")


def one_hot_blocks(names: list[str]) -> dict[str, list[int]]:
    """Column indices of every one-hot attribute, by attribute ("sex" for "sex=Female", ...)."""
    blocks: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        if "=" in name:
            blocks.setdefault(name.split("=", 1)[0], []).append(index)
    return blocks


def synthesize(x: np.ndarray, y: np.ndarray, minority: np.ndarray, blocks: dict[str, list[int]],
               neighbours: int, rng: np.random.Generator):
    """``(x, y, minority, synthetic)``: the training set with every (group, label) cell grown to
    the largest cell's size; ``synthetic`` marks the new rows."""
    cells = [np.flatnonzero((minority == group) & (y == label))
             for group in (True, False) for label in (0, 1)]
    largest = max(len(cell) for cell in cells)
    one_hot = sorted(i for block in blocks.values() for i in block)
    numeric = np.setdiff1d(np.arange(x.shape[1]), one_hot)
    new_x, new_y, new_minority = [x], [y], [minority]
    for cell in cells:
        missing = largest - len(cell)
        if missing == 0 or len(cell) == 0:
            continue
        members = x[cell].astype(np.float64)
        k = min(neighbours, len(cell) - 1)
        parents = rng.integers(len(cell), size=missing)
        if k == 0:  # a cell of one example: copies of it
            partners = parents
        else:
            _, near = NearestNeighbors(n_neighbors=k + 1).fit(members).kneighbors(members[parents])
            partners = near[np.arange(missing), rng.integers(1, k + 1, size=missing)]  # not itself
        parent_x, partner_x = members[parents], members[partners]
        made = parent_x.copy()
        u = rng.random((missing, 1))
        made[:, numeric] = parent_x[:, numeric] + u * (partner_x[:, numeric] - parent_x[:, numeric])
        for block in blocks.values():
            from_partner = rng.random(missing) < 0.5
            made[np.ix_(from_partner, block)] = partner_x[np.ix_(from_partner, block)]
        new_x.append(made.astype(x.dtype))
        new_y.append(np.full(missing, y[cell[0]], dtype=y.dtype))
        new_minority.append(np.full(missing, minority[cell[0]], dtype=minority.dtype))
    synthetic = np.concatenate([np.zeros(len(y), bool)] +
                               [np.ones(len(part), bool) for part in new_y[1:]])
    return np.concatenate(new_x), np.concatenate(new_y), np.concatenate(new_minority), synthetic


def situation_test(x: np.ndarray, y: np.ndarray, minority: np.ndarray, block: list[int],
                   seed: int) -> np.ndarray:
    """True for the examples whose logistic-regression prediction does not change when their
    protected one-hot ``block`` is set to the other group's most common encoding."""
    model = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
    switched = x.copy()
    for group in (True, False):
        others = x[minority != group][:, block]
        values, counts = np.unique(others, axis=0, return_counts=True)
        switched[np.ix_(minority == group, block)] = values[counts.argmax()]
    return model.predict(x) == model.predict(switched)


@METHODS.register("fairsmote")
class FairSmote(RepairMethod):
    """Pre-processing: synthetic examples for equal cells, then situation testing."""

    Settings = FairSmoteSettings
    refuses = {"dpsgd": READS_RECORDS, "dpfedavg": READS_RECORDS}

    def prepare(self, data):
        names = data.info.get("feature_names")
        if not names or data.x_train.ndim != 2:
            raise ConfigError(NEEDS_TABULAR)
        blocks = one_hot_blocks(list(names))
        x, y, minority, synthetic = synthesize(data.x_train, data.y_train, data.minority_train,
                                               blocks, self.settings.neighbours, self.rng)
        protected = blocks.get(str(data.info.get("protected")))
        report = {"fairsmote/synthetic": int(synthetic.sum()), "fairsmote/situation_tested": False}
        if self.settings.situation_testing and protected:
            keep = situation_test(x, y, minority, protected, int(self.rng.integers(2**31)))
            report.update({"fairsmote/situation_tested": True,
                           "fairsmote/dropped_real": int((~keep & ~synthetic).sum()),
                           "fairsmote/dropped_synthetic": int((~keep & synthetic).sum())})
            x, y, minority = x[keep], y[keep], minority[keep]
        weights = None
        if data.weights_train is not None:  # synthetic rows weigh 1
            weights = np.concatenate([data.weights_train, np.ones(int(synthetic.sum()), np.float32)])
            weights = weights[keep] if report["fairsmote/situation_tested"] else weights
        return dataclasses.replace(data, x_train=x, y_train=y, minority_train=minority,
                                   weights_train=weights, info={**data.info, **report})

"""A small synthetic tabular data set with a known minority effect, for tests and quick checks.

Both groups share one linear rule on the first features, but the minority's label also depends on a
feature of its own, so a model trained mostly on the majority misses part of the minority's rule:
accuracy on the minority falls as its share shrinks, the effect the runner exists to measure. Made
in memory from the seed; nothing is read or downloaded.
"""

from __future__ import annotations

import numpy as np

from dataset import DATASETS
from dataset.base import DataBundle
from dataset.imbalance import resample_to_share, validation_info, validation_split
from dataset.preprocessing import column_record, document

POOL_SIZE = 6000
TEST_SIZE = 2000
FEATURES = 8
POOL_MINORITY_SHARE = 0.4


def make_synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` examples: features, binary labels, minority flags."""
    minority = rng.random(n) < POOL_MINORITY_SHARE
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    x[:, -1] = minority  # group membership is visible to the model, as sex is in Adult
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + np.where(minority, 2.5 * x[:, 2], 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y, minority


@DATASETS.register("synthetic")
def build_synthetic(config) -> DataBundle:
    """Pool and test set drawn from the seed-independent population, the pool then resampled."""
    # The population is fixed (seed 12345) so that runs with different seeds share data, as they
    # would with a real data set; config.seed only drives the resampling and training.
    rng = np.random.default_rng(12345)
    x_pool, y_pool, minority_pool = make_synthetic(POOL_SIZE, rng)
    x_test, y_test, minority_test = make_synthetic(TEST_SIZE, rng)
    # data.val_fraction holds out a validation set first (stratified, its own stream), as for
    # every data set; the resampler sees the rest.
    val, rest = ((np.zeros(0, dtype=np.int64), np.arange(POOL_SIZE)) if config.data.val_fraction == 0
                 else validation_split(minority_pool, y_pool, config.data.val_fraction, seed=config.seed))
    keep = rest[resample_to_share(minority_pool[rest], y_pool[rest], config.data.minority_share,
                                  train_size=config.data.train_size, seed=config.seed)]
    return DataBundle(
        x_train=x_pool[keep], y_train=y_pool[keep], minority_train=minority_pool[keep],
        x_test=x_test, y_test=y_test, minority_test=minority_test, input_shape=(FEATURES,),
        info={"pool_size": POOL_SIZE, "test_size": TEST_SIZE, "protected": "group",
              # The last column is the group flag, named like a one-hot column of "group".
              "feature_names": [*(f"x{i}" for i in range(FEATURES - 1)), "group=minority"],
              **validation_info(y_pool[val], minority_pool[val], config.data.val_fraction,
                                "val_fraction" if len(val) else None)},
        x_val=x_pool[val], y_val=y_pool[val], minority_val=minority_pool[val],
        preprocessing=document("none", [column_record(
            "x0 ... group=minority", "none: features drawn standard normal (the last is the group "
            "flag)", None, "public", "dataset.synthetic: a fixed generated population")]),
    )

"""Metrics against scipy, JSON trees against scikit-learn, the roofline's shape."""

import random

import numpy as np
import pytest

from fxforge.costmodel.metrics import mape, spearman
from fxforge.costmodel.models import PARAMS, Trees
from fxforge.costmodel.roofline import kernel_time, occupancy


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = random.Random(0)
    a = [rng.randint(0, 5) for _ in range(40)]
    b = [x + rng.random() * 3 for x in a]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_mape_skips_zero_measurements():
    assert mape([110, 5, 90], [100, 0, 100]) == pytest.approx(0.1)


def test_json_trees_predict_like_sklearn():
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x[:, 0] * 3 + np.sin(x[:, 1]) + (x[:, 2] > 0)
    gbr = GradientBoostingRegressor(**PARAMS).fit(x, y)
    trees = Trees.of(gbr)
    ours = [trees.predict_one(list(row)) for row in x[:20]]
    assert ours == pytest.approx(gbr.predict(x[:20]), abs=1e-4)


def test_occupancy_limited_by_registers_and_shared():
    assert occupancy(32, 0, 4, 90) == 1.0
    assert occupancy(255, 0, 4, 90) < occupancy(64, 0, 4, 90)
    assert occupancy(64, 200 * 1024, 4, 90) == pytest.approx(4 / 64)


def test_roofline_memory_bound_decode_favours_fewer_bytes():
    base = {"kind=gemm": 1.0, "log_M": 1.0, "log_N": np.log2(4097), "log_BLOCK_M": np.log2(17),
            "log_BLOCK_N": np.log2(65), "num_warps": 4.0, "log_flops": np.log2(2 * 4096 * 4096 + 1)}
    fp16 = {**base, "min_bits": 16.0, "log_bytes": np.log2(2 * 4096 * 4096 + 1)}
    int4 = {**base, "min_bits": 4.0, "log_bytes": np.log2(0.5 * 4096 * 4096 + 1)}
    t16, t4 = kernel_time(fp16, None, 90), kernel_time(int4, None, 90)
    assert t4 < t16 / 2
    assert kernel_time(fp16, None, 80) > t16  # A100 has less bandwidth

"""Tests for agents.learning.trends (Mann–Kendall + Theil–Sen)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from agents.learning.trends import classify_trend, mann_kendall, mann_kendall_statistics

# Hand-computed example with one tie group (two 2s), n = 6:
#   S = 5 + 3 + 3 + 0 + 1 = 12 (signs of later minus earlier values, row by row)
#   var(S) = [6*5*17 - 2*1*9] / 18 = 492 / 18
#   Z = (12 - 1) / sqrt(492 / 18) = 2.10400..., p = 2 (1 - Phi(Z)) = 0.035378...
#   tau-b = 12 / sqrt(15 * (15 - 1)) = 0.82808...
#   15 pairwise slopes sorted: -1, 0, 1/3, .5, .5, .5, .5, .75, .8, 1, 1, 1, 1, 2, 2
#   -> Theil-Sen slope 0.75 (8th), intercept median(x) - 0.75 median(t) = 2.5 - 1.875.
HAND = [1.0, 2.0, 2.0, 4.0, 3.0, 5.0]


def test_hand_computed_example_with_ties():
    r = mann_kendall(HAND)
    assert r.s == 12.0
    assert r.var_s == pytest.approx(492 / 18)
    assert r.z == pytest.approx(11 / math.sqrt(492 / 18))
    assert r.z == pytest.approx(2.104003, abs=1e-6)
    assert r.p_value == pytest.approx(0.035378, abs=1e-6)
    assert r.tau == pytest.approx(12 / math.sqrt(15 * 14))
    assert r.slope == 0.75
    assert r.intercept == pytest.approx(0.625)
    assert (r.trend, r.direction) == ("improving", "increasing")


def test_without_continuity_p_equals_scipy_kendalltau_with_ties():
    rng = np.random.default_rng(21)
    x = np.round(np.cumsum(rng.normal(size=40)), 0)  # integer values: many ties
    assert np.unique(x).size < x.size
    r = mann_kendall(x, continuity=False)
    ref = stats.kendalltau(np.arange(x.size), x, method="asymptotic")
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.tau == pytest.approx(ref.statistic, rel=1e-12)


def test_tau_is_s_over_pair_count_without_ties():
    rng = np.random.default_rng(22)
    x = rng.normal(size=25)
    r = mann_kendall(x)
    assert r.tau == pytest.approx(r.s / (25 * 24 / 2))
    assert r.tau == pytest.approx(stats.kendalltau(np.arange(25), x).statistic)


def test_continuity_correction_shrinks_z_by_one_unit_of_s():
    x = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    with_cc, without = mann_kendall(x), mann_kendall(x, continuity=False)
    sd = math.sqrt(with_cc.var_s)
    assert without.z - with_cc.z == pytest.approx(1 / sd)


def test_theil_sen_slope_and_interval_come_from_scipy_with_irregular_times():
    rng = np.random.default_rng(23)
    t = np.cumsum(rng.uniform(0.5, 2.0, size=30))
    x = 2.0 - 0.3 * t + rng.normal(scale=0.5, size=30)
    r = mann_kendall(x, t, alpha=0.1, higher_is_better=True)
    ref = stats.theilslopes(x, t, alpha=0.9)
    assert (r.slope, r.intercept, r.slope_low, r.slope_high) == pytest.approx(tuple(ref))
    assert r.slope_low < -0.3 < r.slope_high
    assert r.trend == "declining"


def test_constant_series_is_stable_with_p_one():
    r = mann_kendall([0.8] * 10)
    assert (r.s, r.var_s, r.z, r.p_value, r.tau) == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert r.trend == "stable" and r.direction == "none" and r.slope == 0.0


def test_missing_values_are_dropped_with_their_times():
    x = np.array([1.0, np.nan, 2.0, 2.0, 4.0, np.nan, 3.0, 5.0])
    t = np.arange(8.0)
    r = mann_kendall(x, t)
    assert r.n == 6 and r.s == 12.0
    assert r.slope == pytest.approx(stats.theilslopes(x[~np.isnan(x)], t[~np.isnan(x)])[0])


@pytest.mark.parametrize("values", [[], [1.0], [1.0, np.nan], [np.nan] * 5])
def test_insufficient_data(values):
    r = mann_kendall(values)
    assert r.trend == "insufficient_data"
    assert r.p_value is None and r.slope is None and r.s is None


def test_min_points_is_configurable():
    assert mann_kendall(HAND, min_points=7).trend == "insufficient_data"


@pytest.mark.parametrize(
    ("direction", "significant", "higher_is_better", "expected"),
    [
        ("increasing", True, True, "improving"),
        ("increasing", True, False, "declining"),
        ("decreasing", True, True, "declining"),
        ("decreasing", True, False, "improving"),
        ("increasing", False, True, "stable"),
        ("none", True, True, "stable"),
    ],
)
def test_classify_trend(direction, significant, higher_is_better, expected):
    assert classify_trend(direction, significant, higher_is_better) == expected


def test_batch_statistics_equal_single_series():
    rng = np.random.default_rng(24)
    X = np.round(rng.normal(size=(50, 20)), 1)
    s, var_s, z, p = mann_kendall_statistics(X)
    for i in range(0, 50, 9):
        r = mann_kendall(X[i])
        assert (s[i], var_s[i]) == (r.s, r.var_s)
        assert (z[i], p[i]) == pytest.approx((r.z, r.p_value))


def test_false_positive_rate_is_close_to_alpha_without_trend():
    rng = np.random.default_rng(25)
    _, _, _, p = mann_kendall_statistics(rng.normal(size=(4000, 25)))
    rate = np.mean(p < 0.05)
    # The continuity correction makes the test slightly conservative; SE of the rate ~0.0035.
    assert 0.035 <= rate <= 0.06


def test_linear_trend_with_noise_is_detected():
    rng = np.random.default_rng(26)
    t = np.arange(30)
    X = 0.1 * t + rng.normal(size=(500, 30))
    _, _, z, p = mann_kendall_statistics(X)
    assert np.mean((p < 0.05) & (z > 0)) > 0.9
    one = mann_kendall(X[0], higher_is_better=False)
    assert one.direction == "increasing" and one.trend == "declining"
    assert one.slope_low < 0.1 < one.slope_high


# An AR(1) series (phi = 0.7) with a weak trend, rounded to one decimal (ties).
AR1 = [
    0.0, 0.7, 1.4, 2.2, 2.3, 2.5, 1.9, -0.0, -0.1, -0.8, -1.9, -1.0, -1.2, -1.8, -2.2, -1.2,
    -0.3, 1.2, 1.0, 1.8, 2.8, 3.3, 0.1, 1.4, 1.5, 1.6, 1.7, 1.7, 1.7, 1.0, -1.0, -0.6, -1.0,
    0.6, 0.3, 0.5, -0.2, -0.4, -0.1, -1.3,
]  # fmt: skip


def test_hamed_rao_matches_reference_values():
    """Reference: pymannkendall 1.4.3 ``hamed_rao_modification_test(AR1)`` (and lag=3)."""
    r = mann_kendall(AR1, variance_correction="hamed_rao")
    assert r.var_s == pytest.approx(14557.308485933767, rel=1e-10)
    assert r.p_value == pytest.approx(0.49673800731503626, rel=1e-9)
    assert r.z == pytest.approx(-0.6796312028410937, rel=1e-9)
    plain = mann_kendall(AR1)
    assert r.variance_factor == pytest.approx(r.var_s / plain.var_s)
    lag3 = mann_kendall(AR1, variance_correction="hamed_rao", max_lag=3)
    assert lag3.var_s == pytest.approx(24361.572789904745, rel=1e-10)
    assert lag3.p_value == pytest.approx(0.5993294338143669, rel=1e-9)


def test_hamed_rao_reduces_false_positives_under_autocorrelation():
    rng = np.random.default_rng(27)
    m, n, phi = 300, 100, 0.7
    e = np.zeros((m, n))
    noise = rng.normal(size=(m, n))
    for i in range(1, n):
        e[:, i] = phi * e[:, i - 1] + noise[:, i]
    plain = np.mean(mann_kendall_statistics(e)[3] < 0.05)
    corrected = np.mean(
        [mann_kendall(row, variance_correction="hamed_rao", max_lag=3).p_value < 0.05 for row in e]
    )
    # Serial correlation inflates the plain test badly; the correction removes most of it
    # (not all: short-series autocorrelation estimates are biased towards zero).
    assert plain > 0.25
    assert corrected < 0.15


def test_hamed_rao_leaves_independent_series_alone():
    rng = np.random.default_rng(28)
    e = rng.normal(size=(300, 60))
    plain = mann_kendall_statistics(e)[3] < 0.05
    corrected = np.array(
        [mann_kendall(row, variance_correction="hamed_rao", max_lag=3).p_value < 0.05 for row in e]
    )
    assert abs(plain.mean() - corrected.mean()) <= 0.01
    assert np.all(corrected <= plain)  # the factor is floored at 1


def test_result_is_json_safe():
    data = json.loads(json.dumps(mann_kendall(HAND).to_dict()))
    assert data["trend"] == "improving" and data["s"] == 12.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"times": [0.0, 2.0, 1.0, 3.0, 4.0, 5.0]}, "increasing"),
        ({"times": [0.0, 1.0]}, "shape"),
        ({"alpha": 1.5}, "alpha"),
        ({"variance_correction": "yue_wang"}, "variance_correction"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mann_kendall(HAND, **kwargs)

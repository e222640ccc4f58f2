"""Tests for agents.learning.impact (before/after impact, lift and ROI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats import proportion as sm_proportion
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from agents.learning.impact import (
    SampleSummary,
    matched_windows,
    mean_impact,
    rate_impact,
)

# --------------------------------------------------------------------------- rates


@pytest.mark.parametrize(
    ("xb", "nb", "xa", "na", "alpha"),
    [
        (100, 1000, 120, 1000, 0.05),
        (45, 300, 30, 280, 0.05),
        (7, 50, 19, 61, 0.1),
        (600, 1000, 580, 1200, 0.01),
    ],
)
def test_rate_difference_matches_statsmodels_wald(xb, nb, xa, na, alpha):
    r = rate_impact(xb, nb, xa, na, alpha=alpha)
    low, high = sm_proportion.confint_proportions_2indep(
        xa, na, xb, nb, method="wald", compare="diff", alpha=alpha
    )
    ref = sm_proportion.test_proportions_2indep(xa, na, xb, nb, method="wald", compare="diff")
    assert r.difference == pytest.approx(xa / na - xb / nb)
    assert (r.ci_low, r.ci_high) == pytest.approx((low, high), rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.significant == (ref.pvalue < alpha)


def test_relative_lift_delta_method_hand_values():
    # p_b = 0.10, p_a = 0.12, n = 1000 each:
    # var_a = .12 * .88 / 1000 = 1.056e-4, var_b = .1 * .9 / 1000 = 9e-5
    # var(lift) = 1.056e-4 / .01 + .0144 * 9e-5 / 1e-4 = 0.02352
    r = rate_impact(100, 1000, 120, 1000)
    half = stats.norm.ppf(0.975) * math.sqrt(0.02352)
    assert r.relative_lift == pytest.approx(0.2)
    assert (r.lift_ci_low, r.lift_ci_high) == pytest.approx((0.2 - half, 0.2 + half))


def test_relative_lift_standard_error_matches_simulation():
    rng = np.random.default_rng(41)
    nb, na, pb, pa = 2000, 1500, 0.08, 0.1
    r = rate_impact(round(pb * nb), nb, round(pa * na), na)
    draws = rng.binomial(na, pa, 200_000) / na / (rng.binomial(nb, pb, 200_000) / nb) - 1
    delta_se = (r.lift_ci_high - r.lift_ci_low) / (2 * stats.norm.ppf(0.975))
    assert delta_se == pytest.approx(draws.std(), rel=0.05)


def test_roi_and_its_interval_hand_values():
    # delta = 0.02 * 1000 = 20 conversions; ROI = (20 * 50 - 400) / 400 = 1.5
    r = rate_impact(100, 1000, 120, 1000, value_per_conversion=50.0, cost=400.0)
    assert r.delta_conversions == pytest.approx(20.0)
    assert r.roi == pytest.approx(1.5)
    expected = [(d * 1000 * 50.0 - 400.0) / 400.0 for d in (r.ci_low, r.ci_high)]
    assert (r.roi_ci_low, r.roi_ci_high) == pytest.approx(tuple(expected))
    assert r.roi_ci_low == pytest.approx(-1.92644, abs=1e-4)
    assert r.roi_ci_high == pytest.approx(4.92644, abs=1e-4)


@pytest.mark.parametrize(("value", "cost"), [(None, 400.0), (50.0, None), (50.0, 0.0)])
def test_roi_is_none_unless_configured(value, cost):
    r = rate_impact(100, 1000, 120, 1000, value_per_conversion=value, cost=cost)
    assert r.roi is None and r.roi_ci_low is None
    assert r.delta_conversions == pytest.approx(20.0)


def test_rate_without_data_returns_none_fields():
    r = rate_impact(0, 0, 12, 100)
    assert r.before is None and r.after == 0.12
    assert all(
        getattr(r, f) is None
        for f in ("difference", "ci_low", "ci_high", "p_value", "relative_lift", "roi")
    )
    assert rate_impact(5, 10, 0, 0).difference is None


def test_rate_with_zero_variance():
    r = rate_impact(0, 100, 0, 200)
    assert r.difference == 0.0 and r.ci_low is None and r.p_value is None
    assert r.relative_lift is None  # zero baseline
    one_sided = rate_impact(100, 100, 50, 100)
    assert one_sided.ci_low is not None and one_sided.relative_lift == pytest.approx(-0.5)


@pytest.mark.parametrize(("xb", "nb"), [(11, 10), (-1, 10), (0, -1)])
def test_invalid_counts(xb, nb):
    with pytest.raises(ValueError):
        rate_impact(xb, nb, 1, 10)


def test_invalid_alpha():
    with pytest.raises(ValueError, match="alpha"):
        rate_impact(1, 10, 2, 10, alpha=0.0)


# --------------------------------------------------------------------------- means


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(42)
    return rng.normal(3.6, 0.9, size=80), rng.normal(3.9, 0.6, size=55)


def test_mean_difference_matches_scipy_welch(samples):
    before, after = samples
    r = mean_impact(SampleSummary.from_values(before), SampleSummary.from_values(after))
    ref = stats.ttest_ind(after, before, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r.difference == pytest.approx(after.mean() - before.mean())
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.df == pytest.approx(ref.df, rel=1e-9)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_mean_interval_matches_statsmodels_unequal_variance(samples):
    before, after = samples
    r = mean_impact(SampleSummary.from_values(before), SampleSummary.from_values(after), alpha=0.1)
    low, high = CompareMeans(DescrStatsW(after), DescrStatsW(before)).tconfint_diff(
        alpha=0.1, usevar="unequal"
    )
    assert (r.ci_low, r.ci_high) == pytest.approx((low, high), rel=1e-9)


def test_mean_lift_delta_method(samples):
    before, after = samples
    r = mean_impact(SampleSummary.from_values(before), SampleSummary.from_values(after))
    mb, ma = before.mean(), after.mean()
    vb, va = before.var(ddof=1) / before.size, after.var(ddof=1) / after.size
    se = math.sqrt(va / mb**2 + ma**2 * vb / mb**4)
    assert r.relative_lift == pytest.approx(ma / mb - 1)
    assert r.lift_ci_high - r.lift_ci_low == pytest.approx(2 * stats.norm.ppf(0.975) * se)


def test_mean_roi_uses_value_per_unit(samples):
    before, after = samples
    r = mean_impact(
        SampleSummary.from_values(before),
        SampleSummary.from_values(after),
        value_per_unit=2.0,
        cost=10.0,
    )
    assert r.roi == pytest.approx((r.difference * 55 * 2.0 - 10.0) / 10.0)
    assert r.roi_ci_low == pytest.approx((r.ci_low * 55 * 2.0 - 10.0) / 10.0)


def test_summaries_merge_like_one_pass():
    rng = np.random.default_rng(43)
    x = rng.normal(10, 2, size=101)
    merged = SampleSummary.from_values(x[:40]) + SampleSummary.from_values(x[40:])
    assert merged.n == 101
    assert merged.mean == pytest.approx(x.mean())
    assert merged.variance == pytest.approx(x.var(ddof=1))


def test_summary_ignores_missing_values():
    s = SampleSummary.from_values([1.0, np.nan, 3.0])
    assert (s.n, s.mean, s.variance) == (2, 2.0, 2.0)


def test_mean_without_data_returns_none_fields():
    r = mean_impact(SampleSummary(0, 0.0, 0.0), SampleSummary.from_values([1.0, 2.0]))
    assert r.before is None and r.after == 1.5 and r.difference is None and r.p_value is None


def test_mean_with_single_observations_has_no_interval():
    r = mean_impact(SampleSummary.from_values([2.0]), SampleSummary.from_values([3.0]))
    assert r.difference == 1.0 and r.ci_low is None and r.p_value is None and r.df is None


def test_mean_with_zero_variance_has_no_interval():
    r = mean_impact(SampleSummary.from_values([4.0] * 5), SampleSummary.from_values([4.0] * 7))
    assert r.difference == 0.0 and r.ci_low is None and r.p_value is None
    assert r.relative_lift == 0.0 and r.lift_ci_low is None


def test_mean_lift_needs_positive_baseline():
    r = mean_impact(
        SampleSummary.from_values([-1.0, 0.0, -2.0]), SampleSummary.from_values([1.0, 2.0])
    )
    assert r.relative_lift is None and r.difference == pytest.approx(2.5)


def test_results_are_json_safe(samples):
    before, after = samples
    for r in (
        rate_impact(100, 1000, 120, 1000, value_per_conversion=50.0, cost=400.0),
        mean_impact(SampleSummary.from_values(before), SampleSummary.from_values(after)),
        rate_impact(0, 0, 0, 0),
    ):
        assert json.loads(json.dumps(r.to_dict()))["kind"] == r.kind


# --------------------------------------------------------------------------- windows


def test_matched_windows_are_equal_and_skip_the_washout():
    w = matched_windows(1000.0, 600.0, washout=60.0)
    assert (w.before_start, w.before_end, w.after_start, w.after_end) == (340, 940, 1060, 1660)
    assert w.before_end - w.before_start == w.length == 600.0


def test_matched_windows_shrink_to_available_data():
    w = matched_windows(1000.0, 600.0, washout=60.0, now=1360.0)
    assert w.length == 300.0 and w.before_start == 640.0
    assert matched_windows(1000.0, 600.0, washout=60.0, now=1050.0) is None


def test_matched_windows_validation():
    with pytest.raises(ValueError):
        matched_windows(0.0, 0.0)

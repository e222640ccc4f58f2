"""Fixed-horizon experiment statistics against scipy / statsmodels and hand computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from agents.learning.abstats import (
    Comparison,
    VariantStats,
    achieved_power,
    analyze,
    benjamini_hochberg,
    beta_chance_to_beat,
    beta_chance_to_beat_mc,
    chance_to_beat_control,
    compare,
    cuped_adjustment,
    holm,
    normal_chance_to_beat,
    relative_lift,
    required_sample_size,
    srm_level,
    srm_test,
    two_proportion_ztest,
    welch_ttest,
)

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def binary(n: int, conversions: int) -> VariantStats:
    return VariantStats(n, float(conversions), float(conversions))


# --------------------------------------------------------------------------------------
# Sufficient statistics and merging
# --------------------------------------------------------------------------------------


def test_merge_equals_one_pass_equals_numpy():
    rng = np.random.default_rng(11)
    y = rng.lognormal(1.0, 0.8, size=1000)
    x = 0.5 * y + rng.normal(size=1000)
    a = VariantStats.from_values(y[:300], x[:300])
    b = VariantStats.from_values(y[300:], x[300:])
    merged = a + b
    one_pass = VariantStats.from_values(y, x)
    for field in ("sum", "sum_squares", "sum_x", "sum_x2", "sum_xy"):
        assert getattr(merged, field) == pytest.approx(getattr(one_pass, field), rel=1e-12)
    assert merged.n == one_pass.n == 1000
    assert merged.mean == pytest.approx(np.mean(y), rel=1e-12)
    assert merged.variance == pytest.approx(np.var(y, ddof=1), rel=1e-10)
    assert merged.covariate_mean == pytest.approx(np.mean(x), rel=1e-12)
    assert merged.covariate_variance == pytest.approx(np.var(x, ddof=1), rel=1e-10)
    assert merged.covariance == pytest.approx(np.cov(x, y)[0, 1], rel=1e-10)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite_floats, max_size=30), st.lists(finite_floats, max_size=30))
def test_merge_property(left, right):
    merged = VariantStats.from_values(left) + VariantStats.from_values(right)
    whole = VariantStats.from_values(left + right)
    assert merged.n == whole.n
    assert merged.sum == pytest.approx(whole.sum, rel=1e-9, abs=1e-6)
    assert merged.sum_squares == pytest.approx(whole.sum_squares, rel=1e-9, abs=1e-6)
    assert VariantStats.zero() + merged == merged


def test_zero_and_dict_round_trip():
    s = VariantStats.from_values([1.0, 2.0], covariate=[3.0, 4.0])
    assert VariantStats.from_dict(s.to_dict()) == s
    assert VariantStats.from_dict({"n": 3, "sum": 1.0, "sum_squares": 1.0}).sum_x == 0.0
    z = VariantStats.zero()
    assert z.n == 0 and math.isnan(z.mean) and math.isnan(z.variance)
    assert math.isnan(VariantStats(1, 2.0, 4.0).variance)


def test_constant_data_has_exactly_zero_variance():
    assert VariantStats.from_values([3.3] * 7).variance == 0.0
    assert VariantStats.from_values([0.1] * 1000).variance == 0.0


def test_add_rejects_other_types():
    with pytest.raises(TypeError):
        VariantStats() + 1  # type: ignore[operator]


# --------------------------------------------------------------------------------------
# Two-proportion z-test
# --------------------------------------------------------------------------------------

PROPORTION_CASES = [
    (1000, 100, 1000, 130),
    (5000, 240, 4800, 250),
    (120, 7, 95, 11),
    (20000, 1000, 20000, 1000),
    (300, 0, 280, 5),
]


@pytest.mark.parametrize(("n_c", "x_c", "n_t", "x_t"), PROPORTION_CASES)
def test_ztest_matches_statsmodels(n_c, x_c, n_t, x_t):
    r = two_proportion_ztest(binary(n_c, x_c), binary(n_t, x_t))
    z_ref, p_ref = proportions_ztest([x_t, x_c], [n_t, n_c])
    assert r.statistic == pytest.approx(z_ref, rel=1e-12)
    assert r.p_value == pytest.approx(p_ref, rel=1e-10)
    lo, hi = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")
    assert (r.ci_lower, r.ci_upper) == pytest.approx((lo, hi), rel=1e-10, abs=1e-14)
    assert r.df == math.inf


def test_ztest_hand_computed():
    # 100/1000 vs 130/1000: pooled p = 0.115; se = sqrt(.115 * .885 * 2 / 1000)
    se_pooled = math.sqrt(0.115 * 0.885 * 0.002)
    se_wald = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    r = two_proportion_ztest(binary(1000, 100), binary(1000, 130))
    assert r.statistic == pytest.approx(0.03 / se_pooled, rel=1e-12)
    assert r.ci_upper - r.ci_lower == pytest.approx(2 * 1.959963984540054 * se_wald, rel=1e-9)


def test_ztest_degenerate_cases():
    assert math.isnan(two_proportion_ztest(VariantStats(), binary(10, 3)).p_value)
    r = two_proportion_ztest(binary(50, 0), binary(60, 0))  # nobody converted
    assert math.isnan(r.p_value) and r.estimate == 0.0
    assert (r.ci_lower, r.ci_upper) == (0.0, 0.0)
    r = two_proportion_ztest(binary(50, 50), binary(60, 60))  # everybody converted
    assert math.isnan(r.statistic)


# --------------------------------------------------------------------------------------
# Welch t-test
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_welch_matches_scipy_and_statsmodels(seed):
    rng = np.random.default_rng(seed)
    c = rng.normal(10.0, 2.0, size=int(rng.integers(5, 400)))
    t = rng.gamma(2.0, 5.3, size=int(rng.integers(5, 400)))
    r = welch_ttest(VariantStats.from_values(c), VariantStats.from_values(t), alpha=0.1)
    ref = stats.ttest_ind(t, c, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert r.df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.9)
    assert (r.ci_lower, r.ci_upper) == pytest.approx((ci.low, ci.high), rel=1e-9)
    cm = CompareMeans(DescrStatsW(t), DescrStatsW(c))
    assert (r.ci_lower, r.ci_upper) == pytest.approx(
        cm.tconfint_diff(alpha=0.1, usevar="unequal"), rel=1e-9
    )


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_welch_degenerate_cases():
    one = VariantStats.from_values([1.0])
    two = VariantStats.from_values([1.0, 2.0])
    assert math.isnan(welch_ttest(one, two).p_value)
    assert math.isnan(welch_ttest(VariantStats(), two).statistic)
    const_c = VariantStats.from_values([2.0] * 5)
    const_t = VariantStats.from_values([3.0] * 6)
    r = welch_ttest(const_c, const_t)
    assert math.isnan(r.p_value) and r.estimate == 1.0
    assert (r.ci_lower, r.ci_upper) == (1.0, 1.0)
    # one constant arm is fine: df from the other arm alone
    r = welch_ttest(const_c, VariantStats.from_values([1.0, 2.0, 4.0]))
    ref = stats.ttest_ind([1.0, 2.0, 4.0], [2.0] * 5, equal_var=False)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)


# --------------------------------------------------------------------------------------
# Relative lift
# --------------------------------------------------------------------------------------


def test_relative_lift_hand_computed():
    c, t = binary(1000, 100), binary(1000, 130)
    var_c = 100 * 900 / 1000 / 999  # sample variance of a 0/1 vector
    var_t = 130 * 870 / 1000 / 999
    se = math.sqrt(var_t / 1000 / 0.1**2 + 0.13**2 * var_c / 1000 / 0.1**4)
    r = relative_lift(c, t)
    assert r.estimate == pytest.approx(0.3, rel=1e-12)
    assert r.se == pytest.approx(se, rel=1e-12)
    assert r.ci_lower == pytest.approx(0.3 - stats.norm.isf(0.025) * se, rel=1e-12)


def test_relative_lift_interval_covers_in_simulation():
    rng = np.random.default_rng(5)
    true_lift = 12.0 / 10.0 - 1.0
    covered = 0
    reps = 1000
    for _ in range(reps):
        c = VariantStats.from_values(rng.exponential(10.0, 400))
        t = VariantStats.from_values(rng.exponential(12.0, 400))
        r = relative_lift(c, t)
        covered += r.ci_lower <= true_lift <= r.ci_upper
    assert abs(covered / reps - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps)


def test_relative_lift_undefined_for_zero_control():
    assert math.isnan(relative_lift(binary(100, 0), binary(100, 5)).estimate)
    assert math.isnan(relative_lift(VariantStats(), binary(100, 5)).ci_lower)


# --------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        [0.01, 0.04, 0.03],
        [0.001, 0.2, 0.2, 0.04, 0.5, 0.011],
        [0.9],
        [0.02, 0.02, 0.02],
        list(np.random.default_rng(3).uniform(0, 0.2, 9)),
    ],
)
def test_holm_and_bh_match_statsmodels(p):
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(
        benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12
    )


def test_holm_is_monotone_and_ignores_nan():
    p = np.array([0.04, np.nan, 0.01, 0.03])
    adjusted = holm(p)
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(
        adjusted[[0, 2, 3]], multipletests([0.04, 0.01, 0.03], method="holm")[1]
    )
    order = np.argsort(p[[0, 2, 3]])
    assert np.all(np.diff(adjusted[[0, 2, 3]][order]) >= 0)
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0


# --------------------------------------------------------------------------------------
# SRM
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "weights"),
    [([5100, 4900], [1, 1]), ([1000, 520, 480], [0.5, 0.25, 0.25]), ([330, 360, 310], [1, 1, 1])],
)
def test_srm_matches_scipy_chisquare(counts, weights):
    w = np.asarray(weights, float)
    ref = stats.chisquare(counts, np.sum(counts) * w / w.sum())
    r = srm_test(counts, weights)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.level == srm_level(ref.pvalue)


def test_srm_levels_and_edges():
    assert srm_test([5200, 4800], [1, 1]).level == "red"  # chi2 = 16, p = 6e-5
    assert srm_test([5140, 4860], [1, 1]).level == "warn"  # chi2 = 7.84, p = 0.005
    assert srm_test([0, 0], [1, 1]).to_dict()["p_value"] is None
    assert srm_test([10, 3], [1, 0]).level == "red"  # units in a disabled variant
    r = srm_test([10, 0], [1, 0])  # a single live variant: nothing to test
    assert math.isnan(r.p_value) and r.level == "ok"


# --------------------------------------------------------------------------------------
# Bayesian chance to beat control
# --------------------------------------------------------------------------------------


def beta_reference(a1, b1, a2, b2):
    """P(X2 > X1) = integral f_2(x) F_1(x) dx by adaptive quadrature."""
    lo = min(stats.beta.ppf(1e-12, a1, b1), stats.beta.ppf(1e-12, a2, b2))
    hi = max(stats.beta.isf(1e-12, a1, b1), stats.beta.isf(1e-12, a2, b2))
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a2, b2) * stats.beta.cdf(x, a1, b1),
        lo,
        hi,
        epsabs=1e-13,
        epsrel=1e-11,
        limit=500,
        points=[a2 / (a2 + b2), a1 / (a1 + b1)],
    )
    return value


@pytest.mark.parametrize(
    "params",
    [
        (1, 1, 1, 1),
        (101, 901, 131, 871),  # smallest parameter alpha_control
        (901, 101, 871, 131),  # smallest beta_control / beta_treatment
        (3, 50, 12, 40),
        (40, 12, 50, 3),
        (2.5, 10.5, 3.5, 9.5),  # fractional: quadrature path
        (3001, 27001, 3101, 26901),  # above the exact-sum limit: quadrature path
        (50001, 950001, 50501, 949501),
    ],
)
def test_beta_chance_to_beat_matches_quadrature_reference(params):
    assert beta_chance_to_beat(*params) == pytest.approx(beta_reference(*params), abs=1e-9)


def test_beta_chance_exact_sum_and_quadrature_agree_near_the_switch():
    from agents.learning.abstats import _beta_exact_sum, _beta_quadrature

    for params in [(1500, 8000, 1550, 7950), (300, 2700, 330, 2670), (1999, 30000, 2000, 29990)]:
        exact = _beta_exact_sum(*params)
        assert _beta_quadrature(*params) == pytest.approx(exact, abs=1e-10)
        assert 1.0 - _beta_exact_sum(params[2], params[3], params[0], params[1]) == (
            pytest.approx(exact, abs=1e-10)
        )


def test_beta_chance_monte_carlo_agrees_and_is_seeded():
    exact = beta_chance_to_beat(101, 901, 131, 871)
    mc = beta_chance_to_beat_mc(101, 901, 131, 871, np.random.default_rng(42), draws=200_000)
    assert abs(mc - exact) < 4 * math.sqrt(exact * (1 - exact) / 200_000)
    again = beta_chance_to_beat_mc(101, 901, 131, 871, np.random.default_rng(42), draws=200_000)
    assert again == mc


def test_beta_chance_symmetry_and_validation():
    p = beta_chance_to_beat(11, 91, 21, 81)
    assert beta_chance_to_beat(21, 81, 11, 91) == pytest.approx(1 - p, abs=1e-12)
    with pytest.raises(ValueError):
        beta_chance_to_beat(0, 1, 1, 1)


def test_normal_chance_to_beat():
    assert normal_chance_to_beat(10.0, 0.3, 10.5, 0.4) == pytest.approx(stats.norm.cdf(1.0))
    assert normal_chance_to_beat(1.0, 0.0, 1.0, 0.0) == 0.5
    assert normal_chance_to_beat(1.0, 0.0, 2.0, 0.0) == 1.0
    assert math.isnan(normal_chance_to_beat(float("nan"), 1.0, 1.0, 1.0))


def test_chance_to_beat_control_by_metric():
    c, t = binary(1000, 100), binary(1000, 130)
    assert chance_to_beat_control(c, t, "binary") == beta_chance_to_beat(101, 901, 131, 871)
    yc = VariantStats.from_values([1.0, 2.0, 3.0])
    yt = VariantStats.from_values([2.0, 3.0, 4.0, 5.0])
    se_c, se_t = math.sqrt(1.0 / 3), math.sqrt((5 / 3) / 4)
    assert chance_to_beat_control(yc, yt, "continuous") == pytest.approx(
        stats.norm.cdf(1.5 / math.hypot(se_c, se_t))
    )
    assert math.isnan(chance_to_beat_control(VariantStats(), yt, "continuous"))
    assert chance_to_beat_control(VariantStats(), VariantStats(), "binary") == 0.5


# --------------------------------------------------------------------------------------
# Sample size and power
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline", "mde", "alpha", "power", "ratio"),
    [(0.10, 0.01, 0.05, 0.8, 1.0), (0.03, 0.003, 0.01, 0.9, 1.0), (0.5, -0.05, 0.05, 0.8, 2.0)],
)
def test_binary_sample_size_matches_statsmodels(baseline, mde, alpha, power, ratio):
    n_control = required_sample_size(
        mde, "binary", baseline=baseline, alpha=alpha, power=power, ratio=ratio
    )
    # statsmodels: sample 1 is the treatment (p1 = prop2 + diff), nobs2 = ratio_sm * nobs1
    n_treatment_ref = samplesize_proportions_2indep_onetail(
        mde, baseline, power, ratio=1 / ratio, alpha=alpha
    )
    assert n_control * ratio == pytest.approx(n_treatment_ref, rel=1e-10)


def test_binary_sample_size_textbook_value():
    # Fleiss formula, 10% -> 11%: n = (1.96 sqrt(2 .105 .895) + 0.8416 sqrt(.09 + .0979))^2 / .01^2
    z_a, z_b = stats.norm.isf(0.025), stats.norm.isf(0.2)
    expected = (z_a * math.sqrt(2 * 0.105 * 0.895) + z_b * math.sqrt(0.09 + 0.11 * 0.89)) ** 2
    assert required_sample_size(0.01, "binary", baseline=0.1) == pytest.approx(expected / 1e-4)
    assert math.ceil(required_sample_size(0.01, "binary", baseline=0.1)) == 14751


def test_binary_sample_size_differs_from_cohens_h():
    # NormalIndPower with proportion_effectsize uses the arcsine transform (Cohen's h): a
    # different approximation, within a few percent of ours but not equal.
    ours = required_sample_size(0.01, "binary", baseline=0.1)
    cohen = NormalIndPower().solve_power(proportion_effectsize(0.11, 0.10), alpha=0.05, power=0.8)
    assert ours != pytest.approx(cohen, rel=1e-4)
    assert ours == pytest.approx(cohen, rel=0.02)


@pytest.mark.parametrize(
    ("mde", "sd", "ratio"), [(0.5, 2.0, 1.0), (0.1, 1.0, 1.0), (3.0, 20.0, 3.0)]
)
def test_continuous_sample_size_matches_statsmodels(mde, sd, ratio):
    n = required_sample_size(mde, "continuous", sd=sd, ratio=ratio)
    # NormalIndPower counts the far tail too (< 1e-6 of power here); ratio = nobs2 / nobs1
    ref = NormalIndPower().solve_power(mde / sd, alpha=0.05, power=0.8, ratio=ratio)
    assert n == pytest.approx(ref, rel=1e-5)
    assert n == pytest.approx(
        zt_ind_solve_power(mde / sd, alpha=0.05, power=0.8, ratio=ratio), rel=1e-5
    )
    z = stats.norm.isf(0.025) + stats.norm.isf(0.2)
    assert n == pytest.approx(z**2 * sd**2 * (1 + 1 / ratio) / mde**2, rel=1e-12)


@pytest.mark.parametrize(
    ("n_c", "n_t", "baseline", "mde"),
    [(14751, 14751, 0.1, 0.01), (3000, 6000, 0.2, -0.03), (100, 120, 0.05, 0.02)],
)
def test_binary_power_matches_statsmodels(n_c, n_t, baseline, mde):
    ours = achieved_power(mde, n_c, n_t, "binary", baseline=baseline)
    ref = power_proportions_2indep(mde, baseline, n_t, ratio=n_c / n_t, return_results=False)
    assert ours == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize(("n_c", "n_t"), [(252, 252), (100, 300), (5000, 4000)])
def test_continuous_power_matches_statsmodels(n_c, n_t):
    ours = achieved_power(0.5, n_c, n_t, "continuous", sd=2.0)
    ref = NormalIndPower().power(0.25, n_c, alpha=0.05, ratio=n_t / n_c)
    assert ours == pytest.approx(ref, rel=1e-10)


def test_sample_size_and_power_edges():
    assert required_sample_size(0.0, "binary", baseline=0.1) == math.inf
    assert math.isnan(required_sample_size(0.2, "binary", baseline=0.9))  # rate above 1
    assert math.isnan(required_sample_size(0.1, "continuous"))  # no sd
    assert math.isnan(achieved_power(0.01, 0, 10, "binary", baseline=0.1))
    assert math.isnan(achieved_power(0.01, 10, 10, "binary", baseline=0.0 - 0.5))


# --------------------------------------------------------------------------------------
# CUPED
# --------------------------------------------------------------------------------------


def test_cuped_equals_welch_on_adjusted_values():
    rng = np.random.default_rng(8)
    x_c, x_t = rng.normal(5, 2, 600), rng.normal(5, 2, 500)
    y_c = 1.5 * x_c + rng.normal(0, 1, 600)
    y_t = 1.5 * x_t + 0.3 + rng.normal(0, 1, 500)
    c, t = VariantStats.from_values(y_c, x_c), VariantStats.from_values(y_t, x_t)
    x_all, y_all = np.concatenate([x_c, x_t]), np.concatenate([y_c, y_t])
    theta = np.cov(x_all, y_all)[0, 1] / np.var(x_all, ddof=1)
    adj_c = y_c - theta * (x_c - x_all.mean())
    adj_t = y_t - theta * (x_t - x_all.mean())
    adj = cuped_adjustment(c, t)
    assert adj.theta == pytest.approx(theta, rel=1e-10)
    assert adj.control_mean == pytest.approx(adj_c.mean(), rel=1e-10)
    assert adj.treatment_variance == pytest.approx(np.var(adj_t, ddof=1), rel=1e-8)
    r = compare(c, t, "continuous", cuped=True)
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    assert r.test == "welch_cuped"
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-8)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert r.df == pytest.approx(ref.df, rel=1e-8)
    plain = compare(c, t, "continuous")
    assert r.variance_reduction > 0.8  # corr(x, y) ~ 0.95
    assert (r.difference_ci_upper - r.difference_ci_lower) < 0.5 * (
        plain.difference_ci_upper - plain.difference_ci_lower
    )


def test_cuped_with_constant_covariate_is_plain_welch():
    c = VariantStats.from_values([1.0, 2.0, 4.0], covariate=[1.0] * 3)
    t = VariantStats.from_values([2.0, 5.0, 6.0, 7.0], covariate=[1.0] * 4)
    adj = cuped_adjustment(c, t)
    assert adj.theta == 0.0
    assert compare(c, t, "continuous", cuped=True).p_value == pytest.approx(
        welch_ttest(c, t).p_value
    )
    assert math.isnan(cuped_adjustment(VariantStats(), t).theta)


# --------------------------------------------------------------------------------------
# compare / analyze
# --------------------------------------------------------------------------------------


def test_compare_binary_assembles_the_parts():
    c, t = binary(1000, 100), binary(1000, 130)
    r = compare(c, t, "binary", mde=0.1)
    z = two_proportion_ztest(c, t)
    assert (r.p_value, r.difference_ci_lower, r.statistic) == (z.p_value, z.ci_lower, z.statistic)
    assert r.relative_lift_ci_upper == relative_lift(c, t).ci_upper
    assert r.power == pytest.approx(achieved_power(0.01, 1000, 1000, "binary", baseline=0.1))
    assert r.significant and r.p_value_adjusted == r.p_value


def test_compare_no_data_and_zero_variance_never_raise():
    for metric in ("binary", "continuous"):
        r = compare(VariantStats(), VariantStats(), metric)
        d = r.to_dict()
        assert d["p_value"] is None and d["significant"] is False
        json.dumps(d, allow_nan=False)
    r = compare(binary(40, 0), binary(40, 0), "binary", mde=0.1)
    assert math.isnan(r.p_value) and math.isnan(r.relative_lift) and math.isnan(r.power)
    json.dumps(r.to_dict(), allow_nan=False)
    const = VariantStats.from_values([5.0] * 10)
    r = compare(const, const, "continuous", mde=0.1)
    assert math.isnan(r.p_value) and r.difference == 0.0 and r.chance_to_beat_control == 0.5
    json.dumps(r.to_dict(), allow_nan=False)
    with pytest.raises(ValueError):
        compare(const, const, "ratio")  # type: ignore[arg-type]


def test_default_output():
    d = Comparison._default_output("binary", 0.05, 3, 0)
    assert d.control_n == 3 and math.isnan(d.p_value) and not d.significant


def test_analyze_matches_parts_and_references():
    variants = {
        "control": binary(10_000, 1000),
        "b": binary(10_050, 1080),
        "c": binary(9_950, 1010),
        "d": binary(10_020, 1120),
    }
    weights = {"control": 1, "b": 1, "c": 1, "d": 1}
    r = analyze(variants, "control", weights, "binary", alpha=0.05, mde=0.05, power=0.8)
    raw = [r.comparisons[v].p_value for v in ("b", "c", "d")]
    assert raw == [compare(variants["control"], variants[v], "binary").p_value for v in "bcd"]
    np.testing.assert_allclose(
        [r.comparisons[v].p_value_adjusted for v in "bcd"],
        multipletests(raw, method="holm")[1],
        rtol=1e-12,
    )
    ref = stats.chisquare([10_000, 10_050, 9_950, 10_020])
    assert r.srm.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.required_sample_size == pytest.approx(
        samplesize_proportions_2indep_onetail(0.005, 0.1, 0.8), rel=1e-10
    )
    assert r.comparisons["d"].significant and not r.comparisons["c"].significant
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert set(d["comparisons"]) == {"b", "c", "d"}
    assert d["variants"]["control"]["n"] == 10_000
    fdr = analyze(variants, "control", weights, correction="fdr_bh")
    np.testing.assert_allclose(
        [fdr.comparisons[v].p_value_adjusted for v in "bcd"],
        multipletests(raw, method="fdr_bh")[1],
    )


def test_analyze_continuous_with_cuped_and_default_weights():
    rng = np.random.default_rng(4)
    variants = {}
    for name, shift in (("control", 0.0), ("t1", 0.2), ("t2", 0.0)):
        x = rng.normal(10, 3, 800)
        variants[name] = VariantStats.from_values(x + shift + rng.normal(0, 1, 800), x)
    r = analyze(variants, "control", metric_type="continuous", mde=0.01, cuped=True)
    assert r.cuped and all(c.test == "welch_cuped" for c in r.comparisons.values())
    assert r.comparisons["t1"].significant and not r.comparisons["t2"].significant
    json.dumps(r.to_dict(), allow_nan=False)


def test_analyze_without_data_and_bad_input():
    r = analyze({"a": VariantStats(), "b": VariantStats(), "c": VariantStats()}, "a")
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["required_sample_size"] is None and d["srm"]["level"] == "ok"
    with pytest.raises(ValueError):
        analyze({"a": VariantStats()}, "missing")
    with pytest.raises(ValueError):
        analyze({"a": VariantStats(), "b": VariantStats()}, "a", correction="bonferroni")  # type: ignore[arg-type]

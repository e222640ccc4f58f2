"""Always-valid tests under continuous monitoring, by seeded simulation.

Simulations are vectorised across replications: per batch of ``BATCH`` events per arm
the sufficient statistics are drawn exactly (normal batch mean and chi-square residual
sum of squares; binomial conversions), then accumulated, so a look after every batch of
every replication costs one array operation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from agents.learning.abstats import VariantStats
from agents.learning.sequential import (
    DEFAULT_TAU2,
    SequentialSRMState,
    SequentialState,
    confidence_sequence_radius,
    msprt_log_likelihood_ratio,
    msprt_statistics,
    msprt_update,
    sequential_srm,
    srm_log_bayes_factor,
)

ALPHA = 0.05
REPS = 2000
BATCH = 50
MAX_PER_ARM = 20_000
LOOKS = MAX_PER_ARM // BATCH


def tolerance(p: float, reps: int) -> float:
    """Three binomial standard errors."""
    return 3.0 * math.sqrt(p * (1.0 - p) / reps)


def simulate_continuous(rng, mean_c, mean_t, sd=1.0, reps=REPS):
    """Cumulative (n, sum, sum_squares) per arm, each shape (reps, LOOKS)."""
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1, dtype=float), (reps, LOOKS))
    arms = []
    for mean in (mean_c, mean_t):
        batch_mean = rng.normal(mean, sd / math.sqrt(BATCH), size=(reps, LOOKS))
        batch_ss = BATCH * batch_mean**2 + sd**2 * rng.chisquare(BATCH - 1, size=(reps, LOOKS))
        arms.append((n, np.cumsum(BATCH * batch_mean, axis=1), np.cumsum(batch_ss, axis=1)))
    return arms


def simulate_binary(rng, rate_c, rate_t, reps=REPS):
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1, dtype=float), (reps, LOOKS))
    arms = []
    for rate in (rate_c, rate_t):
        conversions = np.cumsum(rng.binomial(BATCH, rate, size=(reps, LOOKS)), axis=1)
        arms.append((n, conversions.astype(float), conversions.astype(float)))
    return arms


def monitor(arms, metric_type, tau2=DEFAULT_TAU2):
    """Always-valid p-value and intersected confidence sequence at every look."""
    (nc, sc, qc), (nt, st, qt) = arms
    s = msprt_statistics(nc, sc, qc, nt, st, qt, metric_type, ALPHA, tau2)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-s["log_lr"])), axis=1)
    finite = np.isfinite(s["radius"])
    lower = np.maximum.accumulate(np.where(finite, s["estimate"] - s["radius"], -np.inf), axis=1)
    upper = np.minimum.accumulate(np.where(finite, s["estimate"] + s["radius"], np.inf), axis=1)
    return p, lower, upper


def naive_z_rejects_ever(arms):
    (nc, sc, qc), (nt, st, qt) = arms
    var_c = (qc - sc**2 / nc) / (nc - 1)
    var_t = (qt - st**2 / nt) / (nt - 1)
    z = (st / nt - sc / nc) / np.sqrt(var_c / nc + var_t / nt)
    return (2 * stats.norm.sf(np.abs(z)) < ALPHA).any(axis=1)


# --------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------


def test_likelihood_ratio_is_the_normal_mixture_integral():
    from scipy import integrate

    estimate, variance, tau2 = 0.07, 0.0009, 0.004

    def integrand(theta):
        lr = stats.norm.pdf(estimate, theta, math.sqrt(variance)) / stats.norm.pdf(
            estimate, 0.0, math.sqrt(variance)
        )
        return lr * stats.norm.pdf(theta, 0.0, math.sqrt(tau2))

    reference, _ = integrate.quad(integrand, -1, 1, epsabs=1e-12, points=[0.0, estimate])
    assert msprt_log_likelihood_ratio(estimate, variance, tau2) == pytest.approx(
        math.log(reference), rel=1e-8
    )


def test_confidence_sequence_is_the_inverted_test():
    variance, tau2 = 0.002, 0.01
    radius = confidence_sequence_radius(variance, tau2, ALPHA)
    at_edge = msprt_log_likelihood_ratio(0.3 + radius, variance, tau2, null=0.3)
    assert at_edge == pytest.approx(math.log(1 / ALPHA), rel=1e-10)


def test_degenerate_inputs_carry_no_evidence():
    assert msprt_log_likelihood_ratio(0.1, 0.0, 0.01) == 0.0
    assert msprt_log_likelihood_ratio(float("nan"), 0.1, 0.01) == 0.0
    assert confidence_sequence_radius(0.0, 0.01) == math.inf
    s = msprt_statistics(10, 1, 1, 10, 2, 2, "binary")  # below min_n
    assert float(s["log_lr"]) == 0.0 and math.isnan(float(s["estimate"]))
    with pytest.raises(ValueError):
        msprt_statistics(100, 1, 1, 100, 2, 2, "ratio")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Continuous monitoring: A/A, power, coverage
# --------------------------------------------------------------------------------------


def test_aa_continuous_false_positive_rate_stays_below_alpha_while_naive_peeking_does_not():
    rng = np.random.default_rng(20170101)
    arms = simulate_continuous(rng, 0.0, 0.0)
    p, lower, upper = monitor(arms, "continuous")
    false_positive = float(np.mean(p[:, -1] <= ALPHA))
    print(f"A/A continuous: mSPRT ever rejects {false_positive:.4f} of {REPS} runs")
    assert false_positive <= ALPHA + tolerance(ALPHA, REPS)
    # the point of the test: a fixed-horizon z-test read after every batch inflates alpha
    naive = float(np.mean(naive_z_rejects_ever(arms)))
    print(f"A/A continuous: naive z-test ever rejects {naive:.4f}")
    assert naive > 0.1
    # under A/A the confidence sequence must contain 0 at every look
    covered = np.mean(((lower <= 0) & (upper >= 0)).all(axis=1))
    assert covered >= 1 - ALPHA - tolerance(ALPHA, REPS)


@pytest.mark.parametrize("rate", [0.01, 0.2])
def test_aa_binary_false_positive_rate_stays_below_alpha(rate):
    rng = np.random.default_rng(int(rate * 1000))
    arms = simulate_binary(rng, rate, rate)
    p, _, _ = monitor(arms, "binary")
    false_positive = float(np.mean(p[:, -1] <= ALPHA))
    print(f"A/A binary rate {rate}: mSPRT ever rejects {false_positive:.4f}")
    assert false_positive <= ALPHA + tolerance(ALPHA, REPS)


def test_real_effect_is_detected_and_covered():
    rng = np.random.default_rng(7)
    effect = 0.05  # standard deviations; fixed-horizon power at 20k per arm is ~1
    arms = simulate_continuous(rng, 10.0, 10.0 + effect, reps=1000)
    p, lower, upper = monitor(arms, "continuous")
    assert np.mean(p[:, -1] <= ALPHA) >= 0.95
    covered = np.mean(((lower <= effect) & (upper >= effect)).all(axis=1))
    assert covered >= 1 - ALPHA - tolerance(ALPHA, 1000)
    # and it usually stops well before the end
    first = np.argmax(p <= ALPHA, axis=1)
    assert np.median(first[p[:, -1] <= ALPHA]) < LOOKS / 2


def test_binary_effect_is_detected():
    rng = np.random.default_rng(8)
    arms = simulate_binary(rng, 0.20, 0.22, reps=1000)
    p, lower, upper = monitor(arms, "binary")
    assert np.mean(p[:, -1] <= ALPHA) >= 0.9
    covered = np.mean(((lower <= 0.02) & (upper >= 0.02)).all(axis=1))
    assert covered >= 1 - ALPHA - tolerance(ALPHA, 1000)


# --------------------------------------------------------------------------------------
# The scalar update used by the agent
# --------------------------------------------------------------------------------------


def test_update_look_by_look_equals_vectorised_path():
    rng = np.random.default_rng(3)
    arms = simulate_continuous(rng, 0.0, 0.04, reps=1)
    p_every_look, _, _ = monitor(arms, "continuous")
    (nc, sc, qc), (nt, st, qt) = arms
    looks = np.arange(0, LOOKS, 7)  # the agent reads at some looks only
    state = None
    for look in looks:
        control = VariantStats(int(nc[0, look]), sc[0, look], qc[0, look])
        treatment = VariantStats(int(nt[0, look]), st[0, look], qt[0, look])
        result = msprt_update(control, treatment, "continuous", state)
        state = SequentialState.from_dict(json.loads(json.dumps(result.state.to_dict())))
    sub = [(a[0][0, looks], a[1][0, looks], a[2][0, looks]) for a in arms]
    p_sub, lower_sub, upper_sub = monitor(
        [tuple(x[None, :] for x in arm) for arm in sub], "continuous"
    )
    assert result.p_value == pytest.approx(p_sub[0, -1], rel=1e-12)
    assert (result.ci_lower, result.ci_upper) == pytest.approx(
        (lower_sub[0, -1], upper_sub[0, -1]), rel=1e-12
    )
    assert result.p_value >= p_every_look[0, -1]  # fewer looks can only give a larger p
    assert result.state.looks == len(looks)


def test_update_is_monotone_and_json_safe():
    state = None
    previous = 1.0
    for n, xc, xt in [(10, 1, 2), (100, 10, 18), (1000, 100, 140), (2000, 200, 300)]:
        r = msprt_update(
            VariantStats(n, xc, xc), VariantStats(n, xt, xt), "binary", state, min_n=30
        )
        assert r.p_value <= previous
        assert r.ci_lower <= r.ci_upper
        previous, state = r.p_value, r.state
        json.dumps(r.to_dict(), allow_nan=False)
    assert r.reject and r.ci_lower > 0
    empty = msprt_update(VariantStats(), VariantStats(), "continuous")
    assert empty.p_value == 1.0 and not empty.reject and math.isnan(empty.estimate)
    assert SequentialState.from_dict({}) == SequentialState()


# --------------------------------------------------------------------------------------
# Sequential SRM
# --------------------------------------------------------------------------------------


def test_srm_bayes_factor_matches_direct_formula():
    from scipy.special import gammaln

    counts, weights, k = np.array([530, 240, 230]), np.array([0.5, 0.25, 0.25]), 100.0
    a = k * weights
    direct = (
        gammaln(a.sum())
        - gammaln(a.sum() + counts.sum())
        + np.sum(gammaln(a + counts) - gammaln(a))
        - np.sum(counts * np.log(weights))
    )
    assert srm_log_bayes_factor(counts, weights, k) == pytest.approx(direct, rel=1e-12)


def test_sequential_srm_false_alarm_rate_under_correct_allocation():
    rng = np.random.default_rng(2022)
    weights = np.array([0.5, 0.25, 0.25])
    looks, per_look = 400, 50
    counts = np.cumsum(rng.multinomial(per_look, weights, size=(REPS, looks)), axis=1)
    log_bf = srm_log_bayes_factor(counts, weights)
    alarms = float(np.mean(log_bf.max(axis=1) >= math.log(1 / ALPHA)))
    print(f"sequential SRM, correct allocation: false alarm {alarms:.4f}")
    assert alarms <= ALPHA + tolerance(ALPHA, REPS)


def test_sequential_srm_alarms_on_a_52_48_split():
    rng = np.random.default_rng(52)
    reps, looks, per_look = 500, 200, 500  # up to 100k units
    counts = np.cumsum(rng.multinomial(per_look, [0.52, 0.48], size=(reps, looks)), axis=1)
    log_bf = srm_log_bayes_factor(counts, [0.5, 0.5])
    assert np.mean(log_bf.max(axis=1) >= math.log(1000)) >= 0.99  # "red" tier
    # a real 50/50 with the same n stays quiet
    counts = np.cumsum(rng.multinomial(per_look, [0.5, 0.5], size=(reps, looks)), axis=1)
    assert np.mean(srm_log_bayes_factor(counts, [0.5, 0.5]).max(axis=1) >= math.log(20)) <= (
        ALPHA + tolerance(ALPHA, reps)
    )


def test_sequential_srm_state_and_edges():
    state = None
    for counts in ([50, 50], [500, 520], [5000, 5600], [5050, 5650]):
        r = sequential_srm(counts, [1, 1], state)
        state = r.state
        json.dumps(r.to_dict(), allow_nan=False)
    assert r.level == "red" and r.state.looks == 4
    # the p-value keeps its minimum even if later counts look balanced again
    later = sequential_srm([100_000, 100_000], [1, 1], state)
    assert later.p_value == r.p_value
    assert sequential_srm([0, 0], [1, 1]).p_value == 1.0
    disabled = sequential_srm([10, 1], [1, 0], SequentialSRMState())
    assert disabled.p_value == 0.0 and disabled.level == "red"
    assert disabled.to_dict()["log_bayes_factor"] is None

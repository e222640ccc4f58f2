"""The always-valid test on CUPED-adjusted metrics: formulas against per-unit references,
validity under continuous monitoring (A/A) and the gain with a correlated covariate.

Simulations are seeded and vectorised across replications. For a normal metric with a
normal covariate the sufficient statistics of a batch are drawn exactly: the batch mean
vector is N(mu, Sigma / B) and the scatter matrix Wishart(B - 1, Sigma), independent. The
binary case draws units.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from agents.learning.abstats import VariantStats, cuped_adjustment
from agents.learning.sequential import (
    DEFAULT_TAU2,
    SequentialState,
    cuped_msprt_statistics,
    msprt_log_likelihood_ratio,
    msprt_statistics,
    msprt_update,
)

ALPHA = 0.05
REPS = 500
BATCH = 50
MAX_PER_ARM = 10_000
LOOKS = MAX_PER_ARM // BATCH


def simulate_normal(rng, effect: float, rho: float, reps: int = REPS):
    """Cumulative (n, sum_y, sum_y2, sum_x, sum_x2, sum_xy) per arm, each (reps, LOOKS).

    ``y`` and the pre-period ``x`` have sd 1 and correlation ``rho``; the treatment adds
    ``effect`` to ``y`` only (randomisation: ``x`` has the same law in both arms).
    """
    cov = np.array([[1.0, rho], [rho, 1.0]])
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1, dtype=float), (reps, LOOKS))
    arms = []
    for shift in (0.0, effect):
        mean = np.array([5.0, 10.0 + shift])  # (x, y)
        m = rng.multivariate_normal(mean, cov / BATCH, size=(reps, LOOKS))
        w = stats.wishart(df=BATCH - 1, scale=cov).rvs(size=reps * LOOKS, random_state=rng)
        w = w.reshape(reps, LOOKS, 2, 2)
        mx, my = m[..., 0], m[..., 1]
        sums = (
            BATCH * my,
            w[..., 1, 1] + BATCH * my**2,
            BATCH * mx,
            w[..., 0, 0] + BATCH * mx**2,
            w[..., 0, 1] + BATCH * mx * my,
        )
        arms.append((n, *(np.cumsum(s, axis=1) for s in sums)))
    return arms


def simulate_binary(rng, rate: float, reps: int, per_arm: int, batch: int):
    """Units with a Poisson pre-period count ``x`` (mean 2) and a conversion whose
    probability rises with ``x`` (logistic), the same law in both arms (A/A)."""
    looks = per_arm // batch
    out = [[] for _ in range(2)]
    for chunk in np.array_split(np.arange(reps), max(1, reps // 100)):
        r = chunk.size
        for arm in range(2):
            x = rng.poisson(2.0, size=(r, per_arm)).astype(float)
            logit = math.log(rate / (1 - rate)) + 1.0 * (x - 2.0)
            y = (rng.random((r, per_arm)) < 1 / (1 + np.exp(-logit))).astype(float)
            parts = [y, y, x, x * x, x * y]
            sums = [p.reshape(r, looks, batch).sum(axis=2).cumsum(axis=1) for p in parts]
            out[arm].append(sums)
    n = np.broadcast_to(batch * np.arange(1, looks + 1, dtype=float), (reps, looks))
    return [(n, *(np.concatenate([c[i] for c in chunks]) for i in range(5))) for chunks in out]


def monitor(arms, cuped: bool, tau2: float = DEFAULT_TAU2):
    """Always-valid p-value and intersected confidence sequence after every batch."""
    control, treatment = arms
    if cuped:
        s = cuped_msprt_statistics(control, treatment, ALPHA, tau2)
    else:
        s = msprt_statistics(*control[:3], *treatment[:3], "continuous", ALPHA, tau2)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-s["log_lr"])), axis=1)
    finite = np.isfinite(s["radius"])
    lower = np.maximum.accumulate(np.where(finite, s["estimate"] - s["radius"], -np.inf), axis=1)
    upper = np.minimum.accumulate(np.where(finite, s["estimate"] + s["radius"], np.inf), axis=1)
    return p, lower, upper, s


def naive_cuped_z_rejects_ever(arms) -> np.ndarray:
    """The fixed-horizon CUPED Welch z-test read after every batch (peeking)."""
    s = cuped_msprt_statistics(*arms, ALPHA, DEFAULT_TAU2, min_n=2)
    z = s["estimate"] / np.sqrt(s["variance"])
    return (2 * stats.norm.sf(np.abs(z)) < ALPHA).any(axis=1)


def stopping_batches(p: np.ndarray) -> np.ndarray:
    """Batches until the first rejection; LOOKS (the end) when it never rejects."""
    rejected = p <= ALPHA
    return np.where(rejected.any(axis=1), np.argmax(rejected, axis=1) + 1, LOOKS)


# --------------------------------------------------------------------------------------
# Formulas against per-unit references
# --------------------------------------------------------------------------------------


def _units(seed: int, n_c: int = 400, n_t: int = 350):
    rng = np.random.default_rng(seed)
    data = []
    for n, shift in ((n_c, 0.0), (n_t, 0.3)):
        x = rng.gamma(2.0, 3.0, size=n)
        y = 2.0 + 0.8 * x + shift + rng.normal(0, 2.0, size=n)
        data.append((x, y))
    return data


def test_cuped_statistics_equal_the_per_unit_adjusted_welch_reference():
    (xc, yc), (xt, yt) = _units(1)
    control = VariantStats.from_values(yc, xc)
    treatment = VariantStats.from_values(yt, xt)
    s = cuped_msprt_statistics(
        (control.n, control.sum, control.sum_squares, control.sum_x, control.sum_x2,
         control.sum_xy),
        (treatment.n, treatment.sum, treatment.sum_squares, treatment.sum_x, treatment.sum_x2,
         treatment.sum_xy),
    )  # fmt: skip
    # theta: the slope of y on x over both arms pooled (statsmodels OLS)
    x, y = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = sm.OLS(y, sm.add_constant(x)).fit().params[1]
    assert float(s["theta"]) == pytest.approx(theta, rel=1e-9)
    # the adjusted values y - theta (x - mean_x), and the Welch variance of their difference
    adj_c, adj_t = yc - theta * (xc - x.mean()), yt - theta * (xt - x.mean())
    estimate = adj_t.mean() - adj_c.mean()
    variance = adj_c.var(ddof=1) / adj_c.size + adj_t.var(ddof=1) / adj_t.size
    assert float(s["estimate"]) == pytest.approx(estimate, rel=1e-9)
    assert float(s["variance"]) == pytest.approx(variance, rel=1e-9)
    welch = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    assert float(s["estimate"]) / math.sqrt(float(s["variance"])) == pytest.approx(
        welch.statistic, rel=1e-9
    )
    # the mixture is over the absolute effect: tau2 times the unadjusted unit variance
    tau2 = DEFAULT_TAU2 * 0.5 * (yc.var(ddof=1) + yt.var(ddof=1))
    assert float(s["log_lr"]) == pytest.approx(
        msprt_log_likelihood_ratio(estimate, variance, tau2), rel=1e-9
    )
    raw = (yc.size - 1) * yc.var(ddof=1) + (yt.size - 1) * yt.var(ddof=1)
    kept = (adj_c.size - 1) * adj_c.var(ddof=1) + (adj_t.size - 1) * adj_t.var(ddof=1)
    assert float(s["variance_reduction"]) == pytest.approx(1 - kept / raw, rel=1e-9)
    # the same adjustment as the fixed-horizon CUPED of abstats
    adj = cuped_adjustment(control, treatment)
    assert adj.treatment_mean - adj.control_mean == pytest.approx(estimate, rel=1e-9)
    assert adj.variance_reduction == pytest.approx(float(s["variance_reduction"]), rel=1e-9)


def test_a_constant_covariate_gives_the_unadjusted_test():
    (_, yc), (_, yt) = _units(2)
    ones_c, ones_t = np.ones_like(yc), np.ones_like(yt)
    control = VariantStats.from_values(yc, ones_c)
    treatment = VariantStats.from_values(yt, ones_t)
    adjusted = msprt_update(control, treatment, "continuous", cuped=True)
    plain = msprt_update(control, treatment, "continuous")
    assert adjusted.log_likelihood_ratio == pytest.approx(plain.log_likelihood_ratio, rel=1e-9)
    assert (adjusted.ci_lower, adjusted.ci_upper) == pytest.approx(
        (plain.ci_lower, plain.ci_upper), rel=1e-9
    )


def test_below_min_n_a_cuped_look_carries_no_evidence():
    c = (10, 50.0, 270.0, 10.0, 20.0, 58.0)
    s = cuped_msprt_statistics(c, c)
    assert float(s["log_lr"]) == 0.0 and math.isinf(float(s["radius"]))
    assert math.isnan(float(s["estimate"]))
    with pytest.raises(ValueError):
        msprt_update(VariantStats(), VariantStats(), "ratio", cuped=True)  # type: ignore[arg-type]


def test_cuped_update_look_by_look_equals_the_vectorised_path():
    rng = np.random.default_rng(4)
    arms = simulate_normal(rng, effect=0.03, rho=0.7, reps=1)
    looks = np.arange(0, LOOKS, 5)
    state = None
    for look in looks:
        c, t = (VariantStats(int(a[0][0, look]), *(s[0, look] for s in a[1:])) for a in arms)
        result = msprt_update(c, t, "continuous", state, cuped=True)
        state = SequentialState.from_dict(json.loads(json.dumps(result.state.to_dict())))
    sub = [tuple(s[:, looks] for s in arm) for arm in arms]
    p, lower, upper, _ = monitor(sub, cuped=True)
    assert result.p_value == pytest.approx(p[0, -1], rel=1e-12)
    assert (result.ci_lower, result.ci_upper) == pytest.approx((lower[0, -1], upper[0, -1]))


# --------------------------------------------------------------------------------------
# Continuous monitoring
# --------------------------------------------------------------------------------------


def test_aa_with_a_correlated_covariate_keeps_the_false_positive_rate_below_alpha():
    rng = np.random.default_rng(20220601)
    arms = simulate_normal(rng, effect=0.0, rho=0.8)
    p, lower, upper, s = monitor(arms, cuped=True)
    false_positive = float(np.mean(p[:, -1] <= ALPHA))
    naive = float(np.mean(naive_cuped_z_rejects_ever(arms)))
    print(
        f"A/A continuous, CUPED rho 0.8, {REPS} runs x {LOOKS} looks: mSPRT-CUPED ever rejects "
        f"{false_positive:.4f}, naive CUPED z-test read at every look {naive:.4f}"
    )
    assert false_positive <= ALPHA
    assert naive > 0.1  # the simulation can see an inflated rate
    covered = float(np.mean(((lower <= 0) & (upper >= 0)).all(axis=1)))
    assert covered >= 1 - ALPHA
    assert float(np.median(s["variance_reduction"][:, -1])) == pytest.approx(0.64, abs=0.02)


def test_aa_binary_with_a_count_covariate_keeps_the_false_positive_rate_below_alpha():
    rng = np.random.default_rng(77)
    arms = simulate_binary(rng, 0.1, reps=REPS, per_arm=6000, batch=100)
    s = cuped_msprt_statistics(*arms, ALPHA, DEFAULT_TAU2)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-s["log_lr"])), axis=1)
    false_positive = float(np.mean(p[:, -1] <= ALPHA))
    reduction = float(np.median(s["variance_reduction"][:, -1]))
    print(
        f"A/A binary, CUPED on a count covariate: mSPRT-CUPED ever rejects "
        f"{false_positive:.4f}, variance reduction {reduction:.3f}"
    )
    assert false_positive <= ALPHA
    assert reduction > 0.1  # the covariate is informative, so the adjustment is exercised


def test_cuped_detects_a_real_effect_sooner_with_less_variance():
    rho, effect = 0.8, 0.08
    rng = np.random.default_rng(99)
    arms = simulate_normal(rng, effect=effect, rho=rho)
    p_raw, lo_raw, hi_raw, s_raw = monitor(arms, cuped=False)
    p_cup, lo_cup, hi_cup, s_cup = monitor(arms, cuped=True)
    # the spread of the estimate over runs shrinks by 1 - rho^2 at a fixed sample size
    ratio = float(np.var(s_cup["estimate"][:, -1]) / np.var(s_raw["estimate"][:, -1]))
    assert ratio == pytest.approx(1 - rho**2, rel=0.15)
    detected_raw = float(np.mean(p_raw[:, -1] <= ALPHA))
    detected_cup = float(np.mean(p_cup[:, -1] <= ALPHA))
    t_raw = stopping_batches(p_raw) * BATCH
    t_cup = stopping_batches(p_cup) * BATCH
    print(
        f"effect {effect} sd, rho {rho}: detected {detected_raw:.3f} without CUPED, "
        f"{detected_cup:.3f} with; mean units per arm at the stop {t_raw.mean():.0f} vs "
        f"{t_cup.mean():.0f}; estimate variance ratio {ratio:.3f}"
    )
    assert detected_cup >= detected_raw and detected_cup >= 0.95
    assert t_cup.mean() <= 0.6 * t_raw.mean()
    # both sequences still cover the true effect at every look
    for lower, upper in ((lo_raw, hi_raw), (lo_cup, hi_cup)):
        assert np.mean(((lower <= effect) & (upper >= effect)).all(axis=1)) >= 1 - ALPHA

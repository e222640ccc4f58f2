"""Thompson / top-two allocation and the period-weighted estimator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from agents.learning.abstats import VariantStats, beta_chance_to_beat
from agents.learning.allocation import (
    AllocationResult,
    BetaPosterior,
    NormalPosterior,
    apply_floor,
    period_arrays,
    period_weighted_estimate,
    probability_best,
    thompson_allocation,
    top_two_weights,
)


def mc_tolerance(p: float, draws: int) -> float:
    return 4.0 * math.sqrt(max(p * (1 - p), 1e-12) / draws) + 1e-12


# --------------------------------------------------------------------------------------
# Probability of being best
# --------------------------------------------------------------------------------------


def test_probability_best_matches_exact_beta_for_two_variants():
    post = BetaPosterior(np.array([101.0, 131.0]), np.array([901.0, 871.0]))
    draws = 100_000
    best = probability_best(post.sample(np.random.default_rng(1), draws))
    exact = beta_chance_to_beat(101, 901, 131, 871)
    assert abs(best[1] - exact) < mc_tolerance(exact, draws)
    assert best.sum() == pytest.approx(1.0)


def test_probability_best_matches_exact_normal_for_two_variants():
    post = NormalPosterior(np.array([10.0, 10.5]), np.array([0.3, 0.4]))
    draws = 100_000
    best = probability_best(post.sample(np.random.default_rng(2), draws))
    exact = stats.norm.cdf(0.5 / 0.5)
    assert abs(best[1] - exact) < mc_tolerance(exact, draws)


def test_probability_best_three_variants_against_integration():
    from scipy import integrate

    a, b = np.array([20.0, 25.0, 22.0]), np.array([180.0, 175.0, 178.0])

    def density_best(x, i):
        others = [stats.beta.cdf(x, a[j], b[j]) for j in range(3) if j != i]
        return stats.beta.pdf(x, a[i], b[i]) * np.prod(others)

    exact = np.array(
        [integrate.quad(density_best, 0, 1, args=(i,), limit=200)[0] for i in range(3)]
    )
    draws = 200_000
    best = probability_best(BetaPosterior(a, b).sample(np.random.default_rng(3), draws))
    for i in range(3):
        assert abs(best[i] - exact[i]) < mc_tolerance(exact[i], draws)


# --------------------------------------------------------------------------------------
# Top-two Thompson sampling
# --------------------------------------------------------------------------------------


def simulate_top_two(post: BetaPosterior, beta: float, rng, plays: int) -> np.ndarray:
    """The procedure itself: leader with probability beta, else resample to a new leader."""
    k = post.alpha.size
    counts = np.zeros(k)
    leaders = np.argmax(post.sample(rng, plays), axis=1)
    use_leader = rng.random(plays) < beta
    counts += np.bincount(leaders[use_leader], minlength=k)
    for leader in leaders[~use_leader]:
        while True:
            challenger = int(np.argmax(post.sample(rng, 1)[0]))
            if challenger != leader:
                counts[challenger] += 1
                break
    return counts / plays


def test_top_two_closed_form_matches_the_resampling_procedure():
    post = BetaPosterior(np.array([30.0, 36.0, 33.0]), np.array([270.0, 264.0, 267.0]))
    rng = np.random.default_rng(4)
    samples = post.sample(rng, 200_000)
    psi = top_two_weights(samples, beta=0.5)
    simulated = simulate_top_two(post, 0.5, np.random.default_rng(5), 20_000)
    for i in range(3):
        assert abs(simulated[i] - psi[i]) < mc_tolerance(psi[i], 20_000) + 0.005
    best = probability_best(samples)
    # the leader's share is pulled towards beta; challengers gain
    leader = int(np.argmax(best))
    assert psi[leader] < best[leader]
    assert psi.sum() == pytest.approx(1.0)


def test_top_two_with_a_certain_leader_uses_the_runner_up():
    samples = np.array([[0.9, 0.2, 0.1], [0.8, 0.1, 0.3], [0.95, 0.5, 0.4], [0.7, 0.6, 0.1]])
    psi = top_two_weights(samples, beta=0.5)
    np.testing.assert_allclose(psi, [0.5, 0.375, 0.125])
    assert top_two_weights(np.ones((3, 1))).tolist() == [1.0]


def test_top_two_beta_one_is_plain_thompson():
    samples = BetaPosterior(np.array([5.0, 6.0, 7.0]), np.array([50.0, 50.0, 50.0])).sample(
        np.random.default_rng(6), 5000
    )
    np.testing.assert_allclose(top_two_weights(samples, beta=1.0), probability_best(samples))


# --------------------------------------------------------------------------------------
# Floor and burn-in
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "floor"),
    [
        ([0.9, 0.1, 0.0], 0.05),
        ([0.97, 0.01, 0.01, 0.01], 0.1),
        ([0.5, 0.5], 0.5),
        ([0.0, 0.0, 1.0], 0.2),
        ([0.0, 0.0], 0.1),
        ([0.6, 0.3, 0.1], 0.0),
    ],
)
def test_floor_properties(weights, floor):
    w = apply_floor(weights, floor)
    assert w.sum() == pytest.approx(1.0)
    assert (w >= floor - 1e-12).all()
    original = np.asarray(weights, float)
    free = w > floor + 1e-12
    if free.sum() >= 2 and original.sum() > 0:  # the unfloored keep their proportions
        ratios = w[free] / original[free]
        np.testing.assert_allclose(ratios, ratios[0])


def test_floor_validation():
    with pytest.raises(ValueError):
        apply_floor([0.5, 0.5, 0.0], 0.4)


def test_burn_in_keeps_initial_weights_until_every_variant_has_min_n():
    post = BetaPosterior.from_stats([VariantStats(500, 50, 50), VariantStats(99, 30, 30)])
    rng = np.random.default_rng(7)
    r = thompson_allocation(post, [500, 99], rng, min_n=100)
    assert r.method == "burn_in" and r.weights.tolist() == [0.5, 0.5] and r.draws == 0
    r = thompson_allocation(post, [500, 99], rng, min_n=100, initial_weights=[3, 1])
    assert r.weights.tolist() == [0.75, 0.25]
    r = thompson_allocation(post, [500, 100], rng, min_n=100)
    assert r.method == "thompson" and r.weights[1] > 0.99
    json.dumps(r.to_dict(), allow_nan=False)


def test_normal_posteriors_need_two_units():
    post = NormalPosterior.from_stats([VariantStats.from_values([1.0]), VariantStats()])
    r = thompson_allocation(post, [1, 0], np.random.default_rng(8))
    assert r.method == "burn_in" and r.to_dict()["probability_best"] == [None, None]


def test_allocation_with_floor_and_top_two_is_seeded():
    stats_ = [
        VariantStats(2000, 200, 200),
        VariantStats(2000, 240, 240),
        VariantStats(2000, 190, 190),
    ]
    post = BetaPosterior.from_stats(stats_)
    kwargs = {"top_two": True, "floor": 0.1, "min_n": 100, "draws": 20_000}
    a = thompson_allocation(post, [2000] * 3, np.random.default_rng(9), **kwargs)
    b = thompson_allocation(post, [2000] * 3, np.random.default_rng(9), **kwargs)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.method == "top_two"
    assert (a.weights >= 0.1 - 1e-12).all() and a.weights.sum() == pytest.approx(1.0)
    assert a.weights[1] == pytest.approx(0.5, abs=0.02)  # the clear leader gets ~beta
    plain = thompson_allocation(post, [2000] * 3, np.random.default_rng(9), floor=0.1)
    assert plain.weights[1] > a.weights[1]


def test_allocation_result_dict():
    d = AllocationResult(np.array([0.5, 0.5]), np.array([np.nan, 1.0]), "x", 3).to_dict()
    assert d == {"weights": [0.5, 0.5], "probability_best": [None, 1.0], "method": "x", "draws": 3}


def test_posteriors_from_stats():
    post = BetaPosterior.from_stats([VariantStats(10, 3, 3)], prior_alpha=2, prior_beta=5)
    assert (post.alpha.tolist(), post.beta.tolist()) == ([5.0], [12.0])
    normal = NormalPosterior.from_stats([VariantStats.from_values([1.0, 2.0, 3.0, 6.0])])
    assert normal.sd[0] == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)


# --------------------------------------------------------------------------------------
# Period-weighted estimation
# --------------------------------------------------------------------------------------


def test_period_weighted_estimate_is_unbiased_when_pooled_is_not():
    """Base rate drifts up while allocation shifts to the treatment (as a bandit does)."""
    rng = np.random.default_rng(2016)
    reps = 2000
    base_rate = np.array([0.05, 0.08, 0.11, 0.14])
    share_t = np.array([0.5, 0.6, 0.75, 0.9])
    per_period = 20_000
    effect = 0.005
    n = np.stack([per_period * (1 - share_t), per_period * share_t], axis=1)  # (P, 2)
    rates = np.stack([base_rate, base_rate + effect], axis=1)
    conversions = rng.binomial(n.astype(np.int64), rates, size=(reps, *n.shape)).astype(float)

    pooled = (
        conversions[:, :, 1].sum(1) / n[:, 1].sum() - conversions[:, :, 0].sum(1) / n[:, 0].sum()
    )
    weighted = np.array(
        [period_weighted_estimate(n, c, c).differences[1] for c in conversions[:200]]
    )
    se_single = period_weighted_estimate(n, conversions[0], conversions[0]).difference_se[1]

    # pooled: each arm averages over a different mix of periods -> biased up
    pooled_bias = pooled.mean() - effect
    assert pooled_bias > 0.01  # twice the effect itself
    # period-weighted: unbiased within 4 standard errors of the mean of 200 replications
    assert abs(weighted.mean() - effect) < 4 * weighted.std(ddof=1) / math.sqrt(len(weighted))
    # the reported standard error is right
    assert weighted.std(ddof=1) == pytest.approx(se_single, rel=0.15)


def test_period_weighted_interval_covers():
    rng = np.random.default_rng(99)
    n = np.array([[1000, 1000, 1000], [600, 1200, 200], [300, 300, 1400]], dtype=float)
    means = np.array([[1.0, 1.2, 1.0], [2.0, 2.2, 2.0], [3.0, 3.2, 3.0]])
    truth = np.array([0.0, 0.2, 0.0])
    reps, covered = 500, np.zeros(3)
    for _ in range(reps):
        sums = rng.normal(means * n, np.sqrt(n))  # unit variance per observation
        squares = sums**2 / n + rng.chisquare(n - 1)
        r = period_weighted_estimate(n, sums, squares)
        covered += (r.ci_lower <= truth) & (truth <= r.ci_upper)
    assert covered[0] == reps  # the control's difference with itself is exactly 0
    for i in (1, 2):
        assert abs(covered[i] / reps - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps)


def test_period_weighted_equals_plain_difference_for_one_period():
    c = VariantStats.from_values([1.0, 2.0, 3.0, 4.0])
    t = VariantStats.from_values([2.0, 2.0, 5.0])
    n, s, q = period_arrays([{"c": c, "t": t}], ["c", "t"])
    r = period_weighted_estimate(n, s, q)
    assert r.differences[1] == pytest.approx(t.mean - c.mean)
    assert r.difference_se[1] == pytest.approx(math.sqrt(c.variance / 4 + t.variance / 3))
    assert r.p_values[1] == pytest.approx(
        2 * stats.norm.sf(abs(r.differences[1]) / r.difference_se[1])
    )
    assert r.period_weights.tolist() == [1.0]


def test_period_weighted_missing_cells_and_empty():
    c = VariantStats.from_values([1.0, 2.0, 3.0])
    t = VariantStats.from_values([4.0, 6.0])
    # treatment absent in period 0: its difference uses period 1 only
    n, s, q = period_arrays([{"c": c}, {"c": c, "t": t}], ["c", "t"])
    r = period_weighted_estimate(n, s, q)
    assert r.differences[1] == pytest.approx(t.mean - c.mean)
    json.dumps(r.to_dict(), allow_nan=False)
    # nothing at all
    n, s, q = period_arrays([{}], ["c", "t"])
    r = period_weighted_estimate(n, s, q)
    assert np.isnan(r.means).all()
    json.dumps(r.to_dict(), allow_nan=False)
    with pytest.raises(ValueError):
        period_weighted_estimate(np.ones(3), np.ones(3), np.ones(3))

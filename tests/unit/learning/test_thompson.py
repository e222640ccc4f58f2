"""Tests of agents.learning.thompson against closed forms, scipy quadrature and simulations."""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.polynomial import Polynomial
from scipy import integrate, stats

from agents.learning.thompson import (
    BetaPosteriors,
    ExplorationConfig,
    LinearThompson,
    exploration_rate,
    prob_best_exact,
    prob_best_mc,
    sample_arms,
    serving_weights,
)

# ------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------


def evan_miller_p_b_beats_a(a_a: float, b_a: float, a_b: int, b_b: float) -> float:
    """P(p_B > p_A) for Beta posteriors, integer alpha_B (Evan Miller, "Formulas for Bayesian
    A/B Testing", 2014)."""
    total = 0.0
    for i in range(int(a_b)):
        total += math.exp(
            _lbeta(a_a + i, b_b + b_a) - math.log(b_b + i) - _lbeta(1 + i, b_b) - _lbeta(a_a, b_a)
        )
    return total


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def quad_prob_best(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(i best) = ∫ f_i Π_{j≠i} F_j by scipy.integrate.quad over the support of arm i."""
    out = []
    for i in range(len(alpha)):

        def integrand(x: float, i: int = i) -> float:
            value = stats.beta.pdf(x, alpha[i], beta[i])
            for j in range(len(alpha)):
                if j != i:
                    value *= stats.beta.cdf(x, alpha[j], beta[j])
            return value

        # Quantiles split the range where the integrand lives; the far tails hold < 1e-12.
        lo, hi = stats.beta.ppf([1e-12, 1 - 1e-12], alpha[i], beta[i])
        breaks = stats.beta.ppf(np.array([0.01, 0.5, 0.99])[:, None], alpha, beta).ravel()
        breaks = sorted(set(np.clip(breaks, lo, hi)))
        value, _ = integrate.quad(
            integrand, lo, hi, points=breaks, limit=500, epsabs=1e-13, epsrel=1e-11
        )
        out.append(value)
    return np.array(out)


QUAD_CASES = [
    ([3.0, 5.0], [7.0, 4.0]),
    ([20.0, 30.0], [980.0, 970.0]),
    ([2.0, 3.0, 50.0, 1.0], [1000.0, 900.0, 40000.0, 5.0]),
    ([100.0, 120.0, 110.0], [1e5, 1e5, 1e5]),
    ([5e4, 5.1e4], [5e6, 5e6]),
    ([1.0, 1.5], [1.0, 1.0]),
    ([12.0, 15.0, 9.0, 14.0, 11.0], [400.0, 420.0, 380.0, 390.0, 410.0]),
    ([2.0, 30.0, 25.0], [1e6, 1e3, 1e3]),  # arm 0 is dominated: skipped, must still be ~0
]


# ------------------------------------------------------------------------------------------
# Probability of being best
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta"), QUAD_CASES)
def test_prob_best_exact_matches_scipy_quad(alpha: list[float], beta: list[float]) -> None:
    a, b = np.array(alpha), np.array(beta)
    assert np.allclose(prob_best_exact(a, b), quad_prob_best(a, b), atol=1e-5)
    assert prob_best_exact(a, b).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("a_a", "b_a", "a_b", "b_b"),
    [(1, 1, 1, 1), (3, 7, 5, 4), (21, 981, 31, 971), (120, 9880, 150, 9850), (2, 40, 9, 12)],
)
def test_two_arms_equal_evan_miller_closed_form(a_a: int, b_a: int, a_b: int, b_b: int) -> None:
    p = prob_best_exact(np.array([a_a, a_b], float), np.array([b_a, b_b], float))
    assert p[1] == pytest.approx(evan_miller_p_b_beats_a(a_a, b_a, a_b, b_b), abs=2e-6)
    assert p[0] == pytest.approx(1 - p[1], abs=2e-6)


def test_three_arms_equal_polynomial_integral() -> None:
    # Beta(2,2), Beta(2,1), Beta(3,2): pdfs and cdfs are polynomials, so the integral is exact.
    f = [Polynomial([0, 6, -6]), Polynomial([0, 2]), Polynomial([0, 0, 12, -12])]
    cdf = [Polynomial([0, 0, 3, -2]), Polynomial([0, 0, 1]), Polynomial([0, 0, 0, 4, -3])]
    expected = []
    for i in range(3):
        integrand = f[i]
        for j in range(3):
            if j != i:
                integrand = integrand * cdf[j]
        antiderivative = integrand.integ()
        expected.append(antiderivative(1.0) - antiderivative(0.0))
    got = prob_best_exact(np.array([2.0, 2.0, 3.0]), np.array([2.0, 1.0, 2.0]))
    assert got.tolist() == pytest.approx(expected, abs=1e-7)
    assert expected[1] == pytest.approx(43 / 84, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (30.0, 970.0), (4e3, 9.6e5)])
def test_symmetric_arms_give_one_over_k(k: int, a: float, b: float) -> None:
    alpha, beta = np.full(k, a), np.full(k, b)
    assert np.allclose(prob_best_exact(alpha, beta), 1 / k, atol=1e-9)
    mc = prob_best_mc(alpha, beta, 40_000, rng=11)
    assert np.allclose(mc.probs, 1 / k, atol=4 * 0.5 / math.sqrt(40_000))


# Jeffreys-prior arms have unbounded densities at 0 and 1, which quad handles poorly.
MC_CASES = [*QUAD_CASES, ([0.5, 0.5, 3.0], [0.5, 2.0, 0.5])]


@pytest.mark.parametrize(("alpha", "beta"), MC_CASES)
def test_monte_carlo_agrees_with_exact(alpha: list[float], beta: list[float]) -> None:
    a, b = np.array(alpha), np.array(beta)
    n = 50_000
    mc = prob_best_mc(a, b, n, rng=np.random.default_rng(2024))
    exact = prob_best_exact(a, b)
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(mc.probs - exact) <= 4 * se + 1e-9)


def test_monte_carlo_records_a_seed_that_reproduces_the_draws() -> None:
    a, b = np.array([3.0, 5.0, 4.0]), np.array([7.0, 4.0, 6.0])
    first = prob_best_mc(a, b, 5_000, rng=np.random.default_rng(7))
    again = prob_best_mc(a, b, 5_000, rng=first.seed)
    assert again.seed == first.seed
    assert np.array_equal(again.probs, first.probs)
    assert first.n_draws == 5_000
    with pytest.raises(ValueError, match="rng"):
        prob_best_mc(a, b, 10, rng=-1)


def test_segments_are_batched_on_leading_axes() -> None:
    rng = np.random.default_rng(3)
    alpha = rng.uniform(1, 300, (16, 10))
    beta = rng.uniform(1e3, 1e5, (16, 10))
    batched = prob_best_exact(alpha, beta)
    assert batched.shape == (16, 10)
    for s in (0, 7, 15):
        assert np.allclose(batched[s], prob_best_exact(alpha[s], beta[s]), atol=1e-12)
    assert prob_best_mc(alpha, beta, 100, rng=0).probs.shape == (16, 10)


def test_single_arm_is_best_with_certainty() -> None:
    assert prob_best_exact(np.array([2.0]), np.array([3.0])).tolist() == [1.0]


@pytest.mark.parametrize(
    ("alpha", "beta"), [([1.0, 0.0], [1.0, 1.0]), ([1.0, np.nan], [1.0, 1.0]), ([1.0], [1.0, 2.0])]
)
def test_prob_best_rejects_invalid_parameters(alpha: list[float], beta: list[float]) -> None:
    with pytest.raises(ValueError):
        prob_best_exact(np.array(alpha), np.array(beta))


# ------------------------------------------------------------------------------------------
# Beta posteriors
# ------------------------------------------------------------------------------------------


def test_batch_update_equals_per_event_loop() -> None:
    rng = np.random.default_rng(5)
    arms = rng.integers(0, 4, 500)
    rewards = rng.random(500)  # fractional rewards are allowed
    post = BetaPosteriors(4, prior_alpha=0.5, prior_beta=2.0)
    post.update(arms, rewards)
    alpha, beta = [0.5] * 4, [2.0] * 4
    for arm, reward in zip(arms.tolist(), rewards.tolist(), strict=True):
        alpha[arm] += reward
        beta[arm] += 1 - reward
    assert np.allclose(post.alpha, alpha) and np.allclose(post.beta, beta)


def test_no_data_gives_prior_and_uniform_prob_best() -> None:
    post = BetaPosteriors(3, prior_alpha=2.0, prior_beta=5.0)
    post.update(np.array([], dtype=np.int64), np.array([]))
    assert post.alpha.tolist() == [2.0] * 3 and post.beta.tolist() == [5.0] * 3
    assert np.allclose(post.prob_best(), 1 / 3)


@pytest.mark.parametrize(
    ("arms", "rewards", "match"),
    [
        ([0, 3], [1.0, 0.0], "arm indices"),
        ([0, -1], [1.0, 0.0], "arm indices"),
        ([0, 1], [1.0, 1.5], "rewards"),
        ([0, 1], [1.0], "same shape"),
        ([0.0, 1.0], [1.0, 0.0], "integer"),
    ],
)
def test_update_rejects_bad_batches(arms: list, rewards: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BetaPosteriors(3).update(np.array(arms), np.array(rewards))


def test_discounted_update_needs_timestamps() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        BetaPosteriors(2, half_life_s=60.0).update(np.array([0]), np.array([1.0]))


def test_discount_halves_counts_after_one_half_life() -> None:
    post = BetaPosteriors(2, half_life_s=3600.0)
    post.update(np.array([0, 0, 1]), np.array([1.0, 0.0, 1.0]), ts=1000.0)
    post.decay_to(1000.0 + 3600.0)
    assert post.successes.tolist() == pytest.approx([0.5, 0.5])
    assert post.failures.tolist() == pytest.approx([0.5, 0.0])
    post.decay_to(0.0)  # going back in time changes nothing
    assert post.ref_ts == 4600.0


def test_discounted_state_does_not_depend_on_batching_or_order() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    ts = np.sort(rng.uniform(0, 7 * 86400, n))
    ts[1000:1010] = ts[1000]  # ties at a batch boundary
    arms = rng.integers(0, 5, n)
    rewards = (rng.random(n) < 0.1).astype(float)

    one = BetaPosteriors(5, half_life_s=86400.0)
    one.update(arms, rewards, ts)

    several = BetaPosteriors(5, half_life_s=86400.0)
    for chunk in np.array_split(np.arange(n), [1, 1005, 1500, 2999]):
        several.update(arms[chunk], rewards[chunk], ts[chunk])

    shuffled = BetaPosteriors(5, half_life_s=86400.0)
    perm = rng.permutation(n)
    for chunk in np.array_split(perm, 7):
        shuffled.update(arms[chunk], rewards[chunk], ts[chunk])

    for other in (several, shuffled):
        assert other.ref_ts == one.ref_ts
        assert np.allclose(other.successes, one.successes, rtol=1e-12)
        assert np.allclose(other.failures, one.failures, rtol=1e-12)

    # Reference: Σ_e r_e·0.5^((T − t_e)/h) computed directly.
    weight = 0.5 ** ((ts.max() - ts) / 86400.0)
    assert np.allclose(one.successes, np.bincount(arms, weight * rewards, 5), rtol=1e-12)


@pytest.mark.parametrize("half_life_s", [None, 3600.0])
def test_merge_equals_one_pass(half_life_s: float | None) -> None:
    rng = np.random.default_rng(9)
    ts = np.sort(rng.uniform(0, 86400, 400))
    arms = rng.integers(0, 3, 400)
    rewards = (rng.random(400) < 0.3).astype(float)
    whole = BetaPosteriors(3, half_life_s=half_life_s)
    whole.update(arms, rewards, ts)
    left = BetaPosteriors(3, half_life_s=half_life_s)
    right = BetaPosteriors(3, half_life_s=half_life_s)
    part = rng.random(400) < 0.5  # interleaved partitions, as two workers would see
    left.update(arms[part], rewards[part], ts[part])
    right.update(arms[~part], rewards[~part], ts[~part])
    for merged in (left + right, right + left):
        assert np.allclose(merged.alpha, whole.alpha, rtol=1e-12)
        assert np.allclose(merged.beta, whole.beta, rtol=1e-12)
    with pytest.raises(ValueError, match="merge"):
        left + BetaPosteriors(3, prior_alpha=2.0, half_life_s=half_life_s)


def test_beta_posteriors_round_trip_through_json() -> None:
    post = BetaPosteriors(3, prior_alpha=0.5, prior_beta=0.5, half_life_s=600.0)
    post.update(np.array([0, 2, 2]), np.array([1.0, 0.0, 1.0]), ts=np.array([1.0, 2.0, 3.0]))
    back = BetaPosteriors.from_dict(json.loads(json.dumps(post.to_dict())))
    assert back.to_dict() == post.to_dict()
    assert np.array_equal(back.alpha, post.alpha)
    with pytest.raises(ValueError, match="shape"):
        BetaPosteriors.from_dict({**post.to_dict(), "successes": [1.0]})


def test_discounted_posterior_tracks_a_change_point_while_stationary_lags() -> None:
    """Arm 0 jumps from 2 % to 8 % on day 14; arm 1 stays at 5 %. Hourly batches."""
    rng = np.random.default_rng(20240601)
    hour = 3600.0
    stationary = BetaPosteriors(2)
    discounted = BetaPosteriors(2, half_life_s=2 * 86400.0)
    for h in range(21 * 24):
        rates = np.array([0.02 if h < 14 * 24 else 0.08, 0.05])
        n = 400
        arms = rng.integers(0, 2, n)
        ts = h * hour + np.sort(rng.uniform(0, hour, n))
        rewards = (rng.random(n) < rates[arms]).astype(float)
        stationary.update(arms, rewards)
        discounted.update(arms, rewards, ts)
    # Seven days after the change the discounted mean is near the new rate ...
    assert discounted.mean()[0] == pytest.approx(0.08, abs=0.01)
    # ... while the stationary one still averages two weeks of the old rate.
    assert stationary.mean()[0] == pytest.approx((14 * 0.02 + 7 * 0.08) / 21, abs=0.005)
    assert stationary.mean()[0] < 0.05
    assert discounted.prob_best()[0] > 0.99
    assert stationary.prob_best()[1] > 0.99


# ------------------------------------------------------------------------------------------
# Exploration and serving weights
# ------------------------------------------------------------------------------------------


def test_exploration_rates_default_to_spec_and_are_configurable() -> None:
    assert {s: exploration_rate(s) for s in ("new", "inactive", "regular", "power")} == {
        "new": 0.30,
        "inactive": 0.20,
        "regular": 0.10,
        "power": 0.05,
    }
    assert exploration_rate("power", ExplorationConfig(power=0.02)) == 0.02
    with pytest.raises(ValueError, match="unknown segment"):
        exploration_rate("vip")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ExplorationConfig(new=1.5)


def test_serving_weights_mix_prob_best_with_exploration() -> None:
    p = np.array([0.6, 0.3, 0.1, 0.0])
    eps = 0.2
    w = serving_weights(p, eps)
    assert w == pytest.approx(0.8 * p + 0.2 / 4)
    assert w.sum() == pytest.approx(1.0)
    assert w.min() >= eps / 4 - 1e-15


def test_serving_weights_exclude_disabled_and_give_probes_their_share() -> None:
    p = np.array([0.5, 0.3, 0.15, 0.05])
    enabled = np.array([True, False, True, False])
    probing = np.array([False, False, False, True])
    w = serving_weights(p, 0.1, enabled, probing, probe_share=0.01)
    assert w[1] == 0.0
    assert w[3] == pytest.approx(0.01)
    renorm = p[[0, 2]] / p[[0, 2]].sum()
    assert w[[0, 2]] == pytest.approx(0.99 * (0.9 * renorm + 0.1 / 2))
    assert w.sum() == pytest.approx(1.0)
    assert serving_weights(p, 0.1, np.zeros(4, bool)).tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="enabled and probing"):
        serving_weights(p, 0.1, enabled, enabled)


def test_sampled_decisions_log_their_serving_weight_as_propensity() -> None:
    w = serving_weights(np.array([0.7, 0.2, 0.1]), 0.3)
    arms, prop = sample_arms(w, 60_000, np.random.default_rng(1))
    assert np.array_equal(prop, w[arms])
    freq = np.bincount(arms, minlength=3) / arms.size
    assert np.allclose(freq, w, atol=4 * np.sqrt(0.25 / arms.size))


# ------------------------------------------------------------------------------------------
# Linear Thompson sampling
# ------------------------------------------------------------------------------------------


def test_linear_statistics_equal_direct_sums_and_ridge() -> None:
    rng = np.random.default_rng(12)
    n, k, d = 600, 3, 4
    x = rng.normal(size=(n, d))
    arms = rng.integers(0, k, n)
    r = rng.normal(size=n)
    lts = LinearThompson(k, d, lam=0.7, v=0.2)
    for chunk in np.array_split(np.arange(n), 4):
        lts.update(arms[chunk], x[chunk], r[chunk])
    for a in range(k):
        xa, ra = x[arms == a], r[arms == a]
        assert np.allclose(lts.xx[a], xa.T @ xa)
        assert np.allclose(lts.xr[a], xa.T @ ra)
        ridge = np.linalg.solve(xa.T @ xa + 0.7 * np.eye(d), xa.T @ ra)
        assert np.allclose(lts.posterior_mean()[a], ridge)
    assert lts.counts.tolist() == np.bincount(arms, minlength=k).tolist()

    half = rng.random(n) < 0.5
    left, right = LinearThompson(k, d, 0.7, 0.2), LinearThompson(k, d, 0.7, 0.2)
    left.update(arms[half], x[half], r[half])
    right.update(arms[~half], x[~half], r[~half])
    merged = left + right
    assert np.allclose(merged.xx, lts.xx) and np.allclose(merged.xr, lts.xr)
    assert merged.counts.tolist() == lts.counts.tolist()


def test_theta_samples_have_posterior_mean_and_covariance() -> None:
    rng = np.random.default_rng(13)
    lts = LinearThompson(2, 3, lam=1.0, v=0.5)
    x = rng.normal(size=(40, 3))
    lts.update(rng.integers(0, 2, 40), x, rng.normal(size=40))
    theta = lts.sample_theta(np.random.default_rng(14), n=40_000)
    cov = 0.25 * np.linalg.inv(lts.precision())
    for a in range(2):
        assert np.allclose(theta[:, a].mean(axis=0), lts.posterior_mean()[a], atol=0.02)
        assert np.allclose(np.cov(theta[:, a].T), cov[a], atol=0.01)


def test_choice_probabilities_match_quadrature_of_normal_scores() -> None:
    rng = np.random.default_rng(15)
    k, d = 3, 2
    lts = LinearThompson(k, d, lam=1.0, v=1.0)
    lts.update(rng.integers(0, k, 30), rng.normal(size=(30, d)), rng.normal(size=30))
    ctx = np.array([0.6, -0.8])
    mean = lts.posterior_mean() @ ctx
    sd = np.sqrt(np.einsum("d,kde,e->k", ctx, np.linalg.inv(lts.precision()), ctx))

    def p_best(i: int) -> float:
        def integrand(s: float) -> float:
            value = stats.norm.pdf(s, mean[i], sd[i])
            for j in range(k):
                if j != i:
                    value *= stats.norm.cdf(s, mean[j], sd[j])
            return value

        return integrate.quad(integrand, -np.inf, np.inf)[0]

    expected = np.array([p_best(i) for i in range(k)])
    res = lts.choice_probabilities(ctx, n_draws=50_000, rng=np.random.default_rng(16))
    assert np.allclose(res.probs, expected, atol=4 * 0.5 / math.sqrt(50_000))
    again = lts.choice_probabilities(ctx, n_draws=50_000, rng=res.seed)
    assert np.array_equal(again.probs, res.probs)
    many = lts.choice_probabilities(np.stack([ctx, -ctx]), n_draws=1000, rng=1)
    assert many.probs.shape == (2, k)
    assert np.allclose(many.probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_thompson_regret_is_sublinear_and_beats_random(seed: int) -> None:
    """Simulated linear environment (Agrawal & Goyal's setting): d = 6, k = 5 unit-norm arms,
    unit-norm contexts, Gaussian reward noise 0.1, decisions and updates in batches of 20."""
    rng = np.random.default_rng(seed)
    t_max, d, k, batch = 4000, 6, 5, 20
    theta = rng.normal(size=(k, d))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    x = rng.normal(size=(t_max, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    means = x @ theta.T
    lts = LinearThompson(k, d, lam=1.0, v=0.1)
    chosen = np.empty(t_max, dtype=np.int64)
    for start in range(0, t_max, batch):
        sl = slice(start, start + batch)
        a = lts.choose(x[sl], rng)
        reward = means[sl][np.arange(a.size), a] + 0.1 * rng.normal(size=a.size)
        lts.update(a, x[sl], reward)
        chosen[sl] = a
    regret = np.cumsum(means.max(axis=1) - means[np.arange(t_max), chosen])
    random_regret = np.sum(means.max(axis=1) - means.mean(axis=1))
    first_half = regret[t_max // 2 - 1]
    second_half = regret[-1] - first_half
    assert regret[-1] < 0.05 * random_regret
    # Linear growth would make both halves equal; √T growth gives a ratio of about 0.41.
    assert second_half < 0.41 * first_half
    last = slice(int(0.8 * t_max), t_max)
    assert np.mean(chosen[last] == means[last].argmax(axis=1)) >= 0.90


def test_linear_thompson_round_trips_through_json_and_validates() -> None:
    lts = LinearThompson(2, 3, lam=2.0, v=0.3)
    lts.update(np.array([0, 1, 1]), np.eye(3), np.array([1.0, 0.0, 2.0]))
    back = LinearThompson.from_dict(json.loads(json.dumps(lts.to_dict())))
    assert back.to_dict() == lts.to_dict()
    with pytest.raises(ValueError, match="shape"):
        LinearThompson.from_dict({**lts.to_dict(), "xr": [[0.0]]})
    with pytest.raises(ValueError, match="contexts"):
        lts.update(np.array([0]), np.ones((1, 2)), np.array([1.0]))
    with pytest.raises(ValueError, match="arm indices"):
        lts.update(np.array([2]), np.ones((1, 3)), np.array([1.0]))


# ------------------------------------------------------------------------------------------
# Module hygiene
# ------------------------------------------------------------------------------------------

MY_MODULES = ["thompson", "autodisable", "offpolicy", "activity_segments", "spam"]


@pytest.mark.parametrize("name", MY_MODULES)
def test_learning_module_imports_only_stdlib_numpy_scipy(name: str) -> None:
    path = Path(__file__).resolve().parents[3] / "agents" / "learning" / f"{name}.py"
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "scipy", "agents"}
    assert roots <= allowed, f"{name}.py imports {sorted(roots - allowed)}"
    local = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agents")
    }
    assert all(m.startswith("agents.learning.") for m in local)

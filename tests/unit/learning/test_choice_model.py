"""Tests for agents.learning.choice_model (conditional logit with an outside option)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from agents.learning import choice_model as cm

TRUE_BETA = np.array([3.0, 2.4, 1.8, 1.2, 0.6, 0.2])
# Outside-option utility giving about 15 % no-choice sessions with 5 uniform candidates.
TRUE_OUTSIDE = 4.9
FACTORS = ("price", "quality", "speed", "proximity", "rating", "capacity")


def simulate(
    rng: np.random.Generator, n: int, beta: np.ndarray = TRUE_BETA, outside: float = TRUE_OUTSIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions of 5 candidates drawn from the true model via Gumbel-max."""
    J = 5
    X = rng.uniform(size=(n, J, beta.size))
    util = np.concatenate([X @ beta, np.full((n, 1), outside)], axis=1)
    pick = (util + rng.gumbel(size=util.shape)).argmax(axis=1)
    return X, np.ones((n, J), dtype=bool), np.where(pick == J, -1, pick)


def ragged_batch(rng: np.random.Generator, n: int = 40, F: int = 3):
    """Sessions with 1..4 candidates padded to 4 with NaN, some without a choice."""
    J = 4
    sizes = rng.integers(1, J + 1, size=n)
    mask = np.arange(J)[None, :] < sizes[:, None]
    X = np.where(mask[:, :, None], rng.uniform(size=(n, J, F)), np.nan)
    chosen = np.array([rng.integers(-1, k) for k in sizes])
    return X, mask, chosen


def reference_loglik(theta, X, mask, chosen) -> float:
    """Session-by-session log-likelihood written straight from the model definition."""
    F = X.shape[2]
    beta, b = theta[:F], theta[F]
    total = 0.0
    for x, m, c in zip(X, mask, chosen, strict=True):
        utils = [float(beta @ x[j]) for j in np.flatnonzero(m)] + [b]
        denom = np.log(np.sum(np.exp(utils)))
        total += (b if c < 0 else float(beta @ x[c])) - denom
    return total


@pytest.fixture(scope="module")
def sessions():
    return simulate(np.random.default_rng(20240611), 5000)


@pytest.fixture(scope="module")
def config():
    return cm.ChoiceModelConfig(factors=FACTORS, w_min=0.01, w_max=0.5)


@pytest.fixture(scope="module")
def streamed(sessions, config):
    X, mask, chosen = sessions
    state = cm.initial_state(config)
    for start in range(0, X.shape[0], 100):
        sl = slice(start, start + 100)
        state = cm.update(state, X[sl], mask[sl], chosen[sl], config)
    return state


# --------------------------------------------------------------------------- likelihood


def test_loglik_matches_definition_on_ragged_padded_batch():
    rng = np.random.default_rng(1)
    X, mask, chosen = ragged_batch(rng)
    theta = rng.normal(size=4)
    assert cm.choice_log_likelihood(theta, X, mask, chosen) == pytest.approx(
        reference_loglik(theta, X, mask, chosen), rel=1e-12
    )


def test_probabilities_sum_to_one_and_ignore_padding():
    rng = np.random.default_rng(2)
    X, mask, _ = ragged_batch(rng)
    p = cm.choice_probabilities(rng.normal(size=4), X, mask)
    assert p.shape == (40, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p[:, :4][~mask] == 0.0)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    X, mask, chosen = ragged_batch(rng)
    theta = rng.normal(size=4)
    grad = cm.choice_gradient(theta, X, mask, chosen)
    h = 1e-6
    numeric = np.array(
        [
            (
                cm.choice_log_likelihood(theta + h * e, X, mask, chosen)
                - cm.choice_log_likelihood(theta - h * e, X, mask, chosen)
            )
            / (2 * h)
            for e in np.eye(4)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_hessian_matches_finite_differences_of_gradient():
    rng = np.random.default_rng(4)
    X, mask, chosen = ragged_batch(rng)
    theta = rng.normal(size=4)
    hess = cm.choice_hessian(theta, X, mask, chosen)
    h = 1e-6
    numeric = np.column_stack(
        [
            (
                cm.choice_gradient(theta + h * e, X, mask, chosen)
                - cm.choice_gradient(theta - h * e, X, mask, chosen)
            )
            / (2 * h)
            for e in np.eye(4)
        ]
    )
    np.testing.assert_allclose(hess, numeric, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, hess.T)
    assert np.all(np.linalg.eigvalsh(hess) <= 1e-10)


def test_sessions_without_candidates_carry_no_likelihood():
    X = np.zeros((2, 2, 1))
    mask = np.array([[False, False], [True, True]])
    chosen = np.array([-1, 0])
    theta = np.array([0.3, -0.2])
    assert cm.choice_log_likelihood(theta, X, mask, chosen) == pytest.approx(
        cm.choice_log_likelihood(theta, X[1:], mask[1:], chosen[1:])
    )


@pytest.mark.parametrize(
    ("chosen", "message"),
    [(np.array([1, 0]), "masked out"), (np.array([2, 0]), "index"), (np.array([-2, 0]), "index")],
)
def test_invalid_choices_are_rejected(chosen, message):
    X = np.zeros((2, 2, 1))
    mask = np.array([[True, False], [True, True]])
    with pytest.raises(ValueError, match=message):
        cm.choice_log_likelihood(np.zeros(2), X, mask, chosen)


# --------------------------------------------------------------------------- fitting


def test_full_batch_mle_matches_scipy_minimize():
    rng = np.random.default_rng(5)
    beta = np.array([1.5, -0.5, 0.8])
    X, mask, chosen = simulate(rng, 600, beta=beta, outside=1.0)
    fit = cm.fit_choice_model(X, mask, chosen, max_steps=100, tol=1e-14)
    assert fit.converged

    def nll(t):
        return -cm.choice_log_likelihood(t, X, mask, chosen)

    def nll_grad(t):
        return -cm.choice_gradient(t, X, mask, chosen)

    # gtol 1e-9 ended in "precision loss" (status 2) with scipy 1.17: the log-likelihood of
    # 600 sessions has no such resolution. A gradient of 1e-7 pins theta to ~1e-9 here.
    ref = optimize.minimize(nll, np.zeros(4), jac=nll_grad, method="BFGS", options={"gtol": 1e-7})
    assert ref.success, ref.message
    np.testing.assert_allclose(fit.theta, ref.x, atol=1e-5)
    np.testing.assert_allclose(cm.choice_gradient(fit.theta, X, mask, chosen), 0.0, atol=1e-8)


def test_map_fit_solves_penalised_score_equation():
    rng = np.random.default_rng(6)
    X, mask, chosen = ragged_batch(rng, n=30)
    m, P = np.array([0.5, 0.5, 0.5, 0.0]), 3.0 * np.eye(4)
    fit = cm.fit_choice_model(X, mask, chosen, prior_mean=m, prior_precision=P)
    score = cm.choice_gradient(fit.theta, X, mask, chosen) - P @ (fit.theta - m)
    np.testing.assert_allclose(score, 0.0, atol=1e-8)


def test_online_fit_recovers_true_coefficients(sessions, streamed):
    _, _, chosen = sessions
    assert 0.13 <= np.mean(chosen < 0) <= 0.17
    truth = np.append(TRUE_BETA, TRUE_OUTSIDE)
    se = np.sqrt(np.diag(streamed.covariance))
    assert np.all(np.abs(streamed.mean - truth) < 4.0 * se)
    assert np.all(np.abs(streamed.mean - truth) < 0.4)
    assert streamed.n_sessions == 5000
    assert streamed.n_no_choice == int(np.sum(chosen < 0))


def test_published_weights_order_factors_like_the_truth(streamed, config):
    pub = cm.publish_weights(streamed, config)
    assert pub.applied and not pub.is_default and pub.reason == "learned"
    assert list(np.argsort(-pub.weights)) == list(range(6))
    assert pub.weights.sum() == pytest.approx(1.0)
    assert np.all(pub.weights >= config.w_min) and np.all(pub.weights <= config.w_max)
    np.testing.assert_allclose(pub.weights, TRUE_BETA / TRUE_BETA.sum(), atol=0.03)
    assert pub.confidence > 0.9


def test_streaming_matches_single_batch_fit(sessions, config, streamed):
    X, mask, chosen = sessions
    one = cm.update(
        cm.initial_state(config), X, mask, chosen, config=replace(config, newton_steps=50)
    )
    se = np.sqrt(np.diag(one.covariance))
    # Assumed-density filtering lags the exact posterior a little (at most ~0.46 SE over 20 seeds).
    assert np.all(np.abs(streamed.mean - one.mean) < 0.5 * se)
    np.testing.assert_allclose(streamed.precision, one.precision, rtol=0.05, atol=1.0)


def test_confidence_rises_with_sample_size(sessions, config):
    X, mask, chosen = sessions
    confidences = []
    for n in (60, 200, 1000, 5000):
        state = cm.update(cm.initial_state(config), X[:n], mask[:n], chosen[:n], config)
        confidences.append(cm.publish_weights(state, config).confidence)
    assert confidences == sorted(confidences)
    assert confidences[0] < 0.7 < confidences[-1]


def test_defaults_below_minimum_sample_size(sessions, config):
    X, mask, chosen = sessions
    state = cm.update(cm.initial_state(config), X[:30], mask[:30], chosen[:30], config)
    pub = cm.publish_weights(state, config)
    assert pub.is_default and not pub.applied
    assert pub.reason == "below_min_sample_size"
    np.testing.assert_array_equal(pub.weights, config.defaults)
    assert pub.learned_weights is not None


def test_defaults_below_minimum_confidence(sessions, config):
    X, mask, chosen = sessions
    strict = replace(config, min_confidence=0.99)
    state = cm.update(cm.initial_state(strict), X, mask, chosen, strict)
    pub = cm.publish_weights(state, strict)
    assert pub.reason == "below_min_confidence" and pub.is_default and not pub.applied
    np.testing.assert_array_equal(pub.weights, strict.defaults)


def test_defaults_when_no_coefficient_is_positive():
    config = cm.ChoiceModelConfig(factors=("a", "b"), min_sample_size=0, min_confidence=0.0)
    state = cm.ChoiceModelState(np.array([-1.0, -2.0, 0.0]), np.eye(3), n_sessions=500)
    pub = cm.publish_weights(state, config)
    assert pub.reason == "no_positive_coefficient" and pub.is_default
    assert pub.learned_weights is None and pub.confidence == 0.0


def test_no_choice_sessions_move_the_outside_utility(config):
    rng = np.random.default_rng(7)
    X = rng.uniform(size=(200, 5, 6))
    mask = np.ones((200, 5), dtype=bool)
    none = cm.update(cm.initial_state(config), X, mask, np.full(200, -1), config)
    some = cm.update(cm.initial_state(config), X, mask, np.zeros(200, dtype=int), config)
    assert none.mean[-1] > cm.initial_state(config).mean[-1] > some.mean[-1]


def test_state_round_trips_through_json(streamed):
    data = json.loads(json.dumps(streamed.to_dict()))
    again = cm.ChoiceModelState.from_dict(data)
    np.testing.assert_array_equal(again.mean, streamed.mean)
    np.testing.assert_array_equal(again.precision, streamed.precision)
    assert (again.n_sessions, again.n_no_choice) == (streamed.n_sessions, streamed.n_no_choice)


def test_published_weights_are_json_safe(streamed, config):
    data = json.loads(json.dumps(cm.publish_weights(streamed, config).to_dict()))
    assert set(data["weights"]) == set(FACTORS)


def test_empty_batch_leaves_state_unchanged(config):
    state = cm.initial_state(config)
    out = cm.update(
        state, np.zeros((3, 5, 6)), np.zeros((3, 5), dtype=bool), np.full(3, -1), config
    )
    assert out is state


@pytest.mark.parametrize(
    "changes",
    [
        {"w_min": 0.2},  # 6 * 0.2 > 1
        {"w_max": 0.1},  # 6 * 0.1 < 1
        {"default_weights": (0.5, 0.5, 0.0, 0.0, 0.0, 0.1)},
        {"factors": ("a", "a")},
    ],
)
def test_invalid_config_is_rejected(changes):
    with pytest.raises(ValueError):
        cm.ChoiceModelConfig(**{"factors": FACTORS, **changes})


# --------------------------------------------------------------------------- projection


def _slsqp_projection(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    res = optimize.minimize(
        lambda w: 0.5 * np.sum((w - v) ** 2),
        np.full(v.size, 1.0 / v.size),
        jac=lambda w: w - v,
        bounds=[(lo, hi)] * v.size,
        constraints=[
            {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success
    return res.x


@pytest.mark.parametrize("seed", range(8))
def test_projection_matches_slsqp(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    lo = float(rng.uniform(0, 0.9 / k))
    hi = float(rng.uniform(1.1 / k, 1.0))
    v = rng.normal(scale=0.6, size=k)
    np.testing.assert_allclose(
        cm.project_to_bounded_simplex(v, lo, hi), _slsqp_projection(v, lo, hi), atol=1e-7
    )


@settings(max_examples=200, deadline=None)
@given(
    v=st.lists(st.floats(-5, 5), min_size=1, max_size=10),
    lo_frac=st.floats(0, 1),
    hi_frac=st.floats(0, 1),
)
def test_projection_is_feasible_and_satisfies_kkt(v, lo_frac, hi_frac):
    v = np.asarray(v)
    k = v.size
    lo = lo_frac / k
    hi = 1.0 / k + hi_frac * (1.0 - 1.0 / k)
    w = cm.project_to_bounded_simplex(v, lo, hi)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12)
    # KKT: w = clip(v - tau, lo, hi) for one tau, so v - w is constant on free coordinates
    # and at least (at most) that constant where w sits on the lower (upper) bound.
    free = (w > lo + 1e-9) & (w < hi - 1e-9)
    if free.any():
        tau = (v - w)[free]
        assert np.ptp(tau) < 1e-8
        assert np.all((v - w)[w <= lo + 1e-9] <= tau[0] + 1e-8)
        assert np.all((v - w)[w >= hi - 1e-9] >= tau[0] - 1e-8)


def test_projection_leaves_feasible_points_alone():
    v = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(cm.project_to_bounded_simplex(v, 0.05, 0.5), v, atol=1e-15)


def test_projection_rejects_infeasible_bounds():
    with pytest.raises(ValueError, match="infeasible"):
        cm.project_to_bounded_simplex(np.ones(3), 0.4, 0.9)


def test_weight_map_clips_negatives_then_projects():
    w, _ = cm.coefficients_to_weights(np.array([2.0, 1.0, 1.0, -3.0]), 0.05, 0.45)
    # u = (0.5, 0.25, 0.25, 0); cap 0.45 and floor 0.05 shift the middle two by 0.
    np.testing.assert_allclose(w, [0.45, 0.25, 0.25, 0.05], atol=1e-12)


@pytest.mark.parametrize(
    "beta",
    [np.array([3.0, 2.0, 1.0, 0.5]), np.array([3.0, 0.1, 1.0, -0.5]), np.array([9.0, 1, 1, 1])],
)
def test_weight_map_jacobian_matches_finite_differences(beta):
    lo, hi = 0.05, 0.6
    _, jac = cm.coefficients_to_weights(beta, lo, hi)
    h = 1e-7
    numeric = np.column_stack(
        [
            (
                cm.coefficients_to_weights(beta + h * e, lo, hi)[0]
                - cm.coefficients_to_weights(beta - h * e, lo, hi)[0]
            )
            / (2 * h)
            for e in np.eye(beta.size)
        ]
    )
    np.testing.assert_allclose(jac, numeric, atol=1e-6)


def test_weight_standard_errors_match_simulated_spread(streamed, config):
    """Delta-method SEs agree with the spread of weights mapped from posterior draws."""
    pub = cm.publish_weights(streamed, config)
    rng = np.random.default_rng(8)
    draws = rng.multivariate_normal(streamed.mean, streamed.covariance, size=4000)
    mapped = np.array([cm.coefficients_to_weights(d[:6], 0.01, 0.5)[0] for d in draws])
    np.testing.assert_allclose(pub.standard_errors, mapped.std(axis=0), rtol=0.08)


# --------------------------------------------------------------------------- blocks


def _split(n: int, rng: np.random.Generator, pieces: int) -> list[int]:
    return [0, *sorted(rng.choice(np.arange(1, n), pieces, replace=False).tolist()), n]


def test_absorb_does_not_depend_on_how_the_sessions_are_split():
    """Per fixed-size block: the same sessions in the same order give the same state, bit for
    bit, however they are cut into calls (through the JSON form in between, as in a table)."""
    rng = np.random.default_rng(21)
    X, mask, chosen = ragged_batch(rng, n=230, F=3)
    cfg = cm.ChoiceModelConfig(factors=("a", "b", "c"), block_size=16)
    whole = cm.absorb(cm.initial_state(cfg), X, mask, chosen, cfg)
    assert whole.n_sessions == 230 and len(whole.open_block) == 230 % 16
    assert whole.n_no_choice == int((chosen < 0).sum())
    for pieces in (1, 7, 40):
        state = cm.initial_state(cfg)
        edges = _split(230, rng, pieces)
        for lo, hi in itertools.pairwise(edges):
            state = cm.absorb(state, X[lo:hi], mask[lo:hi], chosen[lo:hi], cfg)
            state = cm.ChoiceModelState.from_dict(json.loads(json.dumps(state.to_dict())))
        assert np.array_equal(state.mean, whole.mean)
        assert np.array_equal(state.precision, whole.precision)
        assert state.to_dict() == whole.to_dict()
        assert np.array_equal(
            cm.publish_weights(state, cfg).weights, cm.publish_weights(whole, cfg).weights
        )


def test_one_update_per_batch_depends_on_the_batches():
    """Why blocks: a Laplace update over a batch differs from updates over its halves."""
    rng = np.random.default_rng(22)
    X, mask, chosen = simulate(rng, 400)
    cfg = cm.ChoiceModelConfig(factors=FACTORS)
    once = cm.update(cm.initial_state(cfg), X, mask, chosen, cfg)
    halves = cm.update(cm.initial_state(cfg), X[:150], mask[:150], chosen[:150], cfg)
    halves = cm.update(halves, X[150:], mask[150:], chosen[150:], cfg)
    assert np.abs(once.mean - halves.mean).max() > 1e-3


def test_estimate_absorbs_the_open_block_provisionally():
    rng = np.random.default_rng(23)
    X, mask, chosen = ragged_batch(rng, n=30, F=3)
    cfg = cm.ChoiceModelConfig(factors=("a", "b", "c"), block_size=50, min_sample_size=0)
    prior = cm.initial_state(cfg)
    state = cm.absorb(prior, X, mask, chosen, cfg)
    # Nothing committed yet: the stored posterior is still the prior.
    assert np.array_equal(state.mean, prior.mean) and len(state.open_block) == 30
    est = cm.estimate(state, cfg)
    direct = cm.update(prior, X, mask, chosen, cfg)
    assert np.array_equal(est.mean, direct.mean) and est.n_sessions == direct.n_sessions == 30
    assert est.open_block == () and cm.estimate(est, cfg) is est
    assert cm.publish_weights(state, cfg).to_dict() == cm.publish_weights(direct, cfg).to_dict()
    with pytest.raises(ValueError, match="open block"):
        cm.update(state, X, mask, chosen, cfg)


def test_state_written_before_blocks_existed_still_loads():
    old = {"version": 1, "mean": [1.0, 2.0, 0.5], "precision": [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
           "n_sessions": 7, "n_no_choice": 1}  # fmt: skip
    state = cm.ChoiceModelState.from_dict(old)
    assert state.open_block == () and state.n_sessions == 7
    assert state.to_dict() == {**old, "precision": state.precision.tolist(), "open_block": []}


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        cm.ChoiceModelConfig(factors=("a", "b"), block_size=0)
    with pytest.raises(ValueError, match="block_max_scores"):
        cm.ChoiceModelConfig(factors=("a", "b"), block_max_scores=0)


def test_a_block_of_large_sessions_closes_early_and_still_ignores_the_batches():
    """The open block is kept in a table value: it is bounded by its factor scores too."""
    rng = np.random.default_rng(24)
    X, mask, chosen = ragged_batch(rng, n=120, F=3)  # 1..4 candidates of 3 scores
    cfg = cm.ChoiceModelConfig(factors=("a", "b", "c"), block_size=100, block_max_scores=60)
    whole = cm.absorb(cm.initial_state(cfg), X, mask, chosen, cfg)
    assert sum(x.size for x, _ in whole.open_block) < 60
    assert whole.n_sessions - len(whole.open_block) > 0  # blocks closed before 100 sessions
    state = cm.initial_state(cfg)
    for lo, hi in itertools.pairwise([0, 1, 5, 33, 34, 90, 120]):
        state = cm.absorb(state, X[lo:hi], mask[lo:hi], chosen[lo:hi], cfg)
    assert state.to_dict() == whole.to_dict()

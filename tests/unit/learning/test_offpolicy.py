"""Tests of agents.learning.offpolicy on a simulation whose true policy value is known exactly.

Three context types, k = 5 actions with Bernoulli rewards of known means; the logging policy's
propensities and the target policy are known, so V(π) = Σ_x p(x) Σ_a π(a|x) μ(x, a).
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.learning.offpolicy import doubly_robust, ips, snips

P_CONTEXT = np.array([0.5, 0.3, 0.2])
MU = np.array(
    [
        [0.10, 0.20, 0.05, 0.30, 0.15],
        [0.40, 0.10, 0.25, 0.05, 0.20],
        [0.05, 0.05, 0.50, 0.10, 0.30],
    ]
)
LOGGING = np.array(
    [
        [0.40, 0.25, 0.15, 0.12, 0.08],
        [0.20, 0.20, 0.20, 0.20, 0.20],
        [0.10, 0.30, 0.10, 0.30, 0.20],
    ]
)
TARGET = np.array(
    [
        [0.05, 0.10, 0.05, 0.60, 0.20],
        [0.70, 0.05, 0.15, 0.05, 0.05],
        [0.05, 0.05, 0.60, 0.10, 0.20],
    ]
)
TRUE_VALUE = float(P_CONTEXT @ np.sum(TARGET * MU, axis=1))
N, REPS = 2000, 300


def _logs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    x = rng.choice(3, size=n, p=P_CONTEXT)
    # Inverse-cdf sampling of one action per row of the logging policy.
    actions = (rng.random(n)[:, None] > np.cumsum(LOGGING[x], axis=1)).sum(axis=1)
    rewards = (rng.random(n) < MU[x, actions]).astype(float)
    return {
        "x": x,
        "actions": actions,
        "rewards": rewards,
        "propensities": LOGGING[x, actions],
        "target": TARGET[x],
    }


@pytest.fixture(scope="module")
def replications() -> dict[str, np.ndarray]:
    """IPS, SNIPS and DR (correct and wrong reward models) over REPS fixed-seed logs."""
    rng = np.random.default_rng(20110701)
    out: dict[str, list] = {"ips": [], "snips": [], "dr": [], "dr_wrong": []}
    for _ in range(REPS):
        log = _logs(rng, N)
        args = (log["actions"], log["rewards"], log["propensities"], log["target"])
        out["ips"].append(ips(*args))
        out["snips"].append(snips(*args))
        out["dr"].append(doubly_robust(*args, MU[log["x"]]))
        out["dr_wrong"].append(doubly_robust(*args, np.full((N, 5), 0.5)))
    return {
        name: np.array([(e.value, e.std_error, e.ci_low, e.ci_high) for e in ests])
        for name, ests in out.items()
    }


def test_true_value_is_what_the_simulation_produces() -> None:
    # Sanity check of the reference: on-policy samples of the target policy average to it.
    rng = np.random.default_rng(0)
    x = rng.choice(3, size=400_000, p=P_CONTEXT)
    actions = (rng.random(x.size)[:, None] > np.cumsum(TARGET[x], axis=1)).sum(axis=1)
    on_policy = (rng.random(x.size) < MU[x, actions]).mean()
    assert on_policy == pytest.approx(TRUE_VALUE, abs=4 * np.sqrt(0.25 / x.size))


@pytest.mark.parametrize("method", ["ips", "snips", "dr", "dr_wrong"])
def test_confidence_intervals_cover_the_truth_about_95_percent(
    replications: dict[str, np.ndarray], method: str
) -> None:
    est = replications[method]
    coverage = np.mean((est[:, 2] <= TRUE_VALUE) & (est[:, 3] >= TRUE_VALUE))
    # Binomial sd of the coverage over 300 reps is 1.3 points; allow about 3 sd.
    assert 0.91 <= coverage <= 0.99


def test_ips_is_unbiased(replications: dict[str, np.ndarray]) -> None:
    values = replications["ips"][:, 0]
    assert values.mean() == pytest.approx(TRUE_VALUE, abs=3.5 * values.std() / np.sqrt(REPS))
    # The reported standard error matches the spread across replications.
    assert replications["ips"][:, 1].mean() == pytest.approx(values.std(), rel=0.15)


def test_doubly_robust_is_unbiased_even_with_a_wrong_reward_model(
    replications: dict[str, np.ndarray],
) -> None:
    for method in ("dr", "dr_wrong"):
        values = replications[method][:, 0]
        assert values.mean() == pytest.approx(TRUE_VALUE, abs=3.5 * values.std() / np.sqrt(REPS))


def test_doubly_robust_with_correct_model_has_lower_variance_than_ips(
    replications: dict[str, np.ndarray],
) -> None:
    assert replications["dr"][:, 0].var() < 0.8 * replications["ips"][:, 0].var()
    assert replications["dr"][:, 1].mean() < replications["ips"][:, 1].mean()


def test_snips_with_equal_weights_is_the_mean_reward() -> None:
    rng = np.random.default_rng(4)
    rewards = rng.random(50)
    actions = rng.integers(0, 3, 50)
    est = snips(actions, rewards, np.full(50, 0.25), np.full(50, 0.75))
    assert est.value == pytest.approx(rewards.mean(), rel=1e-12)
    assert est.std_error == pytest.approx(rewards.std(ddof=1) / np.sqrt(50), rel=1e-12)
    assert est.effective_sample_size == pytest.approx(50.0)
    on_policy = ips(actions, rewards, np.full(50, 0.4), np.full(50, 0.4))
    assert on_policy.value == pytest.approx(rewards.mean(), rel=1e-12)


def test_target_as_vector_or_matrix_gives_the_same_estimate() -> None:
    log = _logs(np.random.default_rng(5), 500)
    vector = log["target"][np.arange(500), log["actions"]]
    for estimator in (ips, snips):
        a = estimator(log["actions"], log["rewards"], log["propensities"], log["target"])
        b = estimator(log["actions"], log["rewards"], log["propensities"], vector)
        assert a == b


def test_clipping_caps_weights() -> None:
    actions = np.array([0, 0, 1, 1])
    rewards = np.array([1.0, 0.0, 1.0, 1.0])
    propensities = np.array([0.1, 0.1, 0.9, 0.9])
    target = np.array([0.9, 0.9, 0.1, 0.1])  # weights 9, 9, 1/9, 1/9
    est = ips(actions, rewards, propensities, target, clip=4.0)
    assert est.value == pytest.approx((4.0 + 0 + 1 / 9 + 1 / 9) / 4)
    assert est.n_clipped == 2 and est.clip == 4.0
    assert ips(actions, rewards, propensities, target).value == pytest.approx((9 + 2 / 9) / 4)


def test_normal_interval_uses_the_requested_confidence() -> None:
    log = _logs(np.random.default_rng(6), 300)
    args = (log["actions"], log["rewards"], log["propensities"], log["target"])
    e95 = ips(*args)
    e99 = ips(*args, confidence=0.99)
    assert (e95.ci_high - e95.value) / e95.std_error == pytest.approx(1.959964, rel=1e-6)
    assert (e99.ci_high - e99.value) / e99.std_error == pytest.approx(2.575829, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"propensities": np.array([0.5, 0.0, 0.5])}, r"propensities must be in \(0, 1\]"),
        ({"propensities": np.array([0.5, 1.2, 0.5])}, r"propensities must be in \(0, 1\]"),
        ({"propensities": np.array([0.5, 0.5])}, r"propensities must have shape \(3,\)"),
        ({"rewards": np.array([1.0, np.nan, 0.0])}, "rewards must be finite"),
        ({"rewards": np.array([])}, "non-empty"),
        ({"actions": np.array([0, 1, 5])}, r"actions must be in \[0, 2\)"),
        ({"actions": np.array([0.0, 1.0, 1.0])}, "integer"),
        ({"target": np.array([[0.5, 0.6]] * 3)}, "sum to 1"),
        ({"target": np.array([[0.5, 0.5]] * 2)}, r"target must have shape \(3, k\)"),
        ({"target": np.array([0.5, 1.5, 0.5])}, r"target probabilities must be in \[0, 1\]"),
        ({"clip": 0.0}, "clip"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_invalid_input_raises_value_error(change: dict, match: str) -> None:
    kwargs = {
        "actions": np.array([0, 1, 1]),
        "rewards": np.array([1.0, 0.0, 1.0]),
        "propensities": np.array([0.5, 0.5, 0.5]),
        "target": np.array([[0.5, 0.5]] * 3),
        **change,
    }
    with pytest.raises(ValueError, match=match):
        ips(**kwargs)


def test_doubly_robust_validation() -> None:
    actions, rewards = np.array([0, 1]), np.array([1.0, 0.0])
    propensities, target = np.array([0.5, 0.5]), np.array([[0.5, 0.5]] * 2)
    with pytest.raises(ValueError, match="reward_model must have the shape"):
        doubly_robust(actions, rewards, propensities, target, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(n, k\) action probabilities"):
        doubly_robust(actions, rewards, propensities, np.array([0.5, 0.5]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="probability 0"):
        snips(actions, rewards, propensities, np.array([[0.0, 1.0], [1.0, 0.0]]))

"""Off-policy evaluation of a target policy from logged decisions.

Each logged decision ``i`` has the action taken ``a_i``, its reward ``r_i``, the propensity
``p_i = π₀(a_i | x_i)`` with which the logging policy chose it, and the probability the target
policy would have chosen it, ``π(a_i | x_i)``. With importance weights ``w_i = π(a_i|x_i)/p_i``
(optionally clipped at ``clip``):

- IPS: ``V = (1/n) Σ w_i r_i`` (unbiased without clipping);
- SNIPS: ``V = Σ w_i r_i / Σ w_i`` (self-normalised; bias O(1/n), lower variance);
- doubly robust (Dudík, Langford & Li, ICML 2011):
  ``V = (1/n) Σ [Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i))]``, unbiased if either the
  propensities or the reward model ``q̂`` are correct, with lower variance the better ``q̂`` is.

Standard errors: the sample standard deviation of the per-decision terms over √n for IPS and
DR; the delta method for SNIPS. Intervals are normal: ``V ± z·se``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["OffPolicyEstimate", "doubly_robust", "ips", "snips"]


@dataclass(frozen=True)
class OffPolicyEstimate:
    """Estimated value of a target policy with its uncertainty.

    ``effective_sample_size`` is ``(Σw)²/Σw²`` (n when all weights are equal); ``n_clipped``
    counts the weights cut at ``clip``.

    >>> OffPolicyEstimate("ips", 0.5, 0.1, 0.3, 0.7, 0.95, 100, 80.0, 0, None).ci_high
    0.7
    """

    method: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    effective_sample_size: float
    n_clipped: int
    clip: float | None


@dataclass(frozen=True)
class _Logged:
    rewards: np.ndarray
    weights: np.ndarray
    n_clipped: int


def _logged_target_prob(actions: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """π(a_i|x_i) from either its (n,) values or the (n, k) matrix of the target policy."""
    if target.ndim == 1:
        if target.shape != (n,):
            raise ValueError(f"target must have shape ({n},) or ({n}, k), got {target.shape}")
        if np.any(~np.isfinite(target)) or np.any((target < 0) | (target > 1)):
            raise ValueError("target probabilities must be in [0, 1]")
        return target
    _check_policy_matrix(target, n, "target")
    _check_actions(actions, n, target.shape[1])
    return target[np.arange(n), actions]


def _check_policy_matrix(matrix: np.ndarray, n: int, name: str) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, k), got {matrix.shape}")
    if np.any(~np.isfinite(matrix)) or np.any((matrix < 0) | (matrix > 1)):
        raise ValueError(f"{name} probabilities must be in [0, 1]")
    if not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError(f"each row of {name} must sum to 1")


def _check_actions(actions: np.ndarray, n: int, k: int) -> None:
    if actions.shape != (n,):
        raise ValueError(f"actions must have shape ({n},), got {actions.shape}")
    if not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"actions must be integer indices, got dtype {actions.dtype}")
    if actions.size and (actions.min() < 0 or actions.max() >= k):
        raise ValueError(f"actions must be in [0, {k}), got [{actions.min()}, {actions.max()}]")


def _prepare(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    clip: float | None,
    confidence: float,
) -> _Logged:
    r = np.asarray(rewards, dtype=float)
    p = np.asarray(propensities, dtype=float)
    a = np.asarray(actions)
    t = np.asarray(target, dtype=float)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"rewards must be a non-empty (n,) array, got shape {r.shape}")
    n = r.size
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    if p.shape != (n,):
        raise ValueError(f"propensities must have shape ({n},), got {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p <= 0) | (p > 1)):
        raise ValueError(
            f"logging propensities must be in (0, 1]; got min {p.min():g}, max {p.max():g}"
        )
    if a.shape != (n,):
        raise ValueError(f"actions must have shape ({n},), got {a.shape}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    w = _logged_target_prob(a, t, n) / p
    n_clipped = 0
    if clip is not None:
        n_clipped = int(np.count_nonzero(w > clip))
        w = np.minimum(w, clip)
    return _Logged(r, w, n_clipped)


def _result(
    method: str,
    value: float,
    se: float,
    logged: _Logged,
    confidence: float,
    clip: float | None,
) -> OffPolicyEstimate:
    z = float(special.ndtri(0.5 + confidence / 2.0))
    w = logged.weights
    sum_sq = float(np.sum(w**2))
    ess = float(np.sum(w) ** 2 / sum_sq) if sum_sq > 0 else 0.0
    return OffPolicyEstimate(
        method=method,
        value=float(value),
        std_error=float(se),
        ci_low=float(value - z * se),
        ci_high=float(value + z * se),
        confidence=confidence,
        n=int(w.size),
        effective_sample_size=ess,
        n_clipped=logged.n_clipped,
        clip=clip,
    )


def _mean_and_se(terms: np.ndarray) -> tuple[float, float]:
    n = terms.size
    se = float(np.std(terms, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(terms)), se


def ips(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> OffPolicyEstimate:
    """Inverse propensity scoring estimate of the target policy's value.

    Parameters
    ----------
    actions : (n,) int logged actions
    rewards : (n,) rewards
    propensities : (n,) logging probabilities of the logged actions, in (0, 1]
    target : (n,) target probabilities of the logged actions, or (n, k) target action
        probabilities (rows sum to 1)
    clip : cap on importance weights (None: no clipping; clipping trades bias for variance)
    confidence : level of the normal interval

    Returns
    -------
    OffPolicyEstimate

    >>> est = ips(np.array([0, 1, 1, 0]), np.array([1.0, 0.0, 1.0, 0.0]),
    ...           np.array([0.5, 0.5, 0.5, 0.5]), np.array([1.0, 0.0, 0.0, 1.0]))
    >>> round(est.value, 4), round(est.std_error, 4)
    (0.5, 0.5)
    """
    logged = _prepare(actions, rewards, propensities, target, clip, confidence)
    value, se = _mean_and_se(logged.weights * logged.rewards)
    return _result("ips", value, se, logged, confidence, clip)


def snips(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> OffPolicyEstimate:
    """Self-normalised IPS estimate ``Σ w r / Σ w`` with a delta-method standard error.

    ``se = √(n/(n−1) · Σ w_i²(r_i − V)²) / Σ w_i``. With all weights equal the estimate is the
    mean reward. Parameters as in :func:`ips`.

    >>> est = snips(np.array([0, 1, 0]), np.array([1.0, 0.0, 1.0]), np.full(3, 0.5),
    ...             np.array([[0.5, 0.5]] * 3))
    >>> round(est.value, 4)
    0.6667
    """
    logged = _prepare(actions, rewards, propensities, target, clip, confidence)
    w, r = logged.weights, logged.rewards
    total = w.sum()
    if not total > 0:
        raise ValueError("the target policy gives probability 0 to every logged action")
    value = float(w @ r / total)
    n = w.size
    se = (
        float(np.sqrt(n / (n - 1) * np.sum((w * (r - value)) ** 2)) / total)
        if n > 1
        else float("nan")
    )
    return _result("snips", value, se, logged, confidence, clip)


def doubly_robust(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    reward_model: np.ndarray,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
) -> OffPolicyEstimate:
    """Doubly robust estimate (Dudík et al. 2011).

    Parameters
    ----------
    actions, rewards, propensities : as in :func:`ips`
    target : (n, k) target action probabilities (rows sum to 1)
    reward_model : (n, k) predicted reward ``q̂(x_i, a)`` of every action
    clip, confidence : as in :func:`ips`; clipping applies to the correction term's weights

    >>> q = np.array([[1.0, 0.0]] * 4)
    >>> est = doubly_robust(np.array([0, 1, 1, 0]), np.array([1.0, 0.0, 0.0, 1.0]),
    ...                     np.full(4, 0.5), np.array([[1.0, 0.0]] * 4), q)
    >>> est.value, est.std_error  # a perfect reward model leaves nothing to correct
    (1.0, 0.0)
    """
    target = np.asarray(target, dtype=float)
    if target.ndim != 2:
        raise ValueError(
            f"target must be the (n, k) action probabilities, got shape {target.shape}"
        )
    logged = _prepare(actions, rewards, propensities, target, clip, confidence)
    q = np.asarray(reward_model, dtype=float)
    if q.shape != target.shape:
        raise ValueError(
            f"reward_model must have the shape of target {target.shape}, got {q.shape}"
        )
    if not np.all(np.isfinite(q)):
        raise ValueError("reward_model predictions must be finite")
    a = np.asarray(actions)
    direct = np.sum(target * q, axis=1)
    terms = direct + logged.weights * (logged.rewards - q[np.arange(a.size), a])
    value, se = _mean_and_se(terms)
    return _result("doubly_robust", value, se, logged, confidence, clip)

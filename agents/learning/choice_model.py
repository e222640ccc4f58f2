"""Conditional-logit customer choice model with an outside option, fitted online.

Model
-----
A session shows ``J`` candidates (padded arrays; ``mask`` marks the real ones). Candidate
``j`` has factor scores ``x_j`` in ``[0, 1]^F``. With utility coefficients ``beta`` (F,) and
the utility ``b`` of the outside option ("no choice")::

    P(j    | shown) = exp(beta . x_j) / (exp(b) + sum_k exp(beta . x_k))
    P(none | shown) = exp(b)          / (exp(b) + sum_k exp(beta . x_k))

The parameter vector is ``theta = (beta, b)`` of shape ``(F + 1,)``. This is a conditional
logit over ``J + 1`` alternatives in which candidate ``j`` has features ``(x_j, 0)`` and the
outside option has features ``(0, ..., 0, 1)``, so sessions without a choice inform ``b``
(and, through the denominator, ``beta``) instead of being dropped.

Online fit
----------
The state is a Gaussian approximation ``N(m, P^-1)`` of the posterior of ``theta``. A batch
is absorbed by maximising ``loglik_batch(theta) - 0.5 (theta - m)' P (theta - m)`` with a few
damped Newton steps started at ``m``; the new state is the maximiser ``m'`` and
``P' = P - H_batch(m')`` where ``H_batch`` is the Hessian of the batch log-likelihood (a
Laplace / assumed-density-filtering update). Because the log-likelihood is concave the
precision stays positive definite. The initial state is an L2 prior towards the defaults:
``m0 = (prior_utility_scale * default_weights, prior_outside_utility)`` and
``P0 = prior_strength * I``.

Blocks, not batches
-------------------
A Laplace update of a batch is not the same as two updates of its halves (the Hessian is
taken at a different point), so a posterior updated once per *stream batch* would depend on
how the stream happened to cut the sessions into batches (poll timing, restarts). Sessions
are therefore absorbed in blocks of ``block_size`` sessions (fewer when they hold
``block_max_scores`` factor scores) in arrival order (:func:`absorb`): the state is the
posterior after the complete blocks plus the sessions of the open block, and
:func:`estimate` absorbs the open block provisionally (not stored) when weights are
published. The result is a function of the sequence of sessions only: cutting the same
sequence into other batches gives the same numbers, bit for bit.

Published weights
-----------------
Scoring weights must be non-negative, within ``[w_min, w_max]`` and sum to 1. They are
obtained from ``beta`` by

1. clipping negative coefficients to 0 (a factor that lowers the choice probability gets the
   smallest allowed weight, never a negative one),
2. dividing by the sum of the clipped coefficients (the utility scale is not identified
   relative to the scoring scale, only the ratios are used),
3. Euclidean projection onto ``{w : sum w = 1, w_min <= w <= w_max}``
   (:func:`project_to_bounded_simplex`, bisection on the shift ``tau`` in
   ``w = clip(v - tau, w_min, w_max)``).

Standard errors come from the delta method with the exact Jacobian of this piecewise-smooth
map and the ``beta`` block of ``P^-1``.

Confidence
----------
``confidence = n / (n + n0) * 1 / (1 + r)`` where ``n`` is the number of sessions absorbed,
``n0`` is ``confidence_sample_scale`` and ``r = ||se(w)||_2 / ||w||_2`` is the relative
standard error of the learned weight vector. The first factor says how much data there is,
the second how precisely the weights are determined; both lie in ``(0, 1]`` and rise with the
sample size. Below ``min_sample_size`` sessions or ``min_confidence`` (or when no coefficient
is positive) the defaults are published with ``is_default=True`` and ``applied=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ChoiceFit",
    "ChoiceModelConfig",
    "ChoiceModelState",
    "PublishedWeights",
    "absorb",
    "choice_gradient",
    "choice_hessian",
    "choice_log_likelihood",
    "choice_probabilities",
    "coefficients_to_weights",
    "estimate",
    "fit_choice_model",
    "initial_state",
    "project_to_bounded_simplex",
    "publish_weights",
    "update",
    "weights_confidence",
]


# --------------------------------------------------------------------------- validation


def _check_batch(
    X: np.ndarray, mask: np.ndarray, chosen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    chosen = np.asarray(chosen)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (n, J, F), got {X.shape}")
    n, J, _ = X.shape
    if mask.shape != (n, J):
        raise ValueError(f"mask must have shape {(n, J)}, got {mask.shape}")
    if chosen.shape != (n,):
        raise ValueError(f"chosen must have shape {(n,)}, got {chosen.shape}")
    if not np.issubdtype(chosen.dtype, np.integer):
        if n and not np.all(np.equal(np.mod(chosen, 1), 0)):
            raise ValueError("chosen must hold integer indices")
        chosen = chosen.astype(np.int64)
    if n and (chosen.min() < -1 or chosen.max() >= J):
        raise ValueError("chosen must be -1 (no choice) or an index in [0, J)")
    picked = chosen >= 0
    if np.any(~mask[picked, chosen[picked]]):
        raise ValueError("a chosen candidate is masked out")
    # Padding may hold NaN; it must not leak into products with zero probabilities.
    X = np.where(mask[:, :, None], X, 0.0)
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds non-finite factor scores for present candidates")
    return X, mask, chosen


def _augment(X: np.ndarray) -> np.ndarray:
    """Features of the J candidates and the outside option, shape (n, J + 1, F + 1)."""
    n, J, F = X.shape
    Z = np.zeros((n, J + 1, F + 1))
    Z[:, :J, :F] = X
    Z[:, J, F] = 1.0
    return Z


def _chosen_index(chosen: np.ndarray, J: int) -> np.ndarray:
    return np.where(chosen < 0, J, chosen)


def _log_probabilities(theta: np.ndarray, Z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n = mask.shape[0]
    util = Z @ theta
    present = np.concatenate([mask, np.ones((n, 1), dtype=bool)], axis=1)
    util = np.where(present, util, -np.inf)
    top = util.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(util - top).sum(axis=1, keepdims=True))
    return util - lse


def _check_theta(theta: np.ndarray, F: int) -> np.ndarray:
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (F + 1,):
        raise ValueError(f"theta must have shape {(F + 1,)}, got {theta.shape}")
    return theta


# --------------------------------------------------------------------------- likelihood


def choice_probabilities(theta: np.ndarray, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Choice probabilities of every candidate and of the outside option.

    Parameters
    ----------
    theta : ndarray, shape (F + 1,)
        Utility coefficients ``beta`` followed by the outside-option utility ``b``.
    X : ndarray, shape (n, J, F)
        Factor scores; entries of masked-out candidates are ignored.
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.

    Returns
    -------
    ndarray, shape (n, J + 1)
        Column ``j < J`` is ``P(j)``, column ``J`` is ``P(no choice)``; masked candidates get
        0 and each row sums to 1.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[[1.0], [0.0]]])
    >>> p = choice_probabilities(np.array([np.log(2.0), 0.0]), X, np.array([[True, True]]))
    >>> np.round(p, 3).tolist()
    [[0.5, 0.25, 0.25]]
    """
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    X, mask, _ = _check_batch(X, mask, np.full(n, -1))
    theta = _check_theta(theta, X.shape[2])
    return np.exp(_log_probabilities(theta, _augment(X), mask))


def _loglik_grad_hess(
    theta: np.ndarray, X: np.ndarray, mask: np.ndarray, chosen: np.ndarray, order: int
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    n, J, _ = X.shape
    Z = _augment(X)
    logp = _log_probabilities(theta, Z, mask)
    rows = np.arange(n)
    idx = _chosen_index(chosen, J)
    loglik = float(logp[rows, idx].sum())
    if order == 0:
        return loglik, None, None
    p = np.exp(logp)
    zbar = np.einsum("nk,nkf->nf", p, Z)
    grad = Z[rows, idx].sum(axis=0) - zbar.sum(axis=0)
    if order == 1:
        return loglik, grad, None
    second = np.einsum("nk,nkf,nkg->fg", p, Z, Z)
    hess = -(second - zbar.T @ zbar)
    return loglik, grad, 0.5 * (hess + hess.T)


def choice_log_likelihood(
    theta: np.ndarray, X: np.ndarray, mask: np.ndarray, chosen: np.ndarray
) -> float:
    """Log-likelihood of a batch of sessions.

    Parameters
    ----------
    theta : ndarray, shape (F + 1,)
        Utility coefficients followed by the outside-option utility.
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice.

    Returns
    -------
    float
        ``sum_i log P(chosen_i | shown_i)``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((2, 3, 1))
    >>> mask = np.array([[True, True, True], [True, True, False]])
    >>> ll = choice_log_likelihood(np.zeros(2), X, mask, np.array([0, -1]))
    >>> bool(np.isclose(ll, np.log(1 / 4) + np.log(1 / 3)))
    True
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    theta = _check_theta(theta, X.shape[2])
    return _loglik_grad_hess(theta, X, mask, chosen, order=0)[0]


def choice_gradient(
    theta: np.ndarray, X: np.ndarray, mask: np.ndarray, chosen: np.ndarray
) -> np.ndarray:
    """Gradient of :func:`choice_log_likelihood` with respect to ``theta``.

    Parameters
    ----------
    theta : ndarray, shape (F + 1,)
        Utility coefficients followed by the outside-option utility.
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice.

    Returns
    -------
    ndarray, shape (F + 1,)
        ``sum_i (z_i,chosen - E_p[z_i])`` with ``z`` the augmented features.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[[1.0], [0.0]]])
    >>> g = choice_gradient(np.zeros(2), X, np.array([[True, True]]), np.array([0]))
    >>> np.round(g, 4).tolist()
    [0.6667, -0.3333]
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    theta = _check_theta(theta, X.shape[2])
    grad = _loglik_grad_hess(theta, X, mask, chosen, order=1)[1]
    assert grad is not None
    return grad


def choice_hessian(
    theta: np.ndarray, X: np.ndarray, mask: np.ndarray, chosen: np.ndarray
) -> np.ndarray:
    """Hessian of :func:`choice_log_likelihood` (negative semi-definite).

    Parameters
    ----------
    theta : ndarray, shape (F + 1,)
        Utility coefficients followed by the outside-option utility.
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice (does not enter the Hessian).

    Returns
    -------
    ndarray, shape (F + 1, F + 1)
        ``-sum_i Cov_p[z_i]``, minus the covariance of the augmented features under the
        model's choice probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[[1.0], [0.0]]])
    >>> H = choice_hessian(np.zeros(2), X, np.array([[True, True]]), np.array([0]))
    >>> np.round(H, 4).tolist()
    [[-0.2222, 0.1111], [0.1111, -0.2222]]
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    theta = _check_theta(theta, X.shape[2])
    hess = _loglik_grad_hess(theta, X, mask, chosen, order=2)[2]
    assert hess is not None
    return hess


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class ChoiceFit:
    """Result of :func:`fit_choice_model`.

    Parameters
    ----------
    theta : ndarray, shape (F + 1,)
        Maximiser of the (penalised) log-likelihood.
    hessian : ndarray, shape (F + 1, F + 1)
        Hessian of the batch log-likelihood (without the prior) at ``theta``.
    steps : int
        Newton steps taken.
    converged : bool
        True when the Newton decrement fell below the tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> fit = ChoiceFit(np.zeros(2), -np.eye(2), steps=0, converged=True)
    >>> fit.theta.shape
    (2,)
    """

    theta: np.ndarray
    hessian: np.ndarray
    steps: int
    converged: bool


def fit_choice_model(
    X: np.ndarray,
    mask: np.ndarray,
    chosen: np.ndarray,
    *,
    prior_mean: np.ndarray | None = None,
    prior_precision: np.ndarray | None = None,
    theta0: np.ndarray | None = None,
    max_steps: int = 50,
    tol: float = 1e-12,
) -> ChoiceFit:
    """Maximise the batch log-likelihood plus an optional Gaussian log-prior by Newton's method.

    The objective is ``loglik(theta) - 0.5 (theta - m)' P (theta - m)``; without a prior this
    is the maximum-likelihood fit (which needs choices and no-choices that vary with the
    factors to exist). Steps are halved until the objective does not decrease.

    Parameters
    ----------
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice.
    prior_mean : ndarray, shape (F + 1,), optional
        Prior mean ``m``; defaults to ``theta0`` or zeros.
    prior_precision : ndarray, shape (F + 1, F + 1), optional
        Prior precision ``P``; ``None`` means no prior (maximum likelihood).
    theta0 : ndarray, shape (F + 1,), optional
        Starting point; defaults to ``prior_mean`` or zeros.
    max_steps : int
        Maximum number of Newton steps.
    tol : float
        Stop when the Newton decrement ``g' H^-1 g / 2`` is below ``tol``.

    Returns
    -------
    ChoiceFit
        Maximiser, batch Hessian at the maximiser, steps taken and convergence flag.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[[1.0], [0.0]], [[1.0], [0.0]], [[0.0], [1.0]], [[1.0], [0.0]]])
    >>> mask = np.ones((4, 2), dtype=bool)
    >>> fit = fit_choice_model(X, mask, np.array([0, 1, 1, -1]))
    >>> bool(fit.converged), bool(fit.theta[0] > 0)
    (True, True)
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    F = X.shape[2]
    if prior_precision is not None:
        prior_precision = np.asarray(prior_precision, dtype=float)
        if prior_precision.shape != (F + 1, F + 1):
            raise ValueError(f"prior_precision must have shape {(F + 1, F + 1)}")
    if prior_mean is None:
        prior_mean = np.zeros(F + 1) if theta0 is None else np.asarray(theta0, dtype=float)
    prior_mean = _check_theta(prior_mean, F)
    theta = _check_theta(prior_mean if theta0 is None else theta0, F).copy()
    P = np.zeros((F + 1, F + 1)) if prior_precision is None else prior_precision

    def objective(t: np.ndarray) -> float:
        d = t - prior_mean
        return _loglik_grad_hess(t, X, mask, chosen, order=0)[0] - 0.5 * float(d @ P @ d)

    def newton_direction(t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
        value, grad, hess = _loglik_grad_hess(t, X, mask, chosen, order=2)
        assert grad is not None and hess is not None
        d = t - prior_mean
        g = grad - P @ d
        neg_h = P - hess
        try:
            direction = np.linalg.solve(neg_h, g)
        except np.linalg.LinAlgError:
            direction = np.linalg.lstsq(neg_h, g, rcond=None)[0]
        return value - 0.5 * float(d @ P @ d), direction, hess, 0.5 * float(g @ direction)

    value, direction, hess, decrement = newton_direction(theta)
    steps = 0
    while decrement >= tol and steps < max_steps:
        # Allow round-off-sized decreases so the final, tiny steps are not rejected.
        floor = value - 1e-12 * max(1.0, abs(value))
        step = 1.0
        while step > 1e-10 and objective(theta + step * direction) < floor:
            step *= 0.5
        if step <= 1e-10:
            break
        theta = theta + step * direction
        steps += 1
        value, direction, hess, decrement = newton_direction(theta)
    converged = decrement < tol
    return ChoiceFit(theta=theta, hessian=hess, steps=steps, converged=converged)


# --------------------------------------------------------------------------- config / state


@dataclass(frozen=True)
class ChoiceModelConfig:
    """Configuration of a per-segment choice model.

    Parameters
    ----------
    factors : tuple of str, length F
        Factor names in the order of the last axis of ``X``.
    default_weights : tuple of float, length F, optional
        Default scoring weights (non-negative, sum 1); uniform when omitted.
    w_min, w_max : float
        Bounds of every published weight; need ``F * w_min <= 1 <= F * w_max``.
    prior_strength : float
        Precision of the initial L2 prior on every coefficient (larger = stays nearer the
        defaults for longer).
    prior_utility_scale : float
        Prior mean of ``beta`` is ``prior_utility_scale * default_weights``.
    prior_outside_utility : float
        Prior mean of the outside-option utility ``b``.
    newton_steps : int
        Newton steps per block.
    block_size : int
        Sessions per Laplace update (see "Blocks, not batches" above).
    block_max_scores : int
        A block also closes once its sessions hold this many factor scores, which bounds
        the open block kept in a state (a table value must fit in one Kafka message).
    min_sample_size : int
        Sessions needed before learned weights can be applied.
    min_confidence : float
        Confidence needed before learned weights can be applied.
    confidence_sample_scale : float
        ``n0`` in the confidence formula ``n / (n + n0) / (1 + r)``.

    Examples
    --------
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"))
    >>> cfg.defaults.tolist()
    [0.5, 0.5]
    """

    factors: tuple[str, ...]
    default_weights: tuple[float, ...] | None = None
    w_min: float = 0.02
    w_max: float = 0.6
    prior_strength: float = 1.0
    prior_utility_scale: float = 1.0
    prior_outside_utility: float = 0.0
    newton_steps: int = 5
    block_size: int = 100
    block_max_scores: int = 20_000
    min_sample_size: int = 50
    min_confidence: float = 0.7
    confidence_sample_scale: float = 20.0

    def __post_init__(self) -> None:
        F = len(self.factors)
        if F == 0 or len(set(self.factors)) != F:
            raise ValueError("factors must be non-empty and unique")
        if not (0.0 <= self.w_min <= self.w_max <= 1.0):
            raise ValueError("need 0 <= w_min <= w_max <= 1")
        if F * self.w_min > 1 + 1e-12 or F * self.w_max < 1 - 1e-12:
            raise ValueError("bounds infeasible: need F * w_min <= 1 <= F * w_max")
        if self.default_weights is not None:
            d = np.asarray(self.default_weights, dtype=float)
            if d.shape != (F,) or np.any(d < 0) or not np.isclose(d.sum(), 1.0):
                raise ValueError("default_weights must be F non-negative numbers summing to 1")
        if self.prior_strength <= 0:
            raise ValueError("prior_strength must be positive")
        if self.newton_steps < 1 or self.min_sample_size < 0:
            raise ValueError("newton_steps >= 1 and min_sample_size >= 0 required")
        if self.block_size < 1 or self.block_max_scores < 1:
            raise ValueError("block_size >= 1 and block_max_scores >= 1 required")
        if not (0.0 <= self.min_confidence <= 1.0) or self.confidence_sample_scale < 0:
            raise ValueError("min_confidence in [0, 1] and confidence_sample_scale >= 0")

    @property
    def defaults(self) -> np.ndarray:
        """Default weights as an array of shape (F,)."""
        F = len(self.factors)
        if self.default_weights is None:
            return np.full(F, 1.0 / F)
        return np.asarray(self.default_weights, dtype=float)


@dataclass(frozen=True, eq=False)
class ChoiceModelState:
    """Gaussian posterior approximation of ``theta = (beta, b)``, open block and counters.

    Parameters
    ----------
    mean : ndarray, shape (F + 1,)
        Posterior mean ``m`` after the complete blocks.
    precision : ndarray, shape (F + 1, F + 1)
        Posterior precision ``P`` after the complete blocks (symmetric positive definite).
    n_sessions : int
        Sessions absorbed that showed at least one candidate (open block included).
    n_no_choice : int
        Of those, sessions that ended without a choice.
    open_block : tuple of (ndarray of shape (J_i, F), int)
        Sessions of the open block in arrival order: the shown candidates' factor scores and
        the chosen index among them (-1 for none). Fewer than ``block_size``.

    Examples
    --------
    >>> import json
    >>> state = initial_state(ChoiceModelConfig(factors=("price", "quality")))
    >>> again = ChoiceModelState.from_dict(json.loads(json.dumps(state.to_dict())))
    >>> again.mean.tolist(), again.n_sessions
    ([0.5, 0.5, 0.0], 0)
    """

    mean: np.ndarray
    precision: np.ndarray
    n_sessions: int = 0
    n_no_choice: int = 0
    open_block: tuple[tuple[np.ndarray, int], ...] = ()

    def __post_init__(self) -> None:
        k = self.mean.shape[0]
        if self.mean.ndim != 1 or self.precision.shape != (k, k):
            raise ValueError("mean must be (F + 1,) and precision (F + 1, F + 1)")
        if any(x.ndim != 2 or x.shape[1] != k - 1 for x, _ in self.open_block):
            raise ValueError("open-block sessions must have shape (J_i, F)")

    @property
    def covariance(self) -> np.ndarray:
        """Posterior covariance ``P^-1``, shape (F + 1, F + 1)."""
        return np.linalg.inv(self.precision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (lists and ints only)."""
        return {
            "version": 1,
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "n_sessions": int(self.n_sessions),
            "n_no_choice": int(self.n_no_choice),
            "open_block": [[x.tolist(), int(c)] for x, c in self.open_block],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChoiceModelState:
        """Inverse of :meth:`to_dict`."""
        if data.get("version", 1) != 1:
            raise ValueError(f"unsupported choice model state version {data.get('version')}")
        return cls(
            mean=np.asarray(data["mean"], dtype=float),
            precision=np.asarray(data["precision"], dtype=float),
            n_sessions=int(data["n_sessions"]),
            n_no_choice=int(data["n_no_choice"]),
            # States written before blocks existed have no open block.
            open_block=tuple(
                (np.asarray(x, dtype=float).reshape(-1, len(data["mean"]) - 1), int(c))
                for x, c in data.get("open_block", ())
            ),
        )


def initial_state(config: ChoiceModelConfig) -> ChoiceModelState:
    """Prior state: an L2 prior centred on the default weights.

    Parameters
    ----------
    config : ChoiceModelConfig
        Supplies the defaults, ``prior_utility_scale``, ``prior_outside_utility`` and
        ``prior_strength``.

    Returns
    -------
    ChoiceModelState
        ``mean`` of shape (F + 1,), ``precision = prior_strength * I``.

    Examples
    --------
    >>> cfg = ChoiceModelConfig(factors=("a", "b"), default_weights=(0.75, 0.25),
    ...                         prior_utility_scale=4.0, prior_strength=2.0)
    >>> s = initial_state(cfg)
    >>> s.mean.tolist(), s.precision.diagonal().tolist()
    ([3.0, 1.0, 0.0], [2.0, 2.0, 2.0])
    """
    mean = np.append(config.prior_utility_scale * config.defaults, config.prior_outside_utility)
    precision = config.prior_strength * np.eye(mean.size)
    return ChoiceModelState(mean=mean, precision=precision)


def update(
    state: ChoiceModelState,
    X: np.ndarray,
    mask: np.ndarray,
    chosen: np.ndarray,
    config: ChoiceModelConfig,
) -> ChoiceModelState:
    """Absorb one batch of sessions (Laplace update); returns a new state.

    Parameters
    ----------
    state : ChoiceModelState
        Current posterior approximation.
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice.
    config : ChoiceModelConfig
        Supplies ``newton_steps``.

    Returns
    -------
    ChoiceModelState
        Mean at the batch MAP estimate, precision increased by the batch information.

    Examples
    --------
    >>> import numpy as np
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"))
    >>> X = np.array([[[0.9, 0.1], [0.2, 0.3]], [[0.8, 0.5], [0.1, 0.9]]])
    >>> s = update(initial_state(cfg), X, np.ones((2, 2), bool), np.array([0, -1]), cfg)
    >>> s.n_sessions, s.n_no_choice, bool(s.precision[0, 0] > 1.0)
    (2, 1, True)
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    if X.shape[2] + 1 != state.mean.size:
        raise ValueError("X has a different number of factors than the state")
    if state.open_block:
        raise ValueError("update() needs a state without an open block (see absorb())")
    shown = mask.any(axis=1)
    if not shown.any():
        return state
    X, mask, chosen = X[shown], mask[shown], chosen[shown]
    fit = fit_choice_model(
        X,
        mask,
        chosen,
        prior_mean=state.mean,
        prior_precision=state.precision,
        max_steps=config.newton_steps,
    )
    precision = state.precision - fit.hessian
    return ChoiceModelState(
        mean=fit.theta,
        precision=0.5 * (precision + precision.T),
        n_sessions=state.n_sessions + int(shown.sum()),
        n_no_choice=state.n_no_choice + int((chosen < 0).sum()),
    )


def _committed(state: ChoiceModelState) -> ChoiceModelState:
    """The posterior after the complete blocks, with the counters of those blocks only."""
    if not state.open_block:
        return state
    no_choice = sum(1 for _, c in state.open_block if c < 0)
    return ChoiceModelState(
        mean=state.mean,
        precision=state.precision,
        n_sessions=state.n_sessions - len(state.open_block),
        n_no_choice=state.n_no_choice - no_choice,
    )


def _stack(
    block: Sequence[tuple[np.ndarray, int]], F: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions of a block → padded ``(X, mask, chosen)`` (padding to the block's widest)."""
    J = max(x.shape[0] for x, _ in block)
    X = np.zeros((len(block), J, F))
    mask = np.zeros((len(block), J), dtype=bool)
    for i, (x, _) in enumerate(block):
        X[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = True
    return X, mask, np.array([c for _, c in block], dtype=np.int64)


def absorb(
    state: ChoiceModelState,
    X: np.ndarray,
    mask: np.ndarray,
    chosen: np.ndarray,
    config: ChoiceModelConfig,
) -> ChoiceModelState:
    """Absorb sessions in order: one Laplace update (:func:`update`) per complete block.

    The sessions join the open block; each time it reaches ``config.block_size`` sessions
    (or ``config.block_max_scores`` factor scores) it is absorbed and a new block opens. The
    result depends only on the sequence of sessions absorbed so far, not on how it was split
    across calls.

    Parameters
    ----------
    state : ChoiceModelState
        Current state (posterior after the complete blocks, open block).
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown; sessions without any are skipped.
    chosen : ndarray of int, shape (n,)
        Index of the chosen candidate, ``-1`` for no choice.
    config : ChoiceModelConfig
        Supplies ``block_size`` and ``newton_steps``.

    Returns
    -------
    ChoiceModelState
        The new state; its counters include the open block.

    Examples
    --------
    >>> import numpy as np
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"), block_size=2)
    >>> X = np.array([[[0.9, 0.1], [0.2, 0.3]], [[0.8, 0.5], [0.1, 0.9]], [[0.5, 0.5], [0.0, 1.0]]])
    >>> mask, chosen = np.ones((3, 2), bool), np.array([0, -1, 1])
    >>> one = absorb(initial_state(cfg), X, mask, chosen, cfg)
    >>> two = absorb(absorb(initial_state(cfg), X[:1], mask[:1], chosen[:1], cfg),
    ...              X[1:], mask[1:], chosen[1:], cfg)
    >>> one.n_sessions, len(one.open_block), bool(np.array_equal(one.mean, two.mean))
    (3, 1, True)
    """
    X, mask, chosen = _check_batch(X, mask, chosen)
    F = X.shape[2]
    if state.mean.size != F + 1:
        raise ValueError("X has a different number of factors than the state")
    committed = _committed(state)
    block = list(state.open_block)
    scores = sum(x.size for x, _ in block)
    for i in range(X.shape[0]):
        if not mask[i].any():
            continue
        c = int(chosen[i])
        # Keep only the shown candidates; the choice becomes an index among them.
        block.append((X[i, mask[i]].copy(), -1 if c < 0 else int(mask[i, :c].sum())))
        scores += block[-1][0].size
        # Both limits are functions of the sequence itself, so blocks stay where they are
        # however the sessions come in batches.
        if len(block) >= config.block_size or scores >= config.block_max_scores:
            committed = update(committed, *_stack(block, F), config)
            block, scores = [], 0
    return ChoiceModelState(
        mean=committed.mean,
        precision=committed.precision,
        n_sessions=committed.n_sessions + len(block),
        n_no_choice=committed.n_no_choice + sum(1 for _, c in block if c < 0),
        open_block=tuple(block),
    )


def estimate(state: ChoiceModelState, config: ChoiceModelConfig) -> ChoiceModelState:
    """The posterior of every session absorbed: the open block absorbed provisionally.

    Parameters
    ----------
    state : ChoiceModelState
        State with or without an open block.
    config : ChoiceModelConfig
        Supplies ``newton_steps``.

    Returns
    -------
    ChoiceModelState
        Without an open block; ``state`` itself when it has none.

    Examples
    --------
    >>> import numpy as np
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"))
    >>> X = np.array([[[0.9, 0.1], [0.2, 0.3]]])
    >>> s = absorb(initial_state(cfg), X, np.ones((1, 2), bool), np.array([0]), cfg)
    >>> e = estimate(s, cfg)
    >>> len(s.open_block), len(e.open_block), e.n_sessions, bool(e.mean[0] > s.mean[0])
    (1, 0, 1, True)
    """
    if not state.open_block:
        return state
    F = state.mean.size - 1
    return update(_committed(state), *_stack(state.open_block, F), config)


# --------------------------------------------------------------------------- publishing


def project_to_bounded_simplex(
    v: np.ndarray, lo: float, hi: float, *, tol: float = 1e-14, max_iter: int = 200
) -> np.ndarray:
    """Euclidean projection onto ``{w : sum w = 1, lo <= w <= hi}``.

    The projection is ``w = clip(v - tau, lo, hi)`` for the shift ``tau`` at which the
    (non-increasing, piecewise-linear) sum equals 1; ``tau`` is found by bisection and then
    solved exactly on the coordinates strictly inside the bounds.

    Parameters
    ----------
    v : ndarray, shape (F,)
        Point to project.
    lo, hi : float
        Bounds, with ``F * lo <= 1 <= F * hi``.
    tol : float
        Bisection stops when the bracket on ``tau`` is narrower than this.
    max_iter : int
        Bisection iteration cap.

    Returns
    -------
    ndarray, shape (F,)
        The closest point of the bounded simplex to ``v``.

    Examples
    --------
    >>> import numpy as np
    >>> project_to_bounded_simplex(np.array([0.7, 0.2, 0.1]), 0.1, 0.5).round(6).tolist()
    [0.5, 0.3, 0.2]
    """
    v = np.asarray(v, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("v must be a non-empty finite vector")
    k = v.size
    if lo > hi or k * lo > 1 + 1e-12 or k * hi < 1 - 1e-12:
        raise ValueError("infeasible bounds: need lo <= hi and k * lo <= 1 <= k * hi")
    # sum(clip(v - a)) = k * hi >= 1 and sum(clip(v - b)) = k * lo <= 1 bracket the root.
    a, b = float(v.min() - hi), float(v.max() - lo)
    for _ in range(max_iter):
        if b - a <= tol:
            break
        tau = 0.5 * (a + b)
        if np.clip(v - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    tau = 0.5 * (a + b)
    shifted = v - tau
    free = (shifted > lo) & (shifted < hi)
    if free.any():
        fixed = np.clip(shifted[~free], lo, hi).sum()
        tau = (v[free].sum() - (1.0 - fixed)) / free.sum()
    return np.clip(v - tau, lo, hi)


def coefficients_to_weights(
    beta: np.ndarray, w_min: float, w_max: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Map utility coefficients to bounded scoring weights, with the map's Jacobian.

    ``u = max(beta, 0) / sum(max(beta, 0))`` followed by
    :func:`project_to_bounded_simplex`. The Jacobian is exact wherever the map is smooth:
    ``du_i/dbeta_k = [beta_k > 0] (delta_ik - u_i) / s`` and, on the set ``A`` of weights
    strictly inside the bounds, ``dw_i/du_k = delta_ik - 1/|A|`` (zero elsewhere).

    Parameters
    ----------
    beta : ndarray, shape (F,)
        Utility coefficients.
    w_min, w_max : float
        Weight bounds.

    Returns
    -------
    tuple of (ndarray of shape (F,), ndarray of shape (F, F)) or None
        Weights and ``dw/dbeta``; ``None`` when no coefficient is positive (ratios
        undefined).

    Examples
    --------
    >>> import numpy as np
    >>> w, J = coefficients_to_weights(np.array([3.0, 1.0, -0.5]), 0.1, 0.8)
    >>> w.round(6).tolist()
    [0.7, 0.2, 0.1]
    """
    beta = np.asarray(beta, dtype=float)
    positive = beta > 0
    if not positive.any():
        return None
    s = beta[positive].sum()
    u = np.where(positive, beta, 0.0) / s
    jac_norm = (np.eye(beta.size) - u[:, None]) / s * positive[None, :]
    w = project_to_bounded_simplex(u, w_min, w_max)
    inside = (w > w_min + 1e-12) & (w < w_max - 1e-12)
    jac_proj = np.zeros((beta.size, beta.size))
    if inside.any():
        idx = np.flatnonzero(inside)
        jac_proj[np.ix_(idx, idx)] = np.eye(idx.size) - 1.0 / idx.size
    return w, jac_proj @ jac_norm


def weights_confidence(
    n_sessions: int, weights: np.ndarray, standard_errors: np.ndarray, sample_scale: float
) -> float:
    """Confidence in learned weights, ``n / (n + n0) * 1 / (1 + ||se||_2 / ||w||_2)``.

    Parameters
    ----------
    n_sessions : int
        Sessions behind the estimate.
    weights : ndarray, shape (F,)
        Learned weights.
    standard_errors : ndarray, shape (F,)
        Their standard errors.
    sample_scale : float
        ``n0``: the sample size at which the sample factor is 1/2.

    Returns
    -------
    float
        A number in ``[0, 1]``, rising with ``n`` and falling with the relative error.

    Examples
    --------
    >>> import numpy as np
    >>> weights_confidence(80, np.array([0.6, 0.8]), np.array([0.0, 0.0]), 20.0)
    0.8
    >>> weights_confidence(80, np.array([0.6, 0.8]), np.array([0.25, 0.0]), 20.0)
    0.64
    """
    if n_sessions <= 0:
        return 0.0
    sample = n_sessions / (n_sessions + sample_scale)
    w_norm = float(np.linalg.norm(weights))
    if w_norm == 0.0:
        return 0.0
    rel = float(np.linalg.norm(standard_errors)) / w_norm
    return float(np.clip(sample / (1.0 + rel), 0.0, 1.0))


@dataclass(frozen=True, eq=False)
class PublishedWeights:
    """Scoring weights to publish for one segment.

    Parameters
    ----------
    factors : tuple of str, length F
        Factor names.
    weights : ndarray, shape (F,)
        Published weights: learned when ``applied`` else the defaults.
    is_default : bool
        True when the defaults are published.
    applied : bool
        True when the learned weights are published (``not is_default``).
    confidence : float
        Confidence in the learned weights (0 when they are undefined).
    n_sessions : int
        Sessions behind the estimate.
    reason : str
        ``"learned"``, ``"below_min_sample_size"``, ``"below_min_confidence"`` or
        ``"no_positive_coefficient"``.
    coefficients : ndarray, shape (F,)
        Posterior mean of the utility coefficients ``beta``.
    learned_weights : ndarray of shape (F,), optional
        Weights mapped from ``beta`` (also when not applied), ``None`` if undefined.
    standard_errors : ndarray of shape (F,), optional
        Delta-method standard errors of ``learned_weights``.

    Examples
    --------
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"))
    >>> pub = publish_weights(initial_state(cfg), cfg)
    >>> pub.is_default, pub.applied, pub.reason
    (True, False, 'below_min_sample_size')
    """

    factors: tuple[str, ...]
    weights: np.ndarray
    is_default: bool
    applied: bool
    confidence: float
    n_sessions: int
    reason: str
    coefficients: np.ndarray
    learned_weights: np.ndarray | None = None
    standard_errors: np.ndarray | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return {
            "factors": list(self.factors),
            "weights": dict(zip(self.factors, self.weights.tolist(), strict=True)),
            "is_default": self.is_default,
            "applied": self.applied,
            "confidence": self.confidence,
            "n_sessions": self.n_sessions,
            "reason": self.reason,
            "coefficients": self.coefficients.tolist(),
            "learned_weights": None
            if self.learned_weights is None
            else self.learned_weights.tolist(),
            "standard_errors": None
            if self.standard_errors is None
            else self.standard_errors.tolist(),
        }


def publish_weights(state: ChoiceModelState, config: ChoiceModelConfig) -> PublishedWeights:
    """Weights to publish for a segment, falling back to the defaults when unsure.

    Parameters
    ----------
    state : ChoiceModelState
        Posterior of ``theta``, shape (F + 1,); an open block is included (:func:`estimate`).
    config : ChoiceModelConfig
        Bounds, defaults, ``min_sample_size``, ``min_confidence`` and the confidence scale.

    Returns
    -------
    PublishedWeights
        Published weights of shape (F,), flags, confidence and diagnostics.

    Examples
    --------
    >>> import numpy as np
    >>> cfg = ChoiceModelConfig(factors=("price", "quality"), min_sample_size=0,
    ...                         min_confidence=0.0)
    >>> state = ChoiceModelState(np.array([3.0, 1.0, 0.0]), 1e6 * np.eye(3), n_sessions=10**6)
    >>> pub = publish_weights(state, cfg)
    >>> pub.applied, pub.weights.round(3).tolist(), round(pub.confidence, 3)
    (True, [0.6, 0.4], 1.0)
    """
    F = len(config.factors)
    if state.mean.size != F + 1:
        raise ValueError("state and config disagree on the number of factors")
    state = estimate(state, config)
    beta = state.mean[:F].copy()
    mapped = coefficients_to_weights(beta, config.w_min, config.w_max)
    learned = se = None
    confidence = 0.0
    if mapped is not None:
        learned, jac = mapped
        cov_beta = state.covariance[:F, :F]
        cov_w = jac @ cov_beta @ jac.T
        se = np.sqrt(np.clip(np.diag(cov_w), 0.0, None))
        confidence = weights_confidence(
            state.n_sessions, learned, se, config.confidence_sample_scale
        )
    if mapped is None:
        reason = "no_positive_coefficient"
    elif state.n_sessions < config.min_sample_size:
        reason = "below_min_sample_size"
    elif confidence < config.min_confidence:
        reason = "below_min_confidence"
    else:
        reason = "learned"
    applied = reason == "learned"
    return PublishedWeights(
        factors=tuple(config.factors),
        weights=learned if applied and learned is not None else config.defaults.copy(),
        is_default=not applied,
        applied=applied,
        confidence=confidence,
        n_sessions=state.n_sessions,
        reason=reason,
        coefficients=beta,
        learned_weights=learned,
        standard_errors=se,
    )

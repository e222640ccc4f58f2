"""Adaptive traffic allocation for bandit-mode experiments, and unbiased estimates under it.

Allocation
    Thompson sampling allocates traffic in proportion to each variant's posterior
    probability of being best.  Top-two Thompson sampling (Russo 2016, "Simple Bayesian
    algorithms for best arm identification") gives the leader only a share ``beta`` and
    spends the rest on its challengers, which identifies the best variant faster and never
    starves the runner-up.  A floor keeps every variant measurable (and the period-weighted
    estimate below defined); a burn-in keeps the initial weights until every variant has
    ``min_n`` units, so that early noise does not steer traffic.

Estimates under changing allocation
    When allocation changes over time (epochs ``p``) and the base rate drifts, the pooled
    mean of a variant, ``sum_p n_pv ybar_pv / sum_p n_pv``, weights each period by that
    variant's own share of its traffic.  A variant that got most of its traffic in a
    high-rate period looks better than one that got it in a low-rate period even when
    neither differs from the other within any period (Simpson's paradox), so the pooled
    difference is biased.  The period-weighted estimate ``sum_p W_p ybar_pv`` uses the same
    weights ``W_p`` (the period's share of all traffic) for every variant, so each
    difference compares like with like and is unbiased for the traffic-weighted average
    effect; its variance is ``sum_p W_p^2 s_pv^2 / n_pv``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from agents.learning.abstats import VariantStats

__all__ = [
    "AllocationResult",
    "BetaPosterior",
    "NormalPosterior",
    "PeriodWeightedResult",
    "apply_floor",
    "period_arrays",
    "period_weighted_estimate",
    "probability_best",
    "thompson_allocation",
    "top_two_weights",
]


def _json_list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]


@dataclass(frozen=True)
class BetaPosterior:
    """Independent Beta posteriors of k conversion rates.

    Parameters
    ----------
    alpha, beta : numpy.ndarray, shape (k,)
        Posterior parameters (> 0).

    Examples
    --------
    >>> p = BetaPosterior.from_stats([VariantStats(100, 10, 10), VariantStats(100, 20, 20)])
    >>> p.alpha.tolist(), p.beta.tolist()
    ([11.0, 21.0], [91.0, 81.0])
    """

    alpha: np.ndarray
    beta: np.ndarray

    @classmethod
    def from_stats(
        cls, variants: Sequence[VariantStats], prior_alpha: float = 1.0, prior_beta: float = 1.0
    ) -> BetaPosterior:
        """Posterior from per-variant conversions under a Beta(prior_alpha, prior_beta) prior.

        Parameters
        ----------
        variants : sequence of VariantStats, length k
            ``sum`` counts conversions.
        prior_alpha, prior_beta : float, default 1.0

        Returns
        -------
        BetaPosterior

        Examples
        --------
        >>> BetaPosterior.from_stats([VariantStats()]).alpha.tolist()
        [1.0]
        """
        successes = np.array([v.sum for v in variants], dtype=float)
        trials = np.array([v.n for v in variants], dtype=float)
        return cls(prior_alpha + successes, prior_beta + trials - successes)

    def sample(self, rng: np.random.Generator, draws: int) -> np.ndarray:
        """Posterior draws.

        Parameters
        ----------
        rng : numpy.random.Generator
        draws : int

        Returns
        -------
        numpy.ndarray, shape (draws, k)

        Examples
        --------
        >>> BetaPosterior(np.ones(3), np.ones(3)).sample(np.random.default_rng(0), 5).shape
        (5, 3)
        """
        return rng.beta(self.alpha, self.beta, size=(draws, self.alpha.size))

    @property
    def is_proper(self) -> bool:
        """Whether every parameter is finite and positive."""
        params = np.concatenate([self.alpha, self.beta])
        return bool(np.all(np.isfinite(params)) and np.all(params > 0))


@dataclass(frozen=True)
class NormalPosterior:
    """Independent normal posteriors of k means (flat prior: mean, standard error).

    Parameters
    ----------
    mean, sd : numpy.ndarray, shape (k,)

    Examples
    --------
    >>> p = NormalPosterior.from_stats([VariantStats.from_values([1.0, 3.0])])
    >>> p.mean.tolist(), p.sd.round(4).tolist()
    ([2.0], [1.0])
    """

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def from_stats(cls, variants: Sequence[VariantStats]) -> NormalPosterior:
        """Posterior of each mean: ``N(ybar, s^2 / n)``; ``nan`` for ``n < 2``.

        Parameters
        ----------
        variants : sequence of VariantStats, length k

        Returns
        -------
        NormalPosterior

        Examples
        --------
        >>> NormalPosterior.from_stats([VariantStats(1, 2.0, 4.0)]).sd.tolist()
        [nan]
        """
        mean = np.array([v.mean for v in variants], dtype=float)
        sd = np.array(
            [math.sqrt(v.variance / v.n) if v.n > 1 else math.nan for v in variants],
            dtype=float,
        )
        return cls(mean, sd)

    def sample(self, rng: np.random.Generator, draws: int) -> np.ndarray:
        """Posterior draws.

        Parameters
        ----------
        rng : numpy.random.Generator
        draws : int

        Returns
        -------
        numpy.ndarray, shape (draws, k)

        Examples
        --------
        >>> NormalPosterior(np.zeros(2), np.ones(2)).sample(np.random.default_rng(0), 4).shape
        (4, 2)
        """
        return rng.normal(self.mean, self.sd, size=(draws, self.mean.size))

    @property
    def is_proper(self) -> bool:
        """Whether every mean is finite and every sd finite and >= 0."""
        return bool(
            np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.sd)) and np.all(self.sd >= 0)
        )


def probability_best(samples: np.ndarray) -> np.ndarray:
    """Monte-Carlo probability that each variant has the highest value.

    Parameters
    ----------
    samples : numpy.ndarray, shape (draws, k)
        Joint posterior draws.

    Returns
    -------
    numpy.ndarray, shape (k,)
        Frequencies of being the argmax (sum to 1).

    Examples
    --------
    >>> probability_best(np.array([[0.1, 0.2], [0.3, 0.2], [0.0, 0.5]])).round(3).tolist()
    [0.333, 0.667]
    """
    draws, k = samples.shape
    return np.bincount(np.argmax(samples, axis=1), minlength=k) / draws


def top_two_weights(
    samples: np.ndarray, beta: float = 0.5, best: np.ndarray | None = None
) -> np.ndarray:
    """Allocation of top-two Thompson sampling (Russo 2016).

    With probability ``beta`` the sampled leader ``I`` is played; otherwise posteriors
    are re-sampled until a different leader ``J`` appears.  Since
    ``P(J = i | I = j) = pi_i / (1 - pi_j)``, the allocation is
    ``psi_i = beta pi_i + (1 - beta) pi_i sum_{j != i} pi_j / (1 - pi_j)``.  When a
    leader won every draw (``pi_j = 1``, so ``pi_i / (1 - pi_j)`` is 0/0) its challenger
    share goes by the runner-up frequencies among the draws.

    Parameters
    ----------
    samples : numpy.ndarray, shape (draws, k)
        Joint posterior draws.
    beta : float, default 0.5
        Share of the leader.
    best : numpy.ndarray, shape (k,), optional
        ``probability_best(samples)`` if already computed.

    Returns
    -------
    numpy.ndarray, shape (k,)
        Allocation probabilities (sum to 1).

    Examples
    --------
    >>> s = np.array([[0.9, 0.2, 0.1], [0.8, 0.3, 0.2], [0.1, 0.7, 0.2], [0.6, 0.5, 0.4]])
    >>> top_two_weights(s).round(4).tolist()
    [0.5, 0.5, 0.0]
    """
    pi = probability_best(samples) if best is None else np.asarray(best, dtype=float)
    k = pi.size
    if k == 1:
        return np.ones(1)
    draws = samples.shape[0]
    weights = beta * pi
    not_j = 1.0 - pi
    regular = not_j > 0.5 / draws
    for j in np.flatnonzero(pi > 0):
        if regular[j]:
            challenger = pi / not_j[j]
            challenger[j] = 0.0
        else:
            ranked = np.argsort(samples, axis=1)
            challenger = np.bincount(ranked[:, -2], minlength=k) / draws
        weights = weights + (1.0 - beta) * pi[j] * challenger
    return weights / weights.sum()


def apply_floor(weights: Sequence[float] | np.ndarray, floor: float) -> np.ndarray:
    """Raise every weight to at least ``floor`` and scale the others down to sum 1.

    Water-filling: weights under the floor are set to it and the rest keep their
    proportions, repeated until no weight is under the floor.

    Parameters
    ----------
    weights : array_like, shape (k,)
        Non-negative weights (normalised internally).
    floor : float
        Minimum weight, ``0 <= floor <= 1 / k``.

    Returns
    -------
    numpy.ndarray, shape (k,)
        Weights ``>= floor`` summing to 1.

    Examples
    --------
    >>> apply_floor([0.9, 0.1, 0.0], 0.05).round(4).tolist()
    [0.855, 0.095, 0.05]
    """
    w = np.asarray(weights, dtype=float)
    k = w.size
    if not 0.0 <= floor <= 1.0 / k + 1e-12:
        raise ValueError(f"floor must be in [0, 1/k] = [0, {1.0 / k}], got {floor}")
    total = w.sum()
    w = w / total if total > 0 else np.full(k, 1.0 / k)
    fixed = np.zeros(k, dtype=bool)
    while True:
        below = (w < floor) & ~fixed
        if not below.any():
            return w
        fixed |= below
        free = ~fixed
        w = np.where(fixed, floor, w)
        remaining = 1.0 - floor * fixed.sum()
        mass = w[free].sum()
        if free.any():
            w[free] = w[free] * remaining / mass if mass > 0 else remaining / free.sum()


@dataclass(frozen=True)
class AllocationResult:
    """Allocation weights for the next epoch.

    Attributes
    ----------
    weights : numpy.ndarray, shape (k,)
        Traffic shares (sum to 1, each ``>= floor``).
    probability_best : numpy.ndarray, shape (k,)
        Monte-Carlo probability of being best (``nan`` during burn-in).
    method : str
        ``"thompson"``, ``"top_two"`` or ``"burn_in"``.
    draws : int
        Monte-Carlo draws used (0 during burn-in).

    Examples
    --------
    >>> r = thompson_allocation(BetaPosterior(np.ones(2), np.ones(2)), [0, 0],
    ...                         np.random.default_rng(1), min_n=10)
    >>> r.method, r.weights.tolist(), r.to_dict()["probability_best"]
    ('burn_in', [0.5, 0.5], [None, None])
    """

    weights: np.ndarray
    probability_best: np.ndarray
    method: str
    draws: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict.

        Returns
        -------
        dict

        Examples
        --------
        >>> AllocationResult(np.ones(1), np.ones(1), "thompson", 10).to_dict()["draws"]
        10
        """
        return {
            "weights": _json_list(self.weights),
            "probability_best": _json_list(self.probability_best),
            "method": self.method,
            "draws": self.draws,
        }


def thompson_allocation(
    posterior: BetaPosterior | NormalPosterior,
    n_units: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    draws: int = 10_000,
    top_two: bool = False,
    beta: float = 0.5,
    floor: float = 0.0,
    min_n: int = 0,
    initial_weights: Sequence[float] | np.ndarray | None = None,
) -> AllocationResult:
    """Thompson (or top-two Thompson) allocation with a floor and a burn-in.

    Parameters
    ----------
    posterior : BetaPosterior or NormalPosterior
        Per-variant posteriors, k variants (higher is better).
    n_units : array_like of int, shape (k,)
        Units seen per variant (for the burn-in).
    rng : numpy.random.Generator
        Source of randomness; record its seed with the decision.
    draws : int, default 10_000
        Monte-Carlo draws (standard error of each probability <= 0.5/sqrt(draws)).
    top_two : bool, default False
        Top-two Thompson sampling instead of plain probability matching.
    beta : float, default 0.5
        Leader share for top-two.
    floor : float, default 0.0
        Minimum weight of every variant (``<= 1/k``).
    min_n : int, default 0
        Burn-in: keep ``initial_weights`` until every variant has this many units (and,
        for normal posteriors, at least 2).
    initial_weights : array_like, shape (k,), optional
        Weights during burn-in (default equal).

    Returns
    -------
    AllocationResult

    Examples
    --------
    >>> post = BetaPosterior.from_stats(
    ...     [VariantStats(1000, 100, 100), VariantStats(1000, 125, 125),
    ...      VariantStats(1000, 95, 95)])
    >>> r = thompson_allocation(post, [1000, 1000, 1000], np.random.default_rng(3),
    ...                         top_two=True, floor=0.05, min_n=100)
    >>> r.method, r.weights.round(2).tolist()
    ('top_two', [0.39, 0.5, 0.11])
    """
    n = np.asarray(n_units)
    k = n.size
    start = (
        np.full(k, 1.0 / k)
        if initial_weights is None
        else np.asarray(initial_weights, dtype=float) / np.sum(initial_weights)
    )
    burn_in = bool(np.any(n < min_n)) or not posterior.is_proper
    if isinstance(posterior, NormalPosterior):
        burn_in = burn_in or bool(np.any(n < 2))
    if burn_in:
        return AllocationResult(apply_floor(start, floor), np.full(k, np.nan), "burn_in", 0)
    samples = posterior.sample(rng, draws)
    best = probability_best(samples)
    if top_two:
        weights, method = top_two_weights(samples, beta, best), "top_two"
    else:
        weights, method = best, "thompson"
    return AllocationResult(apply_floor(weights, floor), best, method, draws)


# --------------------------------------------------------------------------------------
# Period-weighted estimation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodWeightedResult:
    """Estimates that stay unbiased when allocation changes between periods.

    Attributes
    ----------
    means, mean_se : numpy.ndarray, shape (k,)
        Period-weighted mean of each variant and its standard error.
    differences, difference_se : numpy.ndarray, shape (k,)
        Period-weighted ``variant - control`` (0 for the control itself).
    ci_lower, ci_upper : numpy.ndarray, shape (k,)
        Normal ``1 - alpha`` interval of the differences.
    p_values : numpy.ndarray, shape (k,)
        Two-sided z-test of each difference (``nan`` for the control).
    period_weights : numpy.ndarray, shape (P,)
        Each period's share of all traffic.

    Examples
    --------
    >>> n = np.array([[100, 100]]); s = np.array([[10.0, 20.0]])
    >>> period_weighted_estimate(n, s, s).differences.tolist()
    [0.0, 0.1]
    """

    means: np.ndarray
    mean_se: np.ndarray
    differences: np.ndarray
    difference_se: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    p_values: np.ndarray
    period_weights: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of lists (``nan`` -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> n = np.array([[100, 100]]); s = np.array([[10.0, 20.0]])
        >>> period_weighted_estimate(n, s, s).to_dict()["p_values"][0] is None
        True
        """
        return {
            name: _json_list(getattr(self, name))
            for name in (
                "means",
                "mean_se",
                "differences",
                "difference_se",
                "ci_lower",
                "ci_upper",
                "p_values",
                "period_weights",
            )
        }


def period_arrays(
    periods: Sequence[Mapping[str, VariantStats]], variants: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack per-period, per-variant statistics into arrays.

    Parameters
    ----------
    periods : sequence of mapping of str to VariantStats, length P
        Statistics of each allocation epoch (missing variants count as empty).
    variants : sequence of str, length k
        Column order.

    Returns
    -------
    n, sums, sum_squares : numpy.ndarray, each shape (P, k)

    Examples
    --------
    >>> n, s, q = period_arrays([{"a": VariantStats(2, 1, 1)}, {"b": VariantStats(3, 2, 2)}],
    ...                         ["a", "b"])
    >>> n.tolist()
    [[2.0, 0.0], [0.0, 3.0]]
    """
    empty = VariantStats()
    cells = [[period.get(v, empty) for v in variants] for period in periods]
    n = np.array([[c.n for c in row] for row in cells], dtype=float).reshape(len(periods), -1)
    sums = np.array([[c.sum for c in row] for row in cells], dtype=float).reshape(n.shape)
    sq = np.array([[c.sum_squares for c in row] for row in cells], dtype=float).reshape(n.shape)
    return n, sums, sq


def period_weighted_estimate(
    n: np.ndarray,
    sums: np.ndarray,
    sum_squares: np.ndarray,
    control: int = 0,
    alpha: float = 0.05,
) -> PeriodWeightedResult:
    """Stratify by allocation period and weight periods by their share of all traffic.

    Each difference uses only periods in which both the variant and the control have
    units (their weights renormalised), so the estimand is the traffic-weighted average
    effect over those periods.

    Parameters
    ----------
    n, sums, sum_squares : numpy.ndarray, shape (P, k)
        Units, sum and sum of squares per period and variant.
    control : int, default 0
        Column of the control.
    alpha : float, default 0.05

    Returns
    -------
    PeriodWeightedResult
        ``nan`` where a variant never had units.  Cells with a single unit borrow the
        variant's variance over all periods.

    Examples
    --------
    >>> n = np.array([[500, 500], [200, 800]])           # allocation shifts to variant 1
    >>> rate = np.array([[0.10, 0.10], [0.20, 0.20]])    # base rate drifts, no effect
    >>> s = n * rate
    >>> r = period_weighted_estimate(n, s, s)
    >>> r.differences.round(4).tolist(), round(float(s[:, 1].sum() / 1300 - s[:, 0].sum() / 700), 4)
    ([0.0, 0.0], 0.033)
    """
    n = np.asarray(n, dtype=float)
    sums = np.asarray(sums, dtype=float)
    sum_squares = np.asarray(sum_squares, dtype=float)
    if n.ndim != 2 or sums.shape != n.shape or sum_squares.shape != n.shape:
        raise ValueError("n, sums and sum_squares must have the same shape (P, k)")
    with np.errstate(invalid="ignore", divide="ignore"):
        cell_mean = np.where(n > 0, sums / n, np.nan)
        cell_var = np.where(
            n > 1, np.maximum(sum_squares - sums * cell_mean, 0.0) / (n - 1), np.nan
        )
        total_n = n.sum(axis=0)
        overall_mean = sums.sum(axis=0) / total_n
        overall_var = np.maximum(sum_squares.sum(axis=0) - sums.sum(axis=0) * overall_mean, 0.0) / (
            total_n - 1
        )
        cell_var = np.where(n == 1, overall_var[None, :], cell_var)
        cell_sem2 = np.where(n > 0, cell_var / n, np.nan)
    period_total = n.sum(axis=1)
    grand_total = period_total.sum()
    period_weights = period_total / grand_total if grand_total > 0 else np.zeros_like(period_total)

    def weighted(values: np.ndarray, variances: np.ndarray, present: np.ndarray):
        w = np.where(present, period_total[:, None], 0.0)
        wsum = w.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = w / wsum
            est = np.where(wsum > 0, np.nansum(w * np.where(present, values, 0.0), axis=0), np.nan)
            var = np.where(
                wsum > 0, np.sum(w**2 * np.where(present, variances, 0.0), axis=0), np.nan
            )
        return est, np.sqrt(var)

    present = n > 0
    means, mean_se = weighted(cell_mean, cell_sem2, present)
    both = present & present[:, [control]]
    diff_values = cell_mean - cell_mean[:, [control]]
    diff_var = cell_sem2 + cell_sem2[:, [control]]
    differences, difference_se = weighted(diff_values, diff_var, both)
    differences[control] = 0.0
    difference_se[control] = 0.0
    crit = float(stats.norm.isf(alpha / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = differences / difference_se
        p_values = np.where(difference_se > 0, 2.0 * stats.norm.sf(np.abs(z)), np.nan)
    p_values[control] = np.nan
    return PeriodWeightedResult(
        means=means,
        mean_se=mean_se,
        differences=differences,
        difference_se=difference_se,
        ci_lower=differences - crit * difference_se,
        ci_upper=differences + crit * difference_se,
        p_values=p_values,
        period_weights=period_weights,
    )

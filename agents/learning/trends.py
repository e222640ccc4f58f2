"""Trend detection: Mann–Kendall test with Theil–Sen slope.

For a series ``x_1..x_n`` in time order the Mann–Kendall statistic is
``S = sum_{i<j} sign(x_j - x_i)``. Under "no trend" ``E[S] = 0`` and, with ``t_k`` the sizes
of the groups of tied values (Kendall 1975; Hirsch, Slack & Smith 1982; Gilbert 1987,
eq. 16.4)::

    var(S) = [n (n-1) (2n+5) - sum_k t_k (t_k-1) (2 t_k+5)] / 18

The test statistic uses a continuity correction, ``Z = (S - sign(S)) / sqrt(var(S))``
(``Z = 0`` when ``S = 0``), and the two-sided p-value ``2 (1 - Phi(|Z|))``. ``S`` is the
numerator of Kendall's tau between time and value, so the reported ``tau`` is Kendall's
tau-b, ``S / sqrt(n0 (n0 - n_ties))`` with ``n0 = n (n-1) / 2`` and ``n_ties`` the number of
tied value pairs; without ties it is ``S / n0``. The magnitude is the Theil–Sen slope
(median of pairwise slopes, ``scipy.stats.theilslopes``) with its confidence interval.

Optionally the variance is inflated for serial correlation by the Hamed & Rao (1998)
correction: ranks of the series detrended by the Theil–Sen slope, their sample
autocorrelations ``rho_k`` that are significant at ``alpha``, and
``var*(S) = var(S) * [1 + 2 / (n (n-1) (n-2)) sum_k (n-k) (n-k-1) (n-k-2) rho_k]``.
The factor is floored at 1 (the correction only ever widens the test); otherwise the
computation follows pymannkendall's ``hamed_rao_modification_test``.

The normal approximation is the usual one for ``n >= 10`` (Gilbert 1987); shorter series are
tested the same way but rarely reach significance. An exact small-sample distribution and a
seasonal variant are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "MannKendallResult",
    "classify_trend",
    "mann_kendall",
    "mann_kendall_statistics",
]

Trend = Literal["improving", "declining", "stable", "insufficient_data"]


def _tie_term(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sum t(t-1)(2t+5) and the number of tied pairs sum t(t-1)/2."""
    m, n = sorted_rows.shape
    if n == 0:
        return np.zeros(m), np.zeros(m)
    starts = np.ones((m, n), dtype=bool)
    starts[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    group = np.cumsum(starts, axis=1) - 1 + n * np.arange(m)[:, None]
    t = np.bincount(group.ravel(), minlength=m * n).reshape(m, n).astype(float)
    return (t * (t - 1) * (2 * t + 5)).sum(axis=1), (t * (t - 1) / 2).sum(axis=1)


def mann_kendall_statistics(
    X: np.ndarray, *, continuity: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mann–Kendall ``S``, ``var(S)``, ``Z`` and two-sided p-values for many series at once.

    Parameters
    ----------
    X : ndarray, shape (m, n) or (n,)
        Series in time order along the last axis, no missing values.
    continuity : bool
        Apply the continuity correction ``S - sign(S)``.

    Returns
    -------
    s, var_s, z, p : ndarray, each of shape (m,)
        Statistic, tie-corrected variance, standardised statistic and p-value. A series
        whose values are all equal has ``var_s = 0``, ``z = 0`` and ``p = 1``.

    Examples
    --------
    >>> import numpy as np
    >>> s, var_s, z, p = mann_kendall_statistics(np.array([[1.0, 2.0, 2.0, 4.0, 3.0, 5.0]]))
    >>> float(s[0]), round(float(var_s[0]), 4), round(float(p[0]), 4)
    (12.0, 27.3333, 0.0354)
    """
    X = np.atleast_2d(np.asarray(X, dtype=float))
    if X.ndim != 2:
        raise ValueError("X must have shape (m, n)")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must not hold missing values; drop them first")
    m, n = X.shape
    s = np.zeros(m)
    # One comparison row per lag start keeps memory at O(m n) instead of O(m n^2).
    for i in range(n - 1):
        s += np.sign(X[:, i + 1 :] - X[:, i : i + 1]).sum(axis=1)
    ties, _ = _tie_term(np.sort(X, axis=1))
    var_s = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    numerator = s - np.sign(s) if continuity else s
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var_s > 0, numerator / np.sqrt(np.where(var_s > 0, var_s, 1.0)), 0.0)
    p = np.minimum(1.0, 2.0 * stats.norm.sf(np.abs(z)))
    return s, var_s, z, p


def _hamed_rao_factor(x: np.ndarray, slope: float, alpha: float, max_lag: int | None) -> float:
    n = x.size
    if n < 3:
        return 1.0
    ranks = stats.rankdata(x - slope * np.arange(1, n + 1))
    y = ranks - ranks.mean()
    acov = np.correlate(y, y, "full")[n - 1 :] / n
    if acov[0] == 0:
        return 1.0
    acf = acov / acov[0]
    last = n - 1 if max_lag is None else min(max_lag, n - 1)
    lags = np.arange(1, last + 1)
    bound = stats.norm.ppf(1 - alpha / 2) / np.sqrt(n)
    rho = acf[lags]
    significant = np.abs(rho) > bound
    k = lags[significant]
    total = np.sum((n - k) * (n - k - 1) * (n - k - 2) * rho[significant])
    # Only inflate: a factor below 1 (even below 0) comes from noisy negative
    # autocorrelation estimates and would make the test anti-conservative or undefined.
    return max(1.0, float(1.0 + 2.0 / (n * (n - 1) * (n - 2)) * total))


@dataclass(frozen=True)
class MannKendallResult:
    """Outcome of :func:`mann_kendall`; numeric fields are ``None`` without enough data.

    Parameters
    ----------
    n : int
        Points used (missing values dropped).
    trend : str
        ``"improving"``, ``"declining"``, ``"stable"`` or ``"insufficient_data"``.
    direction : str
        ``"increasing"``, ``"decreasing"`` or ``"none"`` (significant monotone direction).
    s, var_s, z, p_value, tau : float or None
        Statistic, (corrected) variance, standardised statistic, two-sided p-value and
        Kendall's tau-b.
    slope, intercept, slope_low, slope_high : float or None
        Theil–Sen slope per unit of time, its intercept and confidence interval.
    alpha : float
        Significance level used.
    variance_correction : str
        ``"none"`` or ``"hamed_rao"``.
    variance_factor : float
        Factor applied to ``var(S)`` (1 without a correction).

    Examples
    --------
    >>> r = mann_kendall([1.0, 2.0, 2.0, 4.0, 3.0, 5.0])
    >>> r.trend, r.direction, r.s, round(r.tau, 4), r.slope
    ('improving', 'increasing', 12.0, 0.8281, 0.75)
    """

    n: int
    trend: Trend
    direction: str
    s: float | None
    var_s: float | None
    z: float | None
    p_value: float | None
    tau: float | None
    slope: float | None
    intercept: float | None
    slope_low: float | None
    slope_high: float | None
    alpha: float
    variance_correction: str = "none"
    variance_factor: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return asdict(self)


def classify_trend(
    direction: str, significant: bool, higher_is_better: bool
) -> Literal["improving", "declining", "stable"]:
    """Name a trend from its direction, significance and the metric's orientation.

    Parameters
    ----------
    direction : str
        ``"increasing"``, ``"decreasing"`` or ``"none"``.
    significant : bool
        Whether the test rejected "no trend".
    higher_is_better : bool
        True for metrics like conversion, False for metrics like latency.

    Returns
    -------
    str
        ``"improving"``, ``"declining"`` or ``"stable"``.

    Examples
    --------
    >>> classify_trend("increasing", True, higher_is_better=False)
    'declining'
    >>> classify_trend("increasing", False, higher_is_better=True)
    'stable'
    """
    if not significant or direction == "none":
        return "stable"
    return "improving" if (direction == "increasing") == higher_is_better else "declining"


def mann_kendall(
    values: Sequence[float] | np.ndarray,
    times: Sequence[float] | np.ndarray | None = None,
    *,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    continuity: bool = True,
    variance_correction: Literal["none", "hamed_rao"] = "none",
    max_lag: int | None = None,
    min_points: int = 3,
) -> MannKendallResult:
    """Mann–Kendall trend test with Theil–Sen slope and a verdict for the metric.

    Parameters
    ----------
    values : array_like, shape (n,)
        Metric values; NaN marks a missing value and is dropped with its time.
    times : array_like, shape (n,), optional
        Strictly increasing times (e.g. window starts in hours) for the slope; defaults to
        ``0..n-1``. The test itself only uses the order.
    alpha : float
        Significance level; the slope interval has confidence ``1 - alpha``.
    higher_is_better : bool
        Orientation of the metric for the improving / declining verdict.
    continuity : bool
        Use the continuity correction in ``Z``.
    variance_correction : {"none", "hamed_rao"}
        Optional Hamed & Rao (1998) correction for serial correlation.
    max_lag : int, optional
        Largest autocorrelation lag considered by the correction (default ``n - 1``).
    min_points : int
        Fewer non-missing points give ``trend="insufficient_data"``.

    Returns
    -------
    MannKendallResult
        Test result, slope and verdict.

    Examples
    --------
    >>> import numpy as np
    >>> latency = 200 + 5 * np.arange(12.0) + np.tile([3.0, -3.0], 6)
    >>> r = mann_kendall(latency, higher_is_better=False)
    >>> r.trend, r.slope, r.p_value < 0.001
    ('declining', 5.0, True)
    >>> mann_kendall([1.0, np.nan]).trend
    'insufficient_data'
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    if variance_correction not in ("none", "hamed_rao"):
        raise ValueError("variance_correction must be 'none' or 'hamed_rao'")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError("values must be one-dimensional")
    t = np.arange(x.size, dtype=float) if times is None else np.asarray(times, dtype=float)
    if t.shape != x.shape:
        raise ValueError("times must have the same shape as values")
    if np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        raise ValueError("times must be finite and strictly increasing")
    keep = np.isfinite(x)
    x, t = x[keep], t[keep]
    n = int(x.size)
    if n < max(min_points, 2):
        return MannKendallResult(
            n=n,
            trend="insufficient_data",
            direction="none",
            s=None,
            var_s=None,
            z=None,
            p_value=None,
            tau=None,
            slope=None,
            intercept=None,
            slope_low=None,
            slope_high=None,
            alpha=alpha,
            variance_correction=variance_correction,
        )

    s_arr, var_arr, _, _ = mann_kendall_statistics(x[None, :], continuity=continuity)
    s, var_s = float(s_arr[0]), float(var_arr[0])
    slope, intercept, low, high = stats.theilslopes(x, t, alpha=1 - alpha)

    factor = 1.0
    if variance_correction == "hamed_rao":
        # Detrend on the index scale as Hamed & Rao do, whatever the time unit.
        index_slope = slope if times is None else stats.theilslopes(x)[0]
        factor = _hamed_rao_factor(x, float(index_slope), alpha, max_lag)
        var_s *= factor

    numerator = (s - np.sign(s)) if continuity else s
    z = numerator / np.sqrt(var_s) if var_s > 0 else 0.0
    p = float(min(1.0, 2.0 * stats.norm.sf(abs(z))))

    n0 = n * (n - 1) / 2
    _, tied_pairs = _tie_term(np.sort(x)[None, :])
    denom = np.sqrt(n0 * (n0 - tied_pairs[0]))
    tau = float(s / denom) if denom > 0 else 0.0

    significant = p < alpha
    direction = "none" if not significant or s == 0 else ("increasing" if s > 0 else "decreasing")
    return MannKendallResult(
        n=n,
        trend=classify_trend(direction, significant, higher_is_better),
        direction=direction,
        s=s,
        var_s=var_s,
        z=float(z),
        p_value=p,
        tau=tau,
        slope=float(slope),
        intercept=float(intercept),
        slope_low=float(low),
        slope_high=float(high),
        alpha=alpha,
        variance_correction=variance_correction,
        variance_factor=factor,
    )

"""Before/after impact of an improvement over matched windows.

* Rates (e.g. conversion): difference ``p_after - p_before`` with the unpooled Wald
  interval and test (statsmodels ``confint_proportions_2indep(method="wald")``).
* Means (e.g. satisfaction, latency): Welch's difference with Welch–Satterthwaite degrees of
  freedom (scipy ``ttest_ind(equal_var=False)``).
* Relative lift ``after / before - 1`` with a delta-method normal interval::

      var(lift) = var(after) / before^2 + after^2 var(before) / before^4

  where ``var(.)`` is the variance of each window's estimate.
* ROI, when a value per conversion (or per unit of the mean metric) and a positive cost are
  configured::

      delta = difference * n_after          (extra conversions in the after window)
      ROI   = (delta * value - cost) / cost

  ROI is linear in the difference, so its interval is the difference's interval mapped
  through the same formula.

Missing data gives ``None`` fields instead of exceptions: an empty window leaves everything
``None``; zero variance leaves intervals and p-values ``None``; a non-positive baseline
leaves the relative lift ``None``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "ImpactResult",
    "MatchedWindows",
    "SampleSummary",
    "matched_windows",
    "mean_impact",
    "rate_impact",
]


@dataclass(frozen=True)
class SampleSummary:
    """Mergeable summary of one window: count, sum and sum of squares.

    Parameters
    ----------
    n : int
        Number of observations.
    total : float
        Sum of the observations.
    total_squares : float
        Sum of their squares.

    Examples
    --------
    >>> a = SampleSummary.from_values([1.0, 2.0])
    >>> b = SampleSummary.from_values([3.0, 6.0])
    >>> (a + b).mean, round((a + b).variance, 4)
    (3.0, 4.6667)
    """

    n: int
    total: float
    total_squares: float

    @classmethod
    def from_values(cls, values: np.ndarray | list[float]) -> SampleSummary:
        """Summary of the finite values of a 1-D array, shape (n,)."""
        x = np.asarray(values, dtype=float)
        x = x[np.isfinite(x)]
        return cls(int(x.size), float(x.sum()), float(np.sum(x * x)))

    def __add__(self, other: SampleSummary) -> SampleSummary:
        return SampleSummary(
            self.n + other.n, self.total + other.total, self.total_squares + other.total_squares
        )

    @property
    def mean(self) -> float:
        """Sample mean (NaN when empty)."""
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance with ``ddof=1`` (NaN below two observations)."""
        if self.n < 2:
            return math.nan
        centred = self.total_squares - self.total * self.total / self.n
        # Round-off can push a zero variance slightly negative.
        return max(0.0, centred / (self.n - 1))


@dataclass(frozen=True)
class ImpactResult:
    """Measured impact; numeric fields are ``None`` where the data cannot support them.

    Parameters
    ----------
    kind : {"rate", "mean"}
        Metric type.
    n_before, n_after : int
        Window sizes (sessions or observations).
    before, after : float or None
        Estimates in each window.
    difference, ci_low, ci_high : float or None
        ``after - before`` and its ``1 - alpha`` interval.
    p_value : float or None
        Two-sided p-value of "no difference".
    relative_lift, lift_ci_low, lift_ci_high : float or None
        ``after / before - 1`` and its delta-method interval.
    delta_conversions : float or None
        ``difference * n_after``: extra conversions (or units) in the after window.
    roi, roi_ci_low, roi_ci_high : float or None
        ``(delta * value - cost) / cost`` and its interval, when configured.
    df : float or None
        Welch degrees of freedom (means only).
    alpha : float
        Significance level.

    Examples
    --------
    >>> rate_impact(0, 0, 5, 10).difference is None
    True
    """

    kind: Literal["rate", "mean"]
    n_before: int
    n_after: int
    before: float | None = None
    after: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    relative_lift: float | None = None
    lift_ci_low: float | None = None
    lift_ci_high: float | None = None
    delta_conversions: float | None = None
    roi: float | None = None
    roi_ci_low: float | None = None
    roi_ci_high: float | None = None
    df: float | None = None
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """True when the p-value is below ``alpha``."""
        return self.p_value is not None and self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return asdict(self)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")


def _lift(
    before: float, after: float, var_before: float, var_after: float, z: float
) -> tuple[float | None, float | None, float | None]:
    if before <= 0:
        return None, None, None
    lift = after / before - 1.0
    var = var_after / before**2 + after**2 * var_before / before**4
    if var <= 0:
        return lift, None, None
    half = z * math.sqrt(var)
    return lift, lift - half, lift + half


def _roi(
    difference: float,
    ci: tuple[float, float] | None,
    n_after: int,
    value: float | None,
    cost: float | None,
) -> tuple[float | None, float | None, float | None, float | None]:
    delta = difference * n_after
    if value is None or cost is None or cost <= 0:
        return delta, None, None, None

    def roi(d: float) -> float:
        return (d * n_after * value - cost) / cost

    if ci is None:
        return delta, roi(difference), None, None
    ends = sorted((roi(ci[0]), roi(ci[1])))
    return delta, roi(difference), ends[0], ends[1]


def rate_impact(
    conversions_before: int,
    n_before: int,
    conversions_after: int,
    n_after: int,
    *,
    alpha: float = 0.05,
    value_per_conversion: float | None = None,
    cost: float | None = None,
) -> ImpactResult:
    """Impact on a rate: two-proportion Wald difference, lift and ROI.

    Parameters
    ----------
    conversions_before, n_before : int
        Conversions and sessions in the before window.
    conversions_after, n_after : int
        Conversions and sessions in the after window.
    alpha : float
        Intervals have confidence ``1 - alpha``.
    value_per_conversion : float, optional
        Value of one conversion, for ROI.
    cost : float, optional
        Cost of the improvement (positive), for ROI.

    Returns
    -------
    ImpactResult
        Difference, interval, p-value, relative lift, extra conversions and ROI.

    Examples
    --------
    >>> r = rate_impact(100, 1000, 120, 1000, value_per_conversion=50.0, cost=400.0)
    >>> round(r.difference, 4), round(r.ci_low, 4), round(r.ci_high, 4), round(r.p_value, 4)
    (0.02, -0.0074, 0.0474, 0.1527)
    >>> round(r.relative_lift, 4), round(r.delta_conversions, 6), round(r.roi, 6)
    (0.2, 20.0, 1.5)
    """
    _check_alpha(alpha)
    for x, n in ((conversions_before, n_before), (conversions_after, n_after)):
        if n < 0 or x < 0 or x > n:
            raise ValueError("need 0 <= conversions <= n")
    if n_before == 0 or n_after == 0:
        return ImpactResult(
            kind="rate",
            n_before=n_before,
            n_after=n_after,
            before=conversions_before / n_before if n_before else None,
            after=conversions_after / n_after if n_after else None,
            alpha=alpha,
        )
    p_b = conversions_before / n_before
    p_a = conversions_after / n_after
    var_b = p_b * (1 - p_b) / n_before
    var_a = p_a * (1 - p_a) / n_after
    diff = p_a - p_b
    se = math.sqrt(var_a + var_b)
    z = float(stats.norm.ppf(1 - alpha / 2))
    ci = p = None
    if se > 0:
        ci = (diff - z * se, diff + z * se)
        p = float(2 * stats.norm.sf(abs(diff) / se))
    lift, lift_lo, lift_hi = _lift(p_b, p_a, var_b, var_a, z)
    delta, roi, roi_lo, roi_hi = _roi(diff, ci, n_after, value_per_conversion, cost)
    return ImpactResult(
        kind="rate",
        n_before=n_before,
        n_after=n_after,
        before=p_b,
        after=p_a,
        difference=diff,
        ci_low=None if ci is None else ci[0],
        ci_high=None if ci is None else ci[1],
        p_value=p,
        relative_lift=lift,
        lift_ci_low=lift_lo,
        lift_ci_high=lift_hi,
        delta_conversions=delta,
        roi=roi,
        roi_ci_low=roi_lo,
        roi_ci_high=roi_hi,
        alpha=alpha,
    )


def mean_impact(
    before: SampleSummary,
    after: SampleSummary,
    *,
    alpha: float = 0.05,
    value_per_unit: float | None = None,
    cost: float | None = None,
) -> ImpactResult:
    """Impact on a mean: Welch difference, lift and (optionally) ROI.

    Parameters
    ----------
    before, after : SampleSummary
        Window summaries (build them with :meth:`SampleSummary.from_values` or merge
        per-partition summaries with ``+``).
    alpha : float
        Intervals have confidence ``1 - alpha``.
    value_per_unit : float, optional
        Value of one unit of the metric per observation, for ROI
        (``delta = difference * n_after`` units).
    cost : float, optional
        Cost of the improvement (positive), for ROI.

    Returns
    -------
    ImpactResult
        Difference, Welch interval and p-value, degrees of freedom and relative lift.

    Examples
    --------
    >>> b = SampleSummary.from_values([3.0, 4.0, 3.5, 4.5, 3.0])
    >>> a = SampleSummary.from_values([4.0, 4.5, 5.0, 4.0, 4.5, 5.0])
    >>> r = mean_impact(b, a)
    >>> round(r.difference, 3), round(r.p_value, 4), round(r.df, 2)
    (0.9, 0.035, 6.9)
    """
    _check_alpha(alpha)
    if before.n == 0 or after.n == 0:
        return ImpactResult(
            kind="mean",
            n_before=before.n,
            n_after=after.n,
            before=before.mean if before.n else None,
            after=after.mean if after.n else None,
            alpha=alpha,
        )
    m_b, m_a = before.mean, after.mean
    diff = m_a - m_b
    result: dict[str, Any] = {
        "kind": "mean",
        "n_before": before.n,
        "n_after": after.n,
        "before": m_b,
        "after": m_a,
        "difference": diff,
        "alpha": alpha,
    }
    if before.n < 2 or after.n < 2:
        delta, roi, _, _ = _roi(diff, None, after.n, value_per_unit, cost)
        return ImpactResult(**result, delta_conversions=delta, roi=roi)
    var_b = before.variance / before.n
    var_a = after.variance / after.n
    se2 = var_a + var_b
    ci = None
    if se2 > 0:
        df = se2**2 / (var_a**2 / (after.n - 1) + var_b**2 / (before.n - 1))
        t = float(stats.t.ppf(1 - alpha / 2, df))
        se = math.sqrt(se2)
        ci = (diff - t * se, diff + t * se)
        result.update(
            ci_low=ci[0],
            ci_high=ci[1],
            p_value=float(2 * stats.t.sf(abs(diff) / se, df)),
            df=float(df),
        )
    z = float(stats.norm.ppf(1 - alpha / 2))
    lift, lift_lo, lift_hi = _lift(m_b, m_a, var_b, var_a, z)
    delta, roi, roi_lo, roi_hi = _roi(diff, ci, after.n, value_per_unit, cost)
    return ImpactResult(
        **result,
        relative_lift=lift,
        lift_ci_low=lift_lo,
        lift_ci_high=lift_hi,
        delta_conversions=delta,
        roi=roi,
        roi_ci_low=roi_lo,
        roi_ci_high=roi_hi,
    )


@dataclass(frozen=True)
class MatchedWindows:
    """Equal-length windows before and after a change, ``[start, end)``.

    Parameters
    ----------
    before_start, before_end, after_start, after_end : float
        Window bounds (same unit as the inputs).

    Examples
    --------
    >>> MatchedWindows(0.0, 10.0, 12.0, 22.0).length
    10.0
    """

    before_start: float
    before_end: float
    after_start: float
    after_end: float

    @property
    def length(self) -> float:
        """Length of each window."""
        return self.after_end - self.after_start


def matched_windows(
    change_at: float, length: float, *, washout: float = 0.0, now: float | None = None
) -> MatchedWindows | None:
    """Windows of equal length on either side of a change, skipping a washout period.

    The before window ends ``washout`` before the change and the after window starts
    ``washout`` after it. When ``now`` cuts the after window short, both windows shrink
    to the available length so they stay matched.

    Parameters
    ----------
    change_at : float
        Time of the change.
    length : float
        Desired window length (positive).
    washout : float
        Gap left out on each side of the change (non-negative).
    now : float, optional
        Current time; data after it does not exist yet.

    Returns
    -------
    MatchedWindows or None
        ``None`` when no after-window data exists yet.

    Examples
    --------
    >>> matched_windows(100.0, 30.0, washout=5.0)
    MatchedWindows(before_start=65.0, before_end=95.0, after_start=105.0, after_end=135.0)
    >>> matched_windows(100.0, 30.0, washout=5.0, now=115.0).length
    10.0
    """
    if length <= 0 or washout < 0:
        raise ValueError("length must be positive and washout non-negative")
    after_start = change_at + washout
    available = length if now is None else min(length, now - after_start)
    if available <= 0:
        return None
    before_end = change_at - washout
    return MatchedWindows(
        before_start=before_end - available,
        before_end=before_end,
        after_start=after_start,
        after_end=after_start + available,
    )

"""Fixed-horizon statistics for A/B experiments over mergeable sufficient statistics.

State per variant is a :class:`VariantStats` (``n``, ``sum``, ``sum_squares`` and, for
CUPED, the covariate sums ``sum_x``, ``sum_x2``, ``sum_xy``).  Two of them add to the
statistics of the union of their units, so partitions, windows and workers merge freely.
Everything here is computed when a result is read; nothing is stored but the sums.

Conventions
-----------
* "difference" is ``treatment - control``; "lift" is ``treatment / control - 1``.
* Binary metrics: two-proportion z-test with the pooled standard error under H0 (as
  ``statsmodels.stats.proportion.proportions_ztest``); the confidence interval of the
  difference uses the unpooled (Wald) standard error.
* Continuous metrics: Welch t-test with Welch-Satterthwaite degrees of freedom (as
  ``scipy.stats.ttest_ind(equal_var=False)``); the interval uses the same t quantile.
* Lift interval: delta method with a normal quantile.
* Undefined values (no data, zero variance) are ``nan`` in the dataclasses and ``None`` in
  ``to_dict()``; nothing raises on empty or constant data.
* Sample size and power are for the two-sided normal test of a pre-registered minimum
  detectable effect (not "observed power").  Binary: pooled standard deviation under H0,
  unpooled under H1 (Fleiss; statsmodels ``samplesize_proportions_2indep_onetail`` and
  ``power_proportions_2indep``), *not* Cohen's arcsine effect size ``proportion_effectsize``
  used with ``NormalIndPower``, which is a different (variance-stabilised) approximation.
  Continuous: ``n = (z_{1-a/2} + z_power)^2 sd^2 (1 + 1/ratio) / mde^2`` (statsmodels
  ``NormalIndPower`` / ``zt_ind_solve_power`` with effect size ``mde / sd``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special, stats

__all__ = [
    "Comparison",
    "CupedAdjustment",
    "DifferenceTest",
    "ExperimentResult",
    "LiftInterval",
    "SRMResult",
    "VariantStats",
    "achieved_power",
    "analyze",
    "benjamini_hochberg",
    "beta_chance_to_beat",
    "beta_chance_to_beat_mc",
    "chance_to_beat_control",
    "compare",
    "cuped_adjustment",
    "holm",
    "normal_chance_to_beat",
    "relative_lift",
    "required_sample_size",
    "srm_level",
    "srm_test",
    "two_proportion_ztest",
    "welch_ttest",
]

MetricType = Literal["binary", "continuous"]
NAN = float("nan")

# Beta chance-to-beat: the exact sum has one term per unit of the smallest Beta parameter;
# beyond this many terms both posteriors are close to normal and quadrature is as exact.
_EXACT_SUM_MAX_TERMS = 2000
_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(256)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    return value


def _dataclass_dict(obj: Any) -> dict[str, Any]:
    return _json_safe(dataclasses.asdict(obj))


# --------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariantStats:
    """Mergeable sufficient statistics of one variant's metric (and optional covariate).

    Parameters
    ----------
    n : int
        Number of units.
    sum : float
        Sum of the metric ``y`` (conversions for a binary metric).
    sum_squares : float
        Sum of ``y**2`` (equals ``sum`` for a 0/1 metric).
    sum_x, sum_x2, sum_xy : float
        Sums of the pre-period covariate ``x``, ``x**2`` and ``x*y`` (CUPED); 0 if unused.

    Examples
    --------
    >>> a = VariantStats.from_values([1.0, 2.0, 3.0])
    >>> b = VariantStats.from_values([4.0, 5.0])
    >>> (a + b).mean, (a + b).variance
    (3.0, 2.5)
    >>> VariantStats.zero() + a == a
    True
    """

    n: int = 0
    sum: float = 0.0
    sum_squares: float = 0.0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0

    @classmethod
    def zero(cls) -> VariantStats:
        """The statistics of no units (identity of ``+``).

        Returns
        -------
        VariantStats

        Examples
        --------
        >>> VariantStats.zero().n
        0
        """
        return cls()

    @classmethod
    def from_values(
        cls, values: Sequence[float] | np.ndarray, covariate: Sequence[float] | None = None
    ) -> VariantStats:
        """Statistics of a batch of per-unit values in one pass.

        Parameters
        ----------
        values : array_like, shape (n,)
            Metric per unit (0/1 for a binary metric).
        covariate : array_like, shape (n,), optional
            Pre-period covariate per unit, for CUPED.

        Returns
        -------
        VariantStats

        Examples
        --------
        >>> VariantStats.from_values([0, 1, 1, 0], covariate=[1, 2, 3, 4])
        VariantStats(n=4, sum=2.0, sum_squares=2.0, sum_x=10.0, sum_x2=30.0, sum_xy=5.0)
        """
        y = np.asarray(values, dtype=float).ravel()
        if covariate is None:
            return cls(int(y.size), float(y.sum()), float(y @ y))
        x = np.asarray(covariate, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"covariate shape {x.shape} != values shape {y.shape}")
        return cls(
            int(y.size), float(y.sum()), float(y @ y), float(x.sum()), float(x @ x), float(x @ y)
        )

    def __add__(self, other: VariantStats) -> VariantStats:
        if not isinstance(other, VariantStats):
            return NotImplemented
        return VariantStats(
            self.n + other.n,
            self.sum + other.sum,
            self.sum_squares + other.sum_squares,
            self.sum_x + other.sum_x,
            self.sum_x2 + other.sum_x2,
            self.sum_xy + other.sum_xy,
        )

    @property
    def mean(self) -> float:
        """Mean of ``y`` (``nan`` without data)."""
        return self.sum / self.n if self.n > 0 else NAN

    @property
    def variance(self) -> float:
        """Sample variance of ``y`` (``ddof=1``; ``nan`` for ``n < 2``)."""
        return _sample_moment(self.n, self.sum, self.sum, self.sum_squares)

    @property
    def covariate_mean(self) -> float:
        """Mean of the covariate ``x`` (``nan`` without data)."""
        return self.sum_x / self.n if self.n > 0 else NAN

    @property
    def covariate_variance(self) -> float:
        """Sample variance of ``x`` (``ddof=1``)."""
        return _sample_moment(self.n, self.sum_x, self.sum_x, self.sum_x2)

    @property
    def covariance(self) -> float:
        """Sample covariance of ``x`` and ``y`` (``ddof=1``)."""
        return _sample_moment(self.n, self.sum_x, self.sum, self.sum_xy)

    def to_dict(self) -> dict[str, float]:
        """Plain dict for tables and JSON.

        Returns
        -------
        dict

        Examples
        --------
        >>> VariantStats(2, 1.0, 1.0).to_dict()["n"]
        2
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> VariantStats:
        """Inverse of :meth:`to_dict` (missing CUPED sums default to 0).

        Parameters
        ----------
        data : mapping

        Returns
        -------
        VariantStats

        Examples
        --------
        >>> VariantStats.from_dict({"n": 2, "sum": 1.0, "sum_squares": 1.0}).mean
        0.5
        """
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _sample_moment(n: int, sum_a: float, sum_b: float, sum_ab: float) -> float:
    """``sum((a - mean_a) * (b - mean_b)) / (n - 1)`` from raw sums; nan for n < 2."""
    if n < 2:
        return NAN
    value = sum_ab - sum_a * sum_b / n
    # Cancellation leaves tiny residues for constant data; they are zero, not variance.
    if abs(value) <= 1e-12 * max(abs(sum_ab), abs(sum_a * sum_b / n)):
        return 0.0
    return value / (n - 1)


@dataclass(frozen=True, slots=True)
class _Moments:
    n: int
    mean: float
    variance: float


def _moments(s: VariantStats) -> _Moments:
    return _Moments(s.n, s.mean, s.variance)


# --------------------------------------------------------------------------------------
# Tests of the difference
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DifferenceTest:
    """A test of ``treatment - control`` with its confidence interval.

    Attributes
    ----------
    estimate : float
        ``mean_treatment - mean_control``.
    se : float
        Standard error used for the interval.
    statistic : float
        z or t statistic.
    df : float
        Degrees of freedom (``inf`` for z-tests).
    p_value : float
        Two-sided p-value.
    ci_lower, ci_upper : float
        ``1 - alpha`` interval of the difference.

    Examples
    --------
    >>> DifferenceTest._default_output().p_value
    nan
    """

    estimate: float
    se: float
    statistic: float
    df: float
    p_value: float
    ci_lower: float
    ci_upper: float

    @classmethod
    def _default_output(cls) -> DifferenceTest:
        return cls(NAN, NAN, NAN, NAN, NAN, NAN, NAN)


def _normal_p_and_stat(estimate: float, se_test: float) -> tuple[float, float]:
    if not se_test > 0:  # zero or nan: statistic undefined
        return NAN, NAN
    z = estimate / se_test
    return z, float(2.0 * stats.norm.sf(abs(z)))


def _interval(estimate: float, se: float, critical: float) -> tuple[float, float]:
    if se == 0.0:
        return estimate, estimate
    return estimate - critical * se, estimate + critical * se


def two_proportion_ztest(
    control: VariantStats, treatment: VariantStats, alpha: float = 0.05
) -> DifferenceTest:
    """Two-sided two-proportion z-test (pooled SE) and Wald interval (unpooled SE).

    Parameters
    ----------
    control, treatment : VariantStats
        ``sum`` is the number of conversions.
    alpha : float, default 0.05
        The interval has coverage ``1 - alpha``.

    Returns
    -------
    DifferenceTest
        ``df`` is ``inf``; undefined fields are ``nan`` (no data in an arm, or no
        conversions at all).

    Examples
    --------
    >>> r = two_proportion_ztest(VariantStats(1000, 100, 100), VariantStats(1000, 130, 130))
    >>> round(r.statistic, 4), round(r.p_value, 4)
    (2.1027, 0.0355)
    >>> round(r.ci_lower, 4), round(r.ci_upper, 4)
    (0.0021, 0.0579)
    """
    if control.n == 0 or treatment.n == 0:
        return DifferenceTest._default_output()
    p_c, p_t = control.mean, treatment.mean
    diff = p_t - p_c
    pooled = (control.sum + treatment.sum) / (control.n + treatment.n)
    se_pooled = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / control.n + 1 / treatment.n))
    statistic, p_value = _normal_p_and_stat(diff, se_pooled)
    se = math.sqrt(max(p_c * (1 - p_c), 0.0) / control.n + max(p_t * (1 - p_t), 0.0) / treatment.n)
    lower, upper = _interval(diff, se, float(stats.norm.isf(alpha / 2)))
    return DifferenceTest(diff, se, statistic, math.inf, p_value, lower, upper)


def _welch(c: _Moments, t: _Moments, alpha: float) -> DifferenceTest:
    if c.n < 2 or t.n < 2:
        return DifferenceTest._default_output()
    diff = t.mean - c.mean
    vc, vt = c.variance / c.n, t.variance / t.n
    se = math.sqrt(vc + vt)
    if se == 0.0:
        return DifferenceTest(diff, 0.0, NAN, NAN, NAN, diff, diff)
    df = (vc + vt) ** 2 / (vc**2 / (c.n - 1) + vt**2 / (t.n - 1))
    statistic = diff / se
    p_value = float(2.0 * stats.t.sf(abs(statistic), df))
    lower, upper = _interval(diff, se, float(stats.t.isf(alpha / 2, df)))
    return DifferenceTest(diff, se, statistic, df, p_value, lower, upper)


def welch_ttest(
    control: VariantStats, treatment: VariantStats, alpha: float = 0.05
) -> DifferenceTest:
    """Two-sided Welch t-test and t interval of the difference of means.

    Parameters
    ----------
    control, treatment : VariantStats
    alpha : float, default 0.05

    Returns
    -------
    DifferenceTest
        ``nan`` fields when an arm has fewer than 2 units or both variances are 0 (then
        the interval collapses to the observed difference).

    Examples
    --------
    >>> c = VariantStats.from_values([1.0, 2.0, 3.0, 4.0])
    >>> t = VariantStats.from_values([2.0, 4.0, 6.0, 8.0, 10.0])
    >>> r = welch_ttest(c, t)
    >>> round(r.statistic, 4), round(r.df, 3), round(r.p_value, 4)
    (2.2514, 5.521, 0.0691)
    """
    return _welch(_moments(control), _moments(treatment), alpha)


@dataclass(frozen=True, slots=True)
class LiftInterval:
    """Relative lift ``mean_t / mean_c - 1`` with a delta-method interval.

    Examples
    --------
    >>> LiftInterval._default_output().estimate
    nan
    """

    estimate: float
    se: float
    ci_lower: float
    ci_upper: float

    @classmethod
    def _default_output(cls) -> LiftInterval:
        return cls(NAN, NAN, NAN, NAN)


def _lift(c: _Moments, t: _Moments, alpha: float) -> LiftInterval:
    if c.n < 1 or t.n < 1 or c.mean == 0 or not math.isfinite(c.mean):
        return LiftInterval._default_output()
    ratio = t.mean / c.mean
    var_c = c.variance if c.n > 1 else NAN
    var_t = t.variance if t.n > 1 else NAN
    # Var(m_t / m_c) ~ Var(m_t) / m_c^2 + m_t^2 Var(m_c) / m_c^4 (independent arms).
    se = math.sqrt(var_t / t.n / c.mean**2 + t.mean**2 * var_c / c.n / c.mean**4)
    lower, upper = _interval(ratio - 1.0, se, float(stats.norm.isf(alpha / 2)))
    return LiftInterval(ratio - 1.0, se, lower, upper)


def relative_lift(
    control: VariantStats, treatment: VariantStats, alpha: float = 0.05
) -> LiftInterval:
    """Relative lift of the treatment mean over the control mean, delta-method interval.

    Parameters
    ----------
    control, treatment : VariantStats
    alpha : float, default 0.05

    Returns
    -------
    LiftInterval
        ``se = sqrt(s_t^2 / (n_t m_c^2) + m_t^2 s_c^2 / (n_c m_c^4))``; ``nan`` if the
        control mean is 0 or undefined.

    Examples
    --------
    >>> r = relative_lift(VariantStats(1000, 100, 100), VariantStats(1000, 130, 130))
    >>> round(r.estimate, 4), round(r.ci_lower, 4), round(r.ci_upper, 4)
    (0.3, -0.0193, 0.6193)
    """
    return _lift(_moments(control), _moments(treatment), alpha)


# --------------------------------------------------------------------------------------
# CUPED
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CupedAdjustment:
    """CUPED-adjusted moments ``y - theta (x - mean_x_pooled)`` of two arms.

    Attributes
    ----------
    theta : float
        ``cov(x, y) / var(x)`` from the pooled (control + treatment) statistics.
    control_mean, control_variance, treatment_mean, treatment_variance : float
        Adjusted means and sample variances.
    variance_reduction : float
        ``1 - var_adjusted / var_raw`` over both arms' pooled within-arm variance.

    Examples
    --------
    >>> CupedAdjustment._default_output().theta
    nan
    """

    theta: float
    control_mean: float
    control_variance: float
    treatment_mean: float
    treatment_variance: float
    variance_reduction: float

    @classmethod
    def _default_output(cls) -> CupedAdjustment:
        return cls(NAN, NAN, NAN, NAN, NAN, NAN)


def cuped_adjustment(control: VariantStats, treatment: VariantStats) -> CupedAdjustment:
    """CUPED (Deng et al. 2013) adjustment with ``theta`` from the pooled statistics.

    Per arm, ``var(y - theta x) = var(y) - 2 theta cov(x, y) + theta^2 var(x)`` and the
    adjusted mean is ``mean_y - theta (mean_x - mean_x_pooled)``; the Welch test on these
    moments equals the Welch test on the per-unit adjusted values.

    Parameters
    ----------
    control, treatment : VariantStats
        With the covariate sums filled.

    Returns
    -------
    CupedAdjustment
        ``theta = 0`` (no adjustment) when the covariate is constant; defaults when an
        arm has fewer than 2 units.

    Examples
    --------
    >>> c = VariantStats.from_values([1.0, 2.0, 4.0], covariate=[1.0, 2.0, 3.0])
    >>> t = VariantStats.from_values([2.0, 3.0, 6.0], covariate=[1.0, 3.0, 4.0])
    >>> round(cuped_adjustment(c, t).theta, 4)
    1.3636
    """
    if control.n < 2 or treatment.n < 2:
        return CupedAdjustment._default_output()
    pooled = control + treatment
    var_x = pooled.covariate_variance
    theta = pooled.covariance / var_x if var_x > 0 else 0.0
    mean_x = pooled.covariate_mean

    def adjust(s: VariantStats) -> tuple[float, float]:
        mean = s.mean - theta * (s.covariate_mean - mean_x)
        var = s.variance - 2 * theta * s.covariance + theta**2 * s.covariate_variance
        return mean, max(var, 0.0)

    mc, vc = adjust(control)
    mt, vt = adjust(treatment)
    raw = (control.n - 1) * control.variance + (treatment.n - 1) * treatment.variance
    adjusted = (control.n - 1) * vc + (treatment.n - 1) * vt
    reduction = 1.0 - adjusted / raw if raw > 0 else NAN
    return CupedAdjustment(theta, mc, vc, mt, vt, reduction)


# --------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1).

    Parameters
    ----------
    p_values : array_like, shape (m,)
        Raw p-values; ``nan`` entries are ignored and stay ``nan`` (m counts the rest).

    Returns
    -------
    numpy.ndarray, shape (m,)
        Adjusted p-values; equal to ``statsmodels ... multipletests(method="holm")[1]``.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, NAN)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(stepped, 1.0)
    return out


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate).

    Parameters
    ----------
    p_values : array_like, shape (m,)
        Raw p-values; ``nan`` entries are ignored and stay ``nan``.

    Returns
    -------
    numpy.ndarray, shape (m,)
        Equal to ``multipletests(method="fdr_bh")[1]``.

    Examples
    --------
    >>> benjamini_hochberg([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, NAN)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


# --------------------------------------------------------------------------------------
# Sample ratio mismatch
# --------------------------------------------------------------------------------------


def srm_level(p_value: float) -> str:
    """Alert tier of an SRM p-value: ``"red"`` (< 0.001), ``"warn"`` (< 0.01) or ``"ok"``.

    Parameters
    ----------
    p_value : float

    Returns
    -------
    str
        ``"ok"`` also for an undefined (``nan``) p-value.

    Examples
    --------
    >>> srm_level(0.005), srm_level(0.0001), srm_level(0.2)
    ('warn', 'red', 'ok')
    """
    if p_value < 0.001:
        return "red"
    if p_value < 0.01:
        return "warn"
    return "ok"


@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio-mismatch test result.

    Attributes
    ----------
    statistic : float
        Pearson chi-square statistic.
    p_value : float
    observed : tuple of int, length k
    expected : tuple of float, length k
        ``total * weight / sum(weights)``.
    level : str
        Alert tier, see :func:`srm_level`.

    Examples
    --------
    >>> SRMResult._default_output(2).level
    'ok'
    """

    statistic: float
    p_value: float
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    level: str

    @classmethod
    def _default_output(cls, k: int) -> SRMResult:
        return cls(NAN, NAN, (0,) * k, (0.0,) * k, "ok")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan`` -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> SRMResult._default_output(2).to_dict()["p_value"] is None
        True
        """
        return _dataclass_dict(self)


def srm_test(
    counts: Sequence[int] | np.ndarray, weights: Sequence[float] | np.ndarray
) -> SRMResult:
    """Pearson chi-square test of the observed units per variant against the allocation.

    Parameters
    ----------
    counts : array_like of int, shape (k,)
        Units per variant.
    weights : array_like of float, shape (k,)
        Allocation weights (normalised internally).  Variants with weight 0 must have no
        units (else the p-value is 0); they do not count as categories.

    Returns
    -------
    SRMResult
        Equal to ``scipy.stats.chisquare(counts, total * weights / sum(weights))``.

    Examples
    --------
    >>> r = srm_test([5100, 4900], [0.5, 0.5])
    >>> round(r.statistic, 3), round(r.p_value, 4), r.level
    (4.0, 0.0455, 'ok')
    """
    observed = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    total = observed.sum()
    k = observed.size
    if total <= 0 or w.sum() <= 0:
        return SRMResult._default_output(k)
    expected = total * w / w.sum()
    obs_tuple = tuple(int(c) for c in observed)
    if np.any((expected == 0) & (observed > 0)):
        return SRMResult(math.inf, 0.0, obs_tuple, tuple(expected.tolist()), "red")
    used = expected > 0
    if used.sum() < 2:
        return SRMResult(NAN, NAN, obs_tuple, tuple(expected.tolist()), "ok")
    statistic = float(((observed[used] - expected[used]) ** 2 / expected[used]).sum())
    p_value = float(stats.chi2.sf(statistic, used.sum() - 1))
    return SRMResult(statistic, p_value, obs_tuple, tuple(expected.tolist()), srm_level(p_value))


# --------------------------------------------------------------------------------------
# Bayesian chance to beat control
# --------------------------------------------------------------------------------------


def _beta_exact_sum(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(X2 > X1), X_i ~ Beta(a_i, b_i), integer a2 (Evan Miller's closed form)."""
    i = np.arange(int(a2), dtype=float)
    log_terms = (
        special.betaln(a1 + i, b1 + b2)
        - np.log(b2 + i)
        - special.betaln(1.0 + i, b2)
        - special.betaln(a1, b1)
    )
    return float(np.exp(log_terms).sum())


def _beta_quadrature(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(X2 > X1) by Gauss-Legendre over the narrower density's +-12 sd window."""

    def sd(a: float, b: float) -> float:
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))

    nodes, weights = _GAUSS_LEGENDRE
    if sd(a2, b2) <= sd(a1, b1):  # integrate f_2 * F_1
        narrow, other, complement = (a2, b2), (a1, b1), False
    else:  # P(X2 > X1) = 1 - P(X1 > X2) = 1 - integral f_1 * F_2
        narrow, other, complement = (a1, b1), (a2, b2), True
    mean = narrow[0] / (narrow[0] + narrow[1])
    half = 12.0 * sd(*narrow)
    lo, hi = max(0.0, mean - half), min(1.0, mean + half)
    x = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    integrand = stats.beta.pdf(x, *narrow) * stats.beta.cdf(x, *other)
    value = float(0.5 * (hi - lo) * (weights @ integrand))
    return 1.0 - value if complement else value


def beta_chance_to_beat(
    alpha_control: float, beta_control: float, alpha_treatment: float, beta_treatment: float
) -> float:
    """``P(p_treatment > p_control)`` for independent Beta posteriors.

    Exact closed-form sum (Evan Miller, "Formulas for Bayesian A/B testing") when the
    parameters are integers, iterating over whichever of the four parameters is smallest
    (by the symmetries ``P(X2 > X1) = 1 - P(X1 > X2)`` and ``1 - X ~ Beta(b, a)``);
    Gauss-Legendre quadrature when that is above 2000 terms or parameters are fractional.

    Parameters
    ----------
    alpha_control, beta_control, alpha_treatment, beta_treatment : float
        Posterior parameters, e.g. ``1 + conversions`` and ``1 + n - conversions`` under
        the uniform Beta(1, 1) prior.

    Returns
    -------
    float
        Probability in ``[0, 1]``.

    Examples
    --------
    >>> round(beta_chance_to_beat(1 + 100, 1 + 900, 1 + 130, 1 + 870), 4)
    0.9822
    >>> beta_chance_to_beat(1, 1, 1, 1)
    0.5
    """
    a1, b1, a2, b2 = (
        float(v) for v in (alpha_control, beta_control, alpha_treatment, beta_treatment)
    )
    if min(a1, b1, a2, b2) <= 0:
        raise ValueError("Beta parameters must be positive")
    smallest = min(a1, b1, a2, b2)
    integral = all(float(v).is_integer() for v in (a1, b1, a2, b2))
    if not integral or smallest > _EXACT_SUM_MAX_TERMS:
        return min(max(_beta_quadrature(a1, b1, a2, b2), 0.0), 1.0)
    if smallest == a2:
        value = _beta_exact_sum(a1, b1, a2, b2)
    elif smallest == a1:
        value = 1.0 - _beta_exact_sum(a2, b2, a1, b1)
    elif smallest == b1:  # P(X2 > X1) = P(1 - X1 > 1 - X2), 1 - X1 ~ Beta(b1, a1)
        value = _beta_exact_sum(b2, a2, b1, a1)
    else:
        value = 1.0 - _beta_exact_sum(b1, a1, b2, a2)
    return min(max(value, 0.0), 1.0)


def beta_chance_to_beat_mc(
    alpha_control: float,
    beta_control: float,
    alpha_treatment: float,
    beta_treatment: float,
    rng: np.random.Generator,
    draws: int = 100_000,
) -> float:
    """Monte-Carlo estimate of :func:`beta_chance_to_beat` (standard error <= 0.5/sqrt(draws)).

    Parameters
    ----------
    alpha_control, beta_control, alpha_treatment, beta_treatment : float
        Beta posterior parameters.
    rng : numpy.random.Generator
        Source of randomness (record its seed with the decision).
    draws : int, default 100_000

    Returns
    -------
    float

    Examples
    --------
    >>> p = beta_chance_to_beat_mc(101, 901, 131, 871, np.random.default_rng(7))
    >>> abs(p - 0.9822) < 0.003
    True
    """
    control = rng.beta(alpha_control, beta_control, size=draws)
    treatment = rng.beta(alpha_treatment, beta_treatment, size=draws)
    return float(np.mean(treatment > control))


def normal_chance_to_beat(
    mean_control: float, se_control: float, mean_treatment: float, se_treatment: float
) -> float:
    """``P(mu_t > mu_c)`` for independent normal posteriors (flat prior).

    Parameters
    ----------
    mean_control, se_control, mean_treatment, se_treatment : float
        Posterior means and standard deviations (standard errors of the means).

    Returns
    -------
    float
        ``Phi((m_t - m_c) / sqrt(se_c^2 + se_t^2))``; 0.5 for a zero difference with zero
        uncertainty, ``nan`` if undefined.

    Examples
    --------
    >>> round(normal_chance_to_beat(10.0, 0.3, 10.5, 0.4), 4)
    0.8413
    """
    diff = mean_treatment - mean_control
    scale = math.hypot(se_control, se_treatment)
    if not math.isfinite(diff) or not math.isfinite(scale):
        return NAN
    if scale == 0:
        return 0.5 if diff == 0 else float(diff > 0)
    return float(stats.norm.cdf(diff / scale))


def chance_to_beat_control(
    control: VariantStats, treatment: VariantStats, metric_type: MetricType
) -> float:
    """Bayesian chance that the treatment mean exceeds the control mean.

    Binary: Beta(1, 1) prior, exact :func:`beta_chance_to_beat`.  Continuous: normal
    approximation :func:`normal_chance_to_beat` with the standard errors of the means.

    Parameters
    ----------
    control, treatment : VariantStats
    metric_type : {"binary", "continuous"}

    Returns
    -------
    float
        ``nan`` when a continuous arm has fewer than 2 units.

    Examples
    --------
    >>> c, t = VariantStats(1000, 100, 100), VariantStats(1000, 130, 130)
    >>> round(chance_to_beat_control(c, t, "binary"), 4)
    0.9822
    """
    if metric_type == "binary":
        return beta_chance_to_beat(
            1 + control.sum,
            1 + control.n - control.sum,
            1 + treatment.sum,
            1 + treatment.n - treatment.sum,
        )
    if control.n < 2 or treatment.n < 2:
        return NAN
    return normal_chance_to_beat(
        control.mean,
        math.sqrt(control.variance / control.n),
        treatment.mean,
        math.sqrt(treatment.variance / treatment.n),
    )


# --------------------------------------------------------------------------------------
# Sample size and power
# --------------------------------------------------------------------------------------


def _null_alt_sd(
    mde: float, metric_type: MetricType, baseline: float, sd: float | None, ratio: float
) -> tuple[float, float]:
    """Per-unit standard deviations (for n_control = 1) under H0 and H1."""
    if metric_type == "binary":
        p_c, p_t = baseline, baseline + mde
        if not (0.0 <= p_c <= 1.0 and 0.0 <= p_t <= 1.0):
            return NAN, NAN
        pooled = (p_c + ratio * p_t) / (1 + ratio)
        sd_null = math.sqrt(pooled * (1 - pooled) * (1 + 1 / ratio))
        sd_alt = math.sqrt(p_c * (1 - p_c) + p_t * (1 - p_t) / ratio)
        return sd_null, sd_alt
    if sd is None:
        return NAN, NAN
    common = sd * math.sqrt(1 + 1 / ratio)
    return common, common


def required_sample_size(
    mde: float,
    metric_type: MetricType,
    *,
    baseline: float = NAN,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Units needed in the control arm (treatment: ``ratio`` times as many).

    Two-sided test at level ``alpha``, one-tail approximation (the far tail adds less
    than ``alpha / 2`` of power).  Binary: ``n = (z_{1-a/2} sd0 + z_power sd1)^2 / mde^2``
    with ``sd0`` from the pooled rate (H0) and ``sd1`` unpooled (H1); continuous:
    ``n = (z_{1-a/2} + z_power)^2 sd^2 (1 + 1/ratio) / mde^2``.

    Parameters
    ----------
    mde : float
        Absolute minimum detectable difference ``treatment - control``.
    metric_type : {"binary", "continuous"}
    baseline : float
        Control conversion rate (binary).
    sd : float, optional
        Per-unit standard deviation (continuous).
    alpha, power : float
    ratio : float, default 1.0
        ``n_treatment / n_control``.

    Returns
    -------
    float
        Not rounded (``math.ceil`` it for a plan); ``nan`` if undefined; ``inf`` for
        ``mde == 0``.

    Examples
    --------
    >>> round(required_sample_size(0.01, "binary", baseline=0.10), 1)
    14750.8
    >>> round(required_sample_size(0.5, "continuous", sd=2.0), 1)
    251.2
    """
    if mde == 0:
        return math.inf
    sd_null, sd_alt = _null_alt_sd(mde, metric_type, baseline, sd, ratio)
    if not (math.isfinite(sd_null) and math.isfinite(sd_alt)):
        return NAN
    z_alpha = float(stats.norm.isf(alpha / 2))
    z_power = float(stats.norm.isf(1 - power))
    return max(z_alpha * sd_null + z_power * sd_alt, 0.0) ** 2 / mde**2


def achieved_power(
    mde: float,
    n_control: float,
    n_treatment: float,
    metric_type: MetricType,
    *,
    baseline: float = NAN,
    sd: float | None = None,
    alpha: float = 0.05,
) -> float:
    """Power of the two-sided test to detect ``mde`` with the current sample sizes.

    Both tails are counted, as in statsmodels ``power_proportions_2indep`` (binary) and
    ``NormalIndPower.power`` (continuous).

    Parameters
    ----------
    mde : float
        Absolute difference to detect.
    n_control, n_treatment : float
        Units per arm.
    metric_type : {"binary", "continuous"}
    baseline : float
        Control conversion rate (binary).
    sd : float, optional
        Per-unit standard deviation (continuous).
    alpha : float, default 0.05

    Returns
    -------
    float
        ``nan`` without data.

    Examples
    --------
    >>> round(achieved_power(0.01, 14751, 14751, "binary", baseline=0.10), 4)
    0.8
    """
    if n_control <= 0 or n_treatment <= 0:
        return NAN
    ratio = n_treatment / n_control
    sd_null, sd_alt = _null_alt_sd(mde, metric_type, baseline, sd, ratio)
    if not (math.isfinite(sd_null) and math.isfinite(sd_alt)) or sd_alt == 0:
        return NAN
    crit = float(stats.norm.isf(alpha / 2))
    shift = abs(mde) * math.sqrt(n_control) / sd_alt
    std_ratio = sd_null / sd_alt
    return float(
        stats.norm.sf(crit * std_ratio - shift) + stats.norm.cdf(-crit * std_ratio - shift)
    )


# --------------------------------------------------------------------------------------
# One comparison and a whole experiment
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control on one metric.

    Attributes
    ----------
    metric_type : str
    test : str
        ``"z"`` (two proportions), ``"welch"`` or ``"welch_cuped"``.
    alpha : float
    control_n, treatment_n : int
    control_mean, treatment_mean : float
        CUPED-adjusted when ``test == "welch_cuped"``.
    difference, difference_ci_lower, difference_ci_upper : float
    relative_lift, relative_lift_ci_lower, relative_lift_ci_upper : float
    statistic, df, p_value : float
    p_value_adjusted : float
        After the multiple-comparison correction (equals ``p_value`` for one comparison).
    significant : bool
        ``p_value_adjusted < alpha``.
    chance_to_beat_control : float
    power : float
        Achieved power for the experiment's MDE (``nan`` when no MDE was given).
    cuped_theta, variance_reduction : float
        ``nan`` without CUPED.

    Examples
    --------
    >>> Comparison._default_output("binary", 0.05).to_dict()["p_value"] is None
    True
    """

    metric_type: str
    test: str
    alpha: float
    control_n: int
    treatment_n: int
    control_mean: float
    treatment_mean: float
    difference: float
    difference_ci_lower: float
    difference_ci_upper: float
    relative_lift: float
    relative_lift_ci_lower: float
    relative_lift_ci_upper: float
    statistic: float
    df: float
    p_value: float
    p_value_adjusted: float
    significant: bool
    chance_to_beat_control: float
    power: float = NAN
    cuped_theta: float = NAN
    variance_reduction: float = NAN

    @classmethod
    def _default_output(
        cls, metric_type: str, alpha: float, control_n: int = 0, treatment_n: int = 0
    ) -> Comparison:
        return cls(
            metric_type, "none", alpha, control_n, treatment_n,
            *([NAN] * 12), False, NAN,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan``/``inf`` -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> c = compare(VariantStats(100, 10, 10), VariantStats(100, 20, 20), "binary")
        >>> sorted(c.to_dict())[:3]
        ['alpha', 'chance_to_beat_control', 'control_mean']
        """
        return _dataclass_dict(self)


def compare(
    control: VariantStats,
    treatment: VariantStats,
    metric_type: MetricType,
    alpha: float = 0.05,
    *,
    cuped: bool = False,
    mde: float | None = None,
    relative_mde: bool = True,
) -> Comparison:
    """All fixed-horizon statistics of one treatment against the control.

    Parameters
    ----------
    control, treatment : VariantStats
    metric_type : {"binary", "continuous"}
    alpha : float, default 0.05
    cuped : bool, default False
        Adjust with the pre-period covariate sums (then a Welch test on adjusted moments
        for either metric type).
    mde : float, optional
        Minimum detectable effect for the achieved power.
    relative_mde : bool, default True
        ``mde`` is relative to the control mean (else absolute).

    Returns
    -------
    Comparison
        Default output (``nan`` statistics) when an arm has no units.

    Examples
    --------
    >>> c = compare(VariantStats(1000, 100, 100), VariantStats(1000, 130, 130), "binary")
    >>> c.test, round(c.p_value, 4), round(c.relative_lift, 2), c.significant
    ('z', 0.0355, 0.3, True)
    """
    if metric_type not in ("binary", "continuous"):
        raise ValueError(f"metric_type must be 'binary' or 'continuous', got {metric_type!r}")
    if control.n == 0 or treatment.n == 0:
        return Comparison._default_output(metric_type, alpha, control.n, treatment.n)
    theta = reduction = NAN
    if cuped:
        adj = cuped_adjustment(control, treatment)
        c = _Moments(control.n, adj.control_mean, adj.control_variance)
        t = _Moments(treatment.n, adj.treatment_mean, adj.treatment_variance)
        test_name = "welch_cuped"
        diff_test = _welch(c, t, alpha)
        theta, reduction = adj.theta, adj.variance_reduction
    else:
        c, t = _moments(control), _moments(treatment)
        if metric_type == "binary":
            test_name = "z"
            diff_test = two_proportion_ztest(control, treatment, alpha)
        else:
            test_name = "welch"
            diff_test = _welch(c, t, alpha)
    lift = _lift(c, t, alpha)
    if cuped or metric_type == "continuous":
        chance = NAN
        if c.n > 1 and t.n > 1:
            chance = normal_chance_to_beat(
                c.mean, math.sqrt(c.variance / c.n), t.mean, math.sqrt(t.variance / t.n)
            )
    else:
        chance = chance_to_beat_control(control, treatment, "binary")
    power = NAN
    if mde is not None:
        absolute = mde * control.mean if relative_mde else mde
        if math.isfinite(absolute) and absolute != 0:
            power = achieved_power(
                absolute,
                control.n,
                treatment.n,
                metric_type,
                baseline=control.mean,
                sd=math.sqrt(control.variance) if control.n > 1 else None,
                alpha=alpha,
            )
    p = diff_test.p_value
    return Comparison(
        metric_type=metric_type,
        test=test_name,
        alpha=alpha,
        control_n=control.n,
        treatment_n=treatment.n,
        control_mean=c.mean,
        treatment_mean=t.mean,
        difference=t.mean - c.mean,
        difference_ci_lower=diff_test.ci_lower,
        difference_ci_upper=diff_test.ci_upper,
        relative_lift=lift.estimate,
        relative_lift_ci_lower=lift.ci_lower,
        relative_lift_ci_upper=lift.ci_upper,
        statistic=diff_test.statistic,
        df=diff_test.df,
        p_value=p,
        p_value_adjusted=p,
        significant=bool(p < alpha),
        chance_to_beat_control=chance,
        power=power,
        cuped_theta=theta,
        variance_reduction=reduction,
    )


@dataclass(frozen=True)
class ExperimentResult:
    """Full fixed-horizon result of an experiment on one metric.

    Attributes
    ----------
    control : str
    metric_type : str
    alpha, power, mde : float
    relative_mde : bool
    correction : str
        ``"holm"``, ``"fdr_bh"`` or ``"none"``.
    variants : dict of str to dict
        Per variant ``n``, ``mean``, ``sd``.
    comparisons : dict of str to Comparison
        Every non-control variant against the control.
    srm : SRMResult
    required_sample_size : float
        Units per variant for the MDE at ``alpha`` and ``power`` (equal allocation,
        baseline from the control; ``nan`` if undefined).

    Examples
    --------
    >>> r = analyze({"a": VariantStats(), "b": VariantStats()}, "a", {"a": 1, "b": 1})
    >>> r.to_dict()["comparisons"]["b"]["p_value"] is None
    True
    """

    control: str
    metric_type: str
    alpha: float
    power: float
    mde: float
    relative_mde: bool
    correction: str
    variants: dict[str, dict[str, float]]
    comparisons: dict[str, Comparison]
    srm: SRMResult
    required_sample_size: float
    cuped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan``/``inf`` -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> import json
        >>> r = analyze({"a": VariantStats(10, 1, 1), "b": VariantStats(12, 3, 3)}, "a")
        >>> json.loads(json.dumps(r.to_dict()))["control"]
        'a'
        """
        return _dataclass_dict(self)


def analyze(
    variants: Mapping[str, VariantStats],
    control: str,
    weights: Mapping[str, float] | None = None,
    metric_type: MetricType = "binary",
    alpha: float = 0.05,
    mde: float = 0.05,
    power: float = 0.8,
    *,
    relative_mde: bool = True,
    correction: Literal["holm", "fdr_bh", "none"] = "holm",
    cuped: bool = False,
) -> ExperimentResult:
    """Compare every variant with the control, correct for multiplicity, check SRM.

    Parameters
    ----------
    variants : mapping of str to VariantStats
        Statistics per variant (k entries, including the control).
    control : str
        Name of the control variant.
    weights : mapping of str to float, optional
        Allocation weights for the SRM test (default: equal).
    metric_type : {"binary", "continuous"}, default "binary"
    alpha : float, default 0.05
    mde : float, default 0.05
        Minimum detectable effect (relative to the control mean unless
        ``relative_mde=False``).
    power : float, default 0.8
        Target power for the required sample size.
    relative_mde : bool, default True
    correction : {"holm", "fdr_bh", "none"}, default "holm"
    cuped : bool, default False

    Returns
    -------
    ExperimentResult

    Examples
    --------
    >>> stats_ = {"control": VariantStats(1000, 100, 100),
    ...           "b": VariantStats(1000, 130, 130), "c": VariantStats(1000, 104, 104)}
    >>> r = analyze(stats_, "control", {"control": 1, "b": 1, "c": 1})
    >>> round(r.comparisons["b"].p_value_adjusted, 4), r.comparisons["c"].significant
    (0.071, False)
    >>> r.srm.level, round(r.required_sample_size)
    ('ok', 57763)
    """
    if control not in variants:
        raise ValueError(f"control {control!r} is not among the variants {list(variants)}")
    names = list(variants)
    treatments = [name for name in names if name != control]
    c_stats = variants[control]
    comparisons = {
        name: compare(
            c_stats,
            variants[name],
            metric_type,
            alpha,
            cuped=cuped,
            mde=mde,
            relative_mde=relative_mde,
        )
        for name in treatments
    }
    raw = np.array([comparisons[name].p_value for name in treatments])
    if correction == "holm":
        adjusted = holm(raw)
    elif correction == "fdr_bh":
        adjusted = benjamini_hochberg(raw)
    elif correction == "none":
        adjusted = raw
    else:
        raise ValueError(f"unknown correction {correction!r}")
    for name, p_adj in zip(treatments, adjusted.tolist(), strict=True):
        comparisons[name] = dataclasses.replace(
            comparisons[name], p_value_adjusted=p_adj, significant=bool(p_adj < alpha)
        )
    w = [1.0 if weights is None else float(weights.get(name, 0.0)) for name in names]
    srm = srm_test([variants[name].n for name in names], w)
    baseline = c_stats.mean
    absolute = mde * baseline if relative_mde else mde
    sd = math.sqrt(c_stats.variance) if c_stats.n > 1 else None
    required = (
        required_sample_size(
            absolute, metric_type, baseline=baseline, sd=sd, alpha=alpha, power=power
        )
        if math.isfinite(absolute)
        else NAN
    )
    summary = {
        name: {
            "n": s.n,
            "mean": s.mean,
            "sd": math.sqrt(s.variance) if s.n > 1 else NAN,
        }
        for name, s in variants.items()
    }
    return ExperimentResult(
        control=control,
        metric_type=metric_type,
        alpha=alpha,
        power=power,
        mde=mde,
        relative_mde=relative_mde,
        correction=correction,
        variants=summary,
        comparisons=comparisons,
        srm=srm,
        required_sample_size=required,
        cuped=cuped,
    )

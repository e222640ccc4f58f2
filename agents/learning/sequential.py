"""Anytime-valid tests for experiments whose results are read after every event.

A fixed-horizon p-value checked repeatedly ("peeking") rejects a true null far more often
than ``alpha``.  The tests here are built on non-negative martingales under the null, so
by Ville's inequality ``P(sup_n Lambda_n >= 1/alpha) <= alpha``: the running minimum of
``1/Lambda_n`` is a p-value that stays valid however often, and whenever, it is read.

mSPRT for a difference of means
    Johari, Koomen, Pekelis & Walsh (2017), "Peeking at A/B tests", after Robbins (1970).
    With ``theta_hat = mean_t - mean_c``, its variance ``V = var_c/n_c + var_t/n_t`` and a
    normal mixture ``theta ~ N(0, tau^2)`` over the alternative,

        Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 theta_hat^2 / (2 V (V + tau^2))).

    The always-valid p-value is ``p_n = min(p_{n-1}, 1 / Lambda_n)``.  Inverting the test
    gives the confidence sequence ``theta_hat +- sqrt(2 V (V + tau^2) / tau^2 *
    (ln(1/alpha) + ln(sqrt((V + tau^2) / V))))``, intersected over looks.  Variances are
    plugged in (for a binary metric: the pooled rate for the p-value, as in the z-test,
    and the unpooled rates for the interval), so validity is asymptotic; ``min_n`` keeps
    the very first, noisiest looks out.

    ``tau2`` is the mixing variance of the *standardised* effect ``theta / sd`` (``sd^2``
    the average per-unit variance of the arms); the absolute mixing variance is
    ``tau2 * sd^2``.  It should be about the square of the effect you care to detect:
    the default 0.05**2 suits effects of a few hundredths to a few tenths of a standard
    deviation, and a poor choice costs only logarithmically.

mSPRT with CUPED
    With a pre-period covariate ``x`` the same test runs on the CUPED-adjusted metric
    ``y - theta (x - mean_x)`` (Deng et al. 2013), ``theta = cov(x, y) / var(x)`` from the
    pooled arms at each look, exactly as the fixed-horizon ``abstats.cuped_adjustment``:
    ``theta_hat = (mean_t - mean_c) - theta (mean_x_t - mean_x_c)`` with the variance
    ``V = var_adj_c / n_c + var_adj_t / n_t``.  Randomisation makes ``x`` independent of
    the arm, so the adjusted difference estimates the same effect with variance
    ``(1 - rho^2)`` times smaller; plugging in ``theta`` from the data, like plugging in the
    variances, keeps validity asymptotic (Lindon, Ham, Tingley & Bojinov 2022,
    "Anytime-valid linear models and regression adjusted causal inference").  The mixing
    variance stays ``tau2`` times the *unadjusted* unit variance: the prior is over the
    absolute effect, which the adjustment does not change, so the gain shows as a smaller
    ``V`` against the same ``tau^2`` -- earlier decisions, narrower sequences.

Sequential SRM
    Lindon & Malek (2022), "Anytime-valid inference for multinomial count data".  The
    Bayes factor of a Dirichlet(``concentration * weights``) mixture against the
    allocation ``weights``,

        BF_n = B(a + x) / (B(a) prod_i w_i^{x_i}),   B(a) = prod Gamma(a_i) / Gamma(sum a),

    is a martingale under correct allocation; the p-value is the running minimum of
    ``1 / BF_n``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special

from agents.learning.abstats import VariantStats, srm_level

__all__ = [
    "DEFAULT_TAU2",
    "SequentialResult",
    "SequentialSRMResult",
    "SequentialSRMState",
    "SequentialState",
    "confidence_sequence_radius",
    "cuped_msprt_statistics",
    "msprt_log_likelihood_ratio",
    "msprt_statistics",
    "msprt_update",
    "sequential_srm",
    "srm_log_bayes_factor",
]

MetricType = Literal["binary", "continuous"]
NAN = float("nan")
DEFAULT_TAU2 = 0.05**2
DEFAULT_MIN_N = 30
DEFAULT_CONCENTRATION = 100.0


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def msprt_log_likelihood_ratio(
    estimate: float | np.ndarray,
    variance: float | np.ndarray,
    tau2: float | np.ndarray,
    null: float = 0.0,
) -> float | np.ndarray:
    """Log of the normal-mixture likelihood ratio ``Lambda`` of mSPRT.

    Parameters
    ----------
    estimate : float or numpy.ndarray, shape (...)
        Estimated difference ``theta_hat``.
    variance : float or numpy.ndarray, shape (...)
        Its variance ``V`` (squared standard error).
    tau2 : float or numpy.ndarray, shape (...)
        Absolute mixing variance ``tau^2`` (> 0).
    null : float, default 0.0
        Value of the difference under the null.

    Returns
    -------
    float or numpy.ndarray, shape (...)
        ``0.5 ln(V / (V + tau2)) + tau2 (theta_hat - null)^2 / (2 V (V + tau2))``; 0 (no
        evidence) where ``V`` is not positive.

    Examples
    --------
    >>> round(msprt_log_likelihood_ratio(0.1, 0.001, 0.01), 4)
    3.3465
    >>> msprt_log_likelihood_ratio(np.array([0.0, 0.1]), np.array([0.0, 0.001]), 0.01).round(4)
    array([0.    , 3.3465])
    """
    est = np.asarray(estimate, dtype=float)
    v = np.asarray(variance, dtype=float)
    t2 = np.asarray(tau2, dtype=float)
    ok = (v > 0) & np.isfinite(v) & np.isfinite(est) & (t2 > 0)
    v_safe = np.where(ok, v, 1.0)
    t2_safe = np.where(ok, t2, 1.0)
    d = np.where(ok, est - null, 0.0)
    value = 0.5 * np.log(v_safe / (v_safe + t2_safe)) + t2_safe * d * d / (
        2.0 * v_safe * (v_safe + t2_safe)
    )
    out = np.where(ok, value, 0.0)
    return float(out) if out.ndim == 0 else out


def confidence_sequence_radius(
    variance: float | np.ndarray, tau2: float | np.ndarray, alpha: float = 0.05
) -> float | np.ndarray:
    """Half-width of the mSPRT confidence sequence at one look.

    Parameters
    ----------
    variance : float or numpy.ndarray, shape (...)
        Variance ``V`` of the estimate.
    tau2 : float or numpy.ndarray, shape (...)
        Absolute mixing variance.
    alpha : float, default 0.05

    Returns
    -------
    float or numpy.ndarray, shape (...)
        ``sqrt(2 V (V + tau2) / tau2 * (ln(1/alpha) + 0.5 ln((V + tau2) / V)))``; ``inf``
        where ``V`` is not positive or ``tau2`` is 0.

    Examples
    --------
    >>> round(confidence_sequence_radius(0.001, 0.01), 4)
    0.0961
    """
    v = np.asarray(variance, dtype=float)
    t2 = np.asarray(tau2, dtype=float)
    ok = (v > 0) & np.isfinite(v) & (t2 > 0)
    v_safe = np.where(ok, v, 1.0)
    t2_safe = np.where(ok, t2, 1.0)
    r2 = (
        2.0
        * v_safe
        * (v_safe + t2_safe)
        / t2_safe
        * (math.log(1.0 / alpha) + 0.5 * np.log((v_safe + t2_safe) / v_safe))
    )
    out = np.where(ok, np.sqrt(r2), np.inf)
    return float(out) if out.ndim == 0 else out


def msprt_statistics(
    n_control: np.ndarray | float,
    sum_control: np.ndarray | float,
    sum_squares_control: np.ndarray | float,
    n_treatment: np.ndarray | float,
    sum_treatment: np.ndarray | float,
    sum_squares_treatment: np.ndarray | float,
    metric_type: MetricType = "continuous",
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
) -> dict[str, np.ndarray]:
    """mSPRT statistics at one look, vectorised over any batch of experiments / looks.

    Parameters
    ----------
    n_control, sum_control, sum_squares_control : array_like, shape (...)
        Control sufficient statistics.
    n_treatment, sum_treatment, sum_squares_treatment : array_like, shape (...)
        Treatment sufficient statistics.
    metric_type : {"binary", "continuous"}, default "continuous"
    alpha : float, default 0.05
        Level of the confidence sequence.
    tau2 : float, default ``DEFAULT_TAU2``
        Mixing variance of the standardised effect.
    min_n : int, default 30
        Looks with fewer units in either arm carry no evidence (``log_lr = 0``,
        infinite interval).

    Returns
    -------
    dict of str to numpy.ndarray, each shape (...)
        ``estimate``, ``variance`` (of the estimate, for the interval), ``log_lr`` and
        ``radius`` (of this look's interval, before intersecting).

    Examples
    --------
    >>> s = msprt_statistics(1000, 100, 100, 1000, 140, 140, "binary")
    >>> round(float(s["estimate"]), 3), round(float(s["log_lr"]), 3)
    (0.04, 1.699)
    """
    nc = np.asarray(n_control, dtype=float)
    nt = np.asarray(n_treatment, dtype=float)
    enough = (nc >= max(min_n, 2)) & (nt >= max(min_n, 2))
    nc_safe = np.where(enough, nc, 2.0)
    nt_safe = np.where(enough, nt, 2.0)
    sc = np.asarray(sum_control, dtype=float)
    st = np.asarray(sum_treatment, dtype=float)
    mean_c = sc / nc_safe
    mean_t = st / nt_safe
    estimate = mean_t - mean_c
    if metric_type == "binary":
        var_c = mean_c * (1.0 - mean_c)
        var_t = mean_t * (1.0 - mean_t)
        pooled = (sc + st) / (nc_safe + nt_safe)
        unit_var = pooled * (1.0 - pooled)
        test_var = unit_var * (1.0 / nc_safe + 1.0 / nt_safe)
    elif metric_type == "continuous":
        qc = np.asarray(sum_squares_control, dtype=float)
        qt = np.asarray(sum_squares_treatment, dtype=float)
        var_c = np.maximum(qc - sc * mean_c, 0.0) / (nc_safe - 1.0)
        var_t = np.maximum(qt - st * mean_t, 0.0) / (nt_safe - 1.0)
        unit_var = 0.5 * (var_c + var_t)
        test_var = var_c / nc_safe + var_t / nt_safe
    else:
        raise ValueError(f"metric_type must be 'binary' or 'continuous', got {metric_type!r}")
    ci_var = var_c / nc_safe + var_t / nt_safe
    abs_tau2 = tau2 * unit_var
    log_lr = np.where(enough, msprt_log_likelihood_ratio(estimate, test_var, abs_tau2), 0.0)
    radius = np.where(enough, confidence_sequence_radius(ci_var, abs_tau2, alpha), np.inf)
    return {
        "estimate": np.where(enough, estimate, np.nan),
        "variance": np.where(enough, ci_var, np.nan),
        "log_lr": log_lr,
        "radius": radius,
    }


ArmSums = Sequence[Any]
"""``(n, sum, sum_squares, sum_x, sum_x2, sum_xy)`` of one arm: floats or arrays, shape (...)."""


def cuped_msprt_statistics(
    control: ArmSums,
    treatment: ArmSums,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
) -> dict[str, np.ndarray]:
    """mSPRT statistics of the CUPED-adjusted difference at one look, vectorised.

    Parameters
    ----------
    control, treatment : sequence of 6 array_like, each shape (...)
        ``(n, sum, sum_squares, sum_x, sum_x2, sum_xy)`` of the metric ``y`` and the
        pre-period covariate ``x`` (the fields of ``VariantStats``), for any batch of
        experiments / looks. Either metric type: a 0/1 metric's sums are the same sums.
    alpha : float, default 0.05
        Level of the confidence sequence.
    tau2 : float, default ``DEFAULT_TAU2``
        Mixing variance of the standardised effect (standardised by the *unadjusted*
        unit variance, see the module docstring).
    min_n : int, default 30
        Looks with fewer units in either arm carry no evidence.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (...)
        ``estimate`` (adjusted difference), ``variance`` (its variance ``V``, used by both
        the test and the interval, as in the Welch test on adjusted moments), ``log_lr``,
        ``radius``, ``theta`` and ``variance_reduction`` (of the pooled within-arm
        variance, as ``abstats.cuped_adjustment`` reports it).

    Examples
    --------
    >>> c = (1000, 5000.0, 27000.0, 1000.0, 2000.0, 5800.0)
    >>> t = (1000, 5150.0, 28600.0, 1010.0, 2030.0, 6050.0)
    >>> s = cuped_msprt_statistics(c, t)
    >>> round(float(s["theta"]), 3), round(float(s["estimate"]), 4)
    (0.821, 0.1418)
    """
    nc, sc, qc, xc, x2c, xyc = (np.asarray(v, dtype=float) for v in control)
    nt, st, qt, xt, x2t, xyt = (np.asarray(v, dtype=float) for v in treatment)
    enough = (nc >= max(min_n, 2)) & (nt >= max(min_n, 2))
    nc = np.where(enough, nc, 2.0)
    nt = np.where(enough, nt, 2.0)

    def moment(n: np.ndarray, a: np.ndarray, b: np.ndarray, ab: np.ndarray) -> np.ndarray:
        return (ab - a * b / n) / (n - 1.0)

    n = nc + nt
    var_x = moment(n, xc + xt, xc + xt, x2c + x2t)
    cov = moment(n, xc + xt, sc + st, xyc + xyt)
    # A constant covariate carries no information: no adjustment, as in abstats.
    theta = np.where(var_x > 0, cov / np.where(var_x > 0, var_x, 1.0), 0.0)

    def adjusted_variance(
        n: np.ndarray, s: np.ndarray, q: np.ndarray, x: np.ndarray, x2: np.ndarray, xy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        var_y = np.maximum(moment(n, s, s, q), 0.0)
        adj = var_y - 2.0 * theta * moment(n, x, s, xy) + theta**2 * moment(n, x, x, x2)
        return var_y, np.maximum(adj, 0.0)

    var_c, adj_c = adjusted_variance(nc, sc, qc, xc, x2c, xyc)
    var_t, adj_t = adjusted_variance(nt, st, qt, xt, x2t, xyt)
    estimate = (st / nt - sc / nc) - theta * (xt / nt - xc / nc)
    variance = adj_c / nc + adj_t / nt
    abs_tau2 = tau2 * 0.5 * (var_c + var_t)
    log_lr = np.where(enough, msprt_log_likelihood_ratio(estimate, variance, abs_tau2), 0.0)
    radius = np.where(enough, confidence_sequence_radius(variance, abs_tau2, alpha), np.inf)
    # Defined as in abstats.cuped_adjustment, so the two reported reductions agree.
    raw = (nc - 1.0) * var_c + (nt - 1.0) * var_t
    kept = (nc - 1.0) * adj_c + (nt - 1.0) * adj_t
    reduction = np.where(raw > 0, 1.0 - kept / np.where(raw > 0, raw, 1.0), np.nan)
    return {
        "estimate": np.where(enough, estimate, np.nan),
        "variance": np.where(enough, variance, np.nan),
        "log_lr": log_lr,
        "radius": radius,
        "theta": np.where(enough, theta, np.nan),
        "variance_reduction": np.where(enough, reduction, np.nan),
    }


@dataclass(frozen=True, slots=True)
class SequentialState:
    """What an always-valid test must remember between looks (a few floats).

    Attributes
    ----------
    p_value : float
        Running minimum of ``1 / Lambda`` (starts at 1).
    ci_lower, ci_upper : float
        Running intersection of the confidence sequence.
    looks : int

    Examples
    --------
    >>> SequentialState.from_dict(SequentialState().to_dict()) == SequentialState()
    True
    """

    p_value: float = 1.0
    ci_lower: float = -math.inf
    ci_upper: float = math.inf
    looks: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (infinite bounds -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> SequentialState().to_dict()["ci_lower"] is None
        True
        """
        return {k: _finite_or_none(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequentialState:
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        data : dict

        Returns
        -------
        SequentialState

        Examples
        --------
        >>> SequentialState.from_dict({"p_value": 0.2, "looks": 3}).looks
        3
        """
        lower = data.get("ci_lower")
        upper = data.get("ci_upper")
        return cls(
            p_value=float(data.get("p_value", 1.0)),
            ci_lower=-math.inf if lower is None else float(lower),
            ci_upper=math.inf if upper is None else float(upper),
            looks=int(data.get("looks", 0)),
        )


@dataclass(frozen=True)
class SequentialResult:
    """One look of the always-valid test of ``treatment - control``.

    Attributes
    ----------
    estimate : float
        Current difference of means (``nan`` before ``min_n``).
    log_likelihood_ratio : float
        ``ln Lambda`` at this look.
    p_value : float
        Always-valid p-value (running minimum, capped at 1).
    ci_lower, ci_upper : float
        Running intersection of the ``1 - alpha`` confidence sequence.
    reject : bool
        ``p_value <= alpha``.
    alpha, tau2 : float
    state : SequentialState
        To store and pass to the next look.

    Examples
    --------
    >>> r = msprt_update(VariantStats(0), VariantStats(0), "binary")
    >>> r.p_value, r.reject, r.to_dict()["ci_lower"] is None
    (1.0, False, True)
    """

    estimate: float
    log_likelihood_ratio: float
    p_value: float
    ci_lower: float
    ci_upper: float
    reject: bool
    alpha: float
    tau2: float
    state: SequentialState

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan``/``inf`` -> ``None``).

        Returns
        -------
        dict

        Examples
        --------
        >>> msprt_update(VariantStats(0), VariantStats(0), "binary").to_dict()["looks"]
        1
        """
        out = {k: _finite_or_none(v) for k, v in dataclasses.asdict(self).items() if k != "state"}
        out["looks"] = self.state.looks
        return out


def _arm_sums(s: VariantStats) -> tuple[float, ...]:
    return (s.n, s.sum, s.sum_squares, s.sum_x, s.sum_x2, s.sum_xy)


def msprt_update(
    control: VariantStats,
    treatment: VariantStats,
    metric_type: MetricType,
    state: SequentialState | None = None,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
    *,
    cuped: bool = False,
) -> SequentialResult:
    """Read the mSPRT after new data: update the running p-value and interval.

    Parameters
    ----------
    control, treatment : VariantStats
        Cumulative statistics so far.
    metric_type : {"binary", "continuous"}
    state : SequentialState, optional
        State returned by the previous look (``None`` for the first).
    alpha : float, default 0.05
    tau2 : float, default ``DEFAULT_TAU2``
        Mixing variance of the standardised effect.
    min_n : int, default 30
        Minimum units per arm before a look counts.
    cuped : bool, default False
        Test the CUPED-adjusted difference (:func:`cuped_msprt_statistics`; the covariate
        sums of ``control`` and ``treatment`` must be filled). Use it for every look of a
        test or for none: the running minimum combines looks of one statistic.

    Returns
    -------
    SequentialResult

    Examples
    --------
    >>> s = None
    >>> for n, conv_c, conv_t in [(500, 50, 70), (1000, 100, 140), (2000, 200, 290)]:
    ...     r = msprt_update(VariantStats(n, conv_c, conv_c), VariantStats(n, conv_t, conv_t),
    ...                      "binary", s)
    ...     s = r.state
    >>> round(r.p_value, 4), r.reject, round(r.ci_lower, 4) > 0
    (0.0022, True, True)
    """
    state = state or SequentialState()
    if metric_type not in ("binary", "continuous"):
        raise ValueError(f"metric_type must be 'binary' or 'continuous', got {metric_type!r}")
    if cuped:
        s = cuped_msprt_statistics(_arm_sums(control), _arm_sums(treatment), alpha, tau2, min_n)
    else:
        s = msprt_statistics(
            control.n,
            control.sum,
            control.sum_squares,
            treatment.n,
            treatment.sum,
            treatment.sum_squares,
            metric_type,
            alpha,
            tau2,
            min_n,
        )
    log_lr = float(s["log_lr"])
    p_now = math.exp(-log_lr) if log_lr > 0 else 1.0
    p_value = min(state.p_value, p_now, 1.0)
    estimate = float(s["estimate"])
    radius = float(s["radius"])
    lower, upper = state.ci_lower, state.ci_upper
    if math.isfinite(radius):
        lower = max(lower, estimate - radius)
        upper = min(upper, estimate + radius)
        if lower > upper:  # plug-in variances made the sequence empty; restart from now
            lower, upper = estimate - radius, estimate + radius
    new_state = SequentialState(p_value, lower, upper, state.looks + 1)
    return SequentialResult(
        estimate=estimate,
        log_likelihood_ratio=log_lr,
        p_value=p_value,
        ci_lower=lower,
        ci_upper=upper,
        reject=p_value <= alpha,
        alpha=alpha,
        tau2=tau2,
        state=new_state,
    )


# --------------------------------------------------------------------------------------
# Sequential sample-ratio-mismatch test
# --------------------------------------------------------------------------------------


def srm_log_bayes_factor(
    counts: Sequence[int] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    concentration: float = DEFAULT_CONCENTRATION,
) -> float | np.ndarray:
    """Log Dirichlet-multinomial Bayes factor against the allocation (Lindon & Malek 2022).

    Parameters
    ----------
    counts : array_like of int, shape (..., k)
        Units per variant (cumulative), for any batch of experiments / looks.
    weights : array_like of float, shape (k,)
        Allocation weights (normalised internally).
    concentration : float, default 100
        Dirichlet prior ``a = concentration * weights``, centred on the allocation.

    Returns
    -------
    float or numpy.ndarray, shape (...)
        ``ln BF``; ``inf`` when a variant with weight 0 has units.

    Examples
    --------
    >>> round(srm_log_bayes_factor([5000, 5000], [0.5, 0.5]), 3)
    -2.31
    >>> round(srm_log_bayes_factor([5300, 4700], [0.5, 0.5]), 3)
    15.524
    """
    x = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    used = w > 0
    impossible = np.any(x[..., ~used] > 0, axis=-1)
    x_used = x[..., used]
    w_used = w[used]
    a = concentration * w_used
    n = x_used.sum(axis=-1)
    log_bf = (
        special.gammaln(a.sum())
        - special.gammaln(a.sum() + n)
        + (special.gammaln(a + x_used) - special.gammaln(a)).sum(axis=-1)
        - (x_used * np.log(w_used)).sum(axis=-1)
    )
    out = np.where(impossible, np.inf, log_bf)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True, slots=True)
class SequentialSRMState:
    """Running state of the sequential SRM test.

    Attributes
    ----------
    p_value : float
        Running minimum of ``1 / BF`` (starts at 1).
    looks : int

    Examples
    --------
    >>> SequentialSRMState().p_value
    1.0
    """

    p_value: float = 1.0
    looks: int = 0


@dataclass(frozen=True)
class SequentialSRMResult:
    """One look of the sequential SRM test.

    Attributes
    ----------
    log_bayes_factor : float
    p_value : float
        Anytime-valid p-value.
    level : str
        ``"ok"``, ``"warn"`` (p < 0.01) or ``"red"`` (p < 0.001).
    state : SequentialSRMState

    Examples
    --------
    >>> sequential_srm([0, 0], [1, 1]).level
    'ok'
    """

    log_bayes_factor: float
    p_value: float
    level: str
    state: SequentialSRMState

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict.

        Returns
        -------
        dict

        Examples
        --------
        >>> sequential_srm([10, 12], [1, 1]).to_dict()["level"]
        'ok'
        """
        return {
            "log_bayes_factor": _finite_or_none(self.log_bayes_factor),
            "p_value": self.p_value,
            "level": self.level,
            "looks": self.state.looks,
        }


def sequential_srm(
    counts: Sequence[int] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    state: SequentialSRMState | None = None,
    concentration: float = DEFAULT_CONCENTRATION,
) -> SequentialSRMResult:
    """Read the anytime-valid SRM test with the current counts.

    Parameters
    ----------
    counts : array_like of int, shape (k,)
        Cumulative units per variant.
    weights : array_like of float, shape (k,)
        Allocation weights.
    state : SequentialSRMState, optional
        From the previous look.
    concentration : float, default 100

    Returns
    -------
    SequentialSRMResult

    Examples
    --------
    >>> r = sequential_srm([5300, 4700], [0.5, 0.5])
    >>> r.level, r.p_value < 1e-5
    ('red', True)
    """
    state = state or SequentialSRMState()
    log_bf = float(srm_log_bayes_factor(counts, weights, concentration))
    p_now = math.exp(-log_bf) if log_bf > 0 else 1.0
    p_value = min(state.p_value, p_now)
    return SequentialSRMResult(
        log_bayes_factor=log_bf,
        p_value=p_value,
        level=srm_level(p_value),
        state=SequentialSRMState(p_value, state.looks + 1),
    )

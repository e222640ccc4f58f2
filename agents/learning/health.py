"""Health checks: thresholds, escalation, de-duplication, missed runs and retry backoff.

Pure logic; the health agent feeds it metric observations and heartbeats and publishes the
alerts it returns.

* A :class:`Threshold` names a (component, metric), a direction (``"above"``: fail when the
  value is above a limit, ``"below"``: fail when it is below) and one limit per severity.
  An observation fails with the most severe level it breaches; limits are strict, so the
  spec's "conversion < 60 %" is ``Threshold(..., "below", (("warning", 0.6),))``.
* Escalation per check, one state machine per (component, metric)::

      passing --fail--> failing(level 0) --... k-th consecutive failure ...-->
      level = min(max_level, k // escalate_after) --pass--> passing (level 0, resolved)

  With the default ``escalate_after=3`` the level becomes 1 at the 3rd consecutive failure,
  2 at the 6th, and so on up to ``max_level``.
* De-duplication: an alert's key is ``component|metric|severity|level``; a failing check
  emits an alert only when its key differs from the last one emitted for that check, so an
  unchanged alert is not re-emitted, while escalation or a severity change is. Recovery
  emits one ``resolved`` alert and clears the key.
* Missed runs: a job with period ``interval`` and tolerance ``grace`` whose last heartbeat
  was at ``t0`` misses the run due at ``t0 + k interval`` when no heartbeat arrived by
  ``t0 + k interval + grace``.
* Retries: delay ``min(max_delay, base_delay * factor**attempt)`` with optional "full"
  (uniform on ``[0, d]``) or "equal" (``d/2 + uniform[0, d/2]``) jitter drawn from a passed
  ``np.random.Generator`` (Brooker 2015, "Exponential Backoff And Jitter").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "SEVERITY_ORDER",
    "Alert",
    "CheckResult",
    "CheckState",
    "EscalationPolicy",
    "HealthState",
    "MissedRuns",
    "RetryPolicy",
    "Threshold",
    "backoff_delays",
    "detect_missed_runs",
    "evaluate_thresholds",
    "missed_runs_between",
    "next_retry_delay",
    "process_results",
    "step_check",
]

SEVERITY_ORDER: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Threshold:
    """Limits for one (component, metric).

    Parameters
    ----------
    component, metric : str
        What the limits apply to.
    direction : {"above", "below"}
        ``"above"``: fail when the value exceeds a limit; ``"below"``: fail when it is less.
    levels : tuple of (severity, limit)
        One limit per severity from :data:`SEVERITY_ORDER`; the most severe breached level
        wins.

    Examples
    --------
    >>> t = Threshold("choices", "conversion", "below", (("warning", 0.6), ("critical", 0.4)))
    >>> t.severity_of(0.5), t.severity_of(0.3), t.severity_of(0.6)
    ('warning', 'critical', None)
    """

    component: str
    metric: str
    direction: Literal["above", "below"]
    levels: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if self.direction not in ("above", "below"):
            raise ValueError("direction must be 'above' or 'below'")
        if not self.levels:
            raise ValueError("at least one level is required")
        names = [name for name, _ in self.levels]
        if len(set(names)) != len(names) or any(n not in SEVERITY_ORDER for n in names):
            raise ValueError(f"severities must be unique and in {list(SEVERITY_ORDER)}")

    def severity_of(self, value: float) -> str | None:
        """Most severe breached level for one value, ``None`` when passing or NaN."""
        sev, _ = _breach(self, np.array([value], dtype=float))
        return sev[0]


def _breach(threshold: Threshold, values: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    ordered = sorted(threshold.levels, key=lambda lv: SEVERITY_ORDER[lv[0]])
    severity: np.ndarray = np.full(values.shape, -1)
    limit = np.full(values.shape, np.nan)
    for rank, (_, lim) in enumerate(ordered):
        hit = values > lim if threshold.direction == "above" else values < lim
        severity = np.where(hit, rank, severity)
        limit = np.where(hit, lim, limit)
    names = [None if s < 0 else ordered[s][0] for s in severity.tolist()]
    return names, limit


@dataclass(frozen=True)
class CheckResult:
    """One evaluated observation.

    Parameters
    ----------
    component, metric : str
        The check.
    value : float
        Observed value.
    timestamp : float
        Observation time (seconds; NaN when not given).
    severity : str or None
        Breached severity, ``None`` when passing.
    limit : float or None
        The breached limit.

    Examples
    --------
    >>> CheckResult("api", "latency_p95", 0.9, 0.0, "warning", 0.5).failing
    True
    """

    component: str
    metric: str
    value: float
    timestamp: float
    severity: str | None
    limit: float | None

    @property
    def failing(self) -> bool:
        """True when a limit is breached."""
        return self.severity is not None

    @property
    def key(self) -> tuple[str, str]:
        """``(component, metric)``."""
        return (self.component, self.metric)


def evaluate_thresholds(
    thresholds: Sequence[Threshold],
    components: Sequence[str] | np.ndarray,
    metrics: Sequence[str] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> list[CheckResult]:
    """Evaluate a batch of observations against the thresholds (vectorised per threshold).

    Observations of a (component, metric) without a threshold and NaN values are skipped
    (missing data is the business of :func:`detect_missed_runs`).

    Parameters
    ----------
    thresholds : sequence of Threshold
        At most one per (component, metric).
    components, metrics : array_like of str, shape (n,)
        Which check each observation belongs to.
    values : array_like of float, shape (n,)
        Observed values.
    timestamps : array_like of float, shape (n,), optional
        Observation times; results are returned in time order (stable).

    Returns
    -------
    list of CheckResult
        Passing and failing results; filter with ``r.failing`` for the failing checks.

    Examples
    --------
    >>> ts = [Threshold("choices", "avg_rank", "above", (("warning", 2.0),))]
    >>> out = evaluate_thresholds(ts, ["choices", "choices"], ["avg_rank", "avg_rank"],
    ...                           [1.5, 2.4], [0.0, 60.0])
    >>> [(r.value, r.severity) for r in out]
    [(1.5, None), (2.4, 'warning')]
    """
    comp = np.asarray(components, dtype=object)
    met = np.asarray(metrics, dtype=object)
    vals = np.asarray(values, dtype=float)
    n = vals.shape[0]
    times = np.full(n, np.nan) if timestamps is None else np.asarray(timestamps, dtype=float)
    if comp.shape != (n,) or met.shape != (n,) or times.shape != (n,):
        raise ValueError("components, metrics, values and timestamps must have shape (n,)")
    seen: set[tuple[str, str]] = set()
    picked: list[tuple[int, CheckResult]] = []
    for threshold in thresholds:
        key = (threshold.component, threshold.metric)
        if key in seen:
            raise ValueError(f"duplicate threshold for {key}")
        seen.add(key)
        idx = np.flatnonzero((comp == key[0]) & (met == key[1]) & np.isfinite(vals))
        if idx.size == 0:
            continue
        names, limits = _breach(threshold, vals[idx])
        for i, name, lim in zip(idx.tolist(), names, limits.tolist(), strict=True):
            picked.append(
                (
                    i,
                    CheckResult(
                        component=key[0],
                        metric=key[1],
                        value=float(vals[i]),
                        timestamp=float(times[i]),
                        severity=name,
                        limit=None if name is None else float(lim),
                    ),
                )
            )
    # Time order (NaN times keep input order) so the escalation sees the true sequence.
    order_time = np.where(np.isnan(times), -np.inf, times)
    picked.sort(key=lambda item: (order_time[item[0]], item[0]))
    return [result for _, result in picked]


# --------------------------------------------------------------------------- escalation


@dataclass(frozen=True)
class EscalationPolicy:
    """When a failing check escalates.

    Parameters
    ----------
    escalate_after : int
        Consecutive failures per escalation level.
    max_level : int
        Highest escalation level.

    Examples
    --------
    >>> [EscalationPolicy().level_for(k) for k in range(1, 11)]
    [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    """

    escalate_after: int = 3
    max_level: int = 3

    def __post_init__(self) -> None:
        if self.escalate_after < 1 or self.max_level < 0:
            raise ValueError("escalate_after >= 1 and max_level >= 0 required")

    def level_for(self, consecutive_failures: int) -> int:
        """Escalation level after this many consecutive failures."""
        return min(self.max_level, consecutive_failures // self.escalate_after)


@dataclass(frozen=True)
class CheckState:
    """Escalation state of one check.

    Parameters
    ----------
    consecutive_failures : int
        Failures since the last passing observation.
    level : int
        Current escalation level.
    severity : str or None
        Severity of the last failure.
    last_alert_key : str or None
        De-duplication key of the last emitted firing alert (``None`` when resolved).
    failing_since : float or None
        Timestamp of the first failure of the current streak.

    Examples
    --------
    >>> CheckState().consecutive_failures
    0
    """

    consecutive_failures: int = 0
    level: int = 0
    severity: str | None = None
    last_alert_key: str | None = None
    failing_since: float | None = None


@dataclass(frozen=True)
class Alert:
    """An alert to publish.

    Parameters
    ----------
    component, metric : str
        The check.
    status : {"firing", "resolved"}
        New or changed problem, or recovery.
    severity : str or None
        Severity (``None`` for resolved).
    level : int
        Escalation level (0 for resolved).
    value : float
        Observation that triggered the alert.
    limit : float or None
        Breached limit.
    consecutive_failures : int
        Failures in the streak (for resolved: the streak that ended).
    dedup_key : str
        ``component|metric|severity|level`` or ``component|metric|resolved``.
    timestamp : float
        Time of the triggering observation.

    Examples
    --------
    >>> a = Alert("api", "errors", "firing", "critical", 1, 0.2, 0.1, 3, "api|errors|critical|1",
    ...           60.0)
    >>> a.to_dict()["dedup_key"]
    'api|errors|critical|1'
    """

    component: str
    metric: str
    status: Literal["firing", "resolved"]
    severity: str | None
    level: int
    value: float
    limit: float | None
    consecutive_failures: int
    dedup_key: str
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (NaN timestamps become ``None``)."""
        data = asdict(self)
        if isinstance(data["timestamp"], float) and np.isnan(data["timestamp"]):
            data["timestamp"] = None
        return data


def step_check(
    state: CheckState, result: CheckResult, policy: EscalationPolicy
) -> tuple[CheckState, Alert | None]:
    """Advance one check's state machine by one observation.

    Parameters
    ----------
    state : CheckState
        State before the observation.
    result : CheckResult
        The observation.
    policy : EscalationPolicy
        Escalation thresholds.

    Returns
    -------
    tuple of (CheckState, Alert or None)
        New state and the alert to emit, if any.

    Examples
    --------
    >>> fail = CheckResult("api", "errors", 0.2, 0.0, "warning", 0.1)
    >>> s, a = step_check(CheckState(), fail, EscalationPolicy())
    >>> a.status, a.level, s.consecutive_failures
    ('firing', 0, 1)
    >>> s, a = step_check(s, fail, EscalationPolicy())
    >>> a is None
    True
    """
    base = f"{result.component}|{result.metric}"
    if result.failing:
        streak = state.consecutive_failures + 1
        level = policy.level_for(streak)
        key = f"{base}|{result.severity}|{level}"
        since = state.failing_since if state.consecutive_failures else result.timestamp
        new = CheckState(streak, level, result.severity, key, since)
        if key == state.last_alert_key:
            return new, None
        return new, Alert(
            component=result.component,
            metric=result.metric,
            status="firing",
            severity=result.severity,
            level=level,
            value=result.value,
            limit=result.limit,
            consecutive_failures=streak,
            dedup_key=key,
            timestamp=result.timestamp,
        )
    if state.last_alert_key is None and state.consecutive_failures == 0:
        return state, None
    alert = Alert(
        component=result.component,
        metric=result.metric,
        status="resolved",
        severity=None,
        level=0,
        value=result.value,
        limit=None,
        consecutive_failures=state.consecutive_failures,
        dedup_key=f"{base}|resolved",
        timestamp=result.timestamp,
    )
    return CheckState(), alert


@dataclass(frozen=True)
class HealthState:
    """Escalation states of all checks, keyed by ``(component, metric)``.

    Parameters
    ----------
    checks : dict
        ``(component, metric) -> CheckState``; absent checks are passing.

    Examples
    --------
    >>> import json
    >>> s = HealthState({("api", "errors"): CheckState(2, 0, "warning", "api|errors|warning|0")})
    >>> HealthState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    True
    """

    checks: dict[tuple[str, str], CheckState] = field(default_factory=dict)

    def get(self, component: str, metric: str) -> CheckState:
        """State of one check (a fresh passing state when unknown)."""
        return self.checks.get((component, metric), CheckState())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation: a list of records."""
        return {
            "version": 1,
            "checks": [
                {"component": c, "metric": m, **asdict(s)}
                for (c, m), s in sorted(self.checks.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthState:
        """Inverse of :meth:`to_dict`."""
        if data.get("version", 1) != 1:
            raise ValueError(f"unsupported health state version {data.get('version')}")
        checks = {}
        for rec in data["checks"]:
            rec = dict(rec)
            key = (rec.pop("component"), rec.pop("metric"))
            checks[key] = CheckState(**rec)
        return cls(checks)


def process_results(
    state: HealthState, results: Iterable[CheckResult], policy: EscalationPolicy
) -> tuple[HealthState, list[Alert]]:
    """Run the escalation state machines over a batch of results, in order.

    Parameters
    ----------
    state : HealthState
        States before the batch (not modified).
    results : iterable of CheckResult
        Evaluated observations, e.g. from :func:`evaluate_thresholds`.
    policy : EscalationPolicy
        Escalation thresholds.

    Returns
    -------
    tuple of (HealthState, list of Alert)
        New states (checks back to passing are dropped) and the alerts to emit.

    Examples
    --------
    >>> fail = CheckResult("api", "errors", 0.2, 0.0, "warning", 0.1)
    >>> _, alerts = process_results(HealthState(), [fail] * 4, EscalationPolicy())
    >>> [(a.status, a.level) for a in alerts]
    [('firing', 0), ('firing', 1)]
    """
    checks = dict(state.checks)
    alerts: list[Alert] = []
    for result in results:
        new, alert = step_check(checks.get(result.key, CheckState()), result, policy)
        if new == CheckState():
            checks.pop(result.key, None)
        else:
            checks[result.key] = new
        if alert is not None:
            alerts.append(alert)
    return HealthState(checks), alerts


# --------------------------------------------------------------------------- scheduled jobs


@dataclass(frozen=True)
class MissedRuns:
    """Output of :func:`detect_missed_runs`.

    Parameters
    ----------
    missed : ndarray of bool, shape (m,)
        True when the next run is past its deadline.
    overdue : ndarray, shape (m,)
        Seconds past the deadline (0 when on time).
    missed_runs : ndarray of int, shape (m,)
        Number of expected runs whose deadline has passed.
    next_due : ndarray, shape (m,)
        Time the next run is (or was) due, ``last + interval``.

    Examples
    --------
    >>> import numpy as np
    >>> MissedRuns(np.array([False]), np.zeros(1), np.zeros(1, int), np.ones(1)).missed.tolist()
    [False]
    """

    missed: np.ndarray
    overdue: np.ndarray
    missed_runs: np.ndarray
    next_due: np.ndarray


def _missed_count(elapsed: np.ndarray, interval: np.ndarray, grace: np.ndarray) -> np.ndarray:
    # Runs k >= 1 with k * interval + grace < elapsed.
    k = np.ceil((elapsed - grace) / interval) - 1
    return np.maximum(0, k).astype(np.int64)


def detect_missed_runs(
    last_heartbeat: np.ndarray,
    now: float,
    interval: np.ndarray | float,
    grace: np.ndarray | float = 0.0,
) -> MissedRuns:
    """Which scheduled jobs are overdue, vectorised over jobs.

    Parameters
    ----------
    last_heartbeat : ndarray, shape (m,)
        Time of each job's last heartbeat (pass the registration time for a job that has
        never run).
    now : float
        Current time, same unit.
    interval : float or ndarray of shape (m,)
        Expected period of each job (positive).
    grace : float or ndarray of shape (m,)
        Allowed lateness (non-negative).

    Returns
    -------
    MissedRuns
        Flags, overdue time, number of missed runs and next due time, each of shape (m,).

    Examples
    --------
    >>> import numpy as np
    >>> r = detect_missed_runs(np.array([0.0, 0.0, 0.0]), 200.0, np.array([60.0, 200.0, 300.0]),
    ...                        grace=10.0)
    >>> r.missed.tolist(), r.overdue.tolist(), r.missed_runs.tolist()
    ([True, False, False], [130.0, 0.0, 0.0], [3, 0, 0])
    """
    last = np.asarray(last_heartbeat, dtype=float)
    if last.ndim != 1 or not np.all(np.isfinite(last)):
        raise ValueError("last_heartbeat must be a finite array of shape (m,)")
    interval_arr = np.broadcast_to(np.asarray(interval, dtype=float), last.shape)
    grace_arr = np.broadcast_to(np.asarray(grace, dtype=float), last.shape)
    if np.any(interval_arr <= 0) or np.any(grace_arr < 0):
        raise ValueError("interval must be positive and grace non-negative")
    elapsed = now - last
    deadline_gap = elapsed - interval_arr - grace_arr
    return MissedRuns(
        missed=deadline_gap > 0,
        overdue=np.maximum(0.0, deadline_gap),
        missed_runs=_missed_count(elapsed, interval_arr, grace_arr),
        next_due=last + interval_arr,
    )


def missed_runs_between(heartbeats: np.ndarray, interval: float, grace: float = 0.0) -> np.ndarray:
    """Missed runs in each gap of a job's heartbeat history.

    Parameters
    ----------
    heartbeats : ndarray, shape (k,)
        Heartbeat times (sorted here).
    interval : float
        Expected period.
    grace : float
        Allowed lateness.

    Returns
    -------
    ndarray of int, shape (k - 1,)
        Runs that were missed (or late beyond the grace) between consecutive heartbeats.

    Examples
    --------
    >>> import numpy as np
    >>> missed_runs_between(np.array([0.0, 60.0, 125.0, 300.0]), 60.0, grace=10.0).tolist()
    [0, 0, 2]
    """
    times = np.sort(np.asarray(heartbeats, dtype=float))
    if interval <= 0 or grace < 0:
        raise ValueError("interval must be positive and grace non-negative")
    gaps = np.diff(times)
    return _missed_count(gaps, np.full(gaps.shape, interval), np.full(gaps.shape, grace))


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    Parameters
    ----------
    base_delay : float
        Delay before the first retry (attempt 0) without jitter.
    factor : float
        Growth per attempt (at least 1).
    max_delay : float
        Cap applied before jitter, so no delay exceeds it.
    max_attempts : int
        Retries allowed; :func:`next_retry_delay` returns ``None`` afterwards.
    jitter : {"full", "equal", "none"}
        ``U(0, d)``, ``d/2 + U(0, d/2)`` or ``d``.

    Examples
    --------
    >>> RetryPolicy(base_delay=2.0, max_delay=10.0).capped_delay(range(4)).tolist()
    [2.0, 4.0, 8.0, 10.0]
    """

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    max_attempts: int = 5
    jitter: Literal["full", "equal", "none"] = "full"

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.factor < 1 or self.max_delay < self.base_delay:
            raise ValueError("need base_delay >= 0, factor >= 1 and max_delay >= base_delay")
        if self.max_attempts < 0 or self.jitter not in ("full", "equal", "none"):
            raise ValueError("max_attempts >= 0 and jitter in {'full', 'equal', 'none'}")

    def capped_delay(self, attempts: Iterable[int] | np.ndarray | int) -> np.ndarray:
        """Delays before jitter for 0-based attempt numbers, shape of ``attempts``."""
        a = np.asarray(list(attempts) if isinstance(attempts, range) else attempts, dtype=float)
        if np.any(a < 0):
            raise ValueError("attempt numbers start at 0")
        with np.errstate(over="ignore"):
            raw = self.base_delay * np.power(self.factor, a)
        return np.minimum(self.max_delay, raw)


def backoff_delays(
    policy: RetryPolicy, attempts: np.ndarray | Sequence[int] | int, rng: np.random.Generator
) -> np.ndarray:
    """Jittered delays for 0-based attempt numbers.

    Parameters
    ----------
    policy : RetryPolicy
        Backoff parameters.
    attempts : int or array_like of int, shape (k,)
        Attempt numbers (0 = first retry).
    rng : numpy.random.Generator
        Source of the jitter; the caller records its seed.

    Returns
    -------
    ndarray, shape of ``attempts``
        Delays in ``[0, max_delay]``.

    Examples
    --------
    >>> import numpy as np
    >>> d = backoff_delays(RetryPolicy(max_delay=5.0), np.arange(6), np.random.default_rng(0))
    >>> bool(np.all((d >= 0) & (d <= [1, 2, 4, 5, 5, 5])))
    True
    """
    cap = policy.capped_delay(attempts)
    if policy.jitter == "none":
        return cap
    u = rng.uniform(size=cap.shape)
    if policy.jitter == "full":
        return u * cap
    return cap / 2 + u * cap / 2


def next_retry_delay(policy: RetryPolicy, attempt: int, rng: np.random.Generator) -> float | None:
    """Delay before retry number ``attempt`` (0-based), ``None`` when retries are exhausted.

    Parameters
    ----------
    policy : RetryPolicy
        Backoff parameters.
    attempt : int
        Retries already made.
    rng : numpy.random.Generator
        Source of the jitter.

    Returns
    -------
    float or None
        Seconds to wait, or ``None`` after ``max_attempts`` retries.

    Examples
    --------
    >>> import numpy as np
    >>> p = RetryPolicy(jitter="none", max_attempts=2)
    >>> [next_retry_delay(p, a, np.random.default_rng(0)) for a in range(3)]
    [1.0, 2.0, None]
    """
    if attempt >= policy.max_attempts:
        return None
    return float(backoff_delays(policy, np.array([attempt]), rng)[0])

"""From closed windows to trends, health alerts and insights (pure; no I/O).

* **Thresholds** come from ``LOOPWISE_INSIGHTS_THRESHOLDS`` (``component/metric<limit:sev``);
  a rule for a named component replaces the wildcard (``*``) rules of the same metric.
* **Trends**: every (group, metric) series over the last ``trend_windows`` closed windows is
  tested with Mann–Kendall (Theil–Sen slope per hour, :mod:`agents.learning.trends`). One pass
  tests many series, so significance is decided on Benjamini–Hochberg q-values (false
  discovery rate ``alpha`` per pass), and a trend must also move the metric by at least
  ``min_change`` (relative, along the Theil–Sen line over the series' span).
* **Comparisons** (underperformance): over the most recent windows pooled, the success rate
  of each method and strategy against the rest of the component (two-proportion z-test),
  in the same false-discovery family as the trends.
* **Confidence** of a statistical insight is ``(1 - q) * coverage``, where coverage is the
  fraction of the configured trend windows the series has data for (comparisons: 1). A
  health insight's confidence is ``min(1, consecutive failures / escalate_after)``.
* **Priority**: a decline of at least ``high_change`` (relative; for comparisons the gap),
  an escalated or critical health check → high; other declines, underperformance and missed
  runs → medium; improvements → low.
* **Ids**: an insight's id is a stable hash of (kind, component, group, metric), so the same
  finding is one insight with revisions (re-emitted only when its direction or priority
  changes), never a stream of copies.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from agents.insights.windows import ALL, decision_summary
from agents.learning.health import Alert, Threshold
from agents.learning.trends import mann_kendall

__all__ = [
    "Finding",
    "Insight",
    "alert_event",
    "benjamini_hochberg",
    "compare_groups",
    "decide",
    "health_insight",
    "heartbeat_insight",
    "higher_is_better",
    "insight_event",
    "stable_id",
    "thresholds_for",
    "trend_findings",
]

_LOWER_IS_BETTER = re.compile(r"latency|error|time|duration|cost|bounce|churn|abandon|fail")
ACTION_RISK = {
    "investigate": "low",
    "adjust_threshold": "low",
    "adjust_exploration": "medium",
    "reallocate_traffic": "medium",
    "adjust_scoring_weights": "medium",
    "rollback_variant": "medium",
    "stop_experiment": "medium",
    "promote_winner": "medium",
    "disable_algorithm": "high",
    "enable_algorithm": "medium",
    "other": "medium",
}


def higher_is_better(metric: str) -> bool:
    """Orientation of a metric: latency, errors, times, costs... are better when lower.

    >>> higher_is_better("success_rate"), higher_is_better("latency_p95")
    (True, False)
    """
    if metric in ("success_rate", "conversion", "quality", "confidence", "engagement"):
        return True
    return _LOWER_IS_BETTER.search(metric.lower()) is None


def thresholds_for(
    component: str, rules: Iterable[tuple[str, str, str, float, str]]
) -> list[Threshold]:
    """The health thresholds of one component from parsed rules (component rules win).

    >>> rules = [("*", "success_rate", "<", 0.8, "warning"), ("api", "success_rate", "<", 0.5,
    ...          "critical"), ("*", "latency_p95", ">", 900.0, "warning")]
    >>> [(t.metric, t.levels) for t in thresholds_for("api", rules)]
    [('latency_p95', (('warning', 900.0),)), ('success_rate', (('critical', 0.5),))]
    """
    rules = list(rules)
    specific = {m for c, m, *_ in rules if c == component}
    levels: dict[str, list[tuple[str, float]]] = {}
    direction: dict[str, str] = {}
    for c, metric, op, limit, severity in rules:
        if c == component or (c == "*" and metric not in specific):
            levels.setdefault(metric, []).append((severity, limit))
            direction[metric] = "below" if op == "<" else "above"
    return [
        Threshold(component, m, direction[m], tuple(levels[m]))  # type: ignore[arg-type]
        for m in sorted(levels)
    ]


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), shape of ``p``.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.5]
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(1.0, q_sorted)
    return q


def stable_id(*parts: str, prefix: str = "ins") -> str:
    """Deterministic id within the schemas' id alphabet (a readable head plus a hash).

    >>> stable_id("trend", "lead-enricher", "method=web scrape", "success_rate")
    'ins-trend-lead-enricher-6d43c48c8c51f19e'
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
    head = "-".join(re.sub(r"[^A-Za-z0-9._:-]+", "_", p)[:40] for p in parts[:2])
    return f"{prefix}-{head}-{digest}"


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """A tested series or comparison before the false-discovery decision."""

    kind: str  # "trend" or "underperformance"
    component: str
    group: str
    metric: str
    p_value: float
    change: float  # relative change (trend) or gap to the rest (comparison), signed
    improving: bool
    coverage: float
    evidence: dict[str, Any] = field(default_factory=dict)


def _fmt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(round(x, 6))


def trend_findings(
    component: str,
    hours: np.ndarray,
    series: Mapping[tuple[str, str], np.ndarray],
    *,
    trend_windows: int,
    min_points: int,
    alpha: float,
) -> list[Finding]:
    """Mann–Kendall / Theil–Sen on every series with enough points.

    Parameters
    ----------
    component : str
        The component the series belong to.
    hours : ndarray, shape (k,)
        Window starts in hours (the slope's time unit), increasing.
    series : mapping
        ``(group, metric) → values`` of shape (k,), NaN where a window has no value.
    trend_windows : int
        Configured series length (for the coverage).
    min_points : int
        Series with fewer finite values, or constant ones, are not tested.
    alpha : float
        Level of the slope's confidence interval.

    Returns
    -------
    list of Finding
        One per tested series (significant or not).
    """
    out = []
    for (group, metric), values in sorted(series.items()):
        finite = np.isfinite(values)
        n = int(finite.sum())
        if n < min_points or np.ptp(values[finite]) == 0:
            continue
        hib = higher_is_better(metric)
        r = mann_kendall(values, hours, alpha=alpha, higher_is_better=hib, min_points=min_points)
        if r.p_value is None or r.slope is None or r.intercept is None:
            continue
        t = hours[finite]
        first_fit = r.intercept + r.slope * t[0]
        last_fit = r.intercept + r.slope * t[-1]
        base = abs(first_fit) if abs(first_fit) > 1e-12 else abs(float(np.mean(values[finite])))
        change = (last_fit - first_fit) / base if base > 1e-12 else 0.0
        increasing = (r.s or 0.0) > 0
        out.append(
            Finding(
                kind="trend",
                component=component,
                group=group,
                metric=metric,
                p_value=float(r.p_value),
                change=float(change),
                improving=increasing == hib,
                coverage=min(1.0, n / trend_windows),
                evidence={
                    "metric": metric,
                    "group": group,
                    "windows": n,
                    "first": _fmt(values[finite][0]),
                    "last": _fmt(values[finite][-1]),
                    "mean": _fmt(float(np.mean(values[finite]))),
                    "slope_per_hour": _fmt(r.slope),
                    "slope_low": _fmt(r.slope_low),
                    "slope_high": _fmt(r.slope_high),
                    "mann_kendall_s": _fmt(r.s),
                    "z": _fmt(r.z),
                    "tau": _fmt(r.tau),
                    "p_value": _fmt(r.p_value),
                    "relative_change": _fmt(change),
                    "series": [_fmt(v) for v in values[-32:]],
                },
            )
        )
    return out


def compare_groups(
    component: str,
    pooled: Mapping[str, Any],
    *,
    min_samples: int,
    dimensions: Sequence[str] = ("method", "strategy"),
) -> list[Finding]:
    """Each method's (strategy's) success rate against the rest of the component.

    Two-proportion z-test (pooled variance) on the recent windows pooled; groups with fewer
    than ``min_samples`` decisions, or whose rest has fewer, are not tested.
    """
    n_all, s_all, _ = decision_summary(pooled, ALL, "success_rate")
    out = []
    for group in sorted(pooled.get("decisions") or {}):
        dim, _, label = group.partition("=")
        if dim not in dimensions or label == "(other)":
            continue
        n_g, s_g, _ = decision_summary(pooled, group, "success_rate")
        n_r, s_r = n_all - n_g, s_all - s_g
        if n_g < min_samples or n_r < min_samples:
            continue
        p_g, p_r = s_g / n_g, s_r / n_r
        pooled_p = (s_g + s_r) / (n_g + n_r)
        se = math.sqrt(pooled_p * (1 - pooled_p) * (1 / n_g + 1 / n_r))
        if se == 0:
            continue
        z = (p_g - p_r) / se
        p = float(2 * stats.norm.sf(abs(z)))
        out.append(
            Finding(
                kind="underperformance",
                component=component,
                group=group,
                metric="success_rate",
                p_value=p,
                change=float(p_g - p_r),
                improving=p_g > p_r,
                coverage=1.0,
                evidence={
                    "metric": "success_rate",
                    "group": group,
                    "group_rate": _fmt(p_g),
                    "group_n": int(n_g),
                    "rest_rate": _fmt(p_r),
                    "rest_n": int(n_r),
                    "difference": _fmt(p_g - p_r),
                    "z": _fmt(z),
                    "p_value": _fmt(p),
                },
            )
        )
    return out


# --------------------------------------------------------------------------- insights


@dataclass(frozen=True)
class Insight:
    """An insight ready to publish (schema ``insights``) and to act on."""

    insight_id: str
    subject: str
    component: str
    kind: str
    metric: str
    group: str
    direction: str
    title: str
    evidence: dict[str, Any]
    confidence: float
    priority: str
    recommended_action: str
    action_kind: str | None = None
    action_params: dict[str, Any] = field(default_factory=dict)

    @property
    def risk(self) -> str | None:
        return None if self.action_kind is None else ACTION_RISK[self.action_kind]

    @property
    def fingerprint(self) -> str:
        """What makes a new revision: direction and priority (not the exact numbers)."""
        return f"{self.kind}|{self.direction}|{self.priority}|{self.action_kind}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _subject(component: str, group: str) -> str:
    return component if group == ALL else f"{component}/{group}"


def _action_for(finding: Finding, priority: str) -> tuple[str, str | None, dict[str, Any]]:
    """Recommended action text, action kind and parameters for a significant finding."""
    c, g, metric = finding.component, finding.group, finding.metric
    dim, _, label = g.partition("=")
    pct = f"{abs(finding.change) * 100:.1f} %"
    base: dict[str, Any] = {"component": c, "metric": metric}
    if finding.kind == "underperformance":
        return (
            f"Shift traffic of {c} away from {dim} '{label}': its success rate is {pct} "
            "points below the rest of the component.",
            "reallocate_traffic",
            {**base, "dimension": dim, "value": label, "direction": "decrease", "share": 0.5},
        )
    if finding.improving:
        if dim in ("method", "strategy"):
            return (
                f"{metric} of {c} with {dim} '{label}' improved by {pct}: consider giving it "
                "more traffic.",
                "reallocate_traffic",
                {**base, "dimension": dim, "value": label, "direction": "increase", "share": 0.2},
            )
        return (
            f"{metric} of {_subject(c, g)} improved by {pct}: keep the current configuration "
            "and record what changed.",
            None,
            {},
        )
    if dim in ("method", "strategy"):
        return (
            f"Shift traffic of {c} away from {dim} '{label}' ({metric} declined by {pct}) and "
            "investigate the cause.",
            "reallocate_traffic",
            {**base, "dimension": dim, "value": label, "direction": "decrease",
             "share": 0.5 if priority == "high" else 0.25},
        )  # fmt: skip
    where = "" if g == ALL else f" for {dim} '{label}'"
    return (
        f"Investigate {c}: {metric}{where} declined by {pct} over the last windows.",
        "investigate",
        {**base, **({} if g == ALL else {"dimension": dim, "value": label})},
    )


def decide(
    findings: Sequence[Finding], *, alpha: float, min_change: float, high_change: float
) -> list[Insight]:
    """Insights from the findings of one pass: BH over all of them, then effect size."""
    if not findings:
        return []
    q = benjamini_hochberg([f.p_value for f in findings])
    insights = []
    for f, qv in zip(findings, q.tolist(), strict=True):
        if qv >= alpha or abs(f.change) < min_change:
            continue
        declined = "high" if abs(f.change) >= high_change else "medium"
        priority = "low" if f.improving else declined
        if f.kind == "underperformance" and f.improving:
            continue  # a group doing better than the rest shows up as the others' gap
        text, action_kind, params = _action_for(f, priority)
        direction = (
            "underperforming"
            if f.kind == "underperformance"
            else ("improving" if f.improving else "declining")
        )
        kind = f.kind if not (f.kind == "trend" and f.improving and action_kind) else "opportunity"
        verb = {"declining": "declining", "improving": "improving"}.get(direction, "below rest")
        insights.append(
            Insight(
                insight_id=stable_id(f.kind, f.component, f.group, f.metric),
                subject=_subject(f.component, f.group),
                component=f.component,
                kind=kind,
                metric=f.metric,
                group=f.group,
                direction=direction,
                title=f"{f.metric} {verb} for {_subject(f.component, f.group)}"[:256],
                evidence={**f.evidence, "q_value": _fmt(qv), "coverage": _fmt(f.coverage)},
                confidence=float(round(max(0.0, min(1.0, (1 - qv) * f.coverage)), 6)),
                priority=priority,
                recommended_action=text[:1024],
                action_kind=action_kind,
                action_params=params,
            )
        )
    return insights


def health_insight(alert: Alert, escalate_after: int) -> Insight | None:
    """A firing alert that escalated (level >= 1) or is critical becomes a health insight."""
    if alert.status != "firing" or not (alert.level >= 1 or alert.severity == "critical"):
        return None
    c, metric = alert.component, alert.metric
    return Insight(
        insight_id=stable_id("health", c, ALL, metric),
        subject=c,
        component=c,
        kind="health",
        metric=metric,
        group=ALL,
        direction="failing",
        title=f"{metric} of {c} failing its {alert.severity} threshold"[:256],
        evidence={
            "metric": metric,
            "value": _fmt(alert.value),
            "threshold": _fmt(alert.limit) if alert.limit is not None else None,
            "severity": alert.severity,
            "escalation_level": alert.level,
            "consecutive_failures": alert.consecutive_failures,
        },
        confidence=float(min(1.0, alert.consecutive_failures / escalate_after)),
        priority="high",
        recommended_action=(
            f"Investigate {c}: {metric} = {alert.value:.4g} breached the {alert.severity} "
            f"limit {alert.limit} in {alert.consecutive_failures} consecutive windows."
        )[:1024],
        action_kind="investigate",
        action_params={"component": c, "metric": metric, "severity": alert.severity or ""},
    )


def heartbeat_insight(component: str, missed_runs: int, interval_s: float) -> Insight:
    """A scheduled component that missed runs."""
    return Insight(
        insight_id=stable_id("health", component, ALL, "heartbeat"),
        subject=component,
        component=component,
        kind="health",
        metric="heartbeat",
        group=ALL,
        direction="failing",
        title=f"{component} missed {missed_runs} scheduled run(s)",
        evidence={"missed_runs": missed_runs, "interval_s": interval_s},
        confidence=1.0,
        priority="high" if missed_runs >= 3 else "medium",
        recommended_action=(
            f"Check the scheduler of {component}: no decision or metric for "
            f"{missed_runs} expected run(s) of every {interval_s:g} s."
        ),
        action_kind="investigate",
        action_params={"component": component, "metric": "heartbeat"},
    )


# --------------------------------------------------------------------------- events


def insight_event(insight: Insight, revision: int, ts_ms: int) -> dict[str, Any]:
    """The ``insights`` event of one revision (event id ``<insight_id>:<revision>``)."""
    evidence = {k: v for k, v in insight.evidence.items() if v is not None}
    evidence.update(
        {
            "component": insight.component,
            "direction": insight.direction,
            "revision": revision,
        }
    )
    if insight.action_kind:
        evidence["action_kind"] = insight.action_kind
        evidence["risk"] = insight.risk
    evidence = dict(list(evidence.items())[:32])
    return {
        "event_id": f"{insight.insight_id}:{revision}",
        "schema_version": 1,
        "ts": ts_ms,
        "insight_id": insight.insight_id,
        "subject": insight.subject[:256],
        "kind": insight.kind,
        "title": insight.title,
        "evidence": evidence,
        "confidence": insight.confidence,
        "priority": insight.priority,
        "recommended_action": insight.recommended_action,
    }


SEVERITY_FOR_SCHEMA = {
    "info": "info",
    "warning": "warning",
    "error": "critical",
    "critical": "critical",
}


def alert_event(
    alert: Alert, window_start: int | None, ts_ms: int, threshold: float | None = None
) -> dict[str, Any]:
    """The ``alerts`` event of a firing or resolved alert (deterministic event id)."""
    resolved = alert.status == "resolved"
    severity = "info" if resolved else SEVERITY_FOR_SCHEMA.get(alert.severity or "", "warning")
    limit = alert.limit if alert.limit is not None else threshold
    where = "" if window_start is None else f" (window {window_start})"
    if resolved:
        message = f"{alert.metric} of {alert.component} is back within its limits{where}"
    else:
        message = (
            f"{alert.metric} of {alert.component} = {alert.value:.4g} breaches the "
            f"{alert.severity} limit {limit} for {alert.consecutive_failures} consecutive "
            f"check(s){where}; escalation level {alert.level}"
        )
    at = window_start if window_start is not None else int(alert.timestamp)
    digest = hashlib.blake2b(alert.dedup_key.encode(), digest_size=6).hexdigest()
    return {
        "event_id": f"alert-{at}-{digest}",
        "schema_version": 1,
        "ts": ts_ms,
        "component": alert.component,
        "metric": alert.metric,
        "severity": severity,
        "escalation_level": alert.level,
        "message": message[:1024],
        "value": float(alert.value) if math.isfinite(alert.value) else 0.0,
        "threshold": float(limit) if limit is not None and math.isfinite(limit) else 0.0,
        "dimensions": {
            "status": alert.status,
            "consecutive_failures": str(alert.consecutive_failures),
            "dedup_key": alert.dedup_key[:256],
            **({} if window_start is None else {"window_start": str(window_start)}),
        },
    }

"""Evaluation of one component's closed windows (pure; the agent's timer calls it).

A window ``[start, end)`` *closes* when the component's events have moved ``grace`` past
its end (event-time watermark), or when it has received nothing for ``grace`` of wall-clock
time and its end is ``grace`` in the past (an idle component). Closed windows are evaluated
once, in order:

1. **Health**: each closed window is one check per configured threshold of the component
   (on the window's value over all groups; a window with fewer than ``min_samples``
   samples is no check). The escalation state machines of :mod:`agents.learning.health`
   turn checks into de-duplicated alerts: the first failure fires (level 0), the 3rd
   consecutive failure escalates (level 1), the 6th level 2 ..., recovery resolves.
2. **Trends and comparisons** over the last ``trend_windows`` closed windows
   (:mod:`agents.insights.rules`): the statistical insights of the pass. An active insight
   that is not found again is resolved.
3. **Health insights**: an alert that escalated or is critical opens one; its resolution
   resolves it. **Missed runs**: a component with a configured heartbeat interval whose
   last event (event time) is older than ``interval + grace`` gets a ``heartbeat`` alert
   escalating with the number of missed runs.

Everything the pass wants written (alerts, insight revisions, resolutions) is returned as
*pending* outputs in the new state: the agent writes the state to its table first, then the
outputs, then clears them — so a crash in between re-sends the same (deterministic) ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from agents.insights.rules import (
    Insight,
    alert_event,
    compare_groups,
    decide,
    health_insight,
    heartbeat_insight,
    insight_event,
    stable_id,
    thresholds_for,
    trend_findings,
)
from agents.insights.windows import ALL, build_series, merge_stats, window_values
from agents.learning.health import (
    Alert,
    EscalationPolicy,
    HealthState,
    detect_missed_runs,
    evaluate_thresholds,
    process_results,
)

__all__ = [
    "EvalConfig",
    "EvalState",
    "InsightBook",
    "WindowView",
    "emit_insight",
    "evaluate_component",
    "resolve_insight",
]

STATISTICAL = frozenset({"trend", "opportunity", "underperformance"})


@dataclass(frozen=True)
class EvalConfig:
    """Parameters of an evaluation pass (from the settings)."""

    window_ms: int
    grace_ms: int
    retention_ms: int
    min_samples: int
    trend_windows: int
    trend_min_windows: int
    alpha: float
    min_change: float
    high_change: float
    thresholds: tuple[tuple[str, str, str, float, str], ...]
    escalate_after: int = 3
    heartbeats: Mapping[str, float] = field(default_factory=dict)
    heartbeat_grace_s: float = 60.0
    compare_windows: int = 3


@dataclass(frozen=True)
class WindowView:
    """What the evaluation needs of one window value."""

    start: int
    end: int
    last_ts: int
    updated_wall: int
    stats: Mapping[str, Any]


@dataclass
class EvalState:
    """The per-component value of the health table."""

    component: str
    partition: int = 0
    evaluated_through: int = -1
    health: dict[str, Any] = field(default_factory=lambda: HealthState().to_dict())
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    revs: dict[str, int] = field(default_factory=dict)
    heartbeat_last: int = 0
    heartbeat_key: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)

    def pack(self) -> bytes:
        return orjson.dumps({"v": 1, **self.__dict__})

    @classmethod
    def unpack(cls, blob: bytes) -> EvalState:
        d = orjson.loads(blob)
        if d.pop("v", None) != 1:
            raise ValueError("unsupported insight health state")
        return cls(**d)


def is_closed(w: WindowView, watermark: int, now_ms: int, grace_ms: int) -> bool:
    """Closed by the event-time watermark, or idle for ``grace`` after its end."""
    if watermark >= w.end + grace_ms:
        return True
    return now_ms >= w.end + grace_ms and now_ms - w.updated_wall >= grace_ms


def _check_values(
    stats: Mapping[str, Any], metrics: Sequence[str], min_samples: int
) -> list[float]:
    values = window_values(stats, ALL)
    out = []
    for metric in metrics:
        value, n = values.get(metric, (math.nan, 0))
        enough = n >= min_samples or metric == "decisions"
        out.append(value if enough and n > 0 else math.nan)
    return out


class InsightBook(Protocol):
    """What revision bookkeeping needs of a state: its active insights and their revisions
    (per component here, per source key in :mod:`agents.insights.signals`)."""

    active: dict[str, dict[str, Any]]
    revs: dict[str, int]


def emit_insight(state: InsightBook, ins: Insight, now_ms: int) -> dict[str, Any]:
    """Record an insight in the active set; its output: a new revision (emitted) if it is new
    or changed, else a refresh of its numbers in PostgreSQL (``emit`` false)."""
    prev = state.active.get(ins.insight_id)
    if prev is not None and prev["fp"] == ins.fingerprint:
        # Same finding: refresh its numbers in PostgreSQL, no new event.
        return {"type": "insight", "revision": prev["rev"], "insight": ins.to_dict(), "emit": False}
    rev = state.revs.get(ins.insight_id, 0) + 1
    state.revs[ins.insight_id] = rev
    state.active[ins.insight_id] = {"rev": rev, "fp": ins.fingerprint, "kind": ins.kind}
    return {
        "type": "insight",
        "revision": rev,
        "insight": ins.to_dict(),
        "emit": True,
        "event": insight_event(ins, rev, now_ms),
    }


def resolve_insight(state: InsightBook, insight_id: str) -> dict[str, Any]:
    """Drop an insight from the active set; its resolution (a new revision) as output."""
    rev = state.revs.get(insight_id, 0) + 1
    state.revs[insight_id] = rev
    state.active.pop(insight_id, None)
    return {"type": "resolve", "insight_id": insight_id, "revision": rev}


def _alert_output(alert: Alert, window_start: int | None, now_ms: int) -> dict[str, Any]:
    return {"type": "alert", "event": alert_event(alert, window_start, now_ms)}


def evaluate_component(
    component: str,
    windows: Sequence[WindowView],
    state: EvalState,
    now_ms: int,
    cfg: EvalConfig,
) -> tuple[EvalState, list[int], bool]:
    """One evaluation pass of one component.

    Parameters
    ----------
    component : str
        The component.
    windows : sequence of WindowView
        Its windows held by this worker (any order).
    state : EvalState
        Its state before the pass (modified in place and returned).
    now_ms : int
        Wall clock, epoch ms.
    cfg : EvalConfig
        Parameters.

    Returns
    -------
    tuple of (EvalState, list of int, bool)
        The new state (its ``pending`` holds the outputs to write), the starts of windows
        past the retention (to delete), and whether the state changed.
    """
    windows = sorted(windows, key=lambda w: w.start)
    changed = False
    expired = [w.start for w in windows if w.end < now_ms - cfg.retention_ms]
    live = [w for w in windows if w.end >= now_ms - cfg.retention_ms]
    watermark = max((w.last_ts for w in live), default=0)
    if watermark > state.heartbeat_last:
        state.heartbeat_last = watermark
        changed = True

    closed_new: list[WindowView] = []
    for w in live:
        if w.start <= state.evaluated_through:
            continue
        if not is_closed(w, watermark, now_ms, cfg.grace_ms):
            break
        closed_new.append(w)

    policy = EscalationPolicy(escalate_after=cfg.escalate_after)
    if closed_new:
        changed = True
        thresholds = thresholds_for(component, cfg.thresholds)
        health = HealthState.from_dict(state.health)
        alerts: list[Alert] = []
        if thresholds:
            metrics = [t.metric for t in thresholds]
            comps, mets, vals, times = [], [], [], []
            for w in closed_new:
                values = _check_values(w.stats, metrics, cfg.min_samples)
                comps += [component] * len(metrics)
                mets += metrics
                vals += values
                times += [float(w.start)] * len(metrics)
            results = evaluate_thresholds(thresholds, comps, mets, vals, times)
            health, alerts = process_results(health, results, policy)
        state.health = health.to_dict()
        state.evaluated_through = closed_new[-1].start
        first_limit = {t.metric: t.levels[0][1] for t in thresholds}
        for alert in alerts:
            out = _alert_output(alert, int(alert.timestamp), now_ms)
            if alert.limit is None and alert.metric in first_limit:
                out["event"]["threshold"] = float(first_limit[alert.metric])
            state.pending.append(out)
            hid = health_insight(alert, cfg.escalate_after)
            if hid is not None:
                out = emit_insight(state, hid, now_ms)
                if out is not None:
                    state.pending.append(out)
            elif alert.status == "resolved":
                iid = stable_id("health", component, ALL, alert.metric)
                if iid in state.active:
                    state.pending.append(resolve_insight(state, iid))

        # Statistical insights over the last trend_windows closed windows.
        last = state.evaluated_through
        starts = [last - k * cfg.window_ms for k in range(cfg.trend_windows - 1, -1, -1)]
        closed = [(w.start, w.stats) for w in live if w.start <= last]
        series = build_series(closed, starts, cfg.min_samples)
        hours = np.asarray(starts, dtype=float) / 3_600_000.0
        findings = trend_findings(
            component,
            hours,
            series,
            trend_windows=cfg.trend_windows,
            min_points=cfg.trend_min_windows,
            alpha=cfg.alpha,
        )
        recent = last - (cfg.compare_windows - 1) * cfg.window_ms
        pooled = merge_stats(s for start, s in closed if start >= recent)
        findings += compare_groups(component, pooled, min_samples=cfg.min_samples)
        found = decide(
            findings, alpha=cfg.alpha, min_change=cfg.min_change, high_change=cfg.high_change
        )
        found_ids = set()
        for ins in found:
            found_ids.add(ins.insight_id)
            out = emit_insight(state, ins, now_ms)
            if out is not None:
                state.pending.append(out)
        for iid, meta in list(state.active.items()):
            if meta["kind"] in STATISTICAL and iid not in found_ids:
                state.pending.append(resolve_insight(state, iid))

    interval = cfg.heartbeats.get(component)
    if interval and state.heartbeat_last > 0:
        changed |= _heartbeat(state, component, interval, now_ms, cfg, policy)
    if expired:
        changed = True
    return state, expired, changed


def _heartbeat(
    state: EvalState,
    component: str,
    interval_s: float,
    now_ms: int,
    cfg: EvalConfig,
    policy: EscalationPolicy,
) -> bool:
    last_s = state.heartbeat_last / 1000.0
    r = detect_missed_runs(np.array([last_s]), now_ms / 1000.0, interval_s, cfg.heartbeat_grace_s)
    missed = int(r.missed_runs[0])
    base = f"{component}|heartbeat"
    iid = stable_id("health", component, ALL, "heartbeat")
    if missed == 0:
        if state.heartbeat_key is None:
            return False
        resolved = Alert(component, "heartbeat", "resolved", None, 0, 0.0, None, 0,
                         f"{base}|resolved", last_s)  # fmt: skip
        state.pending.append(_alert_output(resolved, state.heartbeat_last, now_ms))
        state.heartbeat_key = None
        if iid in state.active:
            state.pending.append(resolve_insight(state, iid))
        return True
    level = policy.level_for(missed)
    key = f"{base}|warning|{level}"
    if key == state.heartbeat_key:
        return False
    due_ms = int(state.heartbeat_last + missed * interval_s * 1000)
    silent_s = now_ms / 1000.0 - last_s
    alert = Alert(component, "heartbeat", "firing", "warning", level, silent_s,
                  interval_s + cfg.heartbeat_grace_s, missed, key, due_ms / 1000.0)  # fmt: skip
    state.pending.append(_alert_output(alert, due_ms, now_ms))
    state.heartbeat_key = key
    out = emit_insight(state, heartbeat_insight(component, missed, interval_s), now_ms)
    if out is not None:
        state.pending.append(out)
    return True

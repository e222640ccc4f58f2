"""Reports: a technical report and an executive summary of one period, as Markdown, HTML
with PNG plots, and JSON; archived under ``LOOPWISE_REPORT_DIR`` with a retention.

:func:`collect` reads the deployment's rows from PostgreSQL (windows of the period and of the
period before it, insights, alerts, actions, goals, tickets, and — when that agent's tables
exist — experiments); :func:`build_report` turns them into the JSON document (pure);
:func:`render_markdown` / :func:`render_html` / :func:`render_plots` present it;
:func:`generate_report` does all of it and archives the files. A section whose input is
missing or corrupt is skipped with a note in ``data_quality``; a report is always written.

JSON document (``schema_version`` 1)::

    report_metadata     report_id, deployment, kind (scheduled | on_demand), generated_at,
                        period {start, end, days}, schema_version
    sections            the section names below, in order
    executive_summary   overall_status (excellent | good | needs_attention | critical),
                        headline, key_metrics {components, decisions, success_rate,
                        success_rate_change, alerts, critical_alerts, active_insights,
                        high_priority_insights, actions, measured_improvements,
                        cumulative_roi}, top_recommendations [{insight_id, subject,
                        priority, confidence, action}], wins [...], risks [...]
    performance         {component: {decisions, success_rate, error_rate, conversion,
                        quality, confidence, latency_mean, latency_p50, latency_p95,
                        latency_p99, previous {...same...}, change {metric: delta},
                        by_dimension {method|persona|device|strategy: {label: {...}}},
                        metrics {name: {mean, n, min, max}}}}
    trends              [{component, metric, trend_direction (improving | declining |
                        stable), change_percentage, slope_per_day, p_value, q_value,
                        significance (high | medium | low), windows}]
    system_health       {overall_status, component_health {component: status},
                        failing [{component, metric, severity, escalation_level, since}],
                        alert_counts {severity: n}, alerts [latest 50]}
    insights            [{insight_id, subject, kind, priority, confidence, status, title,
                        recommended_action}]
    actions             [{action_id, target, kind, strategy, confidence, reason, decided_at}]
    goals               [{goal_id, component, metric, direction, target, baseline, current,
                        progress, status, deadline}]
    tickets             {by_status {status: n}, items [...with impact], cumulative_roi}
    experiments         {available, items [{experiment_id, status, primary_metric, ...}]}
    data_quality        [notes]
    images              {name: file name}
"""

from __future__ import annotations

import html
import math
import re
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from agents.insights.plots import PALETTE_HEX, bar_chart, line_chart
from agents.insights.rules import benjamini_hochberg, higher_is_better
from agents.insights.windows import DIMENSIONS, merge_stats, window_values
from agents.learning.trends import mann_kendall

__all__ = [
    "SECTIONS",
    "archive",
    "build_report",
    "collect",
    "generate_report",
    "render_html",
    "render_markdown",
    "render_plots",
]

SCHEMA_VERSION = 1
SECTIONS = (
    "executive_summary",
    "performance",
    "trends",
    "system_health",
    "insights",
    "actions",
    "goals",
    "tickets",
    "experiments",
    "data_quality",
)
SUMMARY_METRICS = (
    "decisions",
    "success_rate",
    "error_rate",
    "conversion",
    "quality",
    "confidence",
    "latency_mean",
    "latency_p50",
    "latency_p95",
    "latency_p99",
)
TREND_METRICS = ("success_rate", "conversion", "quality", "latency_p95")
STATUS_RANK = {"excellent": 0, "good": 1, "needs_attention": 2, "critical": 3}


def _iso(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).isoformat(timespec="seconds")


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, 6) if math.isfinite(v) else None


def _json_safe(value: Any) -> Any:
    """datetimes to ISO strings, non-finite floats to None (recursively)."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- collecting


def _section(notes: list[str], name: str, fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # a missing table, a corrupt row: note it, go on
        notes.append(f"{name}: skipped ({type(exc).__name__}: {str(exc)[:200]})")
        return default


def collect(conn: Any, dep: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Everything a report of ``[start_ms, end_ms)`` needs, from PostgreSQL."""
    from agents.insights.store import list_goals, load_windows, ms_to_dt
    from agents.insights.tickets import list_tickets

    notes: list[str] = []
    period = end_ms - start_ms
    raw: dict[str, Any] = {"start_ms": start_ms, "end_ms": end_ms, "notes": notes}
    raw["windows"] = _section(
        notes, "windows", lambda: load_windows(conn, dep, None, start_ms - period, end_ms), []
    )

    def query(sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cur = conn.execute(sql, params)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    start, end = ms_to_dt(start_ms), ms_to_dt(end_ms)
    raw["insights"] = _section(notes, "insights", lambda: query(
        "SELECT insight_id, subject, component, kind, metric, grp, direction, priority,"
        " confidence, status, title, recommended_action, evidence, first_seen, updated_at"
        " FROM insights WHERE deployment = %s AND (status = 'active' OR updated_at >= %s)"
        " ORDER BY priority, confidence DESC", (dep, start)), [])  # fmt: skip
    raw["alerts"] = _section(notes, "alerts", lambda: query(
        "SELECT event_id, component, metric, severity, escalation_level, status, value,"
        " threshold, window_start, message, raised_at FROM insight_alerts"
        " WHERE deployment = %s AND raised_at >= %s AND raised_at < %s ORDER BY raised_at",
        (dep, start, end)), [])  # fmt: skip
    raw["actions"] = _section(notes, "actions", lambda: query(
        "SELECT action_id, target, kind, strategy, confidence, risk, insight_id, reason,"
        " decided_at FROM optimization_actions WHERE deployment = %s AND decided_at >= %s"
        " AND decided_at < %s ORDER BY decided_at", (dep, start, end)), [])  # fmt: skip
    raw["goals"] = _section(notes, "goals", lambda: list_goals(conn, dep), [])
    raw["tickets"] = _section(notes, "tickets", lambda: list_tickets(conn, dep), [])
    # Only this deployment's experiments (their topic prefix, migration 008), like every
    # other section: deployments may share a database.
    raw["experiments"] = _section(notes, "experiments", lambda: query(
        "SELECT e.experiment_id, e.status,"
        " COALESCE(e.definition->'primary_metric'->>'name', e.definition->>'primary_metric')"
        " AS primary_metric, r.result FROM experiments e LEFT JOIN experiment_results_latest r"
        " USING (experiment_id) WHERE e.deployment = %s ORDER BY e.experiment_id", (dep,)),
        None)  # fmt: skip
    return raw


# --------------------------------------------------------------------------- building


def _valid_windows(
    rows: Sequence[Any], notes: list[str]
) -> list[tuple[str, int, int, dict[str, Any]]]:
    good, bad = [], 0
    for row in rows:
        try:
            component, start, end, stats = row
            if not isinstance(stats, Mapping):
                raise TypeError("stats is not an object")
            window_values(stats)  # raises on a corrupt summary
            good.append((str(component), int(start), int(end), dict(stats)))
        except Exception:
            bad += 1
    if bad:
        notes.append(f"windows: {bad} corrupt window summary(ies) skipped")
    return good


def _summary(stats: Mapping[str, Any], group: str = "all") -> dict[str, Any]:
    values = window_values(stats, group)
    return {m: _num(values[m][0]) if m in values else None for m in SUMMARY_METRICS}


def _performance(
    windows: Sequence[tuple[str, int, int, dict[str, Any]]], start_ms: int
) -> dict[str, Any]:
    by_comp: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for c, s, _, st in windows:
        by_comp[c].append((s, st))
    out: dict[str, Any] = {}
    for comp in sorted(by_comp):
        current = merge_stats(st for s, st in by_comp[comp] if s >= start_ms)
        previous = merge_stats(st for s, st in by_comp[comp] if s < start_ms)
        if not current["decisions"] and not current["metrics"]:
            continue
        cur, prev = _summary(current), _summary(previous)
        change = {
            m: _num(cur[m] - prev[m])
            for m in SUMMARY_METRICS
            if cur[m] is not None and prev[m] is not None
        }
        dims: dict[str, Any] = {}
        for dim in DIMENSIONS:
            groups = sorted(g for g in current["decisions"] if g.startswith(dim + "="))
            if groups:
                dims[dim] = {g.split("=", 1)[1]: _summary(current, g) for g in groups}
        metrics = {}
        for name, groups in sorted(current["metrics"].items()):
            row = groups.get("all")
            if row and row[0] > 0:
                metrics[name] = {"mean": _num(row[1] / row[0]), "n": int(row[0]),
                                 "min": _num(row[3]), "max": _num(row[4])}  # fmt: skip
        out[comp] = {**cur, "previous": prev, "change": change, "by_dimension": dims,
                     "metrics": metrics}  # fmt: skip
    return out


def _series(
    windows: Sequence[tuple[str, int, int, dict[str, Any]]], start_ms: int, min_samples: int
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(component, metric) → (window starts, values) within the period."""
    acc: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for c, s, _, st in windows:
        if s < start_ms:
            continue
        for metric, (value, n) in window_values(st).items():
            if metric in ("decisions", "error_rate") or n < min_samples:
                continue
            acc[(c, metric)].append((s, value))
    out = {}
    for key, points in acc.items():
        points.sort()
        out[key] = (np.array([p[0] for p in points], float), np.array([p[1] for p in points]))
    return out


def _trends(series: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
            alpha: float) -> list[dict[str, Any]]:  # fmt: skip
    tested = []
    for (comp, metric), (t, v) in sorted(series.items()):
        if len(v) < 6 or np.ptp(v) == 0:
            continue
        days = t / 86_400_000.0
        r = mann_kendall(v, days, alpha=alpha, higher_is_better=higher_is_better(metric))
        if r.p_value is None or r.slope is None or r.intercept is None:
            continue
        first = r.intercept + r.slope * days[0]
        last = r.intercept + r.slope * days[-1]
        change = (last - first) / abs(first) if abs(first) > 1e-12 else 0.0
        tested.append((comp, metric, r, change, len(v)))
    q = benjamini_hochberg([x[2].p_value for x in tested])
    out = []
    for (comp, metric, r, change, n), qv in zip(tested, q.tolist(), strict=True):
        significant = qv < alpha
        increasing = (r.s or 0) > 0
        if not significant:
            direction = "stable"
        else:
            direction = "improving" if increasing == higher_is_better(metric) else "declining"
        out.append({
            "component": comp, "metric": metric, "trend_direction": direction,
            "change_percentage": _num(change * 100), "slope_per_day": _num(r.slope),
            "p_value": _num(r.p_value), "q_value": _num(qv),
            "significance": "high" if qv < 0.01 else ("medium" if qv < alpha else "low"),
            "windows": n,
        })  # fmt: skip
    return out


def _health(alerts: Sequence[Mapping[str, Any]], insights: Sequence[Mapping[str, Any]],
            components: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for a in alerts:  # in time order
        latest[(a["component"], a["metric"])] = a
    failing = [
        {"component": c, "metric": m, "severity": a["severity"],
         "escalation_level": a["escalation_level"], "since": _json_safe(a["raised_at"])}
        for (c, m), a in sorted(latest.items())
        if a["status"] == "firing"
    ]  # fmt: skip
    status: dict[str, str] = {c: "excellent" for c in components}
    for ins in insights:
        if (
            ins["status"] == "active"
            and ins["priority"] in ("high", "medium")
            and ins["direction"] in ("declining", "underperforming")
        ):
            status[ins["component"]] = max(status.get(ins["component"], "excellent"), "good",
                                           key=STATUS_RANK.__getitem__)  # fmt: skip
    for f in failing:
        level = (
            "critical"
            if (f["severity"] == "critical" or f["escalation_level"] >= 2)
            else ("needs_attention")
        )
        status[f["component"]] = max(status.get(f["component"], "excellent"), level,
                                     key=STATUS_RANK.__getitem__)  # fmt: skip
    overall = max(status.values(), key=STATUS_RANK.__getitem__, default="excellent")
    counts = Counter(a["severity"] for a in alerts if a["status"] == "firing")
    return {
        "overall_status": overall,
        "component_health": dict(sorted(status.items())),
        "failing": failing,
        "alert_counts": dict(counts),
        "alerts": [_json_safe(dict(a)) for a in list(alerts)[-50:]],
    }


def _tickets(tickets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    items, roi_total, any_roi = [], 0.0, False
    for t in tickets:
        imp = t.get("impact") or None
        if imp and imp.get("roi") is not None:
            roi_total += float(imp["roi"])
            any_roi = True
        items.append(_json_safe({k: t.get(k) for k in (
            "ticket_id", "insight_id", "component", "metric", "grp", "title", "priority",
            "status", "cost", "implemented_at", "measured_at", "impact")}))  # fmt: skip
    return {
        "by_status": dict(Counter(t["status"] for t in tickets)),
        "items": items,
        "cumulative_roi": _num(roi_total) if any_roi else None,
    }


def _experiments(rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Per experiment the treatment with the best relative lift on the primary metric (from
    the latest ``experiments.results`` comparisons) and its sequential decision."""
    if rows is None:
        return {"available": False, "items": []}
    items = []
    for r in rows:
        result = r.get("result")
        result = result if isinstance(result, Mapping) else {}
        primary = result.get("primary_metric") or r.get("primary_metric")
        comparisons = result.get("comparisons")
        best = None
        if isinstance(comparisons, Sequence):
            lifts = [
                (c["lift"], str(c.get("variant")), c.get("sequential_decision"))
                for c in comparisons
                if isinstance(c, Mapping)
                and (c.get("role") == "primary" or c.get("metric") == primary)
                and isinstance(c.get("lift"), int | float)
            ]
            if lifts:
                best = max(lifts, key=lambda x: x[0])
        items.append({
            "experiment_id": r.get("experiment_id"), "status": r.get("status"),
            "primary_metric": primary,
            "best_variant": None if best is None else best[1],
            "best_relative_lift": None if best is None else _num(best[0]),
            "decision": None if best is None else best[2],
        })  # fmt: skip
    return {"available": True, "items": items}


def build_report(
    raw: Mapping[str, Any],
    *,
    deployment: str,
    kind: str,
    generated_ms: int,
    report_id: str | None = None,
    min_samples: int = 20,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The report document from :func:`collect`'s data (pure; never raises on bad rows)."""
    notes = list(raw.get("notes", []))
    start_ms, end_ms = int(raw["start_ms"]), int(raw["end_ms"])
    windows = _valid_windows(raw.get("windows") or [], notes)
    performance = _section(notes, "performance", lambda: _performance(windows, start_ms), {})
    series = _section(notes, "trends", lambda: _series(windows, start_ms, min_samples), {})
    trends = _section(notes, "trends", lambda: _trends(series, alpha), [])
    insights = [dict(i) for i in raw.get("insights") or []]
    health = _section(
        notes, "system_health",
        lambda: _health(raw.get("alerts") or [], insights, sorted(performance)),
        {"overall_status": "excellent", "component_health": {}, "failing": [],
         "alert_counts": {}, "alerts": []},
    )  # fmt: skip
    tickets = _section(notes, "tickets", lambda: _tickets(raw.get("tickets") or []),
                       {"by_status": {}, "items": [], "cumulative_roi": None})  # fmt: skip
    experiments = _section(notes, "experiments", lambda: _experiments(raw.get("experiments")),
                           {"available": False, "items": []})  # fmt: skip
    if not experiments["available"]:
        notes.append("experiments: no experiment data available to this report")
    if not windows:
        notes.append("windows: no decision or metric windows in the period")

    total = merge_stats(st for _, s, _, st in windows if s >= start_ms)
    prev_total = merge_stats(st for _, s, _, st in windows if s < start_ms)
    now_v, prev_v = window_values(total), window_values(prev_total)
    sr = now_v.get("success_rate", (None, 0))[0]
    sr_prev = prev_v.get("success_rate", (None, 0))[0]
    active = [i for i in insights if i["status"] == "active"]
    high = [i for i in active if i["priority"] == "high"]
    measured = [t for t in tickets["items"] if t.get("impact")]
    firing = [a for a in raw.get("alerts") or [] if a["status"] == "firing"]
    critical = [a for a in firing if a["severity"] == "critical"]
    order = {"high": 0, "medium": 1, "low": 2}
    top = sorted(active, key=lambda i: (order[i["priority"]], -float(i["confidence"])))[:5]
    wins = [
        f"{t['title']}: {t['impact']['windows']['metric']} {t['impact']['difference']:+.4g} "
        f"[{t['impact']['ci_low']:+.4g}, {t['impact']['ci_high']:+.4g}]"
        for t in measured
        if t["impact"].get("difference") is not None and t["impact"].get("ci_low") is not None
        and t["impact"]["ci_low"] > 0
    ]  # fmt: skip
    wins += [
        f"{x['metric']} of {x['component']} improving ({x['change_percentage']:+.1f} %)"
        for x in trends
        if x["trend_direction"] == "improving"
    ]
    risks = [f"{f['metric']} of {f['component']}: {f['severity']} (level "
             f"{f['escalation_level']})" for f in health["failing"]]  # fmt: skip
    risks += [
        f"{x['metric']} of {x['component']} declining ({x['change_percentage']:+.1f} %)"
        for x in trends
        if x["trend_direction"] == "declining"
    ]
    sr_change = None if sr is None or sr_prev is None else _num(sr - sr_prev)
    key_metrics = {
        "components": len(performance),
        "decisions": int(now_v.get("decisions", (0, 0))[1]),
        "success_rate": _num(sr),
        "success_rate_change": sr_change,
        "alerts": len(firing),
        "critical_alerts": len(critical),
        "active_insights": len(active),
        "high_priority_insights": len(high),
        "actions": len(raw.get("actions") or []),
        "measured_improvements": len(measured),
        "cumulative_roi": tickets["cumulative_roi"],
    }
    sr_text = "n/a" if sr is None else f"{sr:.1%}"
    if sr_change is not None:
        sr_text += f" ({sr_change * 100:+.1f} pts vs the previous period)"
    headline = (
        f"{key_metrics['components']} component(s), {key_metrics['decisions']} decisions, "
        f"success rate {sr_text}; {len(firing)} alert(s) ({len(critical)} critical); "
        f"{len(high)} high-priority insight(s); {key_metrics['actions']} action(s); "
        f"{len(measured)} measured improvement(s). Overall: "
        f"{health['overall_status'].replace('_', ' ')}."
    )
    report = {
        "report_metadata": {
            "report_id": report_id or f"rpt-{generated_ms}-{uuid.uuid4().hex[:6]}",
            "deployment": deployment,
            "kind": kind,
            "generated_at": _iso(generated_ms),
            "period": {
                "start": _iso(start_ms),
                "end": _iso(end_ms),
                "days": _num((end_ms - start_ms) / 86_400_000),
            },
            "schema_version": SCHEMA_VERSION,
        },
        "sections": list(SECTIONS),
        "executive_summary": {
            "overall_status": health["overall_status"],
            "headline": headline,
            "key_metrics": key_metrics,
            "top_recommendations": [
                {
                    "insight_id": i["insight_id"],
                    "subject": i["subject"],
                    "priority": i["priority"],
                    "confidence": _num(i["confidence"]),
                    "action": i["recommended_action"],
                }
                for i in top
            ],
            "wins": wins[:10],
            "risks": risks[:10],
        },
        "performance": performance,
        "trends": trends,
        "system_health": health,
        "insights": [
            _json_safe(
                {
                    k: i.get(k)
                    for k in (
                        "insight_id",
                        "subject",
                        "kind",
                        "priority",
                        "confidence",
                        "status",
                        "title",
                        "recommended_action",
                        "first_seen",
                        "updated_at",
                    )
                }
            )
            for i in insights
        ],
        "actions": [_json_safe(dict(a)) for a in raw.get("actions") or []],
        "goals": [_json_safe(dict(g)) for g in raw.get("goals") or []],
        "tickets": tickets,
        "experiments": experiments,
        "data_quality": notes,
        "images": {},
    }
    report["_series"] = {f"{c}|{m}": [t.tolist(), v.tolist()] for (c, m), (t, v) in series.items()}
    return _json_safe(report)


# --------------------------------------------------------------------------- rendering


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots: trends (success rate, latency p95), learning (confidence), health (alerts
    per day), tickets (measured impact), experiments (best lift). Sets ``report["images"]``
    and the legends in ``report["image_legends"]``."""
    images: dict[str, bytes] = {}
    legends: dict[str, str] = {}
    series = report.get("_series", {})

    def lines(metric: str, name: str, label: str) -> None:
        picked = [(k.split("|", 1)[0], v) for k, v in sorted(series.items())
                  if k.endswith("|" + metric) and len(v[0]) >= 2][:8]  # fmt: skip
        if not picked:
            return
        t0 = min(v[0][0] for _, v in picked)
        png, _, (y0, y1) = line_chart(
            [([(t - t0) / 3_600_000 for t in v[0]], v[1]) for _, v in picked]
        )
        images[name] = png
        keys = ", ".join(
            f'<span style="color:{PALETTE_HEX[i % 8]}">{html.escape(c)}</span>'
            for i, (c, _) in enumerate(picked)
        )
        legends[name] = f"{label} per window, y from {y0:.4g} to {y1:.4g}; {keys}"

    lines("success_rate", "trend_success_rate.png", "Success rate")
    lines("latency_p95", "trend_latency_p95.png", "Latency p95 (ms)")
    lines("confidence", "learning_confidence.png", "Mean decision confidence (learning)")

    alerts = report["system_health"].get("alerts", [])
    days = Counter(str(a.get("raised_at", ""))[:10] for a in alerts
                   if a.get("status") == "firing")  # fmt: skip
    if days:
        keys = sorted(days)
        png, (_, y1) = bar_chart([days[k] for k in keys])
        images["health_alerts.png"] = png
        legends["health_alerts.png"] = (
            f"Firing alerts per day ({keys[0]} … {keys[-1]}), up to {y1:.0f}"
        )
    measured = [t for t in report["tickets"]["items"]
                if t.get("impact") and t["impact"].get("difference") is not None]  # fmt: skip
    if measured:
        png, (y0, y1) = bar_chart(
            [t["impact"]["difference"] for t in measured],
            [(t["impact"]["ci_low"], t["impact"]["ci_high"])
             if t["impact"].get("ci_low") is not None else None for t in measured],
        )  # fmt: skip
        images["tickets_impact.png"] = png
        legends["tickets_impact.png"] = (
            f"Measured impact (after − before, with its interval) of "
            f"{len(measured)} ticket(s), y from {y0:.3g} to {y1:.3g}"
        )
    exps = [e for e in report["experiments"]["items"] if e.get("best_relative_lift") is not None]
    if exps:
        png, (y0, y1) = bar_chart([e["best_relative_lift"] for e in exps])
        images["experiments_lift.png"] = png
        legends["experiments_lift.png"] = (
            f"Best relative lift per experiment ({len(exps)}), y from {y0:.3g} to {y1:.3g}"
        )
    report["images"] = {name: name for name in images}
    report["image_legends"] = legends
    return images


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.1%}" if pct else f"{x:.4g}"
    return str(x)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out


def _blocks(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(section title, Markdown lines) in section order."""
    es = report["executive_summary"]
    km = es["key_metrics"]
    blocks: list[tuple[str, list[str]]] = []
    summary = [
        f"**Overall status: {es['overall_status'].replace('_', ' ')}.** {es['headline']}",
        "",
    ]
    summary += _table(["metric", "value"], [(k, _fmt(v)) for k, v in km.items()])
    if es["top_recommendations"]:
        summary += ["", "Top recommendations:", ""]
        summary += [
            f"{n}. **{r['priority']}** ({_fmt(r['confidence'])}) {r['subject']}: {r['action']}"
            for n, r in enumerate(es["top_recommendations"], 1)
        ]
    for label, items in (("Wins", es["wins"]), ("Risks", es["risks"])):
        if items:
            summary += ["", f"{label}:", ""] + [f"- {x}" for x in items]
    blocks.append(("Executive summary", summary))

    perf: list[str] = []
    rows = []
    for comp, p in report["performance"].items():
        rows.append((comp, _fmt(p["decisions"]), _fmt(p["success_rate"], True),
                     _fmt(p["change"].get("success_rate")), _fmt(p["conversion"], True),
                     _fmt(p["quality"]), _fmt(p["latency_p50"]), _fmt(p["latency_p95"]),
                     _fmt(p["latency_p99"])))  # fmt: skip
    if rows:
        perf += _table(["component", "decisions", "success", "Δ success", "conversion",
                        "quality", "p50 ms", "p95 ms", "p99 ms"], rows)  # fmt: skip
    for comp, p in report["performance"].items():
        for dim, groups in p["by_dimension"].items():
            perf += ["", f"{comp} by {dim}:", ""]
            perf += _table([dim, "decisions", "success", "quality", "p95 ms"], [
                (label, _fmt(g["decisions"]), _fmt(g["success_rate"], True), _fmt(g["quality"]),
                 _fmt(g["latency_p95"])) for label, g in groups.items()])  # fmt: skip
        if p["metrics"]:
            perf += ["", f"{comp} metric samples:", ""]
            perf += _table(["metric", "mean", "n", "min", "max"], [
                (m, _fmt(v["mean"]), v["n"], _fmt(v["min"]), _fmt(v["max"]))
                for m, v in p["metrics"].items()])  # fmt: skip
    blocks.append(("Performance", perf or ["No data in the period."]))

    trend_rows = [(t["component"], t["metric"], t["trend_direction"],
                   _fmt(t["change_percentage"]), _fmt(t["slope_per_day"]), _fmt(t["q_value"]),
                   t["significance"], t["windows"]) for t in report["trends"]]  # fmt: skip
    blocks.append(("Trends", _table(["component", "metric", "trend", "change %", "slope/day",
                                     "q", "significance", "windows"], trend_rows)
                   if trend_rows else ["Not enough windows for trend tests."]))  # fmt: skip

    h = report["system_health"]
    health = [f"Overall: **{h['overall_status']}**.", ""]
    health += _table(["component", "status"], list(h["component_health"].items()))
    if h["failing"]:
        health += ["", "Failing checks:", ""]
        health += _table(["component", "metric", "severity", "level", "since"], [
            (f["component"], f["metric"], f["severity"], f["escalation_level"], f["since"])
            for f in h["failing"]])  # fmt: skip
    health += ["", f"Alerts in the period: {h['alert_counts'] or 'none'}"]
    blocks.append(("System health", health))

    blocks.append(("Insights", _table(
        ["priority", "confidence", "kind", "status", "subject", "recommended action"],
        [(i["priority"], _fmt(i["confidence"]), i["kind"], i["status"], i["subject"],
          i["recommended_action"]) for i in report["insights"]],
    ) if report["insights"] else ["No insights."]))  # fmt: skip
    blocks.append(("Optimization actions", _table(
        ["decided", "target", "kind", "strategy", "confidence", "reason"],
        [(a["decided_at"], a["target"], a["kind"], a["strategy"], _fmt(a["confidence"]),
          a["reason"]) for a in report["actions"]],
    ) if report["actions"] else ["No actions in the period."]))  # fmt: skip
    blocks.append(("Goals", _table(
        ["goal", "component", "metric", "target", "baseline", "current", "progress", "status"],
        [(g["goal_id"], g["component"], g["metric"], f"{g['direction']} {g['target']}",
          _fmt(g["baseline"]), _fmt(g["current"]), _fmt(g["progress"], True), g["status"])
         for g in report["goals"]],
    ) if report["goals"] else ["No goals defined."]))  # fmt: skip

    t = report["tickets"]
    tickets = [
        f"By status: {t['by_status'] or 'none'}; cumulative ROI: {_fmt(t['cumulative_roi'])}"
    ]
    measured = [x for x in t["items"] if x.get("impact")]
    if measured:
        tickets += ["", *_table(
            ["ticket", "status", "metric", "before", "after", "difference [CI]", "p", "ROI"],
            [(x["ticket_id"], x["status"], x["impact"]["windows"]["metric"],
              _fmt(x["impact"]["before"]), _fmt(x["impact"]["after"]),
              f"{_fmt(x['impact']['difference'])} [{_fmt(x['impact']['ci_low'])}, "
              f"{_fmt(x['impact']['ci_high'])}]", _fmt(x["impact"]["p_value"]),
              _fmt(x["impact"].get("roi"))) for x in measured],
        )]  # fmt: skip
    blocks.append(("Improvement tickets", tickets))
    exps = report["experiments"]
    blocks.append(("Experiments", _table(
        ["experiment", "status", "primary metric", "best variant", "best lift", "decision"],
        [(e["experiment_id"], e["status"], e["primary_metric"], e["best_variant"],
          _fmt(e["best_relative_lift"]), e["decision"]) for e in exps["items"]],
    ) if exps["items"] else ["No experiment data."]))  # fmt: skip
    blocks.append(("Data quality", [f"- {n}" for n in report["data_quality"]] or ["No issues."]))
    return blocks


# The section under which each plot appears, in Markdown and HTML alike.
IMAGE_PLACEMENT = {
    "Trends": ["trend_success_rate.png", "trend_latency_p95.png", "learning_confidence.png"],
    "System health": ["health_alerts.png"],
    "Improvement tickets": ["tickets_impact.png"],
    "Experiments": ["experiments_lift.png"],
}


def render_markdown(report: Mapping[str, Any]) -> str:
    meta = report["report_metadata"]
    lines = [
        f"# Loopwise report {meta['report_id']}",
        "",
        f"Deployment `{meta['deployment']}`, {meta['kind']} report generated "
        f"{meta['generated_at']}; period {meta['period']['start']} → {meta['period']['end']} "
        f"({meta['period']['days']} days).",
    ]
    images = report.get("images", {})
    legends = report.get("image_legends", {})
    for title, body in _blocks(report):
        lines += ["", f"## {title}", "", *body]
        for name in IMAGE_PLACEMENT.get(title, []):
            if name in images:
                caption = re.sub(r"<[^>]+>", "", legends.get(name, name))
                lines += ["", f"![{caption}]({images[name]})"]
    return "\n".join(lines) + "\n"


def _md_inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page (images referenced next to it)."""
    meta = report["report_metadata"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Loopwise report {html.escape(meta['report_id'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.25em .5em;font-size:.9em;text-align:left}figure{margin:1em 0}"
        "figcaption{font-size:.85em;color:#444}</style></head><body>",
        f"<h1>Loopwise report {html.escape(meta['report_id'])}</h1>",
        f"<p>Deployment <code>{html.escape(meta['deployment'])}</code>, {meta['kind']} report "
        f"generated {meta['generated_at']}; period {meta['period']['start']} → "
        f"{meta['period']['end']}.</p>",
    ]
    images = report.get("images", {})
    legends = report.get("image_legends", {})
    for title, body in _blocks(report):
        slug = re.sub(r"[^a-z]+", "-", title.lower()).strip("-")
        out.append(f'<section id="{slug}"><h2>{html.escape(title)}</h2>')
        table: list[list[str]] = []
        in_list = False
        for line in [*body, ""]:
            if line.startswith("|"):
                if not line.startswith("|---"):
                    table.append([c.strip() for c in line.strip("|").split("|")])
                continue
            if table:
                head, *rest = table
                out.append("<table><tr>" + "".join(f"<th>{_md_inline(c)}</th>" for c in head)
                           + "</tr>" + "".join("<tr>" + "".join(f"<td>{_md_inline(c)}</td>"
                           for c in r) + "</tr>" for r in rest) + "</table>")  # fmt: skip
                table = []
            is_item = line.startswith("- ") or bool(re.match(r"\d+\. ", line))
            if is_item and not in_list:
                out.append("<ul>")
                in_list = True
            if not is_item and in_list:
                out.append("</ul>")
                in_list = False
            if is_item:
                item = re.sub(r"^(- |\d+\. )", "", line)
                out.append(f"<li>{_md_inline(item)}</li>")
            elif line:
                out.append(f"<p>{_md_inline(line)}</p>")
        for name in IMAGE_PLACEMENT.get(title, []):
            if name in images:
                src = html.escape(images[name])
                caption = legends.get(name, "")
                out.append(f'<figure><img src="{src}" alt="{name}">'
                           f"<figcaption>{caption}</figcaption></figure>")  # fmt: skip
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- archive


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "default"


def archive(
    report: dict[str, Any],
    images: Mapping[str, bytes],
    root: Path,
    *,
    retention_days: float,
    now_ms: int,
) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``report.html`` and the PNGs into
    ``root/<deployment>/<report_id>/``; delete this deployment's reports older than the
    retention. Returns the file paths."""
    base = root / _slug(report["report_metadata"]["deployment"])
    target = base / report["report_metadata"]["report_id"]
    target.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (target / name).write_bytes(data)
    document = {k: v for k, v in report.items() if not k.startswith("_")}
    paths = {
        "json": target / "report.json",
        "markdown": target / "report.md",
        "html": target / "report.html",
    }
    paths["json"].write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    paths["markdown"].write_text(render_markdown(report))
    paths["html"].write_text(render_html(report))
    cutoff = now_ms / 1000.0 - retention_days * 86_400
    for old in base.iterdir():
        if old.is_dir() and old != target and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    return {k: str(v) for k, v in paths.items()}


def generate_report(
    settings: Any,
    now_ms: int | None = None,
    *,
    days: float = 7.0,
    kind: str = "on_demand",
    out_dir: Path | None = None,
) -> dict[str, str]:
    """Collect, build, render and archive one report of the last ``days``; the paths."""
    from agents.insights.store import connect, ms_to_dt
    from streams.sinks.postgres_sink import jsonb

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    start_ms = now_ms - int(days * 86_400_000)
    dep = settings.topic_prefix
    with connect(settings) as conn:
        raw = collect(conn, dep, start_ms, now_ms)
        report = build_report(
            raw, deployment=dep, kind=kind, generated_ms=now_ms,
            min_samples=settings.insights_min_samples, alpha=settings.insights_alpha,
        )  # fmt: skip
        images = render_plots(report)
        paths = archive(report, images, out_dir or settings.report_dir,
                        retention_days=settings.report_retention_days, now_ms=now_ms)  # fmt: skip
        conn.execute(
            "INSERT INTO insight_reports (deployment, report_id, kind, period_start, period_end,"
            " paths, summary) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (deployment, report_id) DO NOTHING",
            (dep, report["report_metadata"]["report_id"], kind, ms_to_dt(start_ms),
             ms_to_dt(now_ms), jsonb(paths), jsonb(report["executive_summary"])),
        )  # fmt: skip
        conn.execute(
            "DELETE FROM insight_reports WHERE deployment = %s AND generated_at < %s",
            (dep, ms_to_dt(now_ms - settings.report_retention_days * 86_400_000)),
        )
    return paths

"""PostgreSQL reads and writes of the insights leader jobs and the CLI (synchronous psycopg).

The worker runs these in a thread (``asyncio.to_thread``); the CLI calls them directly.
Tables: ``deploy/migrations/004_insights.sql``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from agents.insights.optimizer import Goal, GoalStatus, InsightRow
from agents.insights.windows import ALL, merge_stats, window_values
from streams.config import Settings
from streams.sinks.postgres_sink import jsonb

__all__ = [
    "connect",
    "current_value",
    "jsonb",
    "load_active_insights",
    "load_goals",
    "load_windows",
    "record_actions",
    "taken_action_ids",
    "update_goals",
]


def connect(settings: Settings) -> psycopg.Connection[Any]:
    from streams.security import current, postgres_conninfo

    conninfo = postgres_conninfo(settings.database_url, current().postgres)
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)


def ms_to_dt(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def dt_to_ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


# --------------------------------------------------------------------------- insights

_INSIGHT_COLUMNS = (
    "insight_id, revision, component, kind, metric, grp, priority, confidence, "
    "recommended_action, action_kind, action_params, evidence"
)


def load_active_insights(
    conn: psycopg.Connection[Any], dep: str, component: str | None = None
) -> list[InsightRow]:
    sql = f"SELECT {_INSIGHT_COLUMNS} FROM insights WHERE deployment = %s AND status = 'active'"
    params: tuple[Any, ...] = (dep,)
    if component:
        sql += " AND component = %s"
        params = (dep, component)
    rows = conn.execute(sql + " ORDER BY insight_id", params).fetchall()
    return [
        InsightRow(
            insight_id=r[0],
            revision=r[1],
            component=r[2],
            kind=r[3],
            metric=r[4],
            group=r[5],
            priority=r[6],
            confidence=float(r[7]),
            recommended_action=r[8],
            action_kind=r[9],
            action_params=r[10] or {},
            evidence=r[11] or {},
        )
        for r in rows
    ]


def list_insights(
    conn: psycopg.Connection[Any], dep: str, status: str | None = "active", limit: int = 100
) -> list[dict[str, Any]]:
    sql = (
        "SELECT insight_id, revision, subject, kind, priority, confidence, status, title, "
        "recommended_action, evidence, first_seen, updated_at FROM insights WHERE deployment = %s"
    )
    params: list[Any] = [dep]
    if status:
        sql += " AND status = %s"
        params.append(status)
    sql += " ORDER BY updated_at DESC LIMIT %s"
    params.append(limit)
    cols = ("insight_id", "revision", "subject", "kind", "priority", "confidence", "status",
            "title", "recommended_action", "evidence", "first_seen", "updated_at")  # fmt: skip
    return [dict(zip(cols, r, strict=True)) for r in conn.execute(sql, params).fetchall()]


# --------------------------------------------------------------------------- windows


def load_windows(
    conn: psycopg.Connection[Any],
    dep: str,
    component: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[tuple[str, int, int, dict[str, Any]]]:
    """``(component, start, end, stats)`` of the windows in ``[start_ms, end_ms)``."""
    sql = (
        "SELECT component, window_start, window_end, stats FROM insight_windows"
        " WHERE deployment = %s"
    )
    params: list[Any] = [dep]
    if component:
        sql += " AND component = %s"
        params.append(component)
    if start_ms is not None:
        sql += " AND window_start >= %s"
        params.append(start_ms)
    if end_ms is not None:
        sql += " AND window_end <= %s"
        params.append(end_ms)
    rows = conn.execute(sql + " ORDER BY component, window_start", params).fetchall()
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


def current_value(
    conn: psycopg.Connection[Any],
    dep: str,
    component: str,
    metric: str,
    group: str = ALL,
    windows: int = 3,
) -> float | None:
    """The metric over the component's latest ``windows`` windows merged."""
    rows = conn.execute(
        "SELECT stats FROM insight_windows WHERE deployment = %s AND component = %s"
        " ORDER BY window_start DESC LIMIT %s",
        (dep, component, windows),
    ).fetchall()
    if not rows:
        return None
    value = window_values(merge_stats(r[0] for r in rows), group).get(metric)
    return None if value is None or not math.isfinite(value[0]) else float(value[0])


# --------------------------------------------------------------------------- goals


def load_goals(conn: psycopg.Connection[Any], dep: str, active_only: bool = True) -> list[Goal]:
    sql = (
        "SELECT goal_id, component, metric, target, direction, deadline, created_at, baseline"
        " FROM optimization_goals WHERE deployment = %s"
    )
    if active_only:
        sql += " AND status = 'active'"
    return [
        Goal(
            r[0],
            r[1],
            r[2],
            float(r[3]),
            r[4],
            dt_to_ms(r[5]) or 0,
            dt_to_ms(r[6]) or 0,
            None if r[7] is None else float(r[7]),
        )
        for r in conn.execute(sql + " ORDER BY goal_id", (dep,)).fetchall()
    ]


def add_goal(
    conn: psycopg.Connection[Any],
    dep: str,
    goal_id: str,
    component: str,
    metric: str,
    target: float,
    direction: str,
    deadline_ms: int,
) -> None:
    baseline = current_value(conn, dep, component, metric)
    conn.execute(
        "INSERT INTO optimization_goals (deployment, goal_id, component, metric, target,"
        " direction, deadline, baseline, current) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (deployment, goal_id) DO UPDATE SET target = EXCLUDED.target,"
        " direction = EXCLUDED.direction, deadline = EXCLUDED.deadline, status = 'active',"
        " updated_at = now()",
        (dep, goal_id, component, metric, target, direction, ms_to_dt(deadline_ms), baseline,
         baseline),
    )  # fmt: skip


def update_goals(conn: psycopg.Connection[Any], dep: str, statuses: Iterable[GoalStatus]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE optimization_goals SET current = %s, progress = %s, status = %s,"
            " baseline = COALESCE(baseline, %s), updated_at = now()"
            " WHERE deployment = %s AND goal_id = %s AND status = 'active'",
            [(s.current, s.progress, s.status, s.baseline, dep, s.goal_id) for s in statuses],
        )


def list_goals(conn: psycopg.Connection[Any], dep: str) -> list[dict[str, Any]]:
    cols = ("goal_id", "component", "metric", "direction", "target", "baseline", "current",
            "progress", "status", "deadline")  # fmt: skip
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM optimization_goals WHERE deployment = %s ORDER BY goal_id",
        (dep,),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]


# --------------------------------------------------------------------------- actions


def taken_action_ids(
    conn: psycopg.Connection[Any], dep: str, action_ids: Sequence[str]
) -> set[str]:
    if not action_ids:
        return set()
    rows = conn.execute(
        "SELECT action_id FROM optimization_actions WHERE deployment = %s AND action_id = ANY(%s)",
        (dep, list(action_ids)),
    ).fetchall()
    return {r[0] for r in rows}


def record_actions(
    conn: psycopg.Connection[Any], dep: str, rows: Sequence[tuple[dict[str, Any], int, str]]
) -> None:
    """Record emitted actions ``(event, insight revision, risk)`` (idempotent by action id)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO optimization_actions (deployment, action_id, insight_id,"
            " insight_revision, goal_id, target, kind, parameters, reason, confidence, risk,"
            " strategy) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (deployment, action_id) DO NOTHING",
            [
                (dep, e["action_id"], e.get("insight_id"), revision, e["parameters"].get("goal_id"),
                 e["target"], e["kind"], jsonb(e["parameters"]), e["reason"],
                 e.get("confidence"), risk, e["strategy"])
                for e, revision, risk in rows
            ],
        )  # fmt: skip


def list_actions(conn: psycopg.Connection[Any], dep: str, limit: int = 50) -> list[dict[str, Any]]:
    cols = ("action_id", "target", "kind", "strategy", "confidence", "risk", "insight_id",
            "reason", "decided_at")  # fmt: skip
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM optimization_actions WHERE deployment = %s"
        " ORDER BY decided_at DESC LIMIT %s",
        (dep, limit),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]


# --------------------------------------------------------------------------- alerts


def insert_alerts(
    conn: psycopg.Connection[Any], dep: str, events: Sequence[dict[str, Any]]
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO insight_alerts (deployment, event_id, component, metric, severity,"
            " escalation_level, status, value, threshold, window_start, message)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (deployment, event_id) DO NOTHING",
            [
                (dep, e["event_id"], e["component"], e["metric"], e["severity"],
                 e["escalation_level"], e["dimensions"].get("status", "firing"), e["value"],
                 e["threshold"], None, e["message"])
                for e in events
            ],
        )  # fmt: skip


def cleanup(
    conn: psycopg.Connection[Any], dep: str, now_ms: int, history_days: float
) -> dict[str, int]:
    """Delete windows, alerts, resolved insights and actions older than the history."""
    cutoff_ms = int(now_ms - history_days * 86_400_000)
    cutoff = ms_to_dt(cutoff_ms)
    counts = {}
    for name, sql, param in (
        ("windows", "window_end < %s", cutoff_ms),
        ("alerts", "raised_at < %s", cutoff),
        ("insights", "status = 'resolved' AND updated_at < %s", cutoff),
        ("actions", "decided_at < %s", cutoff),
    ):
        table = {"windows": "insight_windows", "alerts": "insight_alerts",
                 "insights": "insights", "actions": "optimization_actions"}[name]  # fmt: skip
        counts[name] = conn.execute(
            f"DELETE FROM {table} WHERE deployment = %s AND {sql}", (dep, param)
        ).rowcount
    return counts

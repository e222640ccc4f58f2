"""Improvement tickets: one per high-priority insight that recommends an action.

Lifecycle::

    open → in_progress → implemented → measured → closed
    (back: in_progress → open, measured → implemented; closed from any state; closed is final)

``implemented`` records when the change went live (``--at``, default now). The impact is then
measured over *matched windows* (:func:`agents.learning.impact.matched_windows`): equal
lengths (``LOOPWISE_TICKET_MEASURE_H``) before and after the change, one analytics window
left out on each side. The windows' mergeable summaries give the metric before and after:
rates (success rate, conversion, error rate) by the two-proportion Wald interval, means
(quality, confidence, latency mean, metric samples) by Welch — with the relative lift, and
an ROI when ``LOOPWISE_VALUE_PER_CONVERSION`` and the ticket's cost are set. Latency
quantiles are measured through ``latency_mean`` (quantiles are not additive).

The leader measures implemented tickets once their after window is complete (status
``measured``); ``loopwise tickets update ID --status measured`` measures at once with the
data available (both windows shrink to the same available length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from agents.insights.rules import stable_id
from agents.insights.store import dt_to_ms, load_windows, ms_to_dt
from agents.insights.windows import QUANTILE_METRICS, RATE_METRICS, merge_stats, metric_summary
from agents.learning.impact import (
    ImpactResult,
    MatchedWindows,
    SampleSummary,
    matched_windows,
    mean_impact,
    rate_impact,
)
from streams.sinks.postgres_sink import jsonb

__all__ = [
    "STATUSES",
    "TRANSITIONS",
    "TicketError",
    "ensure_tickets",
    "list_tickets",
    "measure_impact",
    "show_ticket",
    "update_ticket",
]

STATUSES = ("open", "in_progress", "implemented", "measured", "closed")
TRANSITIONS = {
    "open": {"in_progress", "closed"},
    "in_progress": {"implemented", "open", "closed"},
    "implemented": {"measured", "closed"},
    "measured": {"closed", "implemented"},
    "closed": set(),
}


class TicketError(ValueError):
    """A ticket update was refused (unknown ticket, invalid transition...)."""


def measured_metric(metric: str) -> str:
    """Quantile metrics are measured through their additive counterpart."""
    return "latency_mean" if metric in QUANTILE_METRICS else metric


def measure_impact(
    windows: Sequence[tuple[int, int, dict[str, Any]]],
    metric: str,
    group: str,
    mw: MatchedWindows,
    *,
    value_per_conversion: float | None = None,
    cost: float | None = None,
    alpha: float = 0.05,
) -> tuple[ImpactResult, dict[str, Any]]:
    """Impact of a change from the windows ``(start, end, stats)`` around it (pure).

    Windows wholly inside the before window ``[before_start, before_end)`` and the after
    window are merged; the metric's summaries give the result.
    """
    before = merge_stats(s for a, b, s in windows if a >= mw.before_start and b <= mw.before_end)
    after = merge_stats(s for a, b, s in windows if a >= mw.after_start and b <= mw.after_end)
    metric = measured_metric(metric)
    n_b, tot_b, sq_b = metric_summary(before, group, metric)
    n_a, tot_a, sq_a = metric_summary(after, group, metric)
    value = value_per_conversion if value_per_conversion else None
    if metric in RATE_METRICS:
        result = rate_impact(
            round(tot_b), n_b, round(tot_a), n_a, alpha=alpha,
            value_per_conversion=value, cost=cost if cost else None,
        )  # fmt: skip
    else:
        result = mean_impact(
            SampleSummary(n_b, tot_b, sq_b), SampleSummary(n_a, tot_a, sq_a), alpha=alpha,
            value_per_unit=value, cost=cost if cost else None,
        )  # fmt: skip
    bounds = {
        "metric": metric,
        "group": group,
        "before_start": int(mw.before_start),
        "before_end": int(mw.before_end),
        "after_start": int(mw.after_start),
        "after_end": int(mw.after_end),
    }
    return result, bounds


# --------------------------------------------------------------------------- store

_COLS = ("ticket_id", "insight_id", "component", "metric", "grp", "title", "recommended_action",
         "priority", "status", "cost", "implemented_at", "measured_at", "impact", "history",
         "created_at", "updated_at")  # fmt: skip


def ensure_tickets(conn: psycopg.Connection[Any], dep: str) -> list[str]:
    """Open a ticket for every active high-priority insight with an action (idempotent)."""
    rows = conn.execute(
        "SELECT i.insight_id, i.component, i.metric, i.grp, i.title, i.recommended_action,"
        " i.priority FROM insights i"
        " LEFT JOIN improvement_tickets t USING (deployment, insight_id)"
        " WHERE i.deployment = %s AND i.status = 'active' AND i.priority = 'high'"
        " AND i.action_kind IS NOT NULL AND t.ticket_id IS NULL",
        (dep,),
    ).fetchall()
    created = []
    for r in rows:
        ticket_id = stable_id(r[0], prefix="tkt")
        history = [{"status": "open", "note": "created for a high-priority insight"}]
        cur = conn.execute(
            "INSERT INTO improvement_tickets (deployment, ticket_id, insight_id, component,"
            " metric, grp, title, recommended_action, priority, history)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (dep, ticket_id, *r, jsonb(history)),
        )
        if cur.rowcount:
            created.append(ticket_id)
    return created


def _row(r: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(_COLS, r, strict=True))


def list_tickets(
    conn: psycopg.Connection[Any], dep: str, status: str | None = None
) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(_COLS)} FROM improvement_tickets WHERE deployment = %s"
    params: tuple[Any, ...] = (dep,)
    if status:
        sql += " AND status = %s"
        params = (dep, status)
    return [_row(r) for r in conn.execute(sql + " ORDER BY created_at, ticket_id", params)]


def show_ticket(conn: psycopg.Connection[Any], dep: str, ticket_id: str) -> dict[str, Any]:
    r = conn.execute(
        f"SELECT {', '.join(_COLS)} FROM improvement_tickets"
        " WHERE deployment = %s AND ticket_id = %s",
        (dep, ticket_id),
    ).fetchone()
    if r is None:
        raise TicketError(f"no ticket {ticket_id!r}")
    return _row(r)


def _measure_row(
    conn: psycopg.Connection[Any],
    dep: str,
    ticket: dict[str, Any],
    now_ms: int,
    *,
    window_ms: int,
    length_ms: int,
    value_per_conversion: float,
    require_complete: bool,
) -> dict[str, Any] | None:
    changed = dt_to_ms(ticket["implemented_at"])
    if changed is None:
        return None
    mw = matched_windows(changed, length_ms, washout=window_ms, now=now_ms)
    if mw is None or (require_complete and mw.length < length_ms):
        return None
    rows = load_windows(conn, dep, ticket["component"], int(mw.before_start), int(mw.after_end))
    result, bounds = measure_impact(
        [(a, b, s) for _, a, b, s in rows],
        ticket["metric"],
        ticket["grp"],
        mw,
        value_per_conversion=value_per_conversion or None,
        cost=ticket["cost"],
    )
    return {**result.to_dict(), "significant": result.significant, "windows": bounds}


def update_ticket(
    conn: psycopg.Connection[Any],
    dep: str,
    ticket_id: str,
    status: str | None,
    *,
    now_ms: int,
    note: str | None = None,
    cost: float | None = None,
    at_ms: int | None = None,
    window_ms: int,
    length_ms: int,
    value_per_conversion: float = 0.0,
) -> dict[str, Any]:
    """Move a ticket along its lifecycle (and/or set its cost); returns the new row."""
    with conn.transaction():
        r = conn.execute(
            f"SELECT {', '.join(_COLS)} FROM improvement_tickets"
            " WHERE deployment = %s AND ticket_id = %s FOR UPDATE",
            (dep, ticket_id),
        ).fetchone()
        if r is None:
            raise TicketError(f"no ticket {ticket_id!r}")
        ticket = _row(r)
        if cost is not None:
            if cost < 0:
                raise TicketError("cost must be >= 0")
            ticket["cost"] = cost
        entry: dict[str, Any] = {"at": now_ms}
        if status is not None and status != ticket["status"]:
            if status not in STATUSES:
                raise TicketError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
            if status not in TRANSITIONS[ticket["status"]]:
                allowed = ", ".join(sorted(TRANSITIONS[ticket["status"]])) or "none (final)"
                raise TicketError(
                    f"{ticket_id}: {ticket['status']} -> {status} is not allowed "
                    f"(allowed: {allowed})"
                )
            if status == "implemented":
                ticket["implemented_at"] = ms_to_dt(at_ms if at_ms is not None else now_ms)
                ticket["impact"] = None
                ticket["measured_at"] = None
            if status == "measured":
                impact = _measure_row(
                    conn, dep, ticket, now_ms, window_ms=window_ms, length_ms=length_ms,
                    value_per_conversion=value_per_conversion, require_complete=False,
                )  # fmt: skip
                if impact is None:
                    raise TicketError(f"{ticket_id}: no data after the change yet")
                ticket["impact"] = impact
                ticket["measured_at"] = ms_to_dt(now_ms)
            entry["status"] = status
            ticket["status"] = status
        if note:
            entry["note"] = note
        if cost is not None:
            entry["cost"] = cost
        history = [*list(ticket["history"] or []), entry]
        conn.execute(
            "UPDATE improvement_tickets SET status = %s, cost = %s, implemented_at = %s,"
            " measured_at = %s, impact = %s, history = %s, updated_at = now()"
            " WHERE deployment = %s AND ticket_id = %s",
            (ticket["status"], ticket["cost"], ticket["implemented_at"], ticket["measured_at"],
             None if ticket["impact"] is None else jsonb(ticket["impact"]), jsonb(history),
             dep, ticket_id),
        )  # fmt: skip
    return show_ticket(conn, dep, ticket_id)


def auto_measure(
    conn: psycopg.Connection[Any],
    dep: str,
    now_ms: int,
    *,
    window_ms: int,
    length_ms: int,
    value_per_conversion: float,
) -> list[str]:
    """Measure implemented tickets whose after window is complete."""
    done = []
    for ticket in list_tickets(conn, dep, "implemented"):
        impact = _measure_row(
            conn, dep, ticket, now_ms, window_ms=window_ms, length_ms=length_ms,
            value_per_conversion=value_per_conversion, require_complete=True,
        )  # fmt: skip
        if impact is None:
            continue
        entry = {"at": now_ms, "status": "measured", "note": "measured automatically"}
        history = [*list(ticket["history"] or []), entry]
        conn.execute(
            "UPDATE improvement_tickets SET status = 'measured', impact = %s, measured_at = %s,"
            " history = %s, updated_at = now()"
            " WHERE deployment = %s AND ticket_id = %s AND status = 'implemented'",
            (jsonb(impact), ms_to_dt(now_ms), jsonb(history), dep, ticket["ticket_id"]),
        )
        done.append(ticket["ticket_id"])
    return done


def format_ticket(t: dict[str, Any]) -> str:
    """Human-readable ticket for ``loopwise tickets show``."""
    lines = [
        f"{t['ticket_id']}  [{t['status']}]  priority {t['priority']}",
        f"  {t['title']}",
        f"  component {t['component']}  metric {t['metric']}  group {t['grp']}",
        f"  recommended: {t['recommended_action']}",
        f"  insight {t['insight_id']}  created {t['created_at']:%Y-%m-%d %H:%M}",
    ]
    if t["cost"] is not None:
        lines.append(f"  cost {t['cost']:g}")
    if t["implemented_at"] is not None:
        lines.append(f"  implemented at {t['implemented_at']:%Y-%m-%d %H:%M:%S %Z}")
    imp = t["impact"]
    if imp:

        def f(x: Any) -> str:
            return "n/a" if x is None else f"{x:.4g}"

        lines.append(
            f"  impact on {imp['windows']['metric']}: before {f(imp['before'])} "
            f"(n={imp['n_before']}), after {f(imp['after'])} (n={imp['n_after']}), "
            f"difference {f(imp['difference'])} [{f(imp['ci_low'])}, {f(imp['ci_high'])}], "
            f"p={f(imp['p_value'])}, lift {f(imp['relative_lift'])}"
        )
        if imp.get("roi") is not None:
            lines.append(f"  ROI {f(imp['roi'])} [{f(imp['roi_ci_low'])}, {f(imp['roi_ci_high'])}]")
    for h in t["history"] or []:
        lines.append(f"  - {orjson.dumps(h).decode()}")
    return "\n".join(lines)

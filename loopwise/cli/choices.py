"""``loopwise choices`` — what the customer choice loop learned, read from PostgreSQL.

loopwise choices report [--deployment PREFIX] [--alerts N] [--json]

Per segment: the latest published scoring weights (learned or the flagged defaults, with
confidence and sample size), the rolling-window analytics (conversion rate, average chosen
rank, satisfaction, interaction depth, learning confidence; overall and per complexity),
the number of customers in the segment, then the most recent alerts. Rows are those of one
deployment (its topic prefix, ``LOOPWISE_TOPIC_PREFIX`` by default).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from streams.config import Settings

SEGMENT_ORDER = (
    "price_sensitive",
    "quality_focused",
    "speed_priority",
    "local_preference",
    "premium_buyer",
    "balanced",
)


def register(sub: Any) -> None:
    """Add ``choices`` to the ``loopwise`` sub-commands."""
    choices = sub.add_parser("choices", help="customer choice loop: weights, analytics, alerts")
    commands = choices.add_subparsers(dest="choices_command", required=True)
    report = commands.add_parser("report", help="weights, analytics and alerts per segment")
    report.add_argument(
        "--deployment", default=None, help="topic prefix of the deployment (default: settings)"
    )
    report.add_argument("--alerts", type=int, default=20, help="most recent alerts to show")
    report.add_argument("--json", action="store_true", help="print one JSON document")
    report.set_defaults(func=cmd_report)


def _order(segment: str) -> int:
    return SEGMENT_ORDER.index(segment) if segment in SEGMENT_ORDER else len(SEGMENT_ORDER)


def fetch_report(database_url: str, deployment: str, alerts: int) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        weights = conn.execute(
            """
            SELECT DISTINCT ON (segment) segment, version, weights, confidence, sample_size,
                   no_choice, applied, is_default, reason, created_at
            FROM choice_scoring_weights WHERE deployment = %s
            ORDER BY segment, version DESC
            """,
            (deployment,),
        ).fetchall()
        stats = conn.execute(
            """
            SELECT segment, version, window_s, event_time_ms, summary, confidence, updated_at
            FROM choice_segment_stats WHERE deployment = %s
            """,
            (deployment,),
        ).fetchall()
        customers = conn.execute(
            "SELECT segment, count(*) FROM customer_segments WHERE deployment = %s "
            "GROUP BY segment",
            (deployment,),
        ).fetchall()
        recent = conn.execute(
            """
            SELECT event_id, segment, metric, severity, escalation_level, value, threshold,
                   message, created_at
            FROM choice_alerts WHERE deployment = %s
            ORDER BY created_at DESC, event_id DESC LIMIT %s
            """,
            (deployment, alerts),
        ).fetchall()
    segments: dict[str, dict[str, Any]] = {}

    def entry(segment: str) -> dict[str, Any]:
        return segments.setdefault(
            segment, {"segment": segment, "weights": None, "analytics": None, "customers": 0}
        )

    for seg, version, w, conf, n, no_choice, applied, is_default, reason, at in weights:
        entry(seg)["weights"] = {
            "version": version,
            "weights": w,
            "confidence": conf,
            "sample_size": n,
            "no_choice": no_choice,
            "applied": applied,
            "is_default": is_default,
            "reason": reason,
            "published_at": at.isoformat(),
        }
    for seg, version, window_s, event_time_ms, summary, conf, at in stats:
        entry(seg)["analytics"] = {
            "version": version,
            "window_s": window_s,
            "event_time_ms": event_time_ms,
            "summary": summary,
            "confidence": conf,
            "updated_at": at.isoformat(),
        }
    for seg, count in customers:
        entry(seg)["customers"] = count
    return {
        "deployment": deployment,
        "segments": sorted(segments.values(), key=lambda e: _order(e["segment"])),
        "alerts": [
            {
                "event_id": event_id,
                "segment": seg,
                "metric": metric,
                "severity": severity,
                "escalation_level": level,
                "value": value,
                "threshold": threshold,
                "message": message,
                "created_at": at.isoformat(),
            }
            for event_id, seg, metric, severity, level, value, threshold, message, at in recent
        ],
    }


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted, or ``-`` (as wide) when it is undefined."""
    if value is None:
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def _analytics_line(name: str, s: dict[str, Any]) -> str:
    return (
        f"    {name:<9} sessions {s['sessions']:>6}"
        f"  conversion {_fmt(s['conversion_rate'], '6.1%')}"
        f"  avg rank {_fmt(s['avg_chosen_rank'], '5.2f')}"
        f"  satisfaction {_fmt(s['satisfaction'], '4.2f')}"
        f"  depth {_fmt(s['interaction_depth'], '5.2f')}"
        f"  decision {_fmt(s['avg_decision_time_s'], '7.1f')} s"
    )


def render(report: dict[str, Any], factors: tuple[str, ...] = ()) -> str:
    """The report as text; weights are listed in the order of ``factors`` (the settings)."""

    def order(name: str) -> tuple[int, str]:
        return (factors.index(name) if name in factors else len(factors), name)

    lines = [f"customer choice loop — deployment {report['deployment']!r}"]
    if not report["segments"]:
        lines.append("no segment has data yet")
    for e in report["segments"]:
        lines.append("")
        noun = "customer" if e["customers"] == 1 else "customers"
        lines.append(f"{e['segment']}  ({e['customers']} {noun})")
        w = e["weights"]
        if w is None:
            lines.append("  weights   none published yet")
        else:
            flag = "learned, applied" if w["applied"] else f"DEFAULTS ({w['reason']})"
            pairs = "  ".join(f"{f}={w['weights'][f]:.3f}" for f in sorted(w["weights"], key=order))
            lines.append(
                f"  weights   v{w['version']} {flag}; confidence {w['confidence']:.3f}, "
                f"{w['sample_size']} sessions ({w['no_choice']} without a choice)"
            )
            lines.append(f"            {pairs}")
        a = e["analytics"]
        if a is not None:
            summary = a["summary"]
            lines.append(
                f"  window    last {a['window_s']:g} s of session time; learning confidence "
                f"{a['confidence']:.3f} (lowest in window "
                f"{_fmt(summary['all'].get('min_learning_confidence'), '.3f')})"
            )
            lines.append(_analytics_line("all", summary["all"]))
            for name in ("simple", "moderate", "complex"):
                if name in summary:
                    lines.append(_analytics_line(name, summary[name]))
    lines.append("")
    if report["alerts"]:
        lines.append(f"recent alerts ({len(report['alerts'])}):")
        for a in report["alerts"]:
            lines.append(
                f"  {a['created_at'][:19]}  {a['severity']:<8} L{a['escalation_level']} "
                f"{a['segment']:<16} {a['metric']:<26} {a['message']}"
            )
    else:
        lines.append("no alerts")
    return "\n".join(lines)


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    deployment = args.deployment if args.deployment is not None else settings.topic_prefix
    try:
        report = fetch_report(settings.database_url, deployment, args.alerts)
    except psycopg.Error as exc:
        print(f"loopwise: cannot read the choice records: {exc}".strip(), file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(report, settings.choice_factors))
    return 0

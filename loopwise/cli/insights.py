"""``loopwise`` commands of the insights agent (PostgreSQL of this deployment, its topics).

loopwise insights [--status active|resolved|all] [--limit N] [--json]
loopwise optimize [--strategy S] [--component C] [--max-actions N] [--dry-run]
loopwise goals add GOAL_ID --component C --metric M --target X [--direction D] --days N
loopwise goals list
loopwise tickets list [--status S]
loopwise tickets show TICKET_ID
loopwise tickets update TICKET_ID [--status S] [--note TEXT] [--cost X] [--at TIME]
loopwise report [--days N] [--out DIR]

Rows belong to the deployment of ``LOOPWISE_TOPIC_PREFIX``. ``optimize`` runs one cycle of
the optimization engine now (the same code as the leader's scheduled cycle): it prints every
candidate with its verdict and, unless ``--dry-run``, emits the chosen actions on ``actions``
and records them. ``report`` writes a report now and prints the paths of its files.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import orjson

from streams.clock import now_ms
from streams.config import Settings


def register(sub: Any) -> None:
    """Add the insights commands to the ``loopwise`` sub-commands."""
    ins = sub.add_parser("insights", help="insights of this deployment (from PostgreSQL)")
    ins.add_argument("--status", choices=("active", "resolved", "all"), default="active")
    ins.add_argument("--limit", type=int, default=50)
    ins.add_argument("--json", action="store_true", help="one JSON document per line")
    ins.set_defaults(func=cmd_insights)

    opt = sub.add_parser("optimize", help="run one optimization cycle now")
    opt.add_argument("--strategy", choices=("greedy", "balanced", "conservative"), default=None,
                     help="default: LOOPWISE_OPTIMIZATION_STRATEGY")  # fmt: skip
    opt.add_argument("--component", default=None, help="only insights of this component")
    opt.add_argument("--max-actions", type=int, default=0, help="0: the strategy's limit")
    opt.add_argument("--dry-run", action="store_true", help="show the choice, emit nothing")
    opt.set_defaults(func=cmd_optimize)

    goals = sub.add_parser("goals", help="optimization goals").add_subparsers(
        dest="goals_command", required=True
    )
    add = goals.add_parser("add", help="add or replace a goal")
    add.add_argument("goal_id")
    add.add_argument("--component", required=True)
    add.add_argument("--metric", required=True, help="e.g. success_rate, conversion, quality")
    add.add_argument("--target", type=float, required=True)
    add.add_argument("--direction", choices=("at_least", "at_most"), default=None,
                     help="default: at_least, or at_most for latency/error metrics")  # fmt: skip
    add.add_argument("--days", type=float, required=True, help="deadline, days from now")
    add.set_defaults(func=cmd_goals_add)
    goals.add_parser("list", help="goals and their progress").set_defaults(func=cmd_goals_list)

    tickets = sub.add_parser("tickets", help="improvement tickets").add_subparsers(
        dest="tickets_command", required=True
    )
    tl = tickets.add_parser("list", help="tickets and their status")
    tl.add_argument("--status", default=None)
    tl.set_defaults(func=cmd_tickets_list)
    ts = tickets.add_parser("show", help="one ticket with its impact and history")
    ts.add_argument("ticket_id")
    ts.set_defaults(func=cmd_tickets_show)
    tu = tickets.add_parser(
        "update", help="open -> in_progress -> implemented -> measured -> closed"
    )
    tu.add_argument("ticket_id")
    tu.add_argument("--status", default=None)
    tu.add_argument("--note", default=None)
    tu.add_argument("--cost", type=float, default=None, help="cost of the change, for ROI")
    tu.add_argument("--at", default=None, help="when it went live (ISO 8601 or epoch ms)")
    tu.set_defaults(func=cmd_tickets_update)

    rep = sub.add_parser("report", help="write a technical report and executive summary now")
    rep.add_argument("--days", type=float, default=None,
                     help="period (default: LOOPWISE_REPORT_INTERVAL_H, or 7 days)")  # fmt: skip
    rep.add_argument("--out", default=None, help="directory (default: LOOPWISE_REPORT_DIR)")
    rep.set_defaults(func=cmd_report)


def _fail(message: str, code: int = 1) -> int:
    print(f"loopwise: {message}", file=sys.stderr)
    return code


def _connect(settings: Settings) -> Any:
    from agents.insights.store import connect

    return connect(settings)


def cmd_insights(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.store import list_insights

    status = None if args.status == "all" else args.status
    with _connect(settings) as conn:
        rows = list_insights(conn, settings.topic_prefix, status, args.limit)
    for r in rows:
        if args.json:
            print(orjson.dumps(r, default=str).decode())
            continue
        print(
            f"{r['priority']:<6} {r['confidence']:.2f} {r['kind']:<16} {r['status']:<8} "
            f"{r['subject']}\n       {r['title']}\n       -> {r['recommended_action']}"
        )
    print(f"{len(rows)} insight(s)", file=sys.stderr)
    return 0


def cmd_optimize(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.jobs import commit_cycle, format_plan, plan_cycle
    from streams.codecs import encode
    from streams.kafka_admin import producer

    strategy = args.strategy or settings.optimization_strategy
    dep = settings.topic_prefix
    with _connect(settings) as conn:
        plan = plan_cycle(
            conn, dep, strategy, now_ms(), component=args.component,
            max_actions=args.max_actions or settings.optimization_max_actions,
        )  # fmt: skip
        for line in format_plan(plan):
            print(line)
        if args.dry_run or not plan.events:
            return 0
        prod = producer(settings)
        for event in plan.events:
            prod.produce(settings.topic("actions"), key=event["target"].encode(),
                         value=encode(event))  # fmt: skip
        if prod.flush(30):
            return _fail("actions not delivered within 30 s; nothing recorded")
        commit_cycle(conn, dep, plan)
    print(f"emitted {len(plan.events)} action(s) to {settings.topic('actions')}", file=sys.stderr)
    return 0


def cmd_goals_add(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.rules import higher_is_better
    from agents.insights.store import add_goal

    direction = args.direction or ("at_least" if higher_is_better(args.metric) else "at_most")
    deadline = now_ms() + int(args.days * 86_400_000)
    with _connect(settings) as conn:
        add_goal(conn, settings.topic_prefix, args.goal_id, args.component, args.metric,
                 args.target, direction, deadline)  # fmt: skip
    print(f"goal {args.goal_id}: {args.metric} of {args.component} {direction} {args.target:g}")
    return 0


def cmd_goals_list(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.store import list_goals

    with _connect(settings) as conn:
        rows = list_goals(conn, settings.topic_prefix)
    for g in rows:
        progress = "n/a" if g["progress"] is None else f"{g['progress']:.0%}"
        print(
            f"{g['goal_id']:<20} {g['component']}/{g['metric']} {g['direction']} "
            f"{g['target']:g}  baseline {g['baseline']}  current {g['current']}  "
            f"progress {progress}  {g['status']}  deadline {g['deadline']:%Y-%m-%d %H:%M}"
        )
    return 0


def cmd_tickets_list(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.tickets import list_tickets

    with _connect(settings) as conn:
        rows = list_tickets(conn, settings.topic_prefix, args.status)
    for t in rows:
        lift = ""
        if t["impact"] and t["impact"].get("difference") is not None:
            lift = f"  impact {t['impact']['difference']:+.4g}"
        print(f"{t['ticket_id']:<44} {t['status']:<12} {t['priority']:<6} {t['title']}{lift}")
    print(f"{len(rows)} ticket(s)", file=sys.stderr)
    return 0


def cmd_tickets_show(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.tickets import TicketError, format_ticket, show_ticket

    with _connect(settings) as conn:
        try:
            print(format_ticket(show_ticket(conn, settings.topic_prefix, args.ticket_id)))
        except TicketError as exc:
            return _fail(str(exc))
    return 0


def _parse_time(raw: str) -> int:
    if raw.isdigit():
        return int(raw)
    dt = datetime.fromisoformat(raw)
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)


def cmd_tickets_update(settings: Settings, args: argparse.Namespace) -> int:
    from agents.insights.tickets import TicketError, format_ticket, update_ticket

    try:
        at_ms = None if args.at is None else _parse_time(args.at)
    except ValueError:
        return _fail(f"--at {args.at!r}: expected ISO 8601 or epoch milliseconds", 2)
    with _connect(settings) as conn:
        try:
            ticket = update_ticket(
                conn, settings.topic_prefix, args.ticket_id, args.status, now_ms=now_ms(),
                note=args.note, cost=args.cost, at_ms=at_ms,
                window_ms=int(settings.insights_window_s * 1000),
                length_ms=int(settings.ticket_measure_h * 3_600_000),
                value_per_conversion=settings.value_per_conversion,
            )  # fmt: skip
        except TicketError as exc:
            return _fail(str(exc))
    print(format_ticket(ticket))
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from agents.insights.reports import generate_report

    days = args.days or (settings.report_interval_h / 24.0 if settings.report_interval_h else 7.0)
    paths = generate_report(
        settings, now_ms(), days=days, kind="on_demand",
        out_dir=Path(args.out) if args.out else None,
    )  # fmt: skip
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0

"""``loopwise experiments``: create, list, show, start, stop, ramp, assign (PostgreSQL, and the
definitions topic for other workers)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from agents.experiments.store import (
    Conflict,
    DefinitionError,
    NotFound,
    announce_sync,
    assignment,
    changes,
    create,
    decisions,
    get,
    latest_result_sync,
    list_experiments,
    ramp,
    transition,
    validate_definition,
    with_connection,
)


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _read_definition(path: str) -> Any:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DefinitionError([f"{path}: not JSON: {exc}"]) from exc


def run_cli(settings: Any, args: Any) -> int:
    """One ``loopwise experiments`` sub-command; the exit status."""
    command = args.experiments_command
    try:
        if command == "create":
            definition = validate_definition(_read_definition(args.file))
            experiment = with_connection(
                settings, lambda conn: create(conn, definition, settings.topic_prefix)
            )
            announce_sync(settings, experiment)
            _print_json(experiment.to_dict())
            print(f"created {experiment.experiment_id} ({experiment.status})", file=sys.stderr)
        elif command == "list":
            rows = with_connection(settings, lambda conn: list_experiments(conn, args.status))
            for e in rows:
                d = e.definition
                weights = " ".join(f"{k}={v:g}" for k, v in e.weights.items())
                print(
                    f"{e.experiment_id:<32} {e.status:<10} {d['primary_metric']['name']:<16} "
                    f"{d['monitoring']:<14} {d['allocation_mode']:<7} {weights}"
                )
            print(f"{len(rows)} experiments", file=sys.stderr)
        elif command == "show":

            def show(conn: Any) -> dict[str, Any] | None:
                experiment = get(conn, args.experiment_id)
                if experiment is None:
                    return None
                return {
                    **experiment.to_dict(),
                    "decisions": decisions(conn, args.experiment_id),
                    "changes": changes(conn, args.experiment_id),
                    "result": latest_result_sync(settings, conn, args.experiment_id),
                }

            shown = with_connection(settings, show)
            if shown is None:
                raise NotFound(f"no experiment {args.experiment_id!r}")
            _print_json(shown)
        elif command in ("start", "stop"):
            to_status = "running" if command == "start" else "stopped"
            reason = getattr(args, "reason", None)
            experiment = with_connection(
                settings, lambda conn: transition(conn, args.experiment_id, to_status, reason)
            )
            announce_sync(settings, experiment)
            print(f"{experiment.experiment_id}: {experiment.status}")
        elif command == "ramp":
            experiment = with_connection(
                settings,
                lambda conn: ramp(conn, args.experiment_id, args.traffic, args.reason),
            )
            announce_sync(settings, experiment)
            traffic = experiment.definition["traffic_fraction"]
            print(
                f"{experiment.experiment_id}: traffic {traffic:g} (revision {experiment.revision})"
            )
        elif command == "assign":
            experiment = with_connection(settings, lambda conn: get(conn, args.experiment_id))
            if experiment is None:
                raise NotFound(f"no experiment {args.experiment_id!r}")
            attributes = {"device": args.device, "persona": args.persona, "segment": args.segment}
            out = assignment(experiment, args.unit_id, attributes)
            print(out["variant"] if out["variant"] is not None else "-")
            if out.get("reason"):
                print(f"not assigned: {out['reason']}", file=sys.stderr)
        else:  # pragma: no cover - argparse restricts the choices
            raise ValueError(f"unknown command {command!r}")
    except DefinitionError as exc:
        print(f"loopwise: {exc}", file=sys.stderr)
        return 2
    except (NotFound, Conflict, TimeoutError, ValueError, OSError) as exc:
        print(f"loopwise: {exc}", file=sys.stderr)
        return 1
    return 0

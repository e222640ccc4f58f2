"""``loopwise`` — the operators' command line.

loopwise worker                  run a worker (agents, tables, HTTP on LOOPWISE_WEB_PORT)
loopwise topics create           create every registry topic (idempotent)
loopwise topics list             registry topics with their state on the broker
loopwise produce TOPIC [FILE]    JSON lines from FILE or stdin, validated, keyed, produced
loopwise dlq show [--limit N]    dead letters with reason and source coordinates
loopwise dlq replay [--reason R] re-send dead-lettered originals that are valid now
loopwise config [--markdown]     every setting: variable, value in force (secrets masked);
                                 --markdown: the reference of docs/configuration.md (defaults)
loopwise experiments CMD         create FILE|-, list, show ID, start ID, stop ID,
                                 ramp ID --traffic F, assign ID UNIT
loopwise state show KEY          latest state of a user, segment or experiment (JSON)
loopwise lag [--json] [--watch N]  consumer-group lag per topic partition, with totals
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import IO, Any

import orjson

from loopwise.cli import choices as cli_choices
from loopwise.cli import insights as cli_insights
from loopwise.cli import ops as cli_ops
from streams.config import ConfigError, Settings, settings_in_force


def _fail(message: str, code: int = 2) -> int:
    print(f"loopwise: {message}", file=sys.stderr)
    return code


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from loopwise.worker import run_worker

    sys.argv = [sys.argv[0]]  # faust's Worker parses argv; ours are already consumed
    run_worker()
    return 0


def cmd_topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka_admin import create_topics

    for line in create_topics(settings):
        print(line)
    return 0


def cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka_admin import describe_topics

    for line in describe_topics(settings):
        print(line)
    return 0


def _read_lines(source: IO[bytes]) -> Iterable[tuple[int, bytes]]:
    for number, line in enumerate(source, start=1):
        line = line.strip()
        if line:
            yield number, line


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streams.codecs import EventDecoder, Rejected, key_of
    from streams.kafka_admin import producer
    from streams.topics import resolve

    try:
        spec = resolve(settings, args.topic)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    if spec.schema is None:
        return _fail(f"{spec.name} is an internal topic; only workers write to it")
    decode = EventDecoder(spec.schema, settings.max_message_bytes)
    target = settings.topic(spec.name)
    prod = producer(settings)
    sent = rejected = 0
    source = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
    try:
        for number, raw in _read_lines(source):
            try:
                event = decode(raw)
            except Rejected as exc:
                rejected += 1
                print(f"line {number}: rejected ({exc.kind}): {exc.message}", file=sys.stderr)
                continue
            prod.produce(target, key=key_of(event, spec.key_field).encode(), value=raw)
            prod.poll(0)
            sent += 1
    finally:
        if args.file:
            source.close()
    remaining = prod.flush(30)
    if remaining:
        return _fail(f"{remaining} messages were not delivered within 30 s", 1)
    print(f"produced {sent} events to {target}; rejected {rejected}", file=sys.stderr)
    return 1 if rejected else 0


def _dead_letters(settings: Settings, limit: int | None) -> list[dict[str, Any]]:
    from streams.kafka_admin import read_topic

    return [orjson.loads(v) for _, v in read_topic(settings, settings.topic("deadletter"), limit)]


def cmd_dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    letters = _dead_letters(settings, args.limit)
    for dl in letters:
        src = dl["source"]
        if args.reason and dl["error_kind"] != args.reason:
            continue
        print(
            f"{src['topic']}:{src['partition']}:{src['offset']}  {dl['error_kind']:<18} "
            f"{dl['error_message'][:120]}"
        )
    counts = Counter(dl["error_kind"] for dl in letters)
    summary = ", ".join(f"{k}={v}" for k, v in counts.most_common()) or "none"
    print(f"{len(letters)} dead letters: {summary}", file=sys.stderr)
    return 0


def cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams.codecs import EventDecoder, Rejected
    from streams.kafka_admin import producer, read_topic
    from streams.topics import resolve

    prod = producer(settings)
    read = replayed = still_invalid = 0
    every = args.progress_every
    # Streamed, not read into a list first, so progress shows while a large topic is read.
    for _, value in read_topic(settings, settings.topic("deadletter"), args.limit):
        if every and read and read % every == 0:  # after `read` letters were handled
            print(
                f"dlq replay: {read} dead letters read, {replayed} replayed, "
                f"{still_invalid} still invalid",
                file=sys.stderr,
                flush=True,
            )
        read += 1
        dl = orjson.loads(value)
        if args.reason and dl["error_kind"] != args.reason:
            continue
        src = dl["source"]
        raw = base64.b64decode(dl["original"])
        try:
            spec = resolve(settings, src["topic"])
            if spec.schema is None:
                raise KeyError(f"{spec.name} is internal")
            EventDecoder(spec.schema, settings.max_message_bytes)(raw)
        except (KeyError, Rejected) as exc:
            still_invalid += 1
            if args.verbose:
                print(
                    f"skip {src['topic']}:{src['partition']}:{src['offset']}: {exc}",
                    file=sys.stderr,
                )
            continue
        key = base64.b64decode(src["key"]) if src.get("key") else None
        prod.produce(src["topic"], key=key, value=raw)
        prod.poll(0)
        replayed += 1
    remaining = prod.flush(30)
    print(
        f"read {read}; replayed {replayed}; still invalid (left in place) {still_invalid}",
        file=sys.stderr,
    )
    if remaining:
        return _fail(f"{remaining} replayed messages were not delivered within 30 s", 1)
    return 0


def cmd_experiments(settings: Settings, args: argparse.Namespace) -> int:
    from loopwise.cli.experiments import run_cli

    return run_cli(settings, args)


def _md_cell(text: str, code: bool = False) -> str:
    """A Markdown table cell: pipes (and, outside code, emphasis and tag characters) escaped;
    an empty default reads "(empty)"."""
    if code:
        return "`" + text.replace("|", "\\|") + "`" if text else "(empty)"
    for char in ("\\", "|", "*", "<"):
        text = text.replace(char, "\\" + char)
    return text


def config_markdown() -> str:
    """The configuration reference (``docs/configuration.md``): every setting with its
    default, never the values in force, so the document does not depend on the environment."""
    from streams.config import settings_table
    from streams.security import SECURITY_SETTINGS

    def table(rows: Iterable[tuple[str, str, str]]) -> list[str]:
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        for env, default, help_text in rows:
            lines.append(f"| {_md_cell(env, True)} | {_md_cell(default, True)} | "
                         f"{_md_cell(help_text)} |")  # fmt: skip
        return lines

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `loopwise config --markdown > docs/configuration.md`; "
        "do not edit by hand. -->",
        "",
        "Every setting is an environment variable, listed here with its default "
        "(`loopwise config` prints the values in force, secrets masked, and an invalid "
        "value stops the process with a message naming the variable).",
        "",
        *table(settings_table()),
        "",
        "## Security",
        "",
        "Authentication and TLS of the Kafka, Redis and PostgreSQL clients "
        "(`streams/security.py`; examples in [deploy.md](deploy.md#security-settings)).",
        "",
        *table(SECURITY_SETTINGS),
    ]
    return "\n".join(lines) + "\n"


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """The values in force: from the environment where set (marked ``env``), else the
    defaults; secrets masked."""
    from streams.security import SECURITY_SETTINGS

    if getattr(args, "markdown", False):
        sys.stdout.write(config_markdown())
        return 0
    rows = settings_in_force(settings)
    for name, default, help_text in SECURITY_SETTINGS:
        value = os.environ.get(name)
        if value is not None and ("PASSWORD" in name or "secret" in help_text):
            value = "***"
        rows.append((name, default if value is None else value,
                     "default" if value is None else "env", help_text))  # fmt: skip
    for env, value, source, help_text in rows:
        print(f"{env:<34} {value:<40} {source:<8} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopwise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker").set_defaults(func=cmd_worker)

    topics = sub.add_parser("topics", help="create or list topics").add_subparsers(
        dest="topics_command", required=True
    )
    topics.add_parser("create", help="create every registry topic").set_defaults(
        func=cmd_topics_create
    )
    topics.add_parser("list", help="list registry topics").set_defaults(func=cmd_topics_list)

    produce = sub.add_parser("produce", help="produce JSON lines through validation")
    produce.add_argument("topic", help="registry name (feedback.explicit) or full topic name")
    produce.add_argument("file", nargs="?", help="JSON-lines file (default: stdin)")
    produce.set_defaults(func=cmd_produce)

    dlq = sub.add_parser("dlq", help="inspect or replay dead letters").add_subparsers(
        dest="dlq_command", required=True
    )
    show = dlq.add_parser("show", help="print dead letters")
    show.add_argument("--limit", type=int, default=None)
    show.add_argument("--reason", default=None, help="only this error kind")
    show.set_defaults(func=cmd_dlq_show)
    replay = dlq.add_parser(
        "replay",
        help="re-send originals that validate now",
        description=(
            "Read the dead-letter topic from the beginning and re-send each original (same key "
            "and bytes) to its source topic if it passes validation now; the others stay where "
            "they are. Run it after fixing the cause (a missing item, a late session). A second "
            "run sends the originals again: agents drop event ids they have seen recently "
            "(docs/guarantees.md), and one that fails again is dead-lettered again."
        ),
    )
    replay.add_argument("--limit", type=int, default=None, help="read at most N dead letters")
    replay.add_argument(
        "--reason", default=None, help="only this error kind (e.g. unknown_item, missing_session)"
    )
    replay.add_argument(
        "--progress-every",
        type=int,
        default=1000,
        metavar="N",
        help="print progress to stderr every N dead letters read (0: never; default 1000)",
    )
    replay.add_argument("-v", "--verbose", action="store_true", help="print each skipped letter")
    replay.set_defaults(func=cmd_dlq_replay)

    experiments = sub.add_parser("experiments", help="create, inspect, start, stop experiments")
    experiments.set_defaults(func=cmd_experiments)
    exp = experiments.add_subparsers(dest="experiments_command", required=True)
    exp.add_parser("create", help="create from a JSON definition").add_argument(
        "file", help="JSON file, or - for stdin"
    )
    exp.add_parser("list", help="experiments and their status").add_argument(
        "--status", choices=("draft", "running", "stopped", "concluded"), default=None
    )
    for name, text in (
        ("show", "definition, decisions and latest result"),
        ("start", "draft -> running"),
        ("stop", "-> stopped (final)"),
        ("ramp", "change the traffic fraction (units keep their variant)"),
        ("assign", "the variant of a unit, for other services"),
    ):
        command = exp.add_parser(name, help=text)
        command.add_argument("experiment_id")
        if name in ("stop", "ramp"):
            command.add_argument("--reason", default=None)
        if name == "ramp":
            command.add_argument("--traffic", type=float, required=True, help="in (0, 1]")
        if name == "assign":
            command.add_argument("unit_id")
            for attr in ("device", "persona", "segment"):
                command.add_argument(f"--{attr}", default=None, help="checked against targeting")

    cli_choices.register(sub)
    cli_insights.register(sub)
    cli_ops.register(sub)
    config = sub.add_parser("config", help="print the settings in force")
    config.add_argument(
        "--markdown",
        action="store_true",
        help="print the configuration reference (every setting with its default, not the "
        "values in force) as Markdown: loopwise config --markdown > docs/configuration.md",
    )
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is cmd_config and args.markdown:  # the defaults: needs no valid environment
        sys.stdout.write(config_markdown())
        return 0
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        return int(args.func(settings, args) or 0)
    except BrokenPipeError:  # `loopwise config | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

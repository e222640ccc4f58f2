"""``loopwise state show`` and ``loopwise lag`` — what a running deployment holds and owes.

loopwise state show KEY [--kind user|segment|experiment] [--worker URL]
loopwise lag [--json] [--watch N [--count K]]

``state show`` reads the latest values from Redis with the keys and the reader the HTTP API
uses (:class:`streams.sinks.redis_sink.RedisLatestValues`), so any worker's view is the same:

- ``user``: the preference vector (``pref:<user>``), its segment, and the serving weights of
  that segment (``alg:<segment>``, the user's strategy);
- ``segment``: the choice-scoring weights (``scoring:<segment>``) and the algorithm weights
  (``alg:<segment>``) — segment names of the two loops differ, either may be missing;
- ``experiment``: the latest result (``exp:<id>``).

With ``--worker URL`` it asks that worker over HTTP instead: ``/state/preferences/{user}``
plus ``/users/{user}/strategy``, ``/segments/{segment}/scoring-weights`` or
``/state/experiments/{id}``. The ``/state`` answers are the table value held by that worker
only, so a key another worker holds is "not found" there.

``lag`` reports, for the app's consumer group (``LOOPWISE_APP_ID``) and every registry topic
partition the group has committed or is assigned: committed offset, end offset and lag,
with totals per topic and overall. A partition without a committed offset counts from the
log start, where the group's ``auto.offset.reset=earliest`` would begin.

Exit codes: 0 success, 1 not found, 2 usage or connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from streams.config import Settings

KINDS = ("user", "segment", "experiment")
NOT_FOUND = 1
ERROR = 2


class NotFound(Exception):
    """The key has no state where we looked; the message says where."""


class OpsError(Exception):
    """A store or worker could not be asked; the message says which and why."""


def _fail(message: str, code: int) -> int:
    print(f"loopwise: {message}", file=sys.stderr)
    return code


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return number


def register(sub: Any) -> None:
    """Add ``state`` and ``lag`` to the ``loopwise`` sub-commands."""
    state = sub.add_parser(
        "state",
        help="inspect the state of a user, segment or experiment",
        description="Inspect the latest state Loopwise holds for a key.",
    )
    commands = state.add_subparsers(dest="state_command", required=True)
    show = commands.add_parser(
        "show",
        help="print a key's latest state as JSON",
        description=(
            "Print a key's latest state as JSON, read from Redis (the values every worker "
            "serves) or, with --worker, from one worker's HTTP API. Exit 1 when the key has "
            "no state there."
        ),
    )
    show.add_argument("key", help="user id, segment name or experiment id")
    show.add_argument(
        "--kind",
        choices=KINDS,
        default="user",
        help="user: preference vector, segment, strategy; segment: scoring and algorithm "
        "weights; experiment: latest result (default: user)",
    )
    show.add_argument(
        "--worker",
        metavar="URL",
        default=None,
        help="ask this worker over HTTP (e.g. http://127.0.0.1:6066) instead of Redis; "
        "/state answers cover only the keys that worker holds",
    )
    show.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds per request (default: 5)"
    )
    show.set_defaults(func=cmd_state_show)

    lag = sub.add_parser(
        "lag",
        help="consumer-group lag per topic partition",
        description=(
            "Committed offset, end offset and lag of the app's consumer group "
            "(LOOPWISE_APP_ID) on every registry topic partition it has committed or is "
            "assigned, with totals per topic and overall."
        ),
    )
    lag.add_argument("--json", action="store_true", help="one JSON document (per sample)")
    lag.add_argument(
        "--watch",
        metavar="N",
        type=_positive,
        default=None,
        help="repeat every N seconds, with the change in total lag and the drain rate",
    )
    lag.add_argument(
        "--count",
        metavar="K",
        type=int,
        default=0,
        help="with --watch: stop after K samples (0: until interrupted)",
    )
    lag.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds per admin request (default: 10)"
    )
    lag.add_argument(
        "--relay",
        action="store_true",
        help="the implicit relay's group (LOOPWISE_APP_ID.implicit-relay on feedback.implicit) "
        "instead of the workers' group, which reads feedback.implicit.relay",
    )
    lag.set_defaults(func=cmd_lag)


# --------------------------------------------------------------------------- state show


def _redis_state(kind: str, key: str, read: Callable[[str, str], Any | None]) -> dict[str, Any]:
    """The JSON document for ``kind``/``key`` from ``read(redis kind, entity)`` (payload or
    None). Raises NotFound when the key has nothing."""
    if kind == "user":
        prefs = read("pref", key)
        if prefs is None:
            raise NotFound(f"no preference state for user {key!r} in Redis")
        segment = prefs.get("segment")
        strategy = read("alg", segment) if segment else None
        return {
            "kind": kind,
            "key": key,
            "source": "redis",
            "segment": segment,
            "interactions": prefs.get("interactions"),
            "version": prefs.get("version"),
            "preferences": prefs,
            "strategy": strategy,
        }
    if kind == "segment":
        scoring, algorithms = read("scoring", key), read("alg", key)
        if scoring is None and algorithms is None:
            raise NotFound(f"nothing published for segment {key!r} in Redis")
        return {
            "kind": kind,
            "key": key,
            "source": "redis",
            "scoring_weights": scoring,
            "algorithm_weights": algorithms,
        }
    if kind == "experiment":
        result = read("exp", key)
        if result is None:
            raise NotFound(f"no result for experiment {key!r} in Redis")
        return {
            "kind": kind,
            "key": key,
            "source": "redis",
            "status": result.get("status"),
            "version": result.get("version"),
            "results": result,
        }
    raise ValueError(f"unknown kind {kind!r}")


def read_redis_state(settings: Settings, kind: str, key: str) -> dict[str, Any]:
    from streams.security import current, redis_client_kwargs
    from streams.sinks.redis_sink import RedisLatestValues

    async def gather() -> dict[str, Any]:
        # The workers' own reader and key layout (prefix = topic prefix), not a copy of it.
        store = RedisLatestValues(
            settings.redis_url,
            key_prefix=settings.topic_prefix,
            **redis_client_kwargs(current().redis),
        )
        payloads: dict[tuple[str, str], Any] = {}

        async def fetch(redis_kind: str, entity: str) -> Any | None:
            found = await store.read(redis_kind, entity)
            payloads[(redis_kind, entity)] = None if found is None else orjson.loads(found[1])
            return payloads[(redis_kind, entity)]

        try:
            if kind == "user":
                prefs = await fetch("pref", key)
                if prefs and prefs.get("segment"):
                    await fetch("alg", prefs["segment"])
            elif kind == "segment":
                await fetch("scoring", key)
                await fetch("alg", key)
            else:
                await fetch("exp", key)
        finally:
            await store.close()
        return _redis_state(kind, key, lambda k, e: payloads.get((k, e)))

    try:
        return asyncio.run(gather())
    except NotFound:
        raise
    except Exception as exc:
        from streams.security import redact_url

        raise OpsError(
            f"Redis at {redact_url(settings.redis_url)} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _http_get(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return exc.code, body.decode(errors="replace")
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        raise OpsError(f"worker request {url} failed: {exc}") from exc


def worker_paths(kind: str, key: str) -> list[str]:
    """The worker endpoints ``state show --worker`` asks, first the one that decides."""
    quoted = urllib.parse.quote(key, safe="")
    if kind == "user":
        return [f"/state/preferences/{quoted}", f"/users/{quoted}/strategy"]
    if kind == "segment":
        return [f"/segments/{quoted}/scoring-weights"]
    if kind == "experiment":
        return [f"/state/experiments/{quoted}"]
    raise ValueError(f"unknown kind {kind!r}")


def read_worker_state(
    base_url: str,
    kind: str,
    key: str,
    timeout: float = 5.0,
    get: Callable[[str, float], tuple[int, Any]] = _http_get,
) -> dict[str, Any]:
    base = base_url.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    answers = []
    for path in worker_paths(kind, key):
        status, body = get(base + path, timeout)
        if status == 404 and not answers:
            holds = "" if kind == "segment" else " (it holds only its own table partitions)"
            raise NotFound(f"worker {base} has no state for {kind} {key!r}{holds}")
        if status != 200:
            raise OpsError(f"worker {base}{path} answered {status}: {body}")
        answers.append(body)
    doc: dict[str, Any] = {"kind": kind, "key": key, "source": "worker", "worker": base}
    if kind == "user":
        state, strategy = answers
        doc.update(
            segment=strategy.get("segment"),
            interactions=state.get("interactions"),
            version=state.get("version"),
            state=state,
            strategy=strategy,
        )
    elif kind == "segment":
        (scoring,) = answers
        if scoring.get("source") == "default":
            raise NotFound(f"nothing published for segment {key!r} (the worker serves defaults)")
        doc["scoring_weights"] = scoring
    else:
        (state,) = answers
        doc.update(status=state.get("status"), state=state)
    return doc


def cmd_state_show(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.worker:
            doc = read_worker_state(args.worker, args.kind, args.key, args.timeout)
        else:
            doc = read_redis_state(settings, args.kind, args.key)
    except NotFound as exc:
        return _fail(str(exc), NOT_FOUND)
    except OpsError as exc:
        return _fail(str(exc), ERROR)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


# --------------------------------------------------------------------------- lag


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    start: int
    end: int

    @property
    def lag(self) -> int:
        position = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - position)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


@dataclass
class LagReport:
    group: str
    state: str
    members: int
    partitions: list[PartitionLag] = field(default_factory=list)
    ts: float = field(default_factory=time.time)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def by_topic(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for p in self.partitions:
            totals[p.topic] = totals.get(p.topic, 0) + p.lag
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "ts": round(self.ts, 3),
            "partitions": [p.to_dict() for p in self.partitions],
            "topics": self.by_topic(),
            "total_lag": self.total,
        }


def build_report(
    group: str,
    state: str,
    members: int,
    committed: Mapping[tuple[str, int], int | None],
    assigned: Iterable[tuple[str, int]],
    watermarks: Mapping[tuple[str, int], tuple[int, int]],
    topics: Iterable[str],
    ts: float | None = None,
) -> LagReport:
    """Partitions of ``topics`` the group committed or is assigned, with their lag.

    ``committed`` values below 0 (librdkafka's "no offset") count as never committed;
    ``watermarks`` maps a partition to (log start, end offset).
    """
    wanted = set(topics)
    keys = {tp for tp in committed if tp[0] in wanted} | {tp for tp in assigned if tp[0] in wanted}
    rows = []
    for tp in sorted(keys):
        offset = committed.get(tp)
        start, end = watermarks.get(tp, (0, 0))
        rows.append(
            PartitionLag(tp[0], tp[1], None if offset is None or offset < 0 else offset, start, end)
        )
    report = LagReport(group, state, members, rows)
    if ts is not None:
        report.ts = ts
    return report


def format_report(report: LagReport) -> str:
    name_width = max([len("topic"), *(len(p.topic) for p in report.partitions)])
    lines = [
        f"consumer group {report.group} ({report.state}, {report.members} members)",
        f"{'topic':<{name_width}}  {'partition':>9}  {'committed':>12}  {'end':>12}  {'lag':>10}",
    ]
    for p in report.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        lines.append(
            f"{p.topic:<{name_width}}  {p.partition:>9}  {committed:>12}  {p.end:>12}  {p.lag:>10}"
        )
    if not report.partitions:
        lines.append("(no committed or assigned partitions on the registry topics)")
    for topic, lag in sorted(report.by_topic().items()):
        lines.append(f"{'total ' + topic:<{name_width + 39}}  {lag:>10}")
    lines.append(f"{'total':<{name_width + 39}}  {report.total:>10}")
    return "\n".join(lines)


def progress_line(previous: LagReport | None, current: LagReport) -> str:
    """One line of ``--watch`` progress: total lag, its change and the drain rate."""
    stamp = time.strftime("%H:%M:%S", time.localtime(current.ts))
    line = f"[{stamp}] total lag {current.total} over {len(current.partitions)} partitions"
    if previous is None:
        return line
    elapsed = current.ts - previous.ts
    delta = current.total - previous.total
    line += f" ({delta:+d} in {elapsed:.1f} s"
    if elapsed <= 0:  # clock stepped back: no meaningful rate
        return line + ")"
    rate = -delta / elapsed
    if rate > 0 and current.total > 0:
        line += f", draining {rate:.1f}/s, ~{current.total / rate:.0f} s to zero)"
    elif rate < 0:
        line += f", growing {-rate:.1f}/s)"
    else:
        line += ")"
    return line


def _state_name(state: Any) -> str:
    return str(getattr(state, "name", state) or "UNKNOWN")


def collect_lag(settings: Settings, timeout: float = 10.0, relay: bool = False) -> LagReport:
    """Ask the broker for the group's offsets, its assignment and the partitions' offsets
    (the implicit relay's group with ``relay``)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from streams.kafka_admin import admin
    from streams.topics import TOPICS

    group = f"{settings.app_id}.implicit-relay" if relay else settings.app_id
    topics = [settings.topic(spec.name) for spec in TOPICS]
    client = admin(settings)
    try:
        description = client.describe_consumer_groups([group], request_timeout=timeout)[
            group
        ].result()
    except KafkaException as exc:
        raise OpsError(
            f"cannot describe consumer group {group!r} on {settings.kafka_bootstrap_servers}: "
            f"{exc.args[0].name()} {exc.args[0].str()} (no group coordinator yet? a new broker "
            "creates one on the first group request; try again)"
        ) from exc
    try:
        # Only after describe succeeded: confluent-kafka 2.16 segfaults in
        # list_consumer_group_offsets while the broker has no group coordinator (a broker
        # nothing has consumed from yet), where describe raises NOT_COORDINATOR instead.
        offsets = client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )[group].result()
        committed = {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions or []}
        assigned = [
            (tp.topic, tp.partition)
            for member in description.members
            for tp in (member.assignment.topic_partitions or [])
        ]
        wanted = set(topics)
        keys = sorted({tp for tp in [*committed, *assigned] if tp[0] in wanted})
        watermarks: dict[tuple[str, int], tuple[int, int]] = {}
        if keys:
            tps = [TopicPartition(t, p) for t, p in keys]
            ends = client.list_offsets(
                {tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout
            )
            starts = client.list_offsets(
                {tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout
            )
            for tp in tps:
                watermarks[(tp.topic, tp.partition)] = (
                    starts[tp].result().offset,
                    ends[tp].result().offset,
                )
    except KafkaException as exc:
        raise OpsError(f"broker {settings.kafka_bootstrap_servers}: {exc.args[0]}") from exc
    return build_report(
        group,
        _state_name(description.state),
        len(description.members),
        committed,
        assigned,
        watermarks,
        topics,
    )


def watch(
    sample: Callable[[], LagReport],
    interval: float,
    count: int,
    emit: Callable[[LagReport, LagReport | None], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Sample every ``interval`` seconds (``count`` times, 0: forever); returns samples.

    A failed sample is reported and the watch goes on: a coordinator moving or a broker
    restarting is exactly what an operator watching lag may be living through.
    """
    previous: LagReport | None = None
    done = 0
    while True:
        try:
            current = sample()
        except OpsError as exc:
            print(f"loopwise: {exc}", file=sys.stderr, flush=True)
        else:
            emit(current, previous)
            previous = current
        done += 1
        if count and done >= count:
            return done
        sleep(interval)


def _emitter(as_json: bool, watching: bool, out: IO[str]) -> Callable[..., None]:
    def emit(current: LagReport, previous: LagReport | None) -> None:
        if as_json:
            # Under --watch one compact document per line, so the stream can be piped.
            option = 0 if watching else orjson.OPT_INDENT_2
            out.write(orjson.dumps(current.to_dict(), option=option).decode() + "\n")
        else:
            if watching:
                out.write(progress_line(previous, current) + "\n")
            out.write(format_report(current) + "\n")
            if watching:
                out.write("\n")
        out.flush()

    return emit


def cmd_lag(settings: Settings, args: argparse.Namespace) -> int:
    if args.count and not args.watch:
        return _fail("--count needs --watch", ERROR)
    emit = _emitter(args.json, args.watch is not None, sys.stdout)
    try:
        if args.watch is None:
            emit(collect_lag(settings, args.timeout, args.relay), None)
        else:
            watch(
                lambda: collect_lag(settings, args.timeout, args.relay),
                args.watch,
                args.count,
                emit,
            )
    except OpsError as exc:
        return _fail(str(exc), ERROR)
    except KeyboardInterrupt:
        pass  # --watch runs until interrupted
    return 0

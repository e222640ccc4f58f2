"""What the ``make demo`` scenarios share: the run context, the scenario interface, a tail
of the output topics, and the simulated clock of a person.

Each scenario (``loopwise/demo/*.py``) produces its own traffic through the one producer of
the :class:`Context`, reads what the worker learned (Redis, the worker's HTTP API, the
output topics via :class:`TopicTail`) and judges at the end whether it learned what it
should. ``loopwise/demo/run.py`` interleaves them in one loop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.harness import Deployment, Worker
from streams.security import confluent_config


class TopicTail:
    """Every event of some output topics, read from the beginning as they arrive.

    One consumer without a group (partitions assigned by hand, nothing committed); call
    :meth:`poll` often, it never blocks. Events are kept per topic name (without prefix).
    """

    def __init__(self, dep: Deployment, names: tuple[str, ...]) -> None:
        settings = dep.settings
        self.consumer = Consumer(
            confluent_config(
                settings.kafka_bootstrap_servers,
                **{"group.id": f"demo-tail-{dep.run_id}", "enable.auto.commit": False},
            )
        )
        self.by_topic = {settings.topic(n): n for n in names}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        parts = []
        for topic in self.by_topic:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(parts)

    def poll(self) -> int:
        got = 0
        while msgs := self.consumer.consume(num_messages=500, timeout=0):
            for msg in msgs:
                if msg.error() or msg.value() is None:
                    continue
                try:
                    self.events[self.by_topic[msg.topic()]].append(orjson.loads(msg.value()))
                    got += 1
                except orjson.JSONDecodeError:
                    continue
        return got

    def count(self, topic: str) -> int:
        """Messages in a topic of the deployment so far (sum of the partitions' end offsets)."""
        meta = self.consumer.list_topics(topic, timeout=5).topics[topic]
        return sum(
            self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in meta.partitions
        )

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Context:
    """One demo run: the deployment, its worker, the producer and the readers."""

    dep: Deployment
    producer: Producer
    redis: redis.Redis
    out_dir: Path
    seconds: float
    tail: TopicTail
    worker: Worker | None = None
    started: float = 0.0  # time.monotonic() when the traffic began
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def prefix(self) -> str:
        return self.dep.settings.topic_prefix

    def produce(self, topic: str, key: str, event: dict[str, Any] | bytes) -> None:
        value = event if isinstance(event, bytes) else orjson.dumps(event)
        while True:
            try:
                self.producer.produce(self.dep.topic(topic), key=key.encode(), value=value)
                break
            except BufferError:  # local queue full: let it drain
                self.producer.poll(0.1)
        self.sent[topic] += 1

    def redis_value(self, key: str) -> dict[str, Any] | None:
        """The latest value a worker wrote under ``<prefix><key>`` (versioned hash)."""
        raw = self.redis.hget(f"{self.prefix}{key}", "value")
        return orjson.loads(raw) if raw else None

    def redis_values(self, pattern: str) -> dict[str, dict[str, Any]]:
        """``{key without prefix: value}`` of every key matching ``<prefix><pattern>``."""
        out = {}
        for key in self.redis.scan_iter(f"{self.prefix}{pattern}", count=500):
            raw = self.redis.hget(key, "value")
            if raw:
                out[key.decode()[len(self.prefix) :]] = orjson.loads(raw)
        return out


@dataclass
class Outcome:
    """A scenario's verdict and the lines of its summary."""

    ok: bool
    lines: list[str]
    failure: str = ""


class Scenario:
    """One thing the demo shows. ``loopwise/demo/run.py`` calls, in this order:

    ``prepare`` (topics exist, no worker yet), then in the loop ``tick`` (produce what is
    due at ``elapsed`` seconds; often) and ``observe`` (read the learned state; about once
    a second), ``cell`` for the live table every five seconds; after the traffic,
    ``observe`` until ``settled`` (or a time limit); then ``finish``, ``plot``, ``cleanup``.
    """

    name: ClassVar[str] = ""
    env: ClassVar[dict[str, str]] = {}  # worker settings this scenario needs
    header: ClassVar[str] = ""  # column header of the live table (same width as cell())

    def prepare(self, ctx: Context) -> None:
        return None

    def tick(self, ctx: Context, elapsed: float) -> None:
        return None

    def observe(self, ctx: Context, elapsed: float) -> None:
        return None

    def cell(self) -> str:
        return ""

    def settled(self, ctx: Context) -> bool:
        return True

    def finish(self, ctx: Context) -> Outcome:
        return Outcome(True, [])

    def plot(self, ctx: Context) -> list[Path]:
        return []

    def cleanup(self, ctx: Context) -> None:
        return None


class HumanClocks:
    """Simulated activity time per user: seconds apart, irregular, like a person.

    The demo compresses hours of a person's activity into a minute; the guard quarantines
    machine-like streams (bursts, clockwork spacing), so every feedback event of a user is
    stamped 1 s + Exp(20 s) after the previous one, starting a day ago.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.start = int(time.time() * 1000) - 24 * 3_600_000
        self.clock: dict[str, int] = {}

    def next(self, user: str) -> int:
        ts = self.clock.get(user, self.start) + int(self.rng.exponential(20_000)) + 1_000
        self.clock[user] = ts
        return ts


def feedback_event(
    user: str, n: int, item: str, kind: str, ts: int, value: float | None = None, **extra: Any
) -> dict[str, Any]:
    """A ``feedback.explicit`` / ``feedback.implicit`` event (``event_id`` = user + n)."""
    ev: dict[str, Any] = {
        "event_id": f"{user}-e{n}",
        "schema_version": 1,
        "ts": ts,
        "user_id": user,
        "item_id": item,
        "kind": kind,
    }
    if value is not None:
        ev["value"] = value
    ev.update(extra)
    return ev


def due(count: int, elapsed: float, rate: float, limit: float | None = None) -> int:
    """How many more events a stream of ``rate`` per second owes at ``elapsed`` seconds."""
    t = elapsed if limit is None else min(elapsed, limit)
    return max(0, int(t * rate) - count)

"""The guarantees through every door, on real Kafka, Redis and PostgreSQL.

* One partitioning rule: a user's events sent through the CLI, ``POST /feedback``, a plain
  confluent-kafka producer configured as docs/producers.md says and the Java example
  producer all land on one partition and build one state holding every event; a producer
  with librdkafka's default partitioner gets ``wrong_partition`` dead letters for what it
  misrouted and loses nothing it routed right.
* Large invalid input — just under the size limit, over it, and compressed over it — on
  every input topic: one dead letter each (a prefix with length and hash where the original
  does not fit), the valid events around it processed, the lag drained, ``/ready`` true.
* Timestamps at the schema's bounds and far from the record time: dead-lettered
  (``timestamp_out_of_range``) or learned as documented, nothing else lost.
* A consumer whose batches keep failing keeps its offsets: ``/ready`` says so (503, with
  the reason) and a healthy worker started after it learns every event.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.clock import now_ms
from streams.codecs import key_of, original_limit
from streams.config import REPO_ROOT
from streams.harness import Deployment, Worker
from streams.partitioning import partition_for
from streams.topics import TOPICS, Direction
from tests.integration.conftest import isolated_deployment
from tests.integration.helpers import wait_for
from tests.integration.java_producer import run_java_producer
from tests.reliability.workload import group_positions

pytestmark = pytest.mark.integration

DIM = 4
PARTITIONS = 4
TOKEN = "guarantees-token"
LIMIT = 100_000  # LOOPWISE_MAX_MESSAGE_BYTES of the isolated deployments
ITEMS = [f"item-{i}" for i in range(8)]
EXAMPLES = REPO_ROOT / "schemas" / "examples"


@pytest.fixture(scope="module")
def dep(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One worker on 4 partitions with a token for ``POST /feedback`` and a catalog."""
    yield from isolated_deployment(
        log_dir,
        request,
        LOOPWISE_PARTITIONS=str(PARTITIONS),
        LOOPWISE_API_TOKEN=TOKEN,
        LOOPWISE_IMPLICIT_WINDOW_S="0",
    )


@pytest.fixture(scope="module")
def worker(dep: Deployment) -> Worker:
    now = now_ms()
    items = [
        {"event_id": f"item-{i}", "schema_version": 1, "ts": now, "item_id": item,
         "features": [float((i + j) % 3) for j in range(DIM)]}
        for i, item in enumerate(ITEMS)
    ]  # fmt: skip
    dep.produce("items", items, key_field="item_id")
    return dep.start_worker()


def event(user: str, n: int, kind: str = "like", ts: int | None = None, **extra: Any) -> dict:
    """A valid feedback event; timestamps 20-50 s apart so the guard sees a person."""
    body = {
        "event_id": f"{user}-e{n}",
        "schema_version": 1,
        "ts": ts if ts is not None else now_ms() - 3_600_000 + n * 37_000 + (n * 7919) % 13_000,
        "user_id": user,
        "item_id": ITEMS[n % len(ITEMS)],
        "kind": kind,
        **extra,
    }
    if kind == "rating":
        body.setdefault("value", 4)
    return body


def topic_of(ev: dict[str, Any]) -> str:
    return (
        "feedback.explicit"
        if ev["kind"] in ("like", "rating", "dislike")
        else ("feedback.implicit")
    )


def state(w: Worker, user: str) -> dict[str, Any] | None:
    status, body = w.get_json(f"/state/preferences/{user}")
    return body if status == 200 else None


def interactions(w: Worker, user: str) -> int:
    found = state(w, user)
    return int(found["interactions"]) if found else 0


def dead_letters(dep: Deployment, **match: Any) -> list[dict[str, Any]]:
    return [
        d for d in dep.read("deadletter")
        if all(d.get(k) == v or d["source"].get(k) == v for k, v in match.items())
    ]  # fmt: skip


def cli_env(dep: Deployment) -> dict[str, str]:
    return {**dep.base_env, **dep.extra_env}


def docs_producer(dep: Deployment, **extra: Any) -> Producer:
    """A plain confluent-kafka producer configured as docs/producers.md says."""
    return Producer(
        {"bootstrap.servers": dep.settings.kafka_bootstrap_servers, "acks": "all",
         "enable.idempotence": True, "partitioner": "murmur2_random", **extra}
    )  # fmt: skip


def send(prod: Producer, topic: str, events: list[dict[str, Any] | bytes], key_field: str,
         key: bytes | None = None) -> None:  # fmt: skip
    """Produce and wait for every delivery report; fail on any delivery error."""
    errors: list[Any] = []
    for ev in events:
        raw = ev if isinstance(ev, bytes) else orjson.dumps(ev)
        k = key if isinstance(ev, bytes) else key_of(ev, key_field).encode()
        prod.produce(topic, key=k, value=raw, on_delivery=lambda e, _: e and errors.append(e))
    assert prod.flush(30) == 0
    assert not errors, errors


def changelog_partitions(dep: Deployment) -> dict[bytes, set[int]]:
    """Key → the partitions of the preferences changelog that hold records of it."""
    name = f"{dep.settings.app_id}-preferences-changelog"
    consumer = Consumer(
        {"bootstrap.servers": dep.settings.kafka_bootstrap_servers, "group.id": "unused",
         "enable.auto.commit": False}
    )  # fmt: skip
    found: dict[bytes, set[int]] = {}
    try:
        ends = {}
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error():
                    continue
                found.setdefault(m.key(), set()).add(m.partition())
                if m.offset() + 1 >= ends.get(m.partition(), 0):
                    ends.pop(m.partition(), None)
        assert not ends, f"changelog partitions {sorted(ends)} not read to their end"
        return found
    finally:
        consumer.close()


def test_every_entry_point_builds_one_state_per_user(dep: Deployment, worker: Worker) -> None:
    users = [f"{dep.run_id}-door-{u}" for u in range(6)]
    by_door: dict[str, list[dict[str, Any]]] = {d: [] for d in ("cli", "http", "docs", "java")}
    n = 0
    for user in users:
        for door in by_door:
            for kind in ("like", "view"):
                by_door[door].append(event(user, n, kind))
                n += 1

    # the CLI, one file per topic
    for name in ("feedback.explicit", "feedback.implicit"):
        lines = b"\n".join(orjson.dumps(e) for e in by_door["cli"] if topic_of(e) == name)
        done = subprocess.run(
            [sys.executable, "-m", "loopwise.cli.main", "produce", name],
            input=lines, env=cli_env(dep), capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
    # HTTP
    for ev in by_door["http"]:
        status, body = worker.post("/feedback", orjson.dumps(ev), token=TOKEN)
        assert status == 202, body
    # a plain producer as the docs say
    prod = docs_producer(dep)
    for name in ("feedback.explicit", "feedback.implicit"):
        send(prod, dep.topic(name), [e for e in by_door["docs"] if topic_of(e) == name],
             "user_id")  # fmt: skip
    # the Java example producer
    for name in ("feedback.explicit", "feedback.implicit"):
        run_java_producer(
            dep.settings.kafka_bootstrap_servers, dep.topic(name), "user_id",
            [orjson.dumps(e) for e in by_door["java"] if topic_of(e) == name],
        )  # fmt: skip

    per_user = 2 * len(by_door)
    for user in users:
        wait_for(lambda u=user: interactions(worker, u) == per_user, 90,
                 f"{user} to have {per_user} interactions")  # fmt: skip
    held = changelog_partitions(dep)
    for user in users:
        assert held[orjson.dumps(user)] == {partition_for(user.encode(), PARTITIONS)}, (
            f"{user}'s state is not on its partition alone"
        )
    assert not [d for d in dep.read("deadletter") if d["source"]["topic"].startswith(
        dep.settings.topic_prefix + "feedback") and "-door-" in base64.b64decode(
        d["original"]).decode(errors="replace")], "a valid event was dead-lettered"  # fmt: skip


def test_a_producer_with_the_wrong_partitioner_loses_only_what_it_misrouted(
    dep: Deployment, worker: Worker
) -> None:
    users = [f"{dep.run_id}-crc-{u}" for u in range(24)]
    events = [event(u, i, "like") for u in users for i in range(3)]
    # librdkafka's default: CRC32 of the key
    wrong = Producer({"bootstrap.servers": dep.settings.kafka_bootstrap_servers,
                      "partitioner": "consistent_random"})  # fmt: skip
    landed: dict[str, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        landed[orjson.loads(msg.value())["event_id"]] = msg.partition()

    for ev in events:
        wrong.produce(dep.topic("feedback.explicit"), key=ev["user_id"].encode(),
                      value=orjson.dumps(ev), on_delivery=delivered)  # fmt: skip
    assert wrong.flush(30) == 0
    right_of = {u: partition_for(u.encode(), PARTITIONS) for u in users}
    misrouted = [e for e in events if landed[e["event_id"]] != right_of[e["user_id"]]]
    assert misrouted and len(misrouted) < len(events), "the sample must hold both kinds"
    expected = Counter(e["user_id"] for e in events if e not in misrouted)

    def letters() -> list[dict[str, Any]]:
        return [d for d in dead_letters(dep, error_kind="wrong_partition")
                if "-crc-" in base64.b64decode(d["original"]).decode()]  # fmt: skip

    wait_for(lambda: len(letters()) >= len(misrouted), 90, "the wrong_partition dead letters")
    found = letters()
    assert len(found) == len(misrouted)  # once each
    for d in found:
        ev = orjson.loads(base64.b64decode(d["original"]))
        assert d["expected_partition"] == right_of[ev["user_id"]]
        assert d["source"]["partition"] == landed[ev["event_id"]]
    for user in users:
        wait_for(lambda u=user: interactions(worker, u) == expected[u], 60,
                 f"{user} to have learned its {expected[user]} rightly routed events")  # fmt: skip
    assert metric(worker, "loopwise_events_misrouted_total",
                  topic=dep.topic("feedback.explicit")) == len(misrouted)  # fmt: skip


def valid_example(name: str, suffix: str) -> dict[str, Any]:
    path = sorted((EXAMPLES / name / "valid").glob("*.json"))[0]
    ev = orjson.loads(path.read_bytes())
    ev["event_id"] = f"{ev['event_id'][:100]}-{suffix}"
    ev["ts"] = now_ms()
    return ev


def metric(w: Worker, name: str, **labels: str) -> float:
    """The sum of a counter's series on the worker that carry ``labels``."""
    return sum(v for got, v in w.samples(name) if labels.items() <= got.items())


def input_topics() -> list[tuple[str, str]]:
    return [(t.name, t.key_field) for t in TOPICS if t.direction is Direction.INPUT]


def test_large_invalid_input_on_every_input_topic_is_dead_lettered_once(
    dep: Deployment, worker: Worker
) -> None:
    keep = original_limit(LIMIT)
    just_under = b'{"not": "closed' + b"x" * (LIMIT - 20)  # invalid JSON, under the limit
    over = b"[" + b"1," * ((LIMIT + 500) // 2) + b"1]"  # valid JSON, over the input limit
    compressed = b"[" + b"0," * 1_000_000 + b"0]"  # 2 MB, a few kB once compressed
    assert len(just_under) <= LIMIT < len(over) <= dep.settings.max_record_bytes
    big = Producer({"bootstrap.servers": dep.settings.kafka_bootstrap_servers,
                    "partitioner": "murmur2_random", "compression.type": "lz4",
                    "message.max.bytes": 4_000_000})  # fmt: skip
    # Records near the limit: the producer's batches must fit the topic's max.message.bytes
    # too (docs/producers.md); with the default limits they do.
    plain = docs_producer(dep, **{"message.max.bytes": dep.settings.max_record_bytes})
    user = f"{dep.run_id}-big"
    valid_before: dict[str, int] = {}
    for name, _ in input_topics():
        valid_before[name] = int(metric(worker, "loopwise_events_valid_total",
                                        topic=dep.topic(name)))  # fmt: skip
    for i, (name, key_field) in enumerate(input_topics()):
        if name.startswith("feedback"):
            before, after = (
                event(user, 2 * i, "like" if name.endswith("explicit") else "view"),
                event(user, 2 * i + 1, "rating" if name.endswith("explicit") else "view"),
            )
        else:
            before, after = (
                valid_example(name, f"{dep.run_id}-a"),
                valid_example(name, f"{dep.run_id}-b"),
            )
        key = key_of(before, key_field).encode()
        topic = dep.topic(name)
        send(plain, topic, [before], key_field)
        send(plain, topic, [just_under, over], key_field, key)
        send(big, topic, [compressed], key_field, key)
        send(plain, topic, [after], key_field)

    def big_letters() -> dict[str, list[dict[str, Any]]]:
        by_topic: dict[str, list[dict[str, Any]]] = {dep.topic(n): [] for n, _ in input_topics()}
        for d in dep.read("deadletter"):
            if d["source"]["topic"] in by_topic and d.get("original_length", 0) >= LIMIT - 20:
                by_topic[d["source"]["topic"]].append(d)
        return by_topic

    wait_for(lambda: all(len(v) >= 3 for v in big_letters().values()), 120,
             "3 dead letters on every input topic")  # fmt: skip
    letters = big_letters()
    for name, _ in input_topics():
        found = letters[dep.topic(name)]
        assert len(found) == 3, (name, [d["error_kind"] for d in found])  # once each
        by_length = {d["original_length"]: d for d in found}
        for raw in (just_under, over, compressed):
            d = by_length[len(raw)]
            assert d["error_kind"] == ("not_json" if raw is just_under else "oversize")
            assert d["original_sha256"] == hashlib.sha256(raw).hexdigest()
            assert base64.b64decode(d["original"]) == raw[:keep]
            assert len(orjson.dumps(d)) <= LIMIT
    # The valid events around them were taken, every input partition drained.
    for name, _ in input_topics():
        wait_for(
            lambda n=name: metric(worker, "loopwise_events_valid_total", topic=dep.topic(n))
            >= valid_before[n] + 2, 60, f"the 2 valid events on {name}",
        )  # fmt: skip
    wait_for(lambda: interactions(worker, user) == 4, 60, "the 4 valid feedback events learned")
    wait_for(lambda: lag(dep) == 0, 60, "the consumer groups' lag to drain")
    status, ready = worker.get_json("/ready")
    assert status == 200 and ready["consumers_progressing"], ready


def lag(dep: Deployment) -> int:
    """Uncommitted records of the input topics, summed over the worker's two groups (faust's
    and the implicit relay's)."""
    relay_group = f"{dep.settings.app_id}.implicit-relay"
    return sum(
        end - committed
        for name, _ in input_topics()
        for committed, end in group_positions(
            dep, name, relay_group if name == "feedback.implicit" else None
        ).values()
    )


def test_timestamps_far_from_the_record_time_are_dead_lettered_the_rest_learned(
    dep: Deployment, worker: Worker
) -> None:
    user = f"{dep.run_id}-time"
    now = now_ms()
    year_ms = 365 * 86_400_000
    cases = [
        ("like", now - 60_000, True),
        ("like", 0, False),  # the schema's minimum
        ("view", 0, False),
        ("like", now - 2 * year_ms, True),  # an old backfill: within 5 years
        ("rating", 4_102_444_800_000, False),  # the schema's maximum
        ("view", 4_102_444_800_000, False),
        ("view", now + 1_800_000, True),  # a clock 30 min fast: within the hour allowed
        ("like", now + 2 * 3_600_000, False),
        ("view", now - 6 * year_ms, False),
        ("like", now, True),
    ]
    events = [event(user, i, kind, ts=ts) for i, (kind, ts, _) in enumerate(cases)]
    prod = docs_producer(dep)
    for ev in events:
        send(prod, dep.topic(topic_of(ev)), [ev], "user_id")
    good = sum(ok for *_, ok in cases)
    wait_for(lambda: interactions(worker, user) == good, 60, f"{good} events learned")

    def letters() -> list[dict[str, Any]]:
        return [d for d in dead_letters(dep, error_kind="timestamp_out_of_range")
                if orjson.loads(base64.b64decode(d["original"]))["user_id"] == user]  # fmt: skip

    wait_for(lambda: len(letters()) == len(cases) - good, 60, "the out-of-range dead letters")
    out = sorted(orjson.loads(base64.b64decode(d["original"]))["event_id"] for d in letters())
    assert out == sorted(e["event_id"] for e, (*_, ok) in zip(events, cases, strict=True)
                         if not ok)  # fmt: skip
    # A later valid event of the same user is still learned (no stored state broke it).
    send(prod, dep.topic("feedback.explicit"), [event(user, 99, "like", ts=now_ms())], "user_id")
    wait_for(lambda: interactions(worker, user) == good + 1, 60, "the next event learned")


def test_a_failing_consumer_keeps_its_offsets_and_is_reported_stuck(
    log_dir: Path, request: pytest.FixtureRequest
) -> None:
    gen = isolated_deployment(log_dir, request, LOOPWISE_STUCK_AFTER_S="3")
    d = next(gen)
    try:
        now = now_ms()
        d.produce("items", [{"event_id": f"i{i}", "schema_version": 1, "ts": now,
                             "item_id": item, "features": [1.0] * DIM}
                            for i, item in enumerate(ITEMS)], key_field="item_id")  # fmt: skip
        # Every batch of every agent fails (a transient fault at decode): nothing may be
        # committed, and /ready must say so.
        sick = d.start_worker(LOOPWISE_FAULTS="decode=1,relay_decode=1")
        user = f"{d.run_id}-stuck"
        events = [event(user, i, "like") for i in range(5)]
        d.produce("feedback.explicit", events)

        def not_ready() -> dict[str, Any] | None:
            status, body = sick.get_json("/ready")
            return body if status == 503 else None

        body = wait_for(not_ready, 60, "/ready to answer 503")
        assert body["consumers_progressing"] is False
        assert any("failing" in reason for reason in body["stuck"].values()), body
        assert interactions(sick, user) == 0
        sick.kill()
        healthy = d.start_worker()
        wait_for(lambda: interactions(healthy, user) == 5, 90, "every event learned after all")
        assert not [x for x in d.read("deadletter") if user in x["error_message"]
                    or user.encode() in base64.b64decode(x["original"])]  # fmt: skip
    finally:
        next(gen, None)


def test_crc_of_a_key_differs_from_murmur2_for_the_sample() -> None:
    """The wrong-partitioner test needs keys where the two rules disagree; librdkafka's
    consistent partitioner is CRC32 of the key."""
    keys = [f"k{i}".encode() for i in range(100)]
    assert any(zlib.crc32(k) % PARTITIONS != partition_for(k, PARTITIONS) for k in keys)

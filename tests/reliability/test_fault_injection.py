"""Random transient faults at every processing point, property-style: a mixed explicit and
implicit stream with a known truth, with invalid events interleaved on both feedback topics,
goes through one worker that raises an injected fault (``LOOPWISE_FAULTS``, see
streams/faults.py) at random at its decode step, its dead-letter sends, between its table,
Redis, PostgreSQL and output writes, and in the implicit relay. Each fault makes the batch
be retried with back-off (the relay restarts its Kafka clients and reads again).

For each seed, once the input is consumed: the table, Redis, PostgreSQL and the output
topic equal the truth (nothing lost, nothing counted twice); the dead-letter topic holds
exactly one record per invalid event, at its source coordinates with its reason, and none
for a valid event; the consumer groups committed the end of every input (lag 0); and
faults really fired, at several points.

Sized by ``LOOPWISE_FAULT_EVENTS`` (at most 20 000 events here) in `make test-reliability`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.codecs import EventDecoder, Rejected
from streams.harness import Deployment, Worker
from streams.kafka_admin import producer
from tests.reliability.workload import (
    ITEMS,
    OPEN_WINDOWS,
    Workload,
    assert_exact,
    from_outputs,
    from_postgres,
    from_redis,
    from_table,
    item_events,
    quarantine_summary,
    topic_of,
    wait_for,
)

pytestmark = pytest.mark.integration

EVENTS = min(int(os.environ.get("LOOPWISE_FAULT_EVENTS", "3600")), 20_000)
USERS = 100 if EVENTS <= 5000 else 200
# Events/s: many small batches, each a chance for a fault (the long form faster, ~20 s).
RATE = max(400.0, EVENTS / 20)
IMPLICIT_SHARE = 0.5  # views per explicit event
INVALID = max(30, EVENTS // 100)  # per feedback topic
# Moderate rates: an agent's batch fails about a quarter of the time, so a run of failures
# (whose back-off doubles from 0.5 s up to 30 s) stays short. A fault in the relay restarts
# its clients (about a second).
RATES = {
    "decode": 0.05,
    "deadletter": 0.1,
    "after_table": 0.05,
    "after_redis": 0.05,
    "after_postgres": 0.05,
    "after_output": 0.05,
    "relay_decode": 0.05,
    "relay_deadletter": 0.1,
    "relay_after_produce": 0.05,
}
SEEDS = [pytest.param(seed, id=f"seed-{seed}") for seed in (1, 2, 3)]


def invalid_event(topic: str, n: int, user: str, rng: random.Random) -> tuple[bytes, str]:
    """The ``n``-th invalid event for ``topic`` (of a workload user, so it sits among that
    user's valid events) and the dead-letter reason it must get."""
    kind = "like" if topic == "feedback.explicit" else "view"
    item = f"item-{rng.randrange(len(ITEMS))}"
    valid = {"event_id": f"{user}-bad{n}", "schema_version": 1, "ts": 1_700_000_000_000,
             "user_id": user, "item_id": item, "kind": kind}  # fmt: skip
    match n % 3:
        case 0:
            return b'{"event_id": "' + valid["event_id"].encode() + b'", not json', "not_json"
        case 1:
            if topic == "feedback.explicit":
                return orjson.dumps({**valid, "value": "loud"}), "schema_violation"
            return orjson.dumps({**valid, "kind": "glance"}), "schema_violation"
        case _:
            return orjson.dumps({**valid, "item_id": f"no-such-item-{n}"}), "unknown_item"


def stream_with_poison(workload: Workload, seed: int) -> list[tuple[str, bytes, bytes, str | None]]:
    """(topic, key, value, expected dead-letter reason or None) in production order: the
    workload's events with ``INVALID`` invalid events per feedback topic at random places."""
    rng = random.Random(seed)
    records: list[tuple[str, bytes, bytes, str | None]] = [
        (topic_of(e), e["user_id"].encode(), orjson.dumps(e), None) for e in workload.events
    ]
    for topic in ("feedback.explicit", "feedback.implicit"):
        for n in range(INVALID):
            user = rng.choice(workload.users)
            raw, reason = invalid_event(topic, n, user, rng)
            records.insert(rng.randrange(len(records) + 1), (topic, user.encode(), raw, reason))
    return records


Coordinates = tuple[str, int, int]  # topic, partition, offset


def produce_paced(
    dep: Deployment, records: list[tuple[str, bytes, bytes, str | None]], rate: float
) -> dict[Coordinates, tuple[str, bytes]]:
    """Produce ``records`` at ``rate`` per second; where each invalid one landed (from the
    delivery reports), with its expected reason and bytes."""
    out = producer(dep.settings)
    invalid: dict[Coordinates, tuple[str, bytes]] = {}
    errors: list[str] = []

    def delivered(reason: str | None) -> Any:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
            elif reason is not None:
                invalid[(msg.topic(), msg.partition(), msg.offset())] = (reason, msg.value())

        return report

    started = time.monotonic()
    for n, (topic, key, value, reason) in enumerate(records, start=1):
        out.produce(dep.topic(topic), key=key, value=value, on_delivery=delivered(reason))
        if n % 50 == 0:
            out.poll(0)
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    assert out.flush(60) == 0, "records left undelivered"
    assert not errors, errors[:3]
    return invalid


def positions(dep: Deployment, group: str, topic_name: str) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic_name``: (``group``'s committed offset, the end offset), read
    without joining the group."""
    topic = dep.topic(topic_name)
    consumer = Consumer(
        {
            "bootstrap.servers": dep.settings.kafka_bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = {tp.partition: max(tp.offset, 0) for tp in consumer.committed(parts, 10)}
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        return {p: (committed[p], ends[p]) for p in ends}
    finally:
        consumer.close()


def lagging(dep: Deployment) -> dict[str, dict[int, tuple[int, int]]]:
    """The partitions whose committed offset is short of the end: the worker's group on
    the explicit input and the relay topic, the relay's group on the implicit input."""
    app_id = dep.settings.app_id
    groups = [(app_id, "feedback.explicit"), (app_id, "feedback.implicit.relay"),
              (f"{app_id}.implicit-relay", "feedback.implicit")]  # fmt: skip
    behind: dict[str, dict[int, tuple[int, int]]] = {}
    for group, topic in groups:
        try:
            short = {p: pos for p, pos in positions(dep, group, topic).items() if pos[0] < pos[1]}
        except KafkaException:  # e.g. the coordinator busy: counts as behind, ask again
            short = {-1: (-1, -1)}
        if short:
            behind[f"{group} on {topic}"] = short
    return behind


def injected_faults(worker: Worker) -> dict[str, int]:
    """``loopwise_faults_injected_total`` per point, from the worker's /metrics."""
    counts: dict[str, int] = {}
    for labels, value in worker.samples("loopwise_faults_injected_total"):
        counts[labels["point"]] = counts.get(labels["point"], 0) + int(value)
    return counts


@pytest.mark.parametrize("seed", SEEDS)
def test_random_transient_faults_lose_double_and_dead_letter_nothing_twice(
    deployment: Deployment, seed: int
) -> None:
    dep = deployment
    dep.produce("items", item_events(), key_field="item_id")
    spec = ",".join(f"{point}={rate}" for point, rate in RATES.items())
    worker = dep.start_worker(LOOPWISE_FAULTS=spec, LOOPWISE_FAULT_SEED=str(seed), **OPEN_WINDOWS)

    per_user = max(1, round(EVENTS / USERS / (1 + IMPLICIT_SHARE)))
    workload = Workload.generate(
        f"{dep.run_id}-s{seed}", USERS, per_user, seed=100 + seed, implicit_share=IMPLICIT_SHARE
    )
    records = stream_with_poison(workload, seed)
    # The reasons are those of the worker's own validation (and the items not in the catalog).
    for topic, _, raw, reason in records:
        if reason is not None and reason != "unknown_item":
            with pytest.raises(Rejected) as rejected:
                EventDecoder(topic, dep.settings.max_message_bytes)(raw)
            assert rejected.value.kind == reason
    invalid = produce_paced(dep, records, RATE)
    assert len(invalid) == 2 * INVALID
    produced = time.monotonic()

    def exact() -> bool:
        return not (
            from_redis(dep, workload)
            or from_postgres(dep, workload)
            or from_table(dep, workload)
            or from_outputs(dep, workload)[0]
        )

    drained_s = None  # from the end of the stream until every store is exact
    with contextlib.suppress(AssertionError):  # the asserts below name what differs
        wait_for(exact, 240, "every store to equal the truth")
        drained_s = time.monotonic() - produced
        wait_for(lambda: not lagging(dep), 60, "the committed offsets to reach the ends")
    counts = injected_faults(worker)
    fired = sorted(point for point, n in counts.items() if n > 0)
    assert_exact(
        dep,
        workload,
        timeout_s=10,
        test=f"random transient faults, seed {seed} (1 worker, views + explicit + poison)",
        faults=f"random transient faults at {len(fired)} points (seed {seed}): "
        f"{sum(counts.values())} injected",
        recovery_s=drained_s,
    )
    # Every input committed to its end: nothing left for a restart to read again.
    assert not lagging(dep), lagging(dep)

    # Exactly one dead letter per invalid event, with its reason and original bytes; none
    # for a valid event.
    got = Counter(
        (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"], d["error_kind"],
         base64.b64decode(d["original"]))
        for d in dep.read("deadletter")
    )  # fmt: skip
    want = Counter((*where, reason, raw) for where, (reason, raw) in invalid.items())
    extra = sorted((k[:4], n - want[k]) for k, n in got.items() if n > want[k])
    missing = sorted((k[:4], n - got[k]) for k, n in want.items() if n > got[k])
    of_valid = sorted({k[:3] for k in got} - set(invalid))
    assert got == want, (
        f"{sum(n for _, n in extra)} dead letters too many, for {len(extra)} sources "
        f"({len(of_valid)} of them valid events): {extra[:6]}; "
        f"{sum(n for _, n in missing)} missing: {missing[:6]}"
    )
    assert dep.read("quarantine") == [], quarantine_summary(dep)

    # The faults really fired, at several points; the worker rode them all out.
    assert len(fired) >= 3, counts
    assert worker.alive()
    print(f"seed {seed}: {len(workload.events)} events, {2 * INVALID} invalid, {RATE:.0f}/s; "
          f"faults {counts}; stores exact {drained_s or 0:.1f} s after the stream")  # fmt: skip

"""The batch loop that never raises: a bad event is dead-lettered once and the rest learned;
a transient fault (or a dead letter that cannot be sent) retries the batch, dead-lettering
nothing twice; a batch whose partitions moved away is given up."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from schemas.registry import get_schema
from streams import boundary as boundary_module
from streams.admission import Admission
from streams.boundary import Boundary, Valid, is_transient
from streams.codecs import EventDecoder
from streams.config import Settings
from streams.metrics import REGISTRY
from streams.partitioning import PartitionCounts, partition_for

SETTINGS = Settings.from_env({})
TOPIC = SETTINGS.topic("feedback.explicit")
PARTITIONS = 4
NOW_S = 1_767_225_602.5
NOW_MS = round(NOW_S * 1000)
VALIDATE = get_schema("deadletter").validate
_agents = itertools.count()


@dataclass
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float = NOW_S

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    message: Message


class DeadLetters:
    """The dead-letter topic: keeps what is sent; the sends numbered in ``fail_on`` raise."""

    def __init__(self, fail_on: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.fail_on = set(fail_on)
        self.calls = 0
        self.sent: list[dict[str, Any]] = []
        self.keys: list[bytes] = []

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"dead-letter send {self.calls} failed")
        self.keys.append(key)
        self.sent.append(orjson.loads(value))

    def coordinates(self) -> list[tuple[str, int, int]]:
        return [(r["source"]["topic"], r["source"]["partition"], r["source"]["offset"])
                for r in self.sent]  # fmt: skip

    def kinds(self) -> dict[int, str]:
        return {r["source"]["offset"]: r["error_kind"] for r in self.sent}


def payload(i: int, user: str | None = None, ts: int = NOW_MS) -> dict[str, Any]:
    return {
        "event_id": f"evt-{i}",
        "schema_version": 1,
        "ts": ts,
        "user_id": user or f"u-{i}",
        "item_id": f"item-{i}",
        "kind": "like",
    }


def event(offset: int, value: bytes | None, key: bytes | None = None, **kw: Any) -> Event:
    partition = kw.pop("partition", None)
    if partition is None:
        partition = partition_for(key, PARTITIONS) if key is not None else 0
    return Event(Message(TOPIC, partition, offset, key, value, **kw))


def valid_event(i: int, **kw: Any) -> Event:
    body = payload(i, **kw)
    return event(i, orjson.dumps(body), body["user_id"].encode())


def make_boundary(
    deadletter: DeadLetters, admission: Admission | None = None, max_bytes: int = 1_000_000
) -> Boundary:
    return Boundary(
        f"test-boundary-{next(_agents)}",
        {TOPIC: EventDecoder("feedback.explicit", max_bytes)},
        deadletter,  # type: ignore[arg-type]
        admission=admission,
    )


class Process:
    """An agent's batch function: records every call; ``fail(ids, call)`` decides whether
    the call raises (and what)."""

    def __init__(self, fail: Any = None) -> None:
        self.fail = fail
        self.calls: list[tuple[list[str], bool]] = []

    async def __call__(self, valid: list[Valid]) -> None:
        ids = [v.payload["event_id"] for v in valid]
        exc = self.fail(ids, len(self.calls) + 1) if self.fail else None
        self.calls.append((ids, exc is None))
        if exc is not None:
            raise exc

    def processed(self) -> Counter[str]:
        """Per event id, the calls that did not raise."""
        return Counter(i for ids, ok in self.calls if ok for i in ids)


def run(coro: Any, timeout: float = 10) -> Any:
    """``asyncio.run`` with a time limit: a loop that retries for ever fails the test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boundary_module, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(boundary_module, "RETRY_MAX_S", 0.002)


def retries(b: Boundary) -> float:
    value = REGISTRY.get_sample_value("loopwise_batch_retries_total", {"consumer": b.agent})
    return value or 0.0


def test_an_event_that_fails_processing_is_dead_lettered_once_and_the_rest_processed() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(i) for i in range(8)]
    process = Process(lambda ids, call: ValueError("bad item") if "evt-3" in ids else None)

    run(b.handle(events, process), timeout=2)

    assert dlq.coordinates() == [(TOPIC, events[3].message.partition, 3)]
    (record,) = dlq.sent
    assert record["error_kind"] == "other"
    assert "ValueError('bad item')" in record["error_message"]
    assert base64.b64decode(record["original"]) == events[3].message.value
    VALIDATE(record)
    processed = process.processed()
    assert processed == {f"evt-{i}": 1 for i in range(8) if i != 3}
    assert process.calls[0] == ([f"evt-{i}" for i in range(8)], False)  # the whole batch first
    assert retries(b) == 0
    assert b.health.failing_since is None


def test_an_invalid_event_is_dead_lettered_once_even_when_the_batch_is_isolated() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(0), event(1, b"{nope"), valid_event(2)]
    process = Process(lambda ids, call: KeyError("x") if "evt-2" in ids else None)

    run(b.handle(events, process), timeout=2)

    assert dlq.kinds() == {1: "not_json", 2: "other"}
    assert len(dlq.sent) == 2
    assert process.processed() == {"evt-0": 1}


def test_a_transient_failure_retries_the_whole_batch() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(i) for i in range(5)]
    failing_seen: list[bool] = []

    def fail(ids: list[str], call: int) -> Exception | None:
        failing_seen.append(b.health.failing_since is not None)
        return ConnectionError("redis away") if call <= 2 else None

    process = Process(fail)
    run(b.handle(events, process))

    assert dlq.sent == []
    assert [ok for _, ok in process.calls] == [False, False, True]
    assert all(ids == [f"evt-{i}" for i in range(5)] for ids, _ in process.calls)
    assert process.processed() == {f"evt-{i}": 1 for i in range(5)}
    assert retries(b) == 2
    assert failing_seen == [False, True, True]  # failing while retried...
    assert b.health.last_error is not None
    assert b.health.failing_since is None  # ...succeeded in the end


def test_a_transient_failure_during_isolation_retries_the_batch_without_dead_letters() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(i) for i in range(4)]
    calls = itertools.count(1)

    def fail(ids: list[str], call: int) -> Exception | None:
        n = next(calls)
        if n == 1:
            return ValueError("a bad event somewhere")
        if n == 3:  # the second event of the isolation pass
            return TimeoutError("postgres away")
        return None

    process = Process(fail)
    run(b.handle(events, process))

    assert dlq.sent == []
    assert retries(b) == 1
    # evt-0 succeeded alone before the fault, then with the retried batch.
    assert process.processed() == {"evt-0": 2, "evt-1": 1, "evt-2": 1, "evt-3": 1}
    assert [len(ids) for ids, _ in process.calls] == [4, 1, 1, 4]


@pytest.mark.parametrize("fail_on", [{1, 2}, {2, 3}, {1, 3}])
def test_a_dead_letter_that_cannot_be_sent_retries_the_batch(fail_on: set[int]) -> None:
    dlq = DeadLetters(fail_on)
    b = make_boundary(dlq)
    events = [
        valid_event(0),
        event(1, b"not json"),
        valid_event(2),
        event(3, orjson.dumps({**payload(3), "kind": "teleport"}), b"u-3"),
        valid_event(4),
    ]
    process = Process()

    run(b.handle(events, process))

    assert sorted(dlq.coordinates()) == [(TOPIC, 0, 1), (TOPIC, partition_for(b"u-3", 4), 3)]
    assert dlq.kinds() == {1: "not_json", 3: "unknown_event_kind"}
    assert retries(b) == 2
    assert dlq.keys == [TOPIC.encode()] * 2
    assert process.processed() == {"evt-0": 1, "evt-2": 1, "evt-4": 1}
    assert b.health.failing_since is None
    for record in dlq.sent:
        VALIDATE(record)


def test_a_batch_whose_partitions_moved_away_is_given_up() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(i) for i in range(3)]
    process = Process(lambda ids, call: ConnectionError("broker away"))
    asked: list[Any] = []

    def still_owned(e: Any) -> bool:
        asked.append(e)
        return False

    run(b.handle(events, process, still_owned=still_owned))

    assert len(process.calls) == 1
    assert process.processed() == {}
    assert dlq.sent == []
    assert retries(b) == 1
    assert asked  # the ownership was asked after the failure


def test_a_batch_still_owned_in_part_is_retried() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq)
    events = [valid_event(i) for i in range(3)]
    process = Process(lambda ids, call: ConnectionError("broker away") if call == 1 else None)

    run(b.handle(events, process, still_owned=lambda e: e.message.offset == 2))

    assert [ok for _, ok in process.calls] == [False, True]
    assert process.processed() == {f"evt-{i}": 1 for i in range(3)}


def test_batches_larger_than_max_events_are_processed_in_slices() -> None:
    b = make_boundary(DeadLetters())
    events = [valid_event(i) for i in range(7)]
    process = Process()
    run(b.handle(events, process, max_events=3))
    assert [len(ids) for ids, _ in process.calls] == [3, 3, 1]
    assert process.processed() == {f"evt-{i}": 1 for i in range(7)}


def test_is_transient() -> None:
    from confluent_kafka import KafkaError, KafkaException

    assert is_transient(ConnectionError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError())
    assert is_transient(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not is_transient(ValueError())
    assert not is_transient(KeyError("x"))
    assert not is_transient(RuntimeError())


def _admission(count: int | None = PARTITIONS) -> Admission:
    return Admission(SETTINGS, PartitionCounts(lambda topic: count))


def _rejects() -> tuple[list[Event], dict[int, str]]:
    misrouted_key = b"u-misrouted"
    right = partition_for(misrouted_key, PARTITIONS)
    events = [
        valid_event(0),
        event(1, b"{not json", b"u-1"),
        event(2, orjson.dumps({**payload(2), "pad": "x" * 1_000_001}), b"u-2"),
        event(
            3,
            orjson.dumps(payload(3, user="u-misrouted")),
            misrouted_key,
            partition=(right + 1) % PARTITIONS,
        ),
        event(4, orjson.dumps(payload(4, ts=0)), b"u-4"),
        valid_event(5),
    ]
    kinds = {1: "not_json", 2: "oversize", 3: "wrong_partition", 4: "timestamp_out_of_range"}
    return events, kinds


def test_split_dead_letters_each_rejected_event_once() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq, _admission())
    events, kinds = _rejects()

    valid = run(b.split(events))

    assert [v.payload["event_id"] for v in valid] == ["evt-0", "evt-5"]
    assert [v.offset for v in valid] == [0, 5]
    assert dlq.kinds() == kinds
    assert len(dlq.sent) == len(kinds)
    by_offset = {r["source"]["offset"]: r for r in dlq.sent}
    right = partition_for(b"u-misrouted", PARTITIONS)
    assert by_offset[3]["expected_partition"] == right
    assert by_offset[3]["source"]["partition"] == (right + 1) % PARTITIONS
    assert all("expected_partition" not in by_offset[o] for o in (1, 2, 4))
    oversize = by_offset[2]
    assert oversize["original_length"] == len(events[2].message.value)
    assert len(base64.b64decode(oversize["original"])) < oversize["original_length"]
    for record in dlq.sent:
        assert record["source"]["timestamp"] == NOW_MS
        assert len(orjson.dumps(record)) <= b.max_record_bytes
        VALIDATE(record)


def test_split_without_a_partition_count_does_not_judge_routing() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq, _admission(None))
    events, kinds = _rejects()
    valid = run(b.split(events))
    del kinds[3]
    assert dlq.kinds() == kinds
    assert [v.payload["event_id"] for v in valid] == ["evt-0", "evt-3", "evt-5"]


def test_split_without_a_record_time_does_not_judge_ts() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq, _admission())
    body = payload(9, ts=0)
    events = [event(9, orjson.dumps(body), b"u-9", timestamp=0.0)]
    valid = run(b.split(events))
    assert [v.payload for v in valid] == [body]
    assert dlq.sent == []


def test_rejected_events_are_dead_lettered_once_across_retries_of_the_batch() -> None:
    dlq = DeadLetters()
    b = make_boundary(dlq, _admission())
    events, kinds = _rejects()
    process = Process(lambda ids, call: OSError("disk full") if call <= 2 else None)

    run(b.handle(events, process))

    assert dlq.kinds() == kinds
    assert len(dlq.sent) == len(kinds)
    assert retries(b) == 2
    assert process.processed() == {"evt-0": 1, "evt-5": 1}


def test_a_later_batch_can_dead_letter_again() -> None:
    """The once-per-coordinates memory lasts one batch: a message read again later (after
    a rebalance) is rejected again, with the same event id."""
    dlq = DeadLetters()
    b = make_boundary(dlq)
    bad = [event(1, b"nope")]
    run(b.handle(bad, Process()))
    run(b.handle(bad, Process()))
    assert len(dlq.sent) == 2
    assert dlq.sent[0]["event_id"] == dlq.sent[1]["event_id"]

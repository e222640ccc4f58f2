"""The partitioning rule (murmur2, as Java clients and aiokafka pick partitions), the cache of
partition counts read from the broker, and the misrouting verdict."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from confluent_kafka import KafkaError, KafkaException

from streams import partitioning
from streams.partitioning import PartitionCounts, misrouted, partition_for

COUNTS = (1, 2, 3, 4, 6, 7, 8, 12, 16, 100, 1000, 2**31 - 1)


def _reference(key: bytes, partitions: int) -> int:
    return (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


def _keys() -> list[bytes]:
    rng = random.Random(20240611)
    keys = [b"", b"\x00", b"\xff" * 3, b"user-1", b"a\x00b"]
    keys += [s.encode() for s in ("ünïcödé", "用户-42", "😀 emoji", "Ωmega", "é" * 301)]
    for _ in range(3000):  # random bytes of every small length (murmur2 has a tail per len % 4)
        keys.append(rng.randbytes(rng.randint(0, 70)))
    for _ in range(500):  # random non-ASCII text, as ids may be
        n = rng.randint(1, 40)
        keys.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(n)).encode())
    return keys


def test_partition_for_equals_aiokafka_murmur2_for_many_keys_and_counts() -> None:
    mismatches = [
        (key, n) for key in _keys() for n in COUNTS if partition_for(key, n) != _reference(key, n)
    ]
    assert mismatches == []


@pytest.mark.parametrize("n", COUNTS)
def test_partition_for_is_within_range(n: int) -> None:
    rng = random.Random(n)
    for _ in range(200):
        assert 0 <= partition_for(rng.randbytes(rng.randint(0, 20)), n) < n


def test_known_partitions_match_the_java_client() -> None:
    # Values of Kafka's Java DefaultPartitioner / Utils.murmur2 (the docstring's examples).
    assert partition_for(b"user-1", 4) == 0
    assert partition_for(b"", 4) == 1
    assert aiokafka_murmur2(b"") == 275646681


def test_partition_for_spreads_keys_over_every_partition() -> None:
    seen = {partition_for(f"user-{i}".encode(), 12) for i in range(1000)}
    assert seen == set(range(12))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Fetch:
    """A broker's metadata: answers are taken from ``answers`` in turn (the last repeats);
    an exception is raised."""

    def __init__(self, *answers: int | BaseException | None) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, topic: str) -> int | None:
        self.calls.append(topic)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(partitioning, "time", SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(partitioning, "REFRESH_S", 30.0)
    return c


def _broker_away() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TRANSPORT, "broker away"))


def test_count_is_cached_until_refresh(clock: Clock) -> None:
    fetch = Fetch(4, 6)
    counts = PartitionCounts(fetch)
    assert counts.get("t") == 4
    clock.now += 29.9
    assert counts.get("t", 3) == 4
    assert fetch.calls == ["t"]
    clock.now += 0.1  # REFRESH_S old: read again
    assert counts.get("t") == 6
    assert fetch.calls == ["t", "t"]
    clock.now += 10
    assert counts.get("t", 5) == 6
    assert len(fetch.calls) == 2


def test_counts_are_cached_per_topic(clock: Clock) -> None:
    fetch = Fetch(4, 8)
    counts = PartitionCounts(fetch)
    assert counts.get("a") == 4
    assert counts.get("b") == 8
    assert counts.get("a") == 4 and counts.get("b") == 8
    assert fetch.calls == ["a", "b"]


def test_a_partition_beyond_the_count_reads_it_again(clock: Clock) -> None:
    fetch = Fetch(4, 8)
    counts = PartitionCounts(fetch)
    assert counts.get("t", 0) == 4
    assert counts.get("t", 4) == 8  # partitions were added
    assert fetch.calls == ["t", "t"]
    assert counts.get("t", 7) == 8
    assert len(fetch.calls) == 2


@pytest.mark.parametrize("failure", [None, "raise"])
def test_a_failed_fetch_keeps_the_cached_count(clock: Clock, failure: str | None) -> None:
    answer = _broker_away() if failure else None
    fetch = Fetch(4, answer)
    counts = PartitionCounts(fetch)
    assert counts.get("t") == 4
    clock.now += 31
    assert counts.get("t") == 4
    assert counts.get("t", 9) == 4  # even when the record names a partition beyond it
    assert len(fetch.calls) == 2  # a failure is not asked again at once (no stall per record)
    clock.now += partitioning.RETRY_FAILED_S
    assert counts.get("t", 9) == 4
    assert len(fetch.calls) == 3


@pytest.mark.parametrize("failure", [None, "raise"])
def test_a_failed_first_fetch_gives_no_count(clock: Clock, failure: str | None) -> None:
    answer = _broker_away() if failure else None
    fetch = Fetch(answer, 4)
    counts = PartitionCounts(fetch)
    assert counts.get("t") is None
    assert counts.get("t") is None  # not asked again at once
    clock.now += partitioning.RETRY_FAILED_S
    assert counts.get("t") == 4  # the broker is back: read again after the pause
    assert fetch.calls == ["t", "t"]


def test_a_fetch_after_a_failure_refreshes_the_cache(clock: Clock) -> None:
    fetch = Fetch(4, None, 6)
    counts = PartitionCounts(fetch)
    assert counts.get("t") == 4
    clock.now += 40
    assert counts.get("t") == 4  # failed: the old count
    clock.now += partitioning.RETRY_FAILED_S
    assert counts.get("t") == 6
    clock.now += 29
    assert counts.get("t") == 6
    assert len(fetch.calls) == 3


def test_misrouted_names_the_expected_partition() -> None:
    assert misrouted("user-1", 0, 4) is None
    for wrong in (1, 2, 3):
        assert misrouted("user-1", wrong, 4) == 0
    rng = random.Random(5)
    for _ in range(300):
        key = "".join(chr(rng.randint(0x20, 0x24FF)) for _ in range(rng.randint(0, 12)))
        n = rng.choice((1, 3, 4, 12))
        right = _reference(key.encode(), n)
        assert misrouted(key, right, n) is None
        wrong = (right + 1 + rng.randrange(max(n - 1, 1))) % n
        assert misrouted(key, wrong, n) == (None if n == 1 else right)


def test_misrouted_cannot_judge_without_a_count() -> None:
    assert misrouted("user-1", 3, None) is None
    assert misrouted("user-1", 99, None) is None

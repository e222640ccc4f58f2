"""A producer in another language follows Loopwise's partitioning rule (docs/producers.md).

The Java example (docs/examples/java/LoopwiseProducer.java: the standard client, default
partitioner) must put every event on ``murmur2(UTF-8 key) & 0x7fffffff % partitions`` — the
partition the workers check, and the one a confluent-kafka producer with
``partitioner=murmur2_random`` picks. Needs only Kafka; the topics are throw-away.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.cimpl import murmur2

from tests.integration.java_producer import run_java_producer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 4
EVENTS = 200


@pytest.fixture(scope="module")
def bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture
def topics(bootstrap: str) -> Iterator[tuple[str, str]]:
    """Two fresh topics of PARTITIONS partitions: one for Java, one for confluent-kafka."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    run = uuid.uuid4().hex[:12]
    names = (f"it-java-producer-{run}", f"it-murmur2-random-{run}")
    created = admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    for future in created.values():
        future.result(timeout=30)
    yield names
    for future in admin.delete_topics(list(names)).values():
        future.result(timeout=30)


def sample_keys() -> list[str]:
    """Distinct keys, ASCII and not: the rule hashes the key's UTF-8 bytes."""
    extra = ["ü-straße", "用户-7", "emoji-🙂", "a", ""]  # "" is a string key too
    return [f"user-{i:03d}" for i in range(EVENTS - len(extra))] + extra


def event_line(i: int, key: str) -> bytes:
    event = {
        "event_id": f"java-{i}",
        "context": {"user_id": "nested-decoy"},  # only the top-level field is the key
        "user_id": key,
        "ts": 1_700_000_000_000 + i,
    }
    # Half with the key escaped (\u00fc), half as raw UTF-8: the key is the decoded string.
    return json.dumps(event, ensure_ascii=i % 2 == 0).encode()


def read_all(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-java-producer-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            records.append(msg)
    finally:
        consumer.close()
    return records


def murmur2_random_partitions(bootstrap: str, topic: str, keys: list[str]) -> dict[str, int]:
    """The partition a librdkafka producer with partitioner=murmur2_random picks, per key
    (from its delivery reports)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    picked: dict[str, int] = {}
    errors: list[str] = []

    def report(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            picked[msg.key().decode()] = msg.partition()

    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"{}", on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0, "confluent-kafka producer did not deliver everything"
    assert not errors, errors
    return picked


def test_java_default_partitioner_is_murmur2(bootstrap: str, topics: tuple[str, str]) -> None:
    java_topic, rdkafka_topic = topics
    keys = sample_keys()
    lines = [event_line(i, key) for i, key in enumerate(keys)]

    run_java_producer(bootstrap, java_topic, "user_id", lines)
    records = read_all(bootstrap, java_topic, len(lines))
    expected_by_rdkafka = murmur2_random_partitions(bootstrap, rdkafka_topic, keys)

    assert len(records) == len(lines)
    sent = {key.encode(): line for key, line in zip(keys, lines, strict=True)}
    by_key = {msg.key(): msg for msg in records}
    assert by_key.keys() == sent.keys()  # every key once, as UTF-8 bytes of the field
    wrong = []
    for key, msg in by_key.items():
        assert msg.value() == sent[key]  # the line, unchanged
        rule = murmur2(key, PARTITIONS)
        if not msg.partition() == rule == expected_by_rdkafka[key.decode()]:
            wrong.append((key, msg.partition(), rule, expected_by_rdkafka[key.decode()]))
    assert not wrong, f"(key, java, murmur2, murmur2_random) that disagree: {wrong[:10]}"
    # Not vacuous: the keys spread over every partition.
    assert {msg.partition() for msg in records} == set(range(PARTITIONS))

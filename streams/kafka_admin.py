"""confluent-kafka clients for operations: topic creation, producing, reading a topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from streams.config import Settings
from streams.partitioning import PARTITIONER
from streams.security import confluent_config
from streams.topics import TOPICS


def admin(settings: Settings) -> AdminClient:
    return AdminClient(confluent_config(settings.kafka_bootstrap_servers))


def producer(settings: Settings, **overrides: object) -> Producer:
    """Every confluent-kafka producer of the project: murmur2 like Java, faust and the
    documented rule (streams.partitioning), and the one record-size limit."""
    conf: dict[str, object] = {
        **confluent_config(settings.kafka_bootstrap_servers),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": PARTITIONER,
        "message.max.bytes": settings.max_record_bytes,
    }
    conf.update(overrides)
    return Producer(conf)


def create_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every registry topic that is missing; report the ones that exist.

    Idempotent. An existing topic with a different partition count is reported, not
    changed: adding partitions moves keys (docs/operations.md, "Adding partitions"). Every topic's
    ``max.message.bytes`` is set to the settings' record limit, existing topics included.
    """
    client = admin(settings)
    existing = client.list_topics(timeout=timeout_s).topics
    lines: list[str] = []
    new: list[NewTopic] = []
    limit = str(settings.max_record_bytes)
    for spec in TOPICS:
        name = settings.topic(spec.name)
        want = spec.partitions(settings)
        if name in existing:
            have = len(existing[name].partitions)
            note = "" if have == want else f" (WARNING: registry wants {want} partitions)"
            note += _set_max_message_bytes(client, name, limit, timeout_s)
            lines.append(f"exists   {name} partitions={have}{note}")
            continue
        new.append(
            NewTopic(
                name,
                num_partitions=want,
                replication_factor=settings.replication_factor,
                config={**spec.config(), "max.message.bytes": limit},
            )
        )
    if new:
        for name, future in client.create_topics(new, operation_timeout=timeout_s).items():
            try:
                future.result()
                lines.append(f"created  {name}")
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                lines.append(f"exists   {name}")
    return lines


def _set_max_message_bytes(client: AdminClient, topic: str, limit: str, timeout_s: float) -> str:
    """Align an existing topic's ``max.message.bytes``; a note for the report line."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    current = client.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    entry = current.get("max.message.bytes")
    if entry is not None and entry.value == limit:
        return ""
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", limit, incremental_operation=AlterConfigOpType.SET)
        ],
    )
    client.incremental_alter_configs([change], request_timeout=timeout_s)[change].result()
    return f" (max.message.bytes {entry.value if entry else '?'} -> {limit})"


def describe_topics(settings: Settings) -> list[str]:
    existing = admin(settings).list_topics(timeout=10).topics
    lines = []
    for spec in TOPICS:
        name = settings.topic(spec.name)
        state = f"partitions={len(existing[name].partitions)}" if name in existing else "MISSING"
        policy = "compact" if spec.compacted else f"retention={spec.retention_ms // 3_600_000}h"
        lines.append(
            f"{name:<45} {spec.direction.value:<6} key={spec.key_field:<14} "
            f"{policy:<16} {state}  {spec.description}"
        )
    return lines


def read_topic(
    settings: Settings, topic: str, limit: int | None = None, timeout_s: float = 10.0
) -> Iterator[tuple[bytes | None, bytes]]:
    """Every (key, value) currently in ``topic``, from the beginning, without a group commit."""
    consumer = Consumer(
        {
            **confluent_config(settings.kafka_bootstrap_servers),
            "group.id": f"loopwise-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        count = 0
        idle_since = time.monotonic()
        while ends and (limit is None or count < limit):
            # consume() waits for num_messages or the timeout, whichever comes first: short
            # polls return what has arrived instead of waiting out every call.
            msgs = consumer.consume(num_messages=500, timeout=0.1)
            if not msgs:
                if time.monotonic() - idle_since > timeout_s:
                    # Nothing for timeout_s: the rest is unreadable (markers, compaction).
                    return
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
                yield msg.key(), msg.value()
                count += 1
                if limit is not None and count >= limit:
                    return
    finally:
        consumer.close()

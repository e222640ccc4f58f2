"""A confluent-kafka producer for the hot path's records, flushed once per batch.

faust's ``topic.send`` costs tens of microseconds of Python per record (channel → producer
buffer → aiokafka batch builder, each with futures and callbacks); the preferences agent
sends about two records per user per batch (its changelog record and its output). This
producer hands them to librdkafka, which batches, compresses and retries in C threads.

Ordering and delivery:

* ``partitioner=murmur2_random`` puts a keyed record on the partition Java clients,
  aiokafka and faust pick for the same key, so a compacted topic keeps one latest value per
  key whichever client wrote it;
* a table's changelog must be written by one producer only (records of one key from two
  producers could land out of order), so every write to a table routed here goes here;
* :meth:`flush` returns once the broker acknowledged everything sent before it. Callers
  flush before their batch is done, i.e. before faust may commit the batch's input offsets
  (at-least-once: a crash before the flush re-reads the input and rewrites the records).
  A record whose delivery failed is sent again: broker faults are waited out, never
  dropped or dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.config import Settings
from streams.kafka_admin import producer as new_producer

log = logging.getLogger(__name__)
FLUSH_SLICE_S = 5.0


class FastProducer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._failed: list[tuple[str, bytes | None, bytes | None, int]] = []
        self._lock = threading.Lock()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = new_producer(
                self.settings, **{"linger.ms": 2, "partitioner": "murmur2_random"}
            )
        return self._producer

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue one record (``value=None`` is a tombstone); delivery is checked by flush."""
        producer = self._producer or self.producer
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=-1 if partition is None else partition,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:  # librdkafka's queue is full: let it drain
                producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            # The failed message carries its topic, partition, key and value: send it again.
            log.warning("fast producer: %s[%s] not delivered (%s); sending again",
                        msg.topic(), msg.partition(), err)  # fmt: skip
            with self._lock:
                self._failed.append((msg.topic(), msg.key(), msg.value(), msg.partition()))

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged (failed ones are re-sent)."""
        if self._producer is None:
            return
        while True:
            left = await asyncio.to_thread(self._producer.flush, FLUSH_SLICE_S)
            with self._lock:
                failed, self._failed = self._failed, []
            for topic, key, value, partition in failed:
                self.send(topic, key, value, None if partition < 0 else partition)
            if left == 0 and not failed:
                return
            if left:
                log.warning("fast producer: %d records still in flight after %.0f s",
                            left, FLUSH_SLICE_S)  # fmt: skip

    def close(self, timeout_s: float = 10.0) -> Any:
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None

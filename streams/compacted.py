"""A background reader of every partition of a topic, outside any consumer group.

Used for state every worker needs in full: the item catalog (``items``) and the bandit
partial counts (``bandits.partials``). The topic is compacted, so it is its own changelog:
reading it from the beginning rebuilds the latest value per key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.security import confluent_config

log = logging.getLogger(__name__)


class CompactedTopicReader:
    """Calls ``on_message(key, value, partition, timestamp_ms)`` for every record, in
    partition order, in a thread (``timestamp_ms`` is None when the record has none)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_message: Callable[[bytes | None, bytes | None, int, int | None], None],
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_message = on_message
        self._positions: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"read-{self.topic}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _consumer(self) -> Consumer:
        return Consumer(
            confluent_config(
                self.bootstrap,
                **{
                    "group.id": "loopwise-compacted-reader-unused",  # required, never joined
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "log_level": 3,
                },
            )
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception:  # broker outage or metadata error: keep trying, never die
                log.exception("reader of %s failed; restarting in 1 s", self.topic)
                time.sleep(1.0)

    def _consume(self) -> None:
        consumer = self._consumer()
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            parts = meta.topics[self.topic].partitions
            if not parts:
                raise RuntimeError(f"topic {self.topic} not found; run `loopwise topics create`")
            consumer.assign(
                [
                    TopicPartition(self.topic, p, self._positions[p] + 1)
                    if p in self._positions
                    else TopicPartition(self.topic, p, OFFSET_BEGINNING)
                    for p in parts
                ]
            )
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("%s: %s", self.topic, msg.error())
                        continue
                    ts_type, ts = msg.timestamp()
                    self.on_message(msg.key(), msg.value(), msg.partition(),
                                    ts if ts_type and ts > 0 else None)  # fmt: skip
                    self._positions[msg.partition()] = msg.offset()
        finally:
            consumer.close()

    def high_watermarks(self) -> dict[int, int]:
        consumer = self._consumer()
        try:
            meta = consumer.list_topics(self.topic, timeout=5)
            marks = {}
            for p in meta.topics[self.topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
                marks[p] = high
            return marks
        finally:
            consumer.close()

    def caught_up(self, marks: dict[int, int]) -> bool:
        return all(self._positions.get(p, -1) + 1 >= high for p, high in marks.items() if high > 0)

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Block until everything written to the topic before this call has been read."""
        marks = self.high_watermarks()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.caught_up(marks):
                return True
            time.sleep(0.02)
        return self.caught_up(marks)

"""Every worker's full copy of the item catalog, read from the compacted ``items`` topic.

Feedback is keyed by user, so any worker may need any item: the catalog is global. Rather
than a faust GlobalTable (whose recovery with several workers is documented as fragile),
each worker reads every partition of the compacted topic from the beginning with a plain
confluent-kafka consumer outside any group, in a background thread. The topic is its own
changelog. Invalid item events are skipped here; the ``items`` agent dead-letters them once.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.codecs import EventDecoder, Rejected

log = logging.getLogger(__name__)


class ItemCatalog:
    """item_id → float32 feature row; thread-safe for one writer and many readers."""

    def __init__(self, bootstrap: str, topic: str, dim: int, max_bytes: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dim = dim
        self._decode = EventDecoder("items", max_bytes)
        self._rows: dict[str, int] = {}
        self._features = np.zeros((1024, dim), dtype=np.float32)
        self._lock = threading.Lock()
        self._positions: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="item-catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "loopwise-item-catalog-unused",  # required by librdkafka, never joined
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "log_level": 3,
            }
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception:  # broker outage or metadata error: keep trying, never die
                log.exception("item catalog reader failed; restarting in 1 s")
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
                    TopicPartition(
                        self.topic, p, self._positions.get(p, -1) + 1 or OFFSET_BEGINNING
                    )
                    for p in parts
                ]
            )
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("item catalog: %s", msg.error())
                        continue
                    self._apply(msg.value())
                    self._positions[msg.partition()] = msg.offset()
        finally:
            consumer.close()

    def _apply(self, raw: bytes | None) -> None:
        try:
            item = self._decode(raw)
        except Rejected:
            self.skipped += 1
            return
        features = item["features"]
        if len(features) != self.dim:
            self.skipped += 1
            return
        with self._lock:
            row = self._rows.get(item["item_id"])
            if row is None:
                row = len(self._rows)
                if row >= self._features.shape[0]:
                    grown = np.zeros((2 * self._features.shape[0], self.dim), dtype=np.float32)
                    grown[:row] = self._features[:row]
                    self._features = grown
                self._rows[item["item_id"]] = row
            self._features[row] = features

    def lookup(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float64 features and an (n,) bool mask of the ids that are known."""
        with self._lock:
            rows = np.array([self._rows.get(i, -1) for i in item_ids], dtype=np.int64)
            found = rows >= 0
            feats = self._features[np.where(found, rows, 0)].astype(np.float64)
        return feats, found

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

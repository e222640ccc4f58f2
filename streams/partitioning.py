"""The one partitioning rule of Loopwise, and the check that input follows it.

Every keyed topic is partitioned by **murmur2** of the UTF-8 bytes of the event's key field
(``streams.topics``: ``user_id`` for feedback, ``session_id`` for ``recs.*``,
``experiment_id`` for ``experiments.*``, ``component`` for decisions and metrics,
``item_id`` for items): ``(murmur2(key) & 0x7fffffff) % partitions``, what Java clients,
Kafka Streams and aiokafka (hence faust) do by default. librdkafka's default
(``consistent_random``, CRC32) puts most keys elsewhere, so every confluent-kafka producer of
the project sets ``partitioner=murmur2_random`` (:data:`PARTITIONER`).

State lives by key on the partition its events arrive on. A record that arrives on another
partition than its key's would build a second copy of the key's state there (and the two
would race in the changelog), so agents refuse it: dead letter ``wrong_partition`` with the
expected partition (:func:`misrouted`). The partition count is the topic's real one, read
from the broker (:class:`PartitionCounts`), so a topic created with another count than the
settings' is judged by the count producers actually hash with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PARTITIONER = "murmur2_random"
REFRESH_S = 30.0
RETRY_FAILED_S = 5.0

try:  # the C implementation in confluent-kafka (>= 2.x): 0.1 µs a key
    from confluent_kafka.cimpl import murmur2 as _murmur2_mod
except ImportError:  # pragma: no cover - older confluent-kafka
    from aiokafka.partitioner import murmur2 as _murmur2

    def _murmur2_mod(key: bytes, partitions: int) -> int:
        return int((_murmur2(key) & 0x7FFFFFFF) % partitions)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``, as every Loopwise producer picks it.

    >>> partition_for(b"user-1", 4), partition_for(b"", 4)
    (0, 1)
    """
    return int(_murmur2_mod(key, partitions))


class PartitionCounts:
    """Partition count per topic from the broker's metadata, cached.

    ``fetch(topic)`` returns the count or ``None`` (topic unknown, broker away). A count is
    read again when it is older than :data:`REFRESH_S` or a record names a partition beyond
    it (partitions were added)."""

    def __init__(self, fetch: Callable[[str], int | None]) -> None:
        self._fetch = fetch
        self._counts: dict[str, tuple[int, float]] = {}
        self._failed: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, topic: str, seen_partition: int = 0) -> int | None:
        now = time.monotonic()
        cached = self._counts.get(topic)
        if cached is not None and seen_partition < cached[0] and now - cached[1] < REFRESH_S:
            return cached[0]
        failed_at = self._failed.get(topic)
        if failed_at is not None and now - failed_at < RETRY_FAILED_S:
            # The broker did not answer a moment ago: do not block every record on it.
            return cached[0] if cached is not None else None
        with self._lock:
            try:
                count = self._fetch(topic)
            except Exception as exc:  # the broker away, or metadata not there yet
                log.warning("partition count of %s unavailable: %r", topic, exc)
                count = None
            if count is None:
                self._failed[topic] = now
                return cached[0] if cached is not None else None
            self._failed.pop(topic, None)
            self._counts[topic] = (count, now)
            return count


def broker_counts(bootstrap_config: dict[str, object]) -> PartitionCounts:
    """:class:`PartitionCounts` read with a confluent-kafka AdminClient."""
    from confluent_kafka.admin import AdminClient

    client: AdminClient | None = None

    def fetch(topic: str) -> int | None:
        nonlocal client
        if client is None:
            client = AdminClient(bootstrap_config)
        meta = client.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return len(meta.partitions)

    return PartitionCounts(fetch)


def misrouted(key: str, partition: int, partitions: int | None) -> int | None:
    """The partition ``key`` belongs on when it is not ``partition``; ``None`` when the
    record is where it belongs (or the count is unknown: then nothing can be judged).

    >>> misrouted("user-1", 0, 4) is None, misrouted("user-1", 3, 4)
    (True, 0)
    """
    if partitions is None:
        return None
    expected = partition_for(key.encode(), partitions)
    return None if expected == partition else expected

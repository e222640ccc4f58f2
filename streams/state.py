"""Table writes from batch processing, and the crash hook used by the fault tests.

faust's ``table[key] = value`` finds the changelog partition from the *current event*, which
batch iteration (``stream.take_events``) does not set. :func:`put` names the partition
explicitly (the source event's partition, so table and input stay co-partitioned) and
goes through the same public calls: a changelog record, then the local store.
"""

from __future__ import annotations

import logging
import os

import orjson
from faust.types import TableT

from streams import faults
from streams.app import app, fast_producer, settings

log = logging.getLogger(__name__)


def put(table: TableT, partition: int, key: str, value: bytes) -> None:
    table.send_changelog(partition, key, value)
    table.data[key] = value
    _index_partition(table, key, partition)


def _index_partition(table: TableT, key: str, partition: int | None) -> None:
    """Record (or, with ``None``, forget) the partition of a key written here.

    faust's memory store learns a key's partition only when it recovers the key from the
    changelog, and after a rebalance drops only the keys it knows to belong to partitions
    that moved away. A key written live would stay behind as a stale copy: served by
    ``/state``, walked by the periodic scan, and at risk of being written back over the new
    owner's newer value. With the partition recorded, faust drops it like any other.
    """
    index = getattr(table.data, "_key_partition", None)
    if index is None:  # not the memory store
        return
    if partition is None:
        index.pop(key, None)
    else:
        index[key] = partition


def put_fast(table: TableT, partition: int, key: str, value: bytes | None) -> None:
    """:func:`put` (or, with ``None``, :func:`delete`) through the fast producer: the
    caller awaits ``fast_producer.flush()`` before its batch is done. Every write of a table
    must go one way or the other (one producer per changelog keeps each key's records in
    order)."""
    raw_key = (
        orjson.dumps(key) if key.isascii() else table.changelog_topic.prepare_key(key, None)[0]
    )
    fast_producer.send(table.changelog_topic.get_topic_name(), raw_key, value, partition)
    if value is None:
        table.data.pop(key, None)
        _index_partition(table, key, None)
    else:
        table.data[key] = value
        _index_partition(table, key, partition)


def delete(table: TableT, partition: int, key: str) -> None:
    """Tombstone a key in the changelog and drop it from the local store."""
    table.send_changelog(partition, key, None, value_serializer="raw")
    table.data.pop(key, None)
    _index_partition(table, key, None)


def crash_point(name: str) -> None:
    """Exit at once (no clean-up, like kill -9) when LOOPWISE_CRASH_AT names this point;
    raise a transient fault here when LOOPWISE_FAULTS says so (streams.faults)."""
    if settings.crash_at == name:
        log.warning("LOOPWISE_CRASH_AT=%s: exiting at this boundary", name)
        os._exit(70)
    faults.point(name)


def assigned_partitions(topic_name: str) -> frozenset[int]:
    """The partitions of registry topic ``topic_name`` this worker owns now (none before the
    consumer has started)."""
    name = settings.topic(topic_name)
    try:
        return frozenset(tp.partition for tp in app.consumer.assignment() if tp.topic == name)
    except Exception:  # consumer not started yet
        return frozenset()

"""The record format of ``feedback.implicit.relay``: many validated input events in one
Kafka record, with their original bytes and source coordinates.

The implicit relay (:mod:`agents.preferences.relay`) packs the valid events it read from one
partition of ``feedback.implicit`` into records of at most ``max_events`` events (and about
``max_bytes``); the preferences agent unpacks them into :class:`RelayedEvent` objects that
look like the faust events they replace (``event.message.topic/partition/offset/timestamp/
key/value``), so de-duplication by source offset, dead letters with the original bytes and
attribution work unchanged.

Layout (little-endian)::

    b"LWR1" | u16 topic length | topic (UTF-8) | u32 partition | u32 n
    | n × (i64 offset, i64 timestamp ms, i32 key length or -1, u32 value length)
    | n × (key bytes, value bytes)

A binary frame rather than JSON: the original bytes travel untouched and the agent parses
each event's JSON once, without re-validating what the relay validated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"LWR1"
RECORD_MAX_BYTES = 900_000  # under Kafka's default 1 MB message limit, with room to spare
_HEAD = struct.Struct("<4sH")
_TAIL = struct.Struct("<II")
_ROW = np.dtype([("offset", "<i8"), ("ts", "<i8"), ("klen", "<i4"), ("vlen", "<u4")])


class BadRelayRecord(ValueError):
    """A record on the relay topic that is not in this format."""


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One valid input event as the relay read it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class RelayedMessage:
    """The fields of a faust ``Message`` that agents read, for a relayed event."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class RelayedEvent:
    """Stands in for a faust ``EventT``: agents only read ``event.message``."""

    message: RelayedMessage


def pack(topic: str, partition: int, events: Sequence[SourceEvent]) -> bytes:
    """One relay record for ``events`` (all from ``topic``/``partition``, in offset order)."""
    name = topic.encode()
    rows = np.empty(len(events), dtype=_ROW)
    rows["offset"] = [e.offset for e in events]
    rows["ts"] = [e.timestamp_ms for e in events]
    rows["klen"] = [-1 if e.key is None else len(e.key) for e in events]
    rows["vlen"] = [len(e.value) for e in events]
    body = b"".join(b"".join((e.key or b"", e.value)) for e in events)
    return b"".join(
        (
            _HEAD.pack(MAGIC, len(name)),
            name,
            _TAIL.pack(partition, len(events)),
            rows.tobytes(),
            body,
        )
    )


def chunks(
    events: Sequence[SourceEvent], max_events: int, max_bytes: int = RECORD_MAX_BYTES
) -> Iterator[list[SourceEvent]]:
    """Consecutive runs of at most ``max_events`` events and about ``max_bytes`` (an event
    larger than that travels alone)."""
    run: list[SourceEvent] = []
    size = 0
    for event in events:
        grows = len(event.value) + len(event.key or b"") + _ROW.itemsize
        if run and (len(run) >= max_events or size + grows > max_bytes):
            yield run
            run, size = [], 0
        run.append(event)
        size += grows
    if run:
        yield run


def unpack(raw: bytes | None) -> list[RelayedEvent]:
    """The events of one relay record; :class:`BadRelayRecord` when it is malformed."""
    if raw is None or len(raw) < _HEAD.size:
        raise BadRelayRecord("not a relay record (empty or too short)")
    magic, name_len = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise BadRelayRecord(f"not a relay record (magic {magic!r})")
    pos = _HEAD.size
    try:
        topic = raw[pos : pos + name_len].decode()
        pos += name_len
        partition, n = _TAIL.unpack_from(raw, pos)
        pos += _TAIL.size
        rows = np.frombuffer(raw, dtype=_ROW, count=n, offset=pos)
    except (UnicodeDecodeError, struct.error, ValueError) as exc:
        raise BadRelayRecord(f"truncated relay record: {exc}") from exc
    pos += rows.nbytes
    if pos + int(rows["vlen"].sum()) + int(np.maximum(rows["klen"], 0).sum()) != len(raw):
        raise BadRelayRecord("relay record length does not match its index")
    return list(_events(raw, pos, topic, partition, rows))


def _events(
    raw: bytes, pos: int, topic: str, partition: int, rows: np.ndarray
) -> Iterator[RelayedEvent]:
    view = memoryview(raw)
    for offset, ts, klen, vlen in rows.tolist():
        key: bytes | None = None
        if klen >= 0:
            key = bytes(view[pos : pos + klen])
            pos += klen
        value = bytes(view[pos : pos + vlen])
        pos += vlen
        yield RelayedEvent(RelayedMessage(topic, partition, offset, ts / 1000.0, key, value))


def describe(raw: bytes) -> dict[str, Any]:
    """Source topic, partition and offset range of a record (for logs and the CLI)."""
    events = unpack(raw)
    if not events:
        return {"events": 0}
    first, last = events[0].message, events[-1].message
    return {
        "topic": first.topic,
        "partition": first.partition,
        "first_offset": first.offset,
        "last_offset": last.offset,
        "events": len(events),
    }

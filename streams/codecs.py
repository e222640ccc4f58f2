"""Decoding and validation at the boundary, and the dead-letter record.

orjson refuses NaN, Infinity and overflowing literals such as ``1e999``, and every number in
the schemas is bounded, so a validated event holds only finite numbers.

Agents never see raw bytes: :func:`decode_event` turns bytes into a validated dict or raises
:class:`Rejected` with an error kind from :data:`ERROR_KINDS`; :func:`dead_letter` builds the
record that carries the original bytes and source coordinates to the dead-letter topic.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson

from schemas.registry import get_schema, validation_error_message

ERROR_KINDS = (
    "not_json",
    "oversize",
    "schema_violation",
    "unknown_event_kind",
    "unknown_item",
    "unknown_arm",
    "dimension_mismatch",
    "missing_session",
    "quarantined",
    "unknown_experiment",
    "unexposed_unit",
    "wrong_partition",
    "timestamp_out_of_range",
    "other",
)

# A dead letter must fit where it is sent: the original is kept whole up to what leaves
# room for the envelope (base64 grows it by a third), beyond that as a prefix with its
# length and hash; the source coordinates locate the whole original in its topic.
ENVELOPE_BYTES = 16_384
KEY_KEEP_BYTES = 1024
DEFAULT_MAX_RECORD_BYTES = 1_000_000


ORIGINAL_MAX_BYTES = 1_125_000  # base64 of it is the schema's maxLength, 1,500,000


def original_limit(max_record_bytes: int) -> int:
    """Bytes of an original a dead letter of at most ``max_record_bytes`` keeps whole.

    >>> original_limit(1_000_000), original_limit(10_000_000)
    (737712, 1125000)
    """
    return max(0, min((max_record_bytes - ENVELOPE_BYTES) // 4 * 3, ORIGINAL_MAX_BYTES))


MAX_TS_MS = 4_102_444_800_000  # the schemas' upper bound for ts (2100-01-01)


class Rejected(Exception):
    """An input event that cannot be processed; it goes to the dead-letter topic."""

    def __init__(self, kind: str, message: str, expected_partition: int | None = None) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown dead-letter kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.expected_partition = expected_partition


class EventDecoder:
    """Bytes → validated dict for one schema; the one place input is checked."""

    def __init__(self, schema_name: str, max_bytes: int) -> None:
        self.schema = get_schema(schema_name)
        self.max_bytes = max_bytes
        self._validate: Callable[[Any], Any] = self.schema.validate

    def __call__(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise Rejected("not_json", "empty message (tombstone) on an input topic")
        if len(raw) > self.max_bytes:
            raise Rejected("oversize", f"{len(raw)} bytes exceeds the limit of {self.max_bytes}")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Rejected("not_json", f"not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise Rejected(
                "schema_violation", f"expected a JSON object, got {type(payload).__name__}"
            )
        try:
            self._validate(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            kind = "unknown_event_kind" if _is_kind_error(exc) else "schema_violation"
            raise Rejected(kind, validation_error_message(exc)) from exc
        return payload


def _is_kind_error(exc: fastjsonschema.JsonSchemaValueException) -> bool:
    path = exc.path if isinstance(exc.path, list | tuple) else []
    return bool(path) and path[-1] in {"kind", "schema_version"}


def dead_letter(
    *,
    raw: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    kind: str,
    message: str,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    timestamp_ms: int | None = None,
    expected_partition: int | None = None,
) -> dict[str, Any]:
    """The dead-letter record for one rejected message (schema ``deadletter``).

    The event id is derived from the source coordinates, so a message that is rejected
    again after a crash and replay yields the same dead letter, not a new one. Encoded, the
    record is at most ``max_record_bytes`` whatever the input: an original longer than
    :func:`original_limit` is kept as a prefix, with ``original_length`` and
    ``original_sha256`` of the whole; a key longer than ``KEY_KEEP_BYTES`` likewise.
    """
    event_id = f"dlq:{topic}:{partition}:{offset}"
    if len(event_id) > 128:  # the schema's id limit; very long topic names are hashed
        digest = hashlib.blake2b(topic.encode(), digest_size=16).hexdigest()
        event_id = f"dlq:{digest}:{partition}:{offset}"
    raw = raw or b""
    source: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": base64.b64encode(key[:KEY_KEEP_BYTES]).decode() if key is not None else None,
    }
    if key is not None and len(key) > KEY_KEEP_BYTES:
        source["key_length"] = len(key)
    if timestamp_ms is not None and 0 <= timestamp_ms <= MAX_TS_MS:
        source["timestamp"] = timestamp_ms
    record: dict[str, Any] = {
        "event_id": event_id,
        "schema_version": 1,
        "ts": int(time.time() * 1000),
        "source": source,
        "error_kind": kind,
        "error_message": message[:2048] or kind,
    }
    if expected_partition is not None:
        record["expected_partition"] = expected_partition
    keep = original_limit(max_record_bytes)
    if len(raw) > keep:
        record["original_length"] = len(raw)
        record["original_sha256"] = hashlib.sha256(raw).hexdigest()
        raw = raw[:keep]
    record["original"] = base64.b64encode(raw).decode()
    return record


def encode(event: dict[str, Any]) -> bytes:
    """Output events are orjson bytes; numpy arrays and scalars are serialized natively."""
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


def key_of(event: dict[str, Any], key_field: str) -> str:
    """The Kafka key of an event, following a dotted path (``source.topic``)."""
    value: Any = event
    for part in key_field.split("."):
        value = value[part]
    return str(value)

"""A dead letter always fits where it is sent and always matches its schema, whatever it
carries: originals of megabytes, keys of 100 KB, error messages of any length and script,
topic names of 249 characters."""

from __future__ import annotations

import base64
import hashlib
import random
import string

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.registry import get_schema
from streams.codecs import (
    DEFAULT_MAX_RECORD_BYTES,
    ERROR_KINDS,
    KEY_KEEP_BYTES,
    MAX_TS_MS,
    dead_letter,
    encode,
    original_limit,
)
from streams.config import Settings

VALIDATE = get_schema("deadletter").validate
TOPIC_CHARS = string.ascii_letters + string.digits + "._-"

# The records Loopwise producers may send: the default, the smallest the settings allow, and
# a few in between, and limits so large that the schema's base64 length caps the original.
MAX_RECORD_BYTES = (
    Settings.from_env({}).max_record_bytes,
    Settings.from_env({"LOOPWISE_MAX_MESSAGE_BYTES": "65536"}).max_record_bytes,
    DEFAULT_MAX_RECORD_BYTES,
    100_000,
    262_144 + 16_384,
    1_500_000 + 16_384,
)


def _bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(n * 7919 + seed).randbytes(n)


sizes = st.one_of(
    st.integers(0, 3000),
    st.integers(0, 5_000_000),
    st.sampled_from([original_limit(m) + d for m in MAX_RECORD_BYTES for d in (-1, 0, 1)]),
)
raws = st.one_of(st.none(), st.builds(_bytes, sizes))
keys = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.builds(_bytes, st.sampled_from([KEY_KEEP_BYTES - 1, KEY_KEEP_BYTES, KEY_KEEP_BYTES + 1])),
    st.builds(_bytes, st.integers(0, 100_000)),
)
# Characters of every width in UTF-8, and those JSON escapes (control characters take 6 bytes).
wide = st.sampled_from(["é", "用", "😀", "\x00", "\x1f", '"', "\\", "\u2028", "a"])
messages = st.one_of(
    st.text(max_size=300),
    st.text(min_size=2000, max_size=2100),
    st.builds(lambda c, n: c * n, wide, st.integers(0, 100_000)),
)
topics = st.one_of(
    st.text(TOPIC_CHARS, min_size=1, max_size=249),
    st.builds(lambda c, n: c * n, st.sampled_from(TOPIC_CHARS), st.sampled_from([1, 112, 249])),
)
timestamps = st.one_of(st.none(), st.integers(-(10**13), 10**13), st.sampled_from([0, MAX_TS_MS]))


@settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    raw=raws,
    topic=topics,
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    key=keys,
    kind=st.sampled_from(ERROR_KINDS),
    message=messages,
    max_record_bytes=st.sampled_from(MAX_RECORD_BYTES),
    timestamp_ms=timestamps,
    expected_partition=st.one_of(st.none(), st.integers(0, 2**31 - 1)),
)
def test_every_dead_letter_fits_and_validates(
    raw: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    kind: str,
    message: str,
    max_record_bytes: int,
    timestamp_ms: int | None,
    expected_partition: int | None,
) -> None:
    record = dead_letter(
        raw=raw,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        kind=kind,
        message=message,
        max_record_bytes=max_record_bytes,
        timestamp_ms=timestamp_ms,
        expected_partition=expected_partition,
    )
    encoded = encode(record)
    assert len(encoded) <= max_record_bytes
    VALIDATE(record)
    assert orjson.loads(encoded) == record

    whole = raw or b""
    kept = base64.b64decode(record["original"], validate=True)
    assert whole.startswith(kept)
    if len(whole) <= original_limit(max_record_bytes):
        assert kept == whole
        assert "original_length" not in record and "original_sha256" not in record
    else:
        assert len(kept) == original_limit(max_record_bytes)
        assert record["original_length"] == len(whole)
        assert record["original_sha256"] == hashlib.sha256(whole).hexdigest()

    source = record["source"]
    assert (source["topic"], source["partition"], source["offset"]) == (topic, partition, offset)
    if key is None:
        assert source["key"] is None and "key_length" not in source
    else:
        assert base64.b64decode(source["key"], validate=True) == key[:KEY_KEEP_BYTES]
        assert source.get("key_length") == (len(key) if len(key) > KEY_KEEP_BYTES else None)
    if timestamp_ms is not None and 0 <= timestamp_ms <= MAX_TS_MS:
        assert source["timestamp"] == timestamp_ms
    else:
        assert "timestamp" not in source
    assert record.get("expected_partition") == expected_partition
    assert record["error_kind"] == kind
    assert message.startswith(record["error_message"]) or (
        message == "" and record["error_message"] == kind
    )


def _letter(raw: bytes | None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, **kw):
    args = {
        "topic": "loopwise.feedback.explicit",
        "partition": 3,
        "offset": 42,
        "key": b"u-42",
        "kind": "not_json",
        "message": "not JSON",
        **kw,
    }
    return dead_letter(raw=raw, max_record_bytes=max_record_bytes, **args)


@pytest.mark.parametrize("max_record_bytes", MAX_RECORD_BYTES)
def test_an_original_exactly_at_the_limit_is_kept_whole(max_record_bytes: int) -> None:
    raw = _bytes(original_limit(max_record_bytes))
    record = _letter(raw, max_record_bytes)
    assert base64.b64decode(record["original"]) == raw
    assert "original_length" not in record and "original_sha256" not in record
    assert len(encode(record)) <= max_record_bytes
    VALIDATE(record)


@pytest.mark.parametrize("max_record_bytes", MAX_RECORD_BYTES)
def test_an_original_one_byte_over_the_limit_is_cut(max_record_bytes: int) -> None:
    limit = original_limit(max_record_bytes)
    raw = _bytes(limit + 1)
    record = _letter(raw, max_record_bytes)
    kept = base64.b64decode(record["original"])
    assert kept == raw[:limit] and len(kept) == limit
    assert record["original_length"] == limit + 1
    assert record["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["original_sha256"] != hashlib.sha256(kept).hexdigest()
    assert len(encode(record)) <= max_record_bytes
    VALIDATE(record)


def test_original_limit_leaves_the_envelope_room() -> None:
    assert original_limit(DEFAULT_MAX_RECORD_BYTES) == 737_712
    assert original_limit(16_384) == 0
    assert original_limit(0) == 0
    for m in MAX_RECORD_BYTES:
        assert len(base64.b64encode(bytes(original_limit(m)))) <= m - 16_384


def test_the_worst_envelope_still_fits() -> None:
    # Every field at its largest: 2048 control characters (6 bytes each in JSON), a topic of
    # 249 characters, a 100 KB key, a 5 MB original, the largest coordinates.
    for max_record_bytes in MAX_RECORD_BYTES:
        record = dead_letter(
            raw=_bytes(5_000_000),
            topic="t" * 249,
            partition=2**31 - 1,
            offset=2**63 - 1,
            key=_bytes(100_000, 1),
            kind="timestamp_out_of_range",
            message="\x01" * 10_000,
            max_record_bytes=max_record_bytes,
            timestamp_ms=MAX_TS_MS,
            expected_partition=2**31 - 1,
        )
        assert len(encode(record)) <= max_record_bytes
        VALIDATE(record)


def test_a_long_key_is_cut_with_its_length() -> None:
    key = _bytes(100_000)
    record = _letter(b"{}", key=key)
    assert base64.b64decode(record["source"]["key"]) == key[:KEY_KEEP_BYTES]
    assert record["source"]["key_length"] == 100_000
    VALIDATE(record)
    record = _letter(b"{}", key=key[:KEY_KEEP_BYTES])
    assert base64.b64decode(record["source"]["key"]) == key[:KEY_KEEP_BYTES]
    assert "key_length" not in record["source"]
    record = _letter(b"{}", key=key[: KEY_KEEP_BYTES + 1])
    assert record["source"]["key_length"] == KEY_KEEP_BYTES + 1
    VALIDATE(record)


def test_a_long_non_ascii_message_is_cut_and_valid() -> None:
    record = _letter(b"x", message="用户😀" * 5000)
    assert record["error_message"] == ("用户😀" * 5000)[:2048]
    VALIDATE(record)
    assert _letter(b"x", message="", kind="other")["error_message"] == "other"


def test_event_id_is_derived_from_the_coordinates_only() -> None:
    a = _letter(b"first", kind="not_json", message="a", key=b"k")
    b = _letter(_bytes(3_000_000), kind="other", message="b", key=None, timestamp_ms=5)
    assert a["event_id"] == b["event_id"] == "dlq:loopwise.feedback.explicit:3:42"
    assert _letter(b"x", offset=43)["event_id"] != a["event_id"]
    assert _letter(b"x", partition=2)["event_id"] != a["event_id"]
    assert _letter(b"x", topic="loopwise.feedback.implicit")["event_id"] != a["event_id"]


def test_event_id_of_a_long_topic_is_hashed_deterministically() -> None:
    long_a, long_b = "a" * 249, "a" * 248 + "b"
    ids = {
        _letter(b"x", topic=t, offset=2**63 - 1, partition=2**31 - 1)["event_id"]
        for t in (long_a, long_a)
    }
    assert len(ids) == 1
    (event_id,) = ids
    assert len(event_id) <= 128 and long_a not in event_id
    other = _letter(b"x", topic=long_b, offset=2**63 - 1, partition=2**31 - 1)
    assert other["event_id"] != event_id
    VALIDATE(other)


def test_a_large_input_limit_still_gives_a_valid_dead_letter() -> None:
    max_record_bytes = Settings.from_env({"LOOPWISE_MAX_MESSAGE_BYTES": "4000000"}).max_record_bytes
    record = _letter(_bytes(5_000_000), max_record_bytes)
    assert len(encode(record)) <= max_record_bytes
    VALIDATE(record)

from __future__ import annotations

import orjson
import pytest

from streams.relay_records import BadRelayRecord, SourceEvent, chunks, describe, pack, unpack


def events(n: int) -> list[SourceEvent]:
    return [
        SourceEvent(
            offset=100 + i,
            timestamp_ms=1_700_000_000_000 + i,
            key=None if i == 1 else f"u{i}".encode(),
            value=orjson.dumps({"event_id": f"e{i}", "n": i, "text": "é" * i}),
        )
        for i in range(n)
    ]


def test_round_trip_keeps_bytes_keys_and_coordinates() -> None:
    source = events(5)
    out = unpack(pack("lw.feedback.implicit", 3, source))
    assert [e.message.value for e in out] == [e.value for e in source]
    assert [e.message.key for e in out] == [e.key for e in source]
    assert [e.message.offset for e in out] == [100, 101, 102, 103, 104]
    assert {(e.message.topic, e.message.partition) for e in out} == {("lw.feedback.implicit", 3)}
    assert out[2].message.timestamp == pytest.approx(1_700_000_000.002)
    assert describe(pack("t", 0, source)) == {
        "topic": "t", "partition": 0, "first_offset": 100, "last_offset": 104, "events": 5,
    }  # fmt: skip


def test_empty_record() -> None:
    assert unpack(pack("t", 1, [])) == []


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"LWR", b"XXXX\x01\x00t", b"not a relay record at all"],
)
def test_malformed_records_are_refused(raw: bytes | None) -> None:
    with pytest.raises(BadRelayRecord):
        unpack(raw)


def test_truncated_or_padded_records_are_refused() -> None:
    good = pack("t", 0, events(3))
    for bad in (good[:-1], good + b"x", good[: len(good) // 2]):
        with pytest.raises(BadRelayRecord):
            unpack(bad)


def test_chunks_cut_by_count_and_bytes_and_keep_order() -> None:
    source = events(10)
    runs = list(chunks(source, 4))
    assert [len(r) for r in runs] == [4, 4, 2]
    assert [e for r in runs for e in r] == source
    big = [SourceEvent(i, 0, None, b"x" * 400) for i in range(5)]
    assert [len(r) for r in chunks(big, 100, max_bytes=1000)] == [2, 2, 1]
    assert [len(r) for r in chunks(big, 100, max_bytes=10)] == [1, 1, 1, 1, 1]

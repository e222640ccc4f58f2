from __future__ import annotations

import base64

import orjson
import pytest

from schemas.registry import get_schema
from streams.codecs import EventDecoder, Rejected, dead_letter, encode, key_of

GOOD = {
    "event_id": "e1",
    "schema_version": 1,
    "ts": 1,
    "user_id": "u1",
    "item_id": "i1",
    "kind": "rating",
    "value": 4,
}


@pytest.fixture
def decode() -> EventDecoder:
    return EventDecoder("feedback.explicit", max_bytes=2_000)


def test_valid_event_is_returned_as_dict(decode: EventDecoder) -> None:
    assert decode(orjson.dumps(GOOD)) == GOOD


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"{nope", "not_json"),
        (b'{"value": NaN}', "not_json"),
        (b"[1, 2]", "schema_violation"),
        (orjson.dumps({**GOOD, "value": 9}), "schema_violation"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "event_id"}), "schema_violation"),
        (orjson.dumps({**GOOD, "kind": "teleport"}), "unknown_event_kind"),
        (orjson.dumps({**GOOD, "schema_version": 2}), "unknown_event_kind"),
        (b'{"event_id": "' + b"x" * 3000 + b'"}', "oversize"),
        (None, "not_json"),
    ],
)
def test_rejections_carry_a_kind_and_a_message(
    decode: EventDecoder, raw: bytes | None, kind: str
) -> None:
    with pytest.raises(Rejected) as info:
        decode(raw)
    assert info.value.kind == kind
    assert info.value.message


def test_huge_number_that_overflows_to_infinity_is_rejected(decode: EventDecoder) -> None:
    with pytest.raises(Rejected):
        decode(orjson.dumps(GOOD).replace(b'"value":4', b'"value":1e999'))


def test_dead_letter_keeps_bytes_and_coordinates_and_validates() -> None:
    record = dead_letter(
        raw=b"\x00\xffbad",
        topic="t.feedback.explicit",
        partition=3,
        offset=42,
        key=b"u1",
        kind="not_json",
        message="boom",
    )
    get_schema("deadletter").validate(record)
    assert base64.b64decode(record["original"]) == b"\x00\xffbad"
    assert record["source"] == {
        "topic": "t.feedback.explicit",
        "partition": 3,
        "offset": 42,
        "key": base64.b64encode(b"u1").decode(),
    }
    # Rejecting the same message again (after a replay) gives the same dead-letter id.
    again = dead_letter(
        raw=b"x",
        topic="t.feedback.explicit",
        partition=3,
        offset=42,
        key=None,
        kind="not_json",
        message="boom",
    )
    assert again["event_id"] == record["event_id"]


def test_unknown_dead_letter_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown dead-letter kind"):
        Rejected("weird", "x")


def test_key_of_follows_dotted_paths() -> None:
    assert key_of({"source": {"topic": "a"}}, "source.topic") == "a"
    assert key_of(GOOD, "user_id") == "u1"
    assert orjson.loads(encode({"a": 1})) == {"a": 1}

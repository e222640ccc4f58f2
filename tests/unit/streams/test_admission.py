"""The envelope checks of an input record: the partition its key hashes to, and its event
time against the record's Kafka time."""

from __future__ import annotations

from typing import Any

import pytest

from streams.admission import Admission
from streams.codecs import MAX_TS_MS, EventDecoder, Rejected
from streams.config import Settings
from streams.metrics import REGISTRY
from streams.partitioning import PartitionCounts, partition_for

NOW_MS = 1_767_225_602_000  # 2026-01-01
AGE_S = 86_400
AHEAD_S = 3600


def _settings(**env: str) -> Settings:
    return Settings.from_env(
        {
            "LOOPWISE_TOPIC_PREFIX": "adm.",
            "LOOPWISE_TS_MAX_AGE_S": str(AGE_S),
            "LOOPWISE_TS_MAX_AHEAD_S": str(AHEAD_S),
            **env,
        }
    )


def _counts(count: int | None) -> PartitionCounts:
    return PartitionCounts(lambda topic: count)


def _event(user: str = "u-42", ts: Any = NOW_MS) -> dict[str, Any]:
    return {
        "event_id": "evt-1",
        "schema_version": 1,
        "ts": ts,
        "user_id": user,
        "item_id": "item-1",
        "kind": "like",
    }


def _misrouted(topic: str) -> float:
    value = REGISTRY.get_sample_value("loopwise_events_misrouted_total", {"topic": topic})
    return value or 0.0


@pytest.fixture
def admission() -> Admission:
    return Admission(_settings(), _counts(4))


TOPIC = "adm.feedback.explicit"


def test_the_right_partition_passes(admission: Admission) -> None:
    before = _misrouted(TOPIC)
    for user in ("u-42", "user-1", "ünï", "x" * 128):
        right = partition_for(user.encode(), 4)
        admission.check(TOPIC, right, NOW_MS, _event(user))
    assert _misrouted(TOPIC) == before


def test_a_wrong_partition_is_rejected_with_the_expected_one(admission: Admission) -> None:
    right = partition_for(b"u-42", 4)
    wrong = (right + 1) % 4
    before = _misrouted(TOPIC)
    with pytest.raises(Rejected) as info:
        admission.check(TOPIC, wrong, NOW_MS, _event("u-42"))
    assert info.value.kind == "wrong_partition"
    assert info.value.expected_partition == right
    assert f"partition {right}" in info.value.message
    assert _misrouted(TOPIC) == before + 1
    with pytest.raises(Rejected):
        admission.check(TOPIC, wrong, NOW_MS, _event("u-42"))
    assert _misrouted(TOPIC) == before + 2


def test_the_key_field_of_each_input_topic_is_used() -> None:
    admission = Admission(_settings(), _counts(12))
    payload = {"session_id": "s-7", "ts": NOW_MS}
    right = partition_for(b"s-7", 12)
    admission.check("adm.recs.sessions", right, NOW_MS, payload)
    with pytest.raises(Rejected) as info:
        admission.check("adm.recs.sessions", (right + 5) % 12, NOW_MS, payload)
    assert info.value.expected_partition == right


def test_an_unknown_partition_count_passes() -> None:
    admission = Admission(_settings(), _counts(None))
    before = _misrouted(TOPIC)
    for partition in range(8):
        admission.check(TOPIC, partition, NOW_MS, _event())
    assert _misrouted(TOPIC) == before


@pytest.mark.parametrize(
    "topic",
    [
        "adm.weights.preferences",  # an output topic
        "adm.feedback.implicit.relay",  # internal
        "feedback.explicit",  # an input, but without this deployment's prefix
        "other.topic",
    ],
)
def test_topics_that_are_not_inputs_are_not_checked(admission: Admission, topic: str) -> None:
    right = partition_for(b"u-42", 4)
    before = _misrouted(topic)
    admission.check(topic, (right + 1) % 4, NOW_MS, _event("u-42", ts=0))
    assert _misrouted(topic) == before


def _check_ts(admission: Admission, ts: Any, record_ts_ms: int | None = NOW_MS) -> None:
    admission.check(TOPIC, partition_for(b"u-42", 4), record_ts_ms, _event("u-42", ts))


def test_ts_exactly_at_the_bounds_passes(admission: Admission) -> None:
    _check_ts(admission, NOW_MS + AHEAD_S * 1000)
    _check_ts(admission, NOW_MS - AGE_S * 1000)
    _check_ts(admission, NOW_MS)


@pytest.mark.parametrize("ts", [NOW_MS + AHEAD_S * 1000 + 1, NOW_MS - AGE_S * 1000 - 1])
def test_ts_one_ms_past_a_bound_is_rejected(admission: Admission, ts: int) -> None:
    before = _misrouted(TOPIC)
    with pytest.raises(Rejected) as info:
        _check_ts(admission, ts)
    assert info.value.kind == "timestamp_out_of_range"
    assert info.value.expected_partition is None
    assert "LOOPWISE_TS_MAX_AGE_S" in info.value.message
    assert _misrouted(TOPIC) == before  # not a routing fault


@pytest.mark.parametrize("record_ts_ms", [None, 0, -1])
def test_a_record_without_a_time_skips_the_ts_check(
    admission: Admission, record_ts_ms: int | None
) -> None:
    for ts in (0, MAX_TS_MS, NOW_MS):
        _check_ts(admission, ts, record_ts_ms)


@pytest.mark.parametrize("ts", [0, 1, MAX_TS_MS, 4_102_444_800_000])
def test_schema_extremes_with_a_current_record_time_are_rejected(
    admission: Admission, ts: int
) -> None:
    with pytest.raises(Rejected) as info:
        _check_ts(admission, ts)
    assert info.value.kind == "timestamp_out_of_range"


@pytest.mark.parametrize("raw_ts", [b"0.0", b"4102444800000.0"])
def test_an_integral_float_ts_accepted_by_the_schema_is_checked_too(
    admission: Admission, raw_ts: bytes
) -> None:
    raw = (
        b'{"event_id":"e1","schema_version":1,"ts":' + raw_ts + b',"user_id":"u-42",'
        b'"item_id":"i1","kind":"like"}'
    )
    payload = EventDecoder("feedback.explicit", 1_000_000)(raw)  # passes its schema
    with pytest.raises(Rejected) as info:
        admission.check(TOPIC, partition_for(b"u-42", 4), NOW_MS, payload)
    assert info.value.kind == "timestamp_out_of_range"


def test_a_wrong_partition_is_judged_before_the_time(admission: Admission) -> None:
    right = partition_for(b"u-42", 4)
    with pytest.raises(Rejected) as info:
        admission.check(TOPIC, (right + 2) % 4, NOW_MS, _event("u-42", ts=0))
    assert info.value.kind == "wrong_partition"


def test_bounds_come_from_the_environment() -> None:
    settings = Settings.from_env({"LOOPWISE_TS_MAX_AGE_S": "10", "LOOPWISE_TS_MAX_AHEAD_S": "2.5"})
    admission = Admission(settings, _counts(1))
    topic = settings.topic("feedback.explicit")
    assert topic == "loopwise.feedback.explicit"

    def check(ts: int) -> None:
        admission.check(topic, 0, NOW_MS, _event(ts=ts))

    check(NOW_MS + 2500)
    check(NOW_MS - 10_000)
    for ts in (NOW_MS + 2501, NOW_MS - 10_001):
        with pytest.raises(Rejected):
            check(ts)


def test_default_bounds() -> None:
    settings = Settings.from_env({})
    assert (settings.ts_max_age_s, settings.ts_max_ahead_s) == (157_766_400.0, 3600.0)
    admission = Admission(settings, _counts(1))
    topic = settings.topic("feedback.explicit")
    admission.check(topic, 0, NOW_MS, _event(ts=NOW_MS - 157_766_400_000))
    with pytest.raises(Rejected):
        admission.check(topic, 0, NOW_MS, _event(ts=NOW_MS - 157_766_400_001))


def test_fractional_bounds_are_exact_to_the_millisecond() -> None:
    settings = Settings.from_env({"LOOPWISE_TS_MAX_AHEAD_S": "1.001"})
    admission = Admission(settings, _counts(1))
    admission.check(settings.topic("feedback.explicit"), 0, NOW_MS, _event(ts=NOW_MS + 1001))

"""The guard's per-user value in the preferences table (agents.preferences.guard.UserGuard)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from agents.learning.spam import Guard, GuardConfig, GuardState
from agents.preferences.guard import FeedbackGuard, UserGuard, guard_key
from streams.boundary import Valid
from streams.relay_records import RelayedEvent, RelayedMessage


def observed(seed: int, n: int) -> UserGuard:
    rng = np.random.default_rng(seed)
    g = UserGuard(partition=3, watermark=[41, 977], flagged=[[0, 12], [1, 30]], last_s=1.7e9)
    ts = 1.7e9 + np.cumsum(rng.exponential(20.0, n))
    ratings = np.where(rng.random(n) < 0.5, np.nan, rng.integers(1, 6, n).astype(float))
    Guard().observe_one(g.state, ts, rng.integers(0, 50, n), ratings)
    return g


@pytest.mark.parametrize("n", [0, 1, 5, 80])
def test_binary_round_trip_keeps_every_field(n: int) -> None:
    g = observed(1, n)
    back = UserGuard.from_bytes(g.to_bytes())
    assert back.state.to_dict() == g.state.to_dict()
    assert (back.watermark, back.flagged, back.last_s, back.partition) == (
        [41, 977], [[0, 12], [1, 30]], 1.7e9, 3
    )  # fmt: skip
    assert back.to_bytes() == g.to_bytes()


def test_a_state_read_back_judges_exactly_like_the_one_kept_in_memory() -> None:
    kept = observed(2, 60)
    read = UserGuard.from_bytes(kept.to_bytes())  # arrays are read-only views of the bytes
    rng = np.random.default_rng(3)
    ts = kept.state.ts[-1] + np.cumsum(rng.exponential(0.3, 40))  # a burst follows
    items, ratings = rng.integers(0, 5, 40), np.full(40, 5.0)
    a = Guard().observe_one(kept.state, ts, items, ratings)
    b = Guard().observe_one(read.state, ts, items, ratings)
    assert np.array_equal(a.score, b.score) and a.flagged.any()
    assert read.state.to_dict() == kept.state.to_dict()


def test_the_json_form_written_before_is_still_read() -> None:
    g = observed(4, 30)
    legacy = orjson.dumps(
        {"s": g.state.to_dict(), "w": g.watermark, "f": g.flagged, "t": g.last_s,
         "p": g.partition}
    )  # fmt: skip
    back = UserGuard.from_bytes(legacy)
    assert back.to_bytes() == g.to_bytes()


def test_other_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a guard state"):
        UserGuard.from_bytes(b"XX" + bytes(60))
    assert GuardState().n_events == 0


def relayed(offset: int, event_ts_ms: int, arrived_s: float) -> Valid:
    message = RelayedMessage("feedback.implicit", 0, offset, arrived_s, b"u", b"{}")
    payload = {"user_id": "u", "ts": event_ts_ms, "item_id": "item-1", "kind": "view"}
    return Valid(payload, RelayedEvent(message))  # type: ignore[arg-type]


def test_judge_keeps_its_bookkeeping_by_offset_and_arrival() -> None:
    guard = FeedbackGuard(GuardConfig(), None, None)  # type: ignore[arg-type]
    store: dict[str, bytes] = {}
    slots = {"feedback.implicit": 1}
    # A backfill: events from 2023 arriving now. The scan drops states by arrival time, so
    # last_s must be the arrival (Kafka timestamp), not the event time.
    batch = [relayed(10 + i, 1_700_000_000_000 + 40_000 * i, 1.8e9 + i) for i in range(5)]
    flagged, states = guard.judge(batch, slots, store.get)
    assert flagged == {}
    g = states["u"]
    assert g.last_s == 1.8e9 + 4 and g.watermark == [-1, 14] and g.state.n_events == 5
    store[guard_key("u")] = g.to_bytes()
    # A replay of the same offsets is not judged (or counted) again.
    _, again = guard.judge(batch, slots, store.get)
    assert again["u"].state.n_events == 5


def feedback(topic: str, offset: int, user: str, event_ts_ms: int, kind: str) -> Valid:
    message = RelayedMessage(topic, 0, offset, 1.75e9 + offset, user.encode(), b"{}")
    payload = {"user_id": user, "ts": event_ts_ms, "item_id": f"item-{offset}", "kind": kind}
    if kind == "rating":
        payload["value"] = 4
    return Valid(payload, RelayedEvent(message))  # type: ignore[arg-type]


def test_judge_takes_any_valid_timestamps_across_batches_with_the_stored_state() -> None:
    # The report: a rating stamped 0 (the schemas' minimum), then a like at the current time;
    # the like raised, and so did every later event of the user (the state kept ts 0). Here
    # each batch jumps between 1970, now and 2100 (the schemas' maximum), on both topics, and
    # the state goes through the table's bytes between batches, as in the worker.
    guard = FeedbackGuard(GuardConfig(), None, None)  # type: ignore[arg-type]
    slots = {"feedback.explicit": 0, "feedback.implicit": 1}
    store: dict[str, bytes] = {}
    now_ms, max_ms = 1_750_000_000_000, 4_102_444_800_000
    offset = iter(range(10_000))
    batches = [
        [feedback("feedback.explicit", next(offset), "u", 0, "rating")],
        [feedback("feedback.implicit", next(offset), "u", now_ms, "like")],
        [feedback("feedback.implicit", next(offset), "u", now_ms + 5_000, "view"),
         feedback("feedback.explicit", next(offset), "u", max_ms, "rating"),
         feedback("feedback.implicit", next(offset), "v", now_ms, "view")],
        [feedback("feedback.explicit", next(offset), "u", 1, "rating"),
         feedback("feedback.implicit", next(offset), "u", now_ms + 10_000, "like")],
        [feedback("feedback.implicit", next(offset), "u", t, "view")
         for t in (max_ms, 0, now_ms + 20_000, max_ms - 1, 2, now_ms + 30_000)],
    ]  # fmt: skip
    for batch in batches:
        flagged, states = guard.judge(batch, slots, store.get)
        assert flagged == {}
        for user, g in states.items():
            store[guard_key(user)] = g.to_bytes()
    back = UserGuard.from_bytes(store[guard_key("u")])
    assert back.state.n_events == 12
    assert back.state.ts.tolist() == sorted(back.state.ts.tolist())
    assert back.state.ts[0] == 0.0 and back.state.ts[-1] == max_ms / 1000.0
    mine = [v for b in batches for v in b if v.payload["user_id"] == "u"]
    assert back.watermark == [max(v.offset for v in mine if slots[v.topic] == s) for s in (0, 1)]


@pytest.mark.parametrize("ts_ms", [0, 1_750_000_000_000, 4_102_444_800_000])
def test_extreme_times_survive_the_binary_state_exactly(ts_ms: int) -> None:
    # Times are stored as float seconds and minutes as int64: both hold the whole valid range
    # on the millisecond grid, so a state read back judges exactly like the one in memory.
    kept = UserGuard()
    Guard().observe_one(kept.state, np.array([ts_ms / 1000.0, 0.0, 4_102_444_800.0]),
                        np.array([1, 2, 3]))  # fmt: skip
    read = UserGuard.from_bytes(kept.to_bytes())
    assert read.state.to_dict() == kept.state.to_dict()
    assert np.rint(read.state.ts * 1000).astype(np.int64).tolist() == sorted(
        [ts_ms, 0, 4_102_444_800_000]
    )
    probe = np.array([ts_ms / 1000.0 + 1.0])
    a = Guard().observe_one(kept.state, probe, np.array([4]))
    b = Guard().observe_one(read.state, probe, np.array([4]))
    # The probe's minute holds it and the events at ts_ms (two at 0 and at 2100, one now).
    assert a.per_minute.tolist() == b.per_minute.tolist() == [2 if 0 < ts_ms < 4e12 else 3]
    assert a.per_hour.tolist() == b.per_hour.tolist()

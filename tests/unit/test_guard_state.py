"""The guard's per-user value in the preferences table (agents.guard.UserGuard)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from agents.guard import FeedbackGuard, UserGuard, guard_key
from agents.learning.spam import Guard, GuardConfig, GuardState
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

from __future__ import annotations

import numpy as np

from agents.preference_state import _HEADER, PreferenceState, event_id_hash


def test_pack_round_trip_is_compact() -> None:
    state = PreferenceState(
        np.arange(32, dtype=np.float32),
        7,
        12,
        1234,
        5678,
        [5, 9],
        [1, 2, 3],
        partition=3,
        segment="power",
        recent_seen=[10, 11, 12],
    )
    blob = state.pack()
    assert len(blob) == _HEADER.size + 3 * 12 + 32 * 4  # no window: no second vector
    back = PreferenceState.unpack(blob)
    np.testing.assert_array_equal(back.vector, state.vector)
    assert (back.version, back.interactions, back.last_ts, back.last_active) == (7, 12, 1234, 5678)
    assert back.offsets == [5, 9] and back.recent_ids == [1, 2, 3]
    assert (back.partition, back.segment, back.has_window) == (3, "power", False)


def test_window_round_trip_and_close() -> None:
    state = PreferenceState.empty(2)
    state.add_to_window(np.array([0.5, 0.0]), 0.5, now_ms=100)
    state.add_to_window(np.array([0.0, 0.25]), 0.25, now_ms=200)
    back = PreferenceState.unpack(state.pack())
    assert back.has_window and back.window_opened == 100 and back.segment is None
    closed = back.close_window()
    assert closed is not None
    np.testing.assert_allclose(closed[0], [0.5, 0.25])
    assert closed[1] == 0.75
    assert not back.has_window and back.close_window() is None
    assert len(back.pack()) == _HEADER.size + 2 * 4


def test_seen_by_offset_or_by_event_id() -> None:
    state = PreferenceState.empty(4)
    h = event_id_hash("e1")
    assert not state.seen(0, 10, h)
    state.remember(0, 10, h, arrived_s=100, min_ids=2, horizon_s=60)
    assert state.seen(0, 10, event_id_hash("other"))  # replayed offset
    assert state.seen(0, 11, h)  # same event id at a new offset
    assert not state.seen(1, 10, event_id_hash("other"))  # offsets are per topic
    assert not state.seen(0, 11, event_id_hash("e2"))


def test_ids_are_kept_for_the_horizon_and_at_least_the_last_few() -> None:
    state = PreferenceState.empty(2)
    for i in range(5):  # all within the horizon: all kept, more than min_ids
        state.remember(0, i, event_id_hash(f"e{i}"), arrived_s=1000 + i, min_ids=2, horizon_s=60)
    assert len(state.recent_ids) == 5
    state.remember(0, 5, event_id_hash("e5"), arrived_s=2000, min_ids=2, horizon_s=60)
    assert state.recent_ids == [event_id_hash("e4"), event_id_hash("e5")]  # old ones dropped
    back = PreferenceState.unpack(state.pack())
    assert back.recent_seen == [1004, 2000] and back.recent_ids == state.recent_ids


def test_event_version_grows_with_offsets_and_leaves_room_for_timers() -> None:
    state = PreferenceState.empty(2)
    assert state.event_version() == 0
    state.remember(0, 4, 1, arrived_s=0, min_ids=1, horizon_s=1)
    state.remember(1, 2, 2, arrived_s=0, min_ids=1, horizon_s=1)
    assert state.event_version() == (5 + 3) * 1024


def test_event_id_hash_is_stable_across_processes() -> None:
    assert event_id_hash("abc") == event_id_hash("abc")
    assert event_id_hash("abc") != event_id_hash("abd")
    assert 0 <= event_id_hash("abc") < 2**64

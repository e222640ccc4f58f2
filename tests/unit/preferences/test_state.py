from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest

from agents.preferences.state import (
    HEADER,
    PreferenceState,
    event_id_hash,
    ids_section_size,
    quantize,
    set_vector_dtype,
    vector_dtype,
)


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the worker configured for one vector dtype."""
    before = vector_dtype()
    set_vector_dtype(request.param)
    yield request.param
    set_vector_dtype(before)


def pack_v1(state: PreferenceState, segment_code: int = 0xFFFF) -> bytes:
    """Layout 1 as older workers wrote it (their changelogs must stay readable)."""
    vec = np.asarray(state.vector, dtype=np.float32)
    header = struct.pack(
        "<qqqqqqqdHHHHH", state.version, state.interactions, state.last_ts, state.last_active,
        state.offsets[0], state.offsets[1], state.window_opened, state.window_weight,
        state.partition, segment_code, vec.shape[0], len(state.recent_ids),
        int(state.has_window),
    )  # fmt: skip
    parts = [
        header,
        np.asarray(state.recent_ids, dtype=np.uint64).tobytes(),
        vec.tobytes(),
        np.asarray(state.recent_seen, dtype=np.uint32).tobytes(),
    ]
    if state.window_sum is not None:
        parts.append(np.asarray(state.window_sum, dtype=np.float32).tobytes())
    return b"".join(parts)


VECTOR_BYTES = {"int16": 1 + 2 * 32, "float16": 2 * 32, "float32": 4 * 32}


@pytest.mark.parametrize("dtype", ["int16", "float16", "float32"], indirect=True)
def test_pack_round_trip_is_compact(dtype: str) -> None:
    state = PreferenceState(
        np.linspace(-1, 1, 32, dtype=np.float32),
        7,
        12,
        1234,
        5_678_000,
        [5, 9],
        [1, 2, 3],
        partition=3,
        segment="power",
        recent_seen=[600, 630, 700],
    )
    blob = state.pack()
    assert len(blob) == HEADER.size + ids_section_size(3) + VECTOR_BYTES[dtype]
    back = PreferenceState.unpack(blob)
    np.testing.assert_array_equal(back.vector, state.vector)  # stored == held in memory
    assert (back.version, back.interactions, back.last_ts, back.last_active) == (
        7, 12, 1234, 5_678_000,
    )  # fmt: skip
    assert back.offsets == [5, 9] and back.recent_ids == [1, 2, 3]
    assert (back.partition, back.segment, back.has_window) == (3, "power", False)
    assert back.stored_dtype == dtype and back.pack() == blob


@pytest.mark.parametrize("dtype", ["int16"], indirect=True)
def test_a_quiet_user_is_small(dtype: str) -> None:
    state = PreferenceState.empty(32)
    state.remember(0, 10, event_id_hash("e"), arrived_s=1000, min_ids=0, horizon_s=3600)
    state.vector = np.ones(32)
    assert state.prune(now_s=5000, horizon_s=3600)
    assert len(state.pack()) == 46 + 65  # header + exponent + 32 int16


def test_vector_is_quantized_on_assignment_and_read_only() -> None:
    state = PreferenceState.empty(4)
    state.vector = np.array([0.1, -0.2, 0.3, 1 / 3])
    assert state.stored_dtype == "int16" and state.vector.dtype == np.float32
    with pytest.raises(ValueError):
        state.vector[0] = 1.0  # an in-place edit would bypass the quantization
    np.testing.assert_allclose(state.vector, [0.1, -0.2, 0.3, 1 / 3], rtol=0, atol=2**-15)
    np.testing.assert_array_equal(PreferenceState.unpack(state.pack()).vector, state.vector)


def test_int16_quantization_is_idempotent_and_keeps_the_range() -> None:
    rng = np.random.default_rng(3)
    for scale in (1e-30, 1e-3, 1.0, 1e6, 1e30):
        v = (rng.normal(size=32) * scale).astype(np.float32)
        q = quantize(v, "int16", salt=5)
        assert np.array_equal(quantize(q, "int16", salt=99), q)
        step = 2.0 ** (np.frexp(np.abs(v).max())[1] - 15)
        assert np.abs(q.astype(np.float64) - v).max() < step
    assert not quantize(np.zeros(3), "int16").any()
    with pytest.raises(ValueError):
        quantize(np.array([np.nan, 1.0]), "int16")


def test_int16_rounding_is_unbiased_so_small_ema_steps_are_not_lost() -> None:
    """alpha = 0.002: every step is below half a grid step late in the run; with
    round-to-nearest the vector would stop a few % short of its target."""
    x = np.random.default_rng(1).normal(size=32)
    state = PreferenceState.empty(32)
    for i in range(8000):
        state.offsets[0] = i  # each update of a real state follows new offsets
        state.vector = 0.998 * state.vector + 0.002 * x
    target = x * (1 - 0.998**8000)
    assert np.linalg.norm(state.vector - target) / np.linalg.norm(target) < 1e-3


def test_rounding_is_reproducible_for_a_replay() -> None:
    def run() -> np.ndarray:
        state = PreferenceState.empty(8)
        for i in range(50):
            state.remember(0, i, i, arrived_s=i, min_ids=0, horizon_s=60)
            state.vector = 0.9 * state.vector + 0.1 * np.sin(np.arange(8) + i)
        return state.pack()

    assert run() == run()


@pytest.mark.parametrize("window", [False, True])
def test_layout_1_is_still_read_and_keeps_its_float32_vector(window: bool) -> None:
    old = PreferenceState(
        np.zeros(0, np.float32), 7 << 10, 12, 1234, 5_678_123, [5, 9], [11, 22],
        partition=2, recent_seen=[100, 160],
    )  # fmt: skip
    object.__setattr__(old, "vector", np.array([0.1, 1 / 3, -2.5], dtype=np.float32))
    if window:
        old.window_sum = np.array([0.5, 0.25, 0.0], dtype=np.float32)
        old.window_weight, old.window_opened = 0.75, 1_700_000_000_000
    back = PreferenceState.unpack(pack_v1(old, segment_code=2))
    np.testing.assert_array_equal(back.vector, old.vector)
    assert back.stored_dtype == "float32"
    assert (back.version, back.interactions, back.last_ts, back.last_active) == (
        7 << 10, 12, 1234, 5_678_123,
    )  # fmt: skip
    assert back.offsets == [5, 9] and back.recent_ids == [11, 22] and back.recent_seen == [100, 160]
    assert (back.partition, back.segment, back.has_window) == (2, "regular", window)
    if window:
        assert back.window_opened == 1_700_000_000_000 and back.window_weight == 0.75
        np.testing.assert_array_equal(back.window_sum, old.window_sum)
    # Re-packed (e.g. after a prune) it keeps the exact float32 vector it was published with;
    # a new vector is stored in the configured dtype.
    again = PreferenceState.unpack(back.pack())
    np.testing.assert_array_equal(again.vector, old.vector)
    again.vector = again.vector * 2
    assert again.stored_dtype == vector_dtype()


def test_old_and_new_layouts_are_told_apart_by_byte_7() -> None:
    for version in (0, 255, (1 << 40) - 1, (1 << 62) + 12345):
        old = PreferenceState(np.zeros(2, np.float32), version)
        assert pack_v1(old)[7] & 0x80 == 0
        assert PreferenceState.unpack(pack_v1(old)).version == version
        assert PreferenceState.unpack(old.pack()).version == version


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
    assert len(back.pack()) == HEADER.size + 1 + 2 * 2


def test_seen_by_offset_or_by_event_id() -> None:
    state = PreferenceState.empty(4)
    h = event_id_hash("e1")
    assert not state.seen(0, 10, h)
    state.remember(0, 10, h, arrived_s=100, min_ids=2, horizon_s=60)
    assert state.seen(0, 10, event_id_hash("other"))  # replayed offset
    assert state.seen(0, 11, h)  # same event id at a new offset
    assert not state.seen(1, 10, event_id_hash("other"))  # offsets are per topic
    assert not state.seen(0, 11, event_id_hash("e2"))
    back = PreferenceState.unpack(state.pack())
    assert back.seen(0, 10, 0) and back.seen(0, 11, h) and not back.seen(1, 10, 0)


def test_ids_are_kept_for_the_horizon_and_at_least_the_last_few() -> None:
    state = PreferenceState.empty(2)
    for i in range(5):  # all within the horizon: all kept, more than min_ids
        state.remember(0, i, event_id_hash(f"e{i}"), arrived_s=1000 + i, min_ids=2, horizon_s=60)
    assert len(state.recent_ids) == 5
    state.remember(0, 5, event_id_hash("e5"), arrived_s=2000, min_ids=2, horizon_s=60)
    assert state.recent_ids == [event_id_hash("e4"), event_id_hash("e5")]  # old ones dropped
    back = PreferenceState.unpack(state.pack())
    assert back.recent_ids == state.recent_ids
    # arrival times are stored in whole minutes before the newest, rounded towards newer
    assert back.recent_seen == [2000 - 960, 2000]


def test_prune_drops_expired_ids_of_quiet_users_only() -> None:
    state = PreferenceState.empty(2)
    state.remember(0, 1, 11, arrived_s=1000, min_ids=0, horizon_s=3600)
    state.remember(0, 2, 22, arrived_s=2000, min_ids=0, horizon_s=3600)
    version, offsets = state.version, list(state.offsets)
    assert not state.prune(now_s=4000, horizon_s=3600)  # both within the horizon
    assert state.prune(now_s=5000, horizon_s=3600) and state.recent_ids == [22]
    assert not state.prune(now_s=5000, horizon_s=3600)
    assert not state.prune(now_s=9000, horizon_s=3600, min_ids=1)  # the floor keeps one
    assert state.prune(now_s=9000, horizon_s=3600) and state.recent_ids == []
    assert state.recent_seen == [] and state.version == version and state.offsets == offsets
    # the offset watermark still recognises replays once the ids are gone
    assert state.seen(0, 2, 33) and not state.seen(0, 3, 33)
    back = PreferenceState.unpack(state.pack())
    assert back.recent_ids == [] and back.offsets == offsets


def test_minute_rounding_never_shortens_the_horizon() -> None:
    state = PreferenceState.empty(2)
    state.remember(0, 1, 11, arrived_s=1000, min_ids=0, horizon_s=3600)
    state.remember(0, 2, 22, arrived_s=1059, min_ids=0, horizon_s=3600)
    back = PreferenceState.unpack(state.pack())
    assert back.recent_seen[0] >= 1000
    assert not back.prune(now_s=4600, horizon_s=3600)


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


@pytest.mark.parametrize("dtype", ["int16", "float16", "float32"], indirect=True)
def test_batch_assignment_equals_one_by_one(dtype: str) -> None:
    rng = np.random.default_rng(8)
    vectors = rng.normal(0, 0.4, size=(50, 32)).astype(np.float32)
    vectors[3] = 0.0  # an all-zero row keeps its own exponent

    def fresh(i: int) -> PreferenceState:
        state = PreferenceState.empty(32)
        state.version, state.offsets, state.interactions = 1024 * i, [i, 2 * i], i
        return state

    one_by_one = [fresh(i) for i in range(50)]
    for state, row in zip(one_by_one, vectors, strict=True):
        state.vector = row
    batched = [fresh(i) for i in range(50)]
    PreferenceState.assign_vectors(batched, vectors)
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_array_equal(a.vector, b.vector)
        assert a.pack() == b.pack()
        assert not b.vector.flags.writeable


@pytest.mark.parametrize("dtype", ["int16", "float32"], indirect=True)
def test_empty_states_share_one_encoded_zero_vector(dtype: str) -> None:
    a, b = PreferenceState.empty(8), PreferenceState.empty(8)
    assert not a.vector.any() and a.pack() == b.pack()
    assert a.stored_dtype == dtype

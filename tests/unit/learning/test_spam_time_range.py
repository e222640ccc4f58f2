"""The guard over the whole range of valid timestamps (0 … 4102444800000 ms, 1970 to 2100).

A user's events may lie anywhere in that range, in any order and batching: a rating stamped 0
(the schemas' minimum) followed by a like at the current time once made the guard raise, and
the old time, kept in the user's state, made every later event of the user fail too. States
are stored and read back between batches through the worker's binary form
(:class:`agents.preferences.guard.UserGuard`), as in production.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.learning import spam
from agents.learning.spam import Guard, GuardConfig, GuardResult, GuardState
from agents.preferences.guard import UserGuard

MAX_VALID_MS = 4_102_444_800_000  # the schemas' maximum ts: 2100-01-01
MAX_VALID_S = MAX_VALID_MS / 1000.0
NOW_S = 1_750_000_000.0
DAY_MS = 86_400_000
FIELDS = ("score", "flagged", "rate_limited", "per_minute", "per_hour", "severities")


def reloaded(states: list[GuardState]) -> list[GuardState]:
    """The states as the next batch of the worker reads them from the table."""
    return [UserGuard.from_bytes(UserGuard(state=s).to_bytes()).state for s in states]


def run(
    users: np.ndarray,
    ts_s: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    cuts: list[int],
    n_users: int,
    guard: Guard | None = None,
) -> tuple[dict[str, np.ndarray], list[GuardState]]:
    """Observe in batches split at ``cuts``, storing and reloading the states between them."""
    guard = guard or Guard()
    states = [GuardState() for _ in range(n_users)]
    parts: list[GuardResult] = []
    for lo, hi in zip([0, *cuts], [*cuts, ts_s.size], strict=True):
        states = reloaded(states)
        parts.append(guard.observe(states, users[lo:hi], ts_s[lo:hi], items[lo:hi], ratings[lo:hi]))
    out = {name: np.concatenate([getattr(p, name) for p in parts]) for name in FIELDS}
    return out, states


def assert_state_is_sane(state: GuardState, cfg: GuardConfig) -> None:
    assert state.ts.size <= cfg.history
    assert np.all(np.diff(state.ts) >= 0)
    assert np.all((state.ts >= 0) & (state.ts <= MAX_VALID_S))
    assert np.all(np.diff(state.minutes) > 0)
    assert state.minutes.size == 0 or state.minutes[-1] - state.minutes[0] < 60
    assert np.all(state.minute_counts >= 1)


def assert_results_are_sane(res: dict[str, np.ndarray], cfg: GuardConfig) -> None:
    assert np.all((res["per_minute"] >= 1) & (res["per_minute"] <= cfg.history))
    assert np.all(res["per_hour"] >= 1)
    assert np.all((res["score"] >= 0) & (res["score"] <= 100))
    assert np.all((res["severities"] >= 0) & (res["severities"] <= 1))


# ------------------------------------------------------------------------------------------
# The reported cases
# ------------------------------------------------------------------------------------------


def test_a_like_now_after_a_rating_stamped_0() -> None:
    state = GuardState()
    guard = Guard()
    guard.observe_one(state, np.array([0.0]), np.array([1]), np.array([4.0]))
    like = guard.observe_one(reloaded([state])[0], np.array([NOW_S]), np.array([2]))
    assert like.per_minute.tolist() == [1] and like.per_hour.tolist() == [1]
    assert like.score.tolist() == [100.0] and not like.flagged.any()
    # The user is not stuck: the next events are judged against the like, not failed.
    state = GuardState()
    guard.observe_one(state, np.array([0.0]), np.array([1]), np.array([4.0]))
    guard.observe_one(state, np.array([NOW_S]), np.array([2]))
    later = guard.observe_one(state, NOW_S + np.array([5.0, 20.0]), np.array([3, 4]))
    assert later.per_minute.tolist() == [2, 3] and not later.flagged.any()
    assert state.ts.tolist() == [0.0, NOW_S, NOW_S + 5, NOW_S + 20]


def test_an_event_stamped_0_arriving_after_one_stamped_now() -> None:
    state = GuardState()
    guard = Guard()
    guard.observe_one(state, np.array([NOW_S]), np.array([1]))
    late = guard.observe_one(state, np.array([0.0]), np.array([2]), np.array([5.0]))
    assert late.per_minute.tolist() == [1] and late.per_hour.tolist() == [1]
    assert not late.flagged.any()
    assert state.ts.tolist() == [0.0, NOW_S]  # in time order
    nxt = guard.observe_one(state, np.array([NOW_S + 1.0]), np.array([3]))
    assert nxt.per_minute.tolist() == [2] and nxt.per_hour.tolist() == [2]


def test_an_event_stamped_2100_then_one_now() -> None:
    state = GuardState()
    guard = Guard()
    guard.observe_one(state, np.array([MAX_VALID_S]), np.array([1]))
    now = guard.observe_one(reloaded([state])[0], np.array([NOW_S, NOW_S + 30]), np.array([2, 3]))
    assert now.per_minute.tolist() == [1, 2] and now.per_hour.tolist() == [1, 2]
    assert not now.flagged.any()


def test_all_three_extremes_in_one_batch_of_one_user_and_beside_other_users() -> None:
    guard = Guard()
    states = [GuardState(), GuardState()]
    # User 0 jumps between 2100, 1970 and now; user 1 is an ordinary user in the same batch.
    res = guard.observe(
        states,
        np.array([0, 1, 0, 1, 0, 0]),
        np.array([MAX_VALID_S, NOW_S, 0.0, NOW_S + 10, NOW_S, 0.0]),
        np.array([1, 2, 3, 4, 5, 6]),
    )
    assert res.per_minute.tolist() == [1, 1, 1, 2, 1, 2]
    # Minute counters are kept for the user's newest hour only (2100 here), so the second
    # event at 0 finds the first in the kept timestamps (per minute) but not in the counters.
    assert res.per_hour.tolist() == [1, 1, 1, 2, 1, 1]
    assert states[0].ts.tolist() == [0.0, 0.0, NOW_S, MAX_VALID_S]
    alone = guard.observe_one(GuardState(), np.array([NOW_S, NOW_S + 10]), np.array([2, 4]))
    for name in FIELDS:
        assert np.array_equal(getattr(res, name)[[1, 3]], getattr(alone, name)), name


def test_alternating_extremes_over_batches_with_stored_states() -> None:
    rng = np.random.default_rng(31)
    guard = Guard()
    cfg = guard.config
    states = [GuardState() for _ in range(3)]
    anchors = np.array([0.0, NOW_S, MAX_VALID_S])
    for batch in range(12):
        states = reloaded(states)
        n = 20
        users = rng.integers(0, 3, n)
        # Each batch jumps to another extreme, with a few seconds of activity around it.
        ts = np.clip(anchors[(batch + users) % 3] + rng.uniform(0, 30, n), 0, MAX_VALID_S)
        res = guard.observe(states, users, ts, rng.integers(0, 5, n), np.full(n, np.nan))
        assert_results_are_sane({name: getattr(res, name) for name in FIELDS}, cfg)
        assert not res.rate_limited.any()  # at most 20 events a minute, whatever the jumps
    for state in states:
        assert_state_is_sane(state, cfg)
    assert sum(s.n_events for s in states) == 12 * 20


def test_times_outside_the_schema_range_are_clamped_not_fatal() -> None:
    guard = Guard()
    state = GuardState()
    ts = np.array([-1e12, 1e300, 0.0, 5e9, NOW_S])
    res = guard.observe_one(state, ts, np.arange(5))
    assert res.score.size == 5 and np.all(res.per_minute >= 1)
    top = (2**42 - 1) / 1000.0
    assert state.ts.tolist() == [0.0, 0.0, NOW_S, top, top]
    # A state written from such times (by a caller ignoring the schema) is clamped as well.
    old = GuardState()
    old.ts, old.items, old.ratings = np.array([-5e9, 9e15]), np.array([1, 2]), np.full(2, np.nan)
    old.minutes, old.minute_counts = np.array([-83_333_334, 150_000_000_000]), np.array([1, 1])
    again = guard.observe_one(old, np.array([NOW_S]), np.array([3]))
    assert again.per_minute.tolist() == [1] and again.per_hour.tolist() == [1]


def test_a_user_spanning_nearly_2_42_ms_does_not_leak_into_the_next_users_minute() -> None:
    # Only clamped times can span that far; the per-minute search stays in the user's segment.
    states = [GuardState(), GuardState()]
    res = Guard().observe(
        states, np.array([0, 0, 1]), np.array([0.0, 1e12, 100.0]), np.array([1, 2, 3])
    )
    assert res.per_minute.tolist() == [1, 1, 1]


def test_more_users_than_the_segment_keys_hold_are_judged_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(32)
    n_users, n = 11, 300
    users = rng.integers(0, n_users, n)
    ts = np.where(rng.random(n) < 0.1, 0.0, NOW_S + np.sort(rng.uniform(0, 120, n)))
    items, ratings = rng.integers(0, 4, n), rng.choice([np.nan, 5.0], n)
    whole, whole_states = run(users, ts, items, ratings, [150], n_users)
    monkeypatch.setattr(spam, "_MAX_SEGMENTS", 3)
    chunked, chunked_states = run(users, ts, items, ratings, [150], n_users)
    for name in FIELDS:
        assert np.array_equal(whole[name], chunked[name]), name
    for a, b in zip(whole_states, chunked_states, strict=True):
        assert a.to_dict() == b.to_dict()


# ------------------------------------------------------------------------------------------
# Properties over the whole range
# ------------------------------------------------------------------------------------------


def _ramp(x: float, zero_at: float, one_at: float) -> float:
    return float(np.clip((x - zero_at) / (one_at - zero_at), 0.0, 1.0))


def reference(ms: list[int], items: list[int], ratings: list[float], cfg: GuardConfig) -> dict:
    """The guard's definitions, event by event with Python integers, for one user whose events
    arrive in time order (then the kept history never loses an event a check needs)."""
    out: dict[str, list] = {"per_minute": [], "per_hour": [], "rate_limited": [], "sev": []}
    run_rating, run_length = float("nan"), 0
    for i in range(len(ms)):
        in_minute = sum(1 for j in range(i + 1) if ms[j] > ms[i] - 60_000)
        per_minute = min(in_minute, cfg.history)
        per_hour = sum(1 for j in range(i + 1) if ms[j] // 60_000 >= ms[i] // 60_000 - 59)
        ratio = max(per_minute / cfg.max_per_minute, per_hour / cfg.max_per_hour)
        sev = [0.0, 0.0, _ramp(ratio, 0.5, 1.0), 0.0, 0.0]
        window = range(max(0, i - cfg.history + 1), i + 1)
        if len(window) >= cfg.min_timing_events:
            gaps = np.diff([ms[j] for j in window]) / 1000.0
            mean = gaps.mean()
            cv = gaps.std() / mean if mean > 0 else 0.0
            sev[0] = _ramp(cv, 2 * cfg.regular_cv, cfg.regular_cv)
            sev[1] = _ramp(float(np.median(gaps)), 2 * cfg.min_median_gap_s, cfg.min_median_gap_s)
        if not np.isnan(ratings[i]):
            same = sum(1 for j in window if not np.isnan(ratings[j]) and items[j] == items[i])
            sev[3] = _ramp(same, cfg.repeat_allowed, 2 * cfg.repeat_allowed)
            run_length = run_length + 1 if ratings[i] == run_rating else 1
            run_rating = ratings[i]
            sev[4] = _ramp(run_length, cfg.identical_run / 2, cfg.identical_run)
        out["per_minute"].append(per_minute)
        out["per_hour"].append(per_hour)
        out["rate_limited"].append(per_minute > cfg.max_per_minute or per_hour > cfg.max_per_hour)
        out["sev"].append(sev)
    return out


# The default limits, and small ones that a few dozen events reach (both rate limits, the
# saturation of the per-minute count at `history`, identical runs).
configs = st.sampled_from(
    [
        GuardConfig(),
        GuardConfig(max_per_minute=5, max_per_hour=12, history=10, min_timing_events=4,
                    identical_run=4),
    ]
)  # fmt: skip
rating = st.sampled_from([float("nan"), 4.0, 5.0])
far_gap = st.one_of(st.integers(0, MAX_VALID_MS), st.integers(2**40 - DAY_MS, 2**40 + DAY_MS))


@st.composite
def user_times(draw: st.DrawFn) -> np.ndarray:
    """One user's times in order: a burst, a machine-regular or a mixed stream, with up to
    three jumps of up to the whole range (decades apart in one history), from 0 or 2100 or
    anywhere, clipped to the valid range."""
    n = draw(st.integers(1, 45))
    mode = draw(st.sampled_from(["burst", "regular", "mixed"]))
    if mode == "regular":
        gaps = [draw(st.sampled_from([200, 1_000, 30_000]))] * n
    else:
        small = st.integers(0, 1_500) if mode == "burst" else st.integers(0, 120_000)
        gaps = draw(st.lists(small, min_size=n, max_size=n))
    for pos, gap in draw(st.lists(st.tuples(st.integers(0, n - 1), far_gap), max_size=3)):
        gaps[pos] = gap
    gaps[0] = 0
    start = draw(st.one_of(st.sampled_from([0, MAX_VALID_MS]), st.integers(0, MAX_VALID_MS)))
    return np.minimum(start + np.cumsum(gaps), MAX_VALID_MS)


@st.composite
def in_order_streams(draw: st.DrawFn) -> tuple:
    """Up to 3 users, each in time order over the whole range, interleaved in any way."""
    n_users = draw(st.integers(1, 3))
    times = [draw(user_times()) for _ in range(n_users)]
    users = np.concatenate([np.full(t.size, user) for user, t in enumerate(times)])
    # Interleave the users in a random arrival order; each user's events in time order.
    keys = draw(st.lists(st.integers(0, 5), min_size=users.size, max_size=users.size))
    u = users[np.argsort(keys, kind="stable")]
    t = np.empty(u.size, dtype=np.int64)
    for user, mine in enumerate(times):
        t[u == user] = mine
    n = u.size
    items = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    if draw(st.booleans()):
        ratings = np.array(draw(st.lists(rating, min_size=n, max_size=n)))
    else:  # everything rated five stars: identical runs
        ratings = np.full(n, 5.0)
    cuts = sorted({c for c in draw(st.lists(st.integers(1, 134), max_size=4)) if c < n})
    return n_users, u, t, items, ratings, cuts


@settings(max_examples=200, deadline=None)
@given(stream=in_order_streams(), cfg=configs)
def test_in_order_streams_over_the_whole_range_get_the_exact_verdicts(
    stream: tuple, cfg: GuardConfig
) -> None:
    """Exactness: for users whose events arrive in time order, every verdict equals the
    guard's definitions computed with unbounded integers, however far apart the events are
    (0 to 2100 in one history), in any batching with the state stored between batches."""
    n_users, users, ms, items, ratings, cuts = stream
    res, states = run(users, ms / 1000.0, items, ratings, cuts, n_users, Guard(cfg))
    assert_results_are_sane(res, cfg)
    for user in range(n_users):
        mine = np.flatnonzero(users == user)
        ref = reference(ms[mine].tolist(), items[mine].tolist(), ratings[mine].tolist(), cfg)
        assert res["per_minute"][mine].tolist() == ref["per_minute"]
        assert res["per_hour"][mine].tolist() == ref["per_hour"]
        assert res["rate_limited"][mine].tolist() == ref["rate_limited"]
        np.testing.assert_allclose(res["severities"][mine], ref["sev"], rtol=0, atol=1e-9)
        assert_state_is_sane(states[user], cfg)
        assert states[user].n_events == mine.size


event_ms = st.one_of(
    st.sampled_from([0, 1, MAX_VALID_MS - 1, MAX_VALID_MS]),
    st.integers(0, MAX_VALID_MS),
    st.integers(0, 600_000).map(lambda d: int(NOW_S * 1000) + d),  # bursts around now
    st.integers(0, 600_000),  # and around 1970
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 2), event_ms, st.integers(0, 3), rating), min_size=1, max_size=60
    ),
    cut_points=st.lists(st.integers(1, 59), max_size=5),
    cfg=configs,
)
def test_any_valid_times_in_any_order_and_batching_never_fail_and_never_stick(
    events: list[tuple[int, int, int, float]], cut_points: list[int], cfg: GuardConfig
) -> None:
    """Never raises; the counts and states stay within their bounds; and afterwards an event of
    each user more than a day from all its others is judged as a first event would be: not
    rate limited and not flagged (a stored extreme time cannot make later events fail)."""
    users = np.array([e[0] for e in events])
    ms = np.array([e[1] for e in events])
    items = np.array([e[2] for e in events])
    ratings = np.array([e[3] for e in events])
    cuts = sorted({c for c in cut_points if c < len(events)})
    res, states = run(users, ms / 1000.0, items, ratings, cuts, 3, Guard(cfg))
    assert_results_are_sane(res, cfg)
    probes = []
    for user in range(3):
        assert_state_is_sane(states[user], cfg)
        # The middle of the widest free stretch of the range (≥ a year from any of the ≤ 60).
        points = np.sort(np.concatenate([[-DAY_MS, MAX_VALID_MS + DAY_MS], ms[users == user]]))
        widest = int(np.argmax(np.diff(points)))
        probes.append((points[widest] + points[widest + 1]) // 2)
    assert all(0 <= p <= MAX_VALID_MS for p in probes)
    probe = Guard(cfg).observe(
        reloaded(states), np.arange(3), np.array(probes) / 1000.0, np.zeros(3, np.int64)
    )
    assert probe.per_minute.tolist() == [1, 1, 1] and probe.per_hour.tolist() == [1, 1, 1]
    assert not probe.rate_limited.any() and not probe.flagged.any()


@settings(max_examples=200, deadline=None)
@given(
    recent=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 2), rating), min_size=1,
                    max_size=40),
    width_ms=st.sampled_from([40_000, 600_000, 3_600_000]),
    far=st.lists(st.integers(0, int(NOW_S * 1000) - DAY_MS), max_size=20),
    slots=st.lists(st.integers(0, 40), max_size=20),
    cut_points=st.lists(st.integers(1, 59), max_size=4),
    cfg=configs,
)  # fmt: skip
def test_events_far_in_the_past_do_not_change_the_rate_verdicts_of_recent_ones(
    recent: list[tuple[float, int, float]],
    width_ms: int,
    far: list[int],
    slots: list[int],
    cut_points: list[int],
    cfg: GuardConfig,
) -> None:
    """A user's events of the last hour, arriving in time order, get the same per-minute and
    per-hour counts and rate limits whether or not events more than a day older (down to ts 0,
    in any order) arrive before, between and after them, in any batching. (Those older events
    still count in the timing and pattern checks, which look at the last ``history`` events
    whatever their age, as before.)"""
    recent = sorted(recent, key=lambda e: e[0])
    base = int(NOW_S * 1000)
    r_ms = np.array([base + round(e[0] * width_ms) for e in recent])
    r_items = np.array([e[1] for e in recent])
    r_ratings = np.array([e[2] for e in recent])
    # Where each far event arrives among the recent ones.
    at = np.array([slots[i] if i < len(slots) else 0 for i in range(len(far))], dtype=int)
    at = np.minimum(at, len(recent))
    arrival = np.concatenate([np.arange(len(recent)), at - 0.5])
    order = np.argsort(arrival, kind="stable")
    is_recent = np.concatenate([np.ones(len(recent), bool), np.zeros(len(far), bool)])[order]
    ms = np.concatenate([r_ms, np.array(far, dtype=np.int64)])[order]
    items = np.concatenate([r_items, np.zeros(len(far), np.int64)])[order]
    ratings = np.concatenate([r_ratings, np.full(len(far), np.nan)])[order]

    def batches(n: int) -> list[int]:
        return sorted({c for c in cut_points if c < n})

    users = np.zeros(ms.size, np.int64)
    guard = Guard(cfg)
    mixed, _ = run(users, ms / 1000.0, items, ratings, batches(ms.size), 1, guard)
    alone, _ = run(np.zeros(r_ms.size, np.int64), r_ms / 1000.0, r_items, r_ratings,
                   batches(r_ms.size), 1, guard)  # fmt: skip
    for name in ("per_minute", "per_hour", "rate_limited"):
        assert mixed[name][is_recent].tolist() == alone[name].tolist(), name

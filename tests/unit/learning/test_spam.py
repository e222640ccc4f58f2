"""Tests of agents.learning.spam: brute-force reference counts, simulated humans and bots."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.learning.spam import (
    MAX_ROUNDS,
    SEVERITY_NAMES,
    Guard,
    GuardConfig,
    GuardState,
    ScoreWeights,
    arrival_rounds,
    item_key,
    reliability_score,
)

# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def human_streams(
    rng: np.random.Generator, n_users: int, n_events: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Poisson streams of n_users humans (0.5–8 events/min), merged in time order.

    Half of the events carry a rating; a fifth of the users give every item five stars.
    """
    users, ts, items, ratings = [], [], [], []
    for user in range(n_users):
        rate_per_s = rng.uniform(0.5, 8.0) / 60
        t = rng.uniform(0, 3600) + np.cumsum(rng.exponential(1 / rate_per_s, n_events))
        stars = np.full(n_events, 5.0) if rng.random() < 0.2 else rng.integers(1, 6, n_events)
        users.append(np.full(n_events, user))
        ts.append(t)
        items.append(rng.integers(0, 50_000, n_events))
        ratings.append(np.where(rng.random(n_events) < 0.5, np.nan, stars))
    order = np.argsort(np.concatenate(ts), kind="stable")
    return tuple(np.concatenate(a)[order] for a in (users, ts, items, ratings))


def observe_in_batches(
    guard: Guard,
    states: list[GuardState],
    users: np.ndarray,
    ts: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    bounds: list[int],
) -> dict[str, np.ndarray]:
    parts = []
    for lo, hi in zip([0, *bounds], [*bounds, ts.size], strict=True):
        parts.append(guard.observe(states, users[lo:hi], ts[lo:hi], items[lo:hi], ratings[lo:hi]))
    return {
        name: np.concatenate([getattr(p, name) for p in parts])
        for name in ("score", "flagged", "rate_limited", "per_minute", "per_hour", "severities")
    }


# ------------------------------------------------------------------------------------------
# Score
# ------------------------------------------------------------------------------------------


def test_reliability_score_reference_values() -> None:
    sev = np.array(
        [
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1],
            [1, 1, 1, 1, 1],
            [0.5, 0.5, 0.5, 0.5, 0.5],
        ]
    )
    assert reliability_score(sev).tolist() == [100.0, 65.0, 35.0, 80.0, 0.0, 50.0]
    custom = ScoreWeights(regular=20, fast=20, rate=20, repeat=20, identical=20)
    assert reliability_score(sev, custom).tolist() == [100.0, 80.0, 60.0, 60.0, 0.0, 50.0]
    assert SEVERITY_NAMES == ("regular", "fast", "rate", "repeat", "identical")
    with pytest.raises(ValueError, match="sum to 100"):
        ScoreWeights(regular=50)
    with pytest.raises(ValueError, match="shape"):
        reliability_score(np.zeros((2, 4)))


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    bump=st.lists(st.floats(0, 1), min_size=5, max_size=5),
)
def test_score_is_monotone_in_every_violation(base: list[float], bump: list[float]) -> None:
    low = np.array([base])
    high = np.minimum(low + np.array([bump]), 1.0)
    s_low, s_high = reliability_score(low)[0], reliability_score(high)[0]
    assert 0.0 <= s_high <= s_low <= 100.0


# ------------------------------------------------------------------------------------------
# Simulated humans and bots
# ------------------------------------------------------------------------------------------


def test_human_poisson_streams_are_rarely_flagged() -> None:
    rng = np.random.default_rng(2024)
    n_users = 500
    users, ts, items, ratings = human_streams(rng, n_users, 200)
    guard = Guard()
    states = [GuardState() for _ in range(n_users)]
    # Batches of ten minutes of traffic, as the guard agent would take them.
    bounds = np.searchsorted(ts, np.arange(600, ts.max(), 600)).tolist()
    res = observe_in_batches(guard, states, users, ts, items, ratings, bounds)
    flagged_users = np.unique(users[res["flagged"]])
    assert flagged_users.size / n_users <= 0.01
    assert sum(s.n_events for s in states) == ts.size


def test_bot_at_fixed_200_ms_intervals_is_flagged() -> None:
    guard = Guard()
    n = 200
    ts = 1_700_000_000.0 + 0.2 * np.arange(n)
    items = np.arange(n) % 7  # cycles through a few items
    res = guard.observe_one(GuardState(), ts, items, np.full(n, 5.0))
    cfg = guard.config
    # Timing alone (machine-regular and fast) pushes the score below 40 as soon as there are
    # enough events to judge, before any rate limit is reached ...
    judged = slice(cfg.min_timing_events - 1, cfg.max_per_minute)
    assert np.all(res.score[judged] < cfg.flag_below)
    assert not np.any(res.rate_limited[judged])
    assert np.all(res.flagged[cfg.min_timing_events - 1 :])
    # ... and the hard per-minute limit adds to it from the 31st event on.
    assert np.all(res.rate_limited[cfg.max_per_minute :])
    assert np.all(res.severities[judged, :2] == 1.0)


def test_burst_above_the_hard_rate_limit_is_flagged_exactly_where_the_count_exceeds_it() -> None:
    rng = np.random.default_rng(7)
    calm = np.cumsum(rng.exponential(20.0, 30))
    burst = calm[-1] + 60 + np.cumsum(rng.exponential(0.6, 45))  # ~45 events in ~27 s
    ts = np.concatenate([calm, burst])
    items = rng.integers(0, 10_000, ts.size)
    guard = Guard()
    state = GuardState()
    res = observe_in_batches(
        guard,
        [state],
        np.zeros(ts.size, np.int64),
        ts,
        items,
        np.full(ts.size, np.nan),
        [10, 40, 41, 60],
    )
    # Brute-force reference on the millisecond grid: events j <= i with t_j > t_i − 60 s.
    ms = np.rint(ts * 1000).astype(np.int64)
    reference = np.array([np.sum(ms[: i + 1] > ms[i] - 60_000) for i in range(ts.size)])
    assert res["per_minute"].tolist() == np.minimum(reference, guard.config.history).tolist()
    assert res["rate_limited"].tolist() == (reference > 30).tolist()
    assert res["flagged"][reference > 30].all()
    assert not res["flagged"][:30].any()


def test_hourly_limit_counts_minute_buckets() -> None:
    rng = np.random.default_rng(8)
    # ~7 events a minute for an hour: below the per-minute limit, above 300 an hour.
    ts = np.cumsum(rng.exponential(60 / 7, 420))
    guard = Guard()
    res = observe_in_batches(
        guard,
        [GuardState()],
        np.zeros(ts.size, np.int64),
        ts,
        rng.integers(0, 10_000, ts.size),
        np.full(ts.size, np.nan),
        [50, 51, 200, 333],
    )
    minute = np.rint(ts * 1000).astype(np.int64) // 60_000
    reference = np.array([np.sum(minute[: i + 1] >= minute[i] - 59) for i in range(ts.size)])
    assert res["per_hour"].tolist() == reference.tolist()
    assert res["rate_limited"].tolist() == ((reference > 300) | (res["per_minute"] > 30)).tolist()
    assert res["rate_limited"].any()


def test_score_falls_as_timing_becomes_more_regular() -> None:
    rng = np.random.default_rng(9)
    # Gaps of 10 s on average: never "fast", so only the regularity changes.
    poisson_gaps = 4.0 + rng.exponential(6.0, 40)
    scores = []
    for blend in np.linspace(0, 1, 11):
        gaps = (1 - blend) * poisson_gaps + blend * poisson_gaps.mean()
        ts = np.cumsum(gaps)
        res = Guard().observe_one(GuardState(), ts, np.arange(40), np.full(40, np.nan))
        scores.append(res.score[-1])
    assert all(a >= b for a, b in itertools.pairwise(scores))
    assert scores[0] == 100.0 and scores[-1] <= 100 - 35


@pytest.mark.parametrize("kind", ["repeat", "identical"])
def test_score_falls_with_more_pattern_violations(kind: str) -> None:
    rng = np.random.default_rng(10)
    n = 30
    ts = np.cumsum(rng.exponential(30.0, n))
    scores = []
    for k in range(0, n + 1, 3):
        items = np.arange(n)
        ratings = rng.integers(1, 6, n).astype(float)
        if kind == "repeat":
            items[n - k :] = 99  # the last k ratings go to one item
        else:
            ratings[n - k :] = 4.0  # the last k ratings are identical
            ratings[n - k - 1] = 1.0 if k < n else ratings[0]
        res = Guard().observe_one(GuardState(), ts, items, ratings)
        scores.append(res.score[-1])
    assert all(a >= b for a, b in itertools.pairwise(scores))
    assert scores[-1] == 90.0  # a pattern alone costs at most its weight of 10
    assert scores[0] == 100.0


# ------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------


def test_results_and_state_do_not_depend_on_batching_or_user_mix() -> None:
    rng = np.random.default_rng(11)
    n_users = 12
    users, ts, items, ratings = human_streams(rng, n_users, 80)
    # Mix in a bot so that saturating counts and runs are exercised.
    bot_ts = 1000 + 0.25 * np.arange(120)
    users = np.concatenate([users, np.full(120, n_users)])
    ts = np.concatenate([ts, bot_ts])
    items = np.concatenate([items, np.arange(120) % 3])
    ratings = np.concatenate([ratings, np.full(120, 5.0)])
    order = np.argsort(ts, kind="stable")
    users, ts, items, ratings = users[order], ts[order], items[order], ratings[order]
    guard = Guard()

    one_states = [GuardState() for _ in range(n_users + 1)]
    one = observe_in_batches(guard, one_states, users, ts, items, ratings, [])
    many_states = [GuardState() for _ in range(n_users + 1)]
    cuts = sorted(rng.choice(np.arange(1, ts.size), 40, replace=False).tolist())
    many = observe_in_batches(guard, many_states, users, ts, items, ratings, cuts)
    for name in one:
        assert np.array_equal(one[name], many[name]), name

    per_user_states = [GuardState() for _ in range(n_users + 1)]
    for user in range(n_users + 1):
        mine = users == user
        res = guard.observe_one(per_user_states[user], ts[mine], items[mine], ratings[mine])
        assert np.array_equal(res.score, one["score"][mine])
        assert np.array_equal(res.per_hour, one["per_hour"][mine])
    for a, b, c in zip(one_states, many_states, per_user_states, strict=True):
        assert a.to_dict() == b.to_dict() == c.to_dict()
        assert a.ts.size <= guard.config.history
        assert a.minutes.size <= 60


def test_state_round_trips_through_json_mid_stream() -> None:
    rng = np.random.default_rng(12)
    ts = np.cumsum(rng.exponential(2.0, 100))
    items = rng.integers(0, 5, 100)
    ratings = np.where(rng.random(100) < 0.5, np.nan, 3.0)
    guard = Guard()
    straight = GuardState()
    first = guard.observe_one(straight, ts, items, ratings)
    half = GuardState()
    guard.observe_one(half, ts[:50], items[:50], ratings[:50])
    restored = GuardState.from_dict(json.loads(json.dumps(half.to_dict())))
    second = guard.observe_one(restored, ts[50:], items[50:], ratings[50:])
    assert np.array_equal(second.score, first.score[50:])
    assert restored.to_dict() == straight.to_dict()
    with pytest.raises(ValueError, match="same length"):
        GuardState.from_dict({**half.to_dict(), "items": [1]})


def test_users_far_apart_in_time_share_a_batch() -> None:
    # One user replays 1970-era timestamps, the other is live: 54 years apart in one batch.
    states = [GuardState(), GuardState()]
    res = Guard().observe(
        states,
        np.array([0, 1, 0, 1]),
        np.array([0.0, 1.7e9, 30.0, 1.7e9 + 10.0]),
        np.array([1, 2, 3, 4]),
    )
    assert res.per_minute.tolist() == [1, 1, 2, 2]
    assert res.per_hour.tolist() == [1, 1, 2, 2]
    assert states[0].ts.tolist() == [0.0, 30.0]
    assert states[1].ts.tolist() == [1.7e9, 1.7e9 + 10.0]


def test_a_late_event_is_judged_at_its_own_time() -> None:
    state = GuardState()
    res = Guard().observe_one(state, np.array([100.0, 50.0, 130.0]), np.array([1, 2, 3]))
    # 50 s arrived after 100 s: its minute holds only itself; 130 s sees 100 s (50 s is out
    # of its minute); the history keeps the events in time order.
    assert res.per_minute.tolist() == [1, 1, 2]
    assert state.ts.tolist() == [50.0, 100.0, 130.0]


def test_explicit_feedback_behind_implicit_feedback_is_not_a_burst() -> None:
    # One person, an action every 30 s (a rating, then a view 12 s later). The views reach
    # the guard first; the ratings of the same ten minutes arrive afterwards, as when the
    # explicit topic's consumer lags behind the implicit one after a restart.
    n = 40
    ratings_ts = 1_000.0 + 30.0 * np.arange(n) + (np.arange(n) * 7.919) % 20.0
    views_ts = ratings_ts + 12.345
    guard = Guard()
    lagging, in_order = GuardState(), GuardState()
    late = [guard.observe_one(lagging, views_ts[:20], np.arange(20))]
    late.append(guard.observe_one(lagging, ratings_ts[:20], np.arange(20), np.full(20, 4.0)))
    for cut in range(20, n, 5):
        late.append(guard.observe_one(lagging, views_ts[cut : cut + 5], np.arange(5)))
        late.append(guard.observe_one(lagging, ratings_ts[cut : cut + 5], np.arange(5),
                                      np.full(5, 4.0)))  # fmt: skip
    assert not any(r.flagged.any() for r in late)
    # No minute looks busier than it does to a guard that saw everything in time order.
    ts = np.sort(np.concatenate([ratings_ts, views_ts]))
    straight = guard.observe_one(in_order, ts, np.zeros(ts.size, dtype=np.int64))
    assert max(int(r.per_minute.max()) for r in late) <= straight.per_minute.max() == 5
    assert lagging.ts.tolist() == in_order.ts.tolist()
    assert lagging.minute_counts.sum() == in_order.minute_counts.sum()


def test_late_events_get_the_same_verdicts_in_any_batching() -> None:
    rng = np.random.default_rng(5)
    users, ts, items, ratings = human_streams(rng, 6, 60)
    # Swap neighbouring pairs across users' streams: every user's arrival goes back in time.
    shuffled = np.arange(ts.size)
    for i in range(0, ts.size - 7, 7):
        shuffled[i], shuffled[i + 6] = shuffled[i + 6], shuffled[i]
    users, ts, items, ratings = users[shuffled], ts[shuffled], items[shuffled], ratings[shuffled]
    guard = Guard()
    one_states = [GuardState() for _ in range(6)]
    one = observe_in_batches(guard, one_states, users, ts, items, ratings, [])
    many_states = [GuardState() for _ in range(6)]
    cuts = sorted(rng.choice(np.arange(1, ts.size), 25, replace=False).tolist())
    many = observe_in_batches(guard, many_states, users, ts, items, ratings, cuts)
    for name in one:
        assert np.array_equal(one[name], many[name]), name
    for a, b in zip(one_states, many_states, strict=True):
        assert a.to_dict() == b.to_dict()


def test_a_stream_going_back_in_time_too_often_is_judged_in_time_order() -> None:
    # Alternating timestamps: twice as many arrival rounds as MAX_ROUNDS in one batch.
    n = 4 * MAX_ROUNDS
    ts = np.where(np.arange(n) % 2 == 0, 0.0, 5000.0) + 20.0 * np.arange(n)
    rounds = arrival_rounds(np.zeros(n, dtype=np.int64), ts)
    assert rounds.max() == MAX_ROUNDS - 1
    state = GuardState()
    res = Guard().observe_one(state, ts, np.arange(n))
    assert np.all(np.diff(state.ts) >= 0)
    assert state.n_events == n
    assert res.per_minute.max() <= 4  # 20 s apart in event time, whatever the arrival


def test_validation_and_stable_item_keys() -> None:
    guard = Guard()
    with pytest.raises(ValueError, match="same shape"):
        guard.observe_one(GuardState(), np.array([1.0, 2.0]), np.array([1]))
    with pytest.raises(ValueError, match="items must be integers"):
        guard.observe_one(GuardState(), np.array([1.0]), np.array([1.5]))
    with pytest.raises(ValueError, match="users must index states"):
        guard.observe([GuardState()], np.array([1]), np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError, match="finite"):
        guard.observe_one(GuardState(), np.array([np.inf]), np.array([1]))
    with pytest.raises(ValueError, match="history"):
        GuardConfig(max_per_minute=40, history=32)
    assert guard.observe_one(GuardState(), np.zeros(0), np.zeros(0, np.int64)).score.size == 0
    # Keys must be identical on every worker and run: a fixed reference value.
    assert item_key("item-42") == 8434114534004038278
    assert 0 <= item_key("") < 2**63

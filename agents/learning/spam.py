"""Rate limiting and spam detection for one user's feedback stream (the guard's math).

For every event the guard computes, from the user's recent history plus the event:

- **rates**: events in the last 60 s (exact up to ``history``, where the count saturates) and in
  the current and previous 59 minutes (minute buckets); exceeding ``max_per_minute`` or
  ``max_per_hour`` is a hard limit;
- **timing**: over the last ``history`` events (at least ``min_timing_events``), the coefficient
  of variation of the gaps (machines are regular: CV ≈ 0, a Poisson stream has CV ≈ 1) and the
  median gap (machines are fast);
- **patterns**, for events that carry a rating: how often the same item was rated within the
  last ``history`` events, and the length of the current run of identical ratings.

Each check gives a severity in [0, 1] (0 = nothing suspicious, 1 = clear violation); the
reliability score is ``100 − Σ weight_j · severity_j`` with the weights of
:class:`ScoreWeights` (they sum to 100):

=========  ======  =====================================================================
check      weight  severity
=========  ======  =====================================================================
regular    35      1 when gap CV ≤ ``regular_cv``, falling to 0 at 2 × ``regular_cv``
fast       30      1 when median gap ≤ ``min_median_gap_s``, 0 at twice that
rate       15      0 up to half of a hard limit, rising to 1 at the limit
repeat     10      0 up to ``repeat_allowed`` ratings of one item, 1 at twice that
identical  10      0 up to half of ``identical_run`` equal ratings in a row, 1 at the full run
=========  ======  =====================================================================

An event is flagged when its score is below ``flag_below`` (40) or a hard rate limit is
exceeded. Timing alone (regular and fast: 65) flags a bot; patterns alone (20) never flag: many
honest users give every item five stars.

State per user (:class:`GuardState`) is bounded: the last ``history`` timestamps, item keys and
ratings, at most 60 minute counters, and the current identical-rating run. :class:`Guard` checks
a batch of events of many users at once: the users' histories and events are laid out as one
flat array of per-user segments, and every check is a vectorised operation over it, so the cost
per event does not grow with the number of distinct users in the batch. Times are handled in
whole milliseconds in [0, 2**42) ms (1970 to 2109): that holds every time the schemas allow
(0 to 2100-01-01 = 4102444800000 ms) at full precision, whatever the order or distance of a
user's events, so no verdict is approximated; times outside it (a caller ignoring the schema,
a state written by such a caller) are clamped to it instead of overflowing the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MAX_ROUNDS",
    "SEVERITY_NAMES",
    "Guard",
    "GuardConfig",
    "GuardResult",
    "GuardState",
    "ScoreWeights",
    "arrival_rounds",
    "item_key",
    "reliability_score",
]

SEVERITY_NAMES = ("regular", "fast", "rate", "repeat", "identical")
_MINUTE_MS = 60_000
_HOUR_MINUTES = 60
# Segment keys: user slot in the high bits, time in the low bits, so that one sorted int64
# array answers "how many of this user's events since t" with a single searchsorted. The time
# bits hold any valid time relative to any other (2**42 ms ≈ 139 years > 4102444800000 ms, the
# schemas' 2100-01-01): with fewer (40 were used), one user's rating at ts 0 and a like at the
# current time could not be laid out, and since the old time stays in the user's state, neither
# could any later event of that user. Clamping times to the same range makes every input fit.
# The remaining 21 bits number the users of one layout (a round with more is split: users are
# judged independently, so the verdicts are the same).
_TIME_BITS = 42
_MAX_MS = (1 << _TIME_BITS) - 1
_MAX_S = _MAX_MS / 1000.0  # rint(_MAX_S * 1000.0) == _MAX_MS: clamped seconds stay in range
_MAX_SEGMENTS = 1 << (63 - _TIME_BITS)
# Minute keys: the slot above 32 bits of minutes relative to the batch's lowest; minutes of
# clamped times are below 2**27, and slots below 2**21, so the keys stay far below 2**63.
_MINUTE_BITS = 32
_MAX_MINUTE = _MAX_MS // _MINUTE_MS
# Arrival rounds judged one by one within a batch (see Guard.observe); a stream that goes
# back in time more often than this within one batch is judged in time order after it.
MAX_ROUNDS = 64


def arrival_rounds(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(n,) round of each event: per user, how often its timestamps went back in time
    before it in arrival order (capped at ``MAX_ROUNDS - 1``).

    >>> arrival_rounds(np.array([0, 1, 0, 0, 1]), np.array([5.0, 9.0, 3.0, 4.0, 1.0])).tolist()
    [0, 0, 1, 1, 1]
    """
    order = np.argsort(users, kind="stable")
    u, t = users[order], ts[order]
    back = np.zeros(u.size, dtype=np.int64)
    back[1:] = (u[1:] == u[:-1]) & (t[1:] < t[:-1])
    count = np.cumsum(back)
    first = np.ones(u.size, dtype=bool)
    first[1:] = u[1:] != u[:-1]
    # Subtract the count at each user's first event: rounds restart per user.
    at_first = np.maximum.accumulate(np.where(first, np.arange(u.size), 0))
    rounds = np.empty(u.size, dtype=np.int64)
    rounds[order] = np.minimum(count - count[at_first], MAX_ROUNDS - 1)
    return rounds


@dataclass(frozen=True)
class ScoreWeights:
    """Points each check can take off the reliability score; they must sum to 100.

    >>> ScoreWeights().as_array().tolist()
    [35.0, 30.0, 15.0, 10.0, 10.0]
    """

    regular: float = 35.0
    fast: float = 30.0
    rate: float = 15.0
    repeat: float = 10.0
    identical: float = 10.0

    def __post_init__(self) -> None:
        w = self.as_array()
        if np.any(w < 0) or not np.isclose(w.sum(), 100.0):
            raise ValueError(f"weights must be non-negative and sum to 100, got {w.tolist()}")

    def as_array(self) -> np.ndarray:
        """(5,) weights in the order of :data:`SEVERITY_NAMES`.

        >>> ScoreWeights(regular=45.0, fast=20.0).as_array()[:2].tolist()
        [45.0, 20.0]
        """
        return np.array([getattr(self, name) for name in SEVERITY_NAMES], dtype=float)


@dataclass(frozen=True)
class GuardConfig:
    """Limits and thresholds of the guard.

    >>> GuardConfig().max_per_minute, GuardConfig().flag_below
    (30, 40.0)
    """

    max_per_minute: int = 30
    max_per_hour: int = 300
    history: int = 32
    min_timing_events: int = 10
    regular_cv: float = 0.1
    min_median_gap_s: float = 1.0
    repeat_allowed: int = 2
    identical_run: int = 20
    flag_below: float = 40.0
    weights: ScoreWeights = field(default_factory=ScoreWeights)

    def __post_init__(self) -> None:
        if self.max_per_minute < 1 or self.max_per_hour < 1:
            raise ValueError("rate limits must be >= 1")
        # A ring longer than the per-minute limit keeps the per-minute count exact up to it.
        if self.history < max(self.max_per_minute + 1, self.min_timing_events, 2):
            raise ValueError(
                "history must be at least max_per_minute + 1 and min_timing_events, "
                f"got {self.history}"
            )
        if self.min_timing_events < 3:
            raise ValueError("min_timing_events must be >= 3")
        if not (self.regular_cv > 0 and self.min_median_gap_s > 0):
            raise ValueError("regular_cv and min_median_gap_s must be > 0")
        if self.repeat_allowed < 1 or self.identical_run < 2:
            raise ValueError("need repeat_allowed >= 1 and identical_run >= 2")
        if not 0.0 <= self.flag_below <= 100.0:
            raise ValueError("flag_below must be in [0, 100]")


def item_key(item_id: str) -> int:
    """Stable 63-bit key of an item id (the same on every worker and run).

    >>> item_key("item-42") == item_key("item-42"), item_key("a") != item_key("b")
    (True, True)
    """
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def reliability_score(severities: np.ndarray, weights: ScoreWeights | None = None) -> np.ndarray:
    """Reliability score ``100 − severities · weights`` in [0, 100].

    Parameters
    ----------
    severities : (n, 5) severities in [0, 1], columns as :data:`SEVERITY_NAMES`
    weights : points per check, default :class:`ScoreWeights`

    Returns
    -------
    (n,) scores; non-increasing in every severity

    >>> reliability_score(np.array([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0.5]])).tolist()
    [100.0, 30.0]
    """
    s = np.asarray(severities, dtype=float)
    if s.ndim != 2 or s.shape[1] != len(SEVERITY_NAMES):
        raise ValueError(f"severities must have shape (n, {len(SEVERITY_NAMES)}), got {s.shape}")
    s = np.clip(s, 0.0, 1.0)
    return np.clip(100.0 - s @ (weights or ScoreWeights()).as_array(), 0.0, 100.0)


@dataclass(frozen=True)
class GuardResult:
    """Per-event verdicts of :meth:`Guard.observe`, each array of shape (n,).

    ``severities`` is (n, 5) with columns :data:`SEVERITY_NAMES`.

    >>> r = GuardResult(np.array([90.0]), np.array([False]), np.array([False]),
    ...                 np.array([1]), np.array([1]), np.zeros((1, 5)))
    >>> r.flagged.tolist()
    [False]
    """

    score: np.ndarray
    flagged: np.ndarray
    rate_limited: np.ndarray
    per_minute: np.ndarray
    per_hour: np.ndarray
    severities: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> GuardResult:
        """n verdicts to fill in (score 0, nothing flagged)."""
        return cls(
            np.zeros(n),
            np.zeros(n, bool),
            np.zeros(n, bool),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros((n, len(SEVERITY_NAMES))),
        )


def _put(result: GuardResult, idx: np.ndarray, part: GuardResult) -> None:
    """Write the verdicts of a part of a batch (events ``idx``) into the batch's."""
    for name in ("score", "flagged", "rate_limited", "per_minute", "per_hour", "severities"):
        getattr(result, name)[idx] = getattr(part, name)


def _ramp(x: np.ndarray, zero_at: float, one_at: float) -> np.ndarray:
    """Linear severity: 0 at ``zero_at``, 1 at ``one_at`` (either direction), clipped."""
    return np.clip((x - zero_at) / (one_at - zero_at), 0.0, 1.0)


class GuardState:
    """Recent activity of one user (plain data; :class:`Guard` does the checks).

    Attributes
    ----------
    ts, items, ratings : (≤ history,) last timestamps (s, on the millisecond grid), item keys,
        ratings (NaN: no rating), oldest first
    minutes, minute_counts : (≤ 60,) int64 minute indices (``ts // 60``) and event counts of
        the last hour, ascending
    run_rating, run_length : the current run of identical ratings
    n_events : events observed in total

    >>> GuardState().n_events
    0
    """

    def __init__(self) -> None:
        self.ts = np.zeros(0)
        self.items = np.zeros(0, dtype=np.int64)
        self.ratings = np.zeros(0)
        self.minutes = np.zeros(0, dtype=np.int64)
        self.minute_counts = np.zeros(0, dtype=np.int64)
        self.run_rating = float("nan")
        self.run_length = 0
        self.n_events = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (NaN ratings become None).

        >>> GuardState().to_dict()["ratings"]
        []
        """
        return {
            "ts": self.ts.tolist(),
            "items": self.items.tolist(),
            "ratings": [None if np.isnan(r) else float(r) for r in self.ratings],
            "minutes": self.minutes.tolist(),
            "minute_counts": self.minute_counts.tolist(),
            "run_rating": None if np.isnan(self.run_rating) else self.run_rating,
            "run_length": self.run_length,
            "n_events": self.n_events,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardState:
        """Rebuild from :meth:`to_dict`.

        >>> state = GuardState()
        >>> _ = Guard().observe_one(state, np.array([1.0, 2.0]), np.array([7, 8]),
        ...                         np.array([4.0, np.nan]))
        >>> GuardState.from_dict(state.to_dict()).to_dict() == state.to_dict()
        True
        """
        out = cls()
        out.ts = np.asarray(data["ts"], dtype=float)
        out.items = np.asarray(data["items"], dtype=np.int64)
        out.ratings = np.array([np.nan if r is None else r for r in data["ratings"]], dtype=float)
        out.minutes = np.asarray(data["minutes"], dtype=np.int64)
        out.minute_counts = np.asarray(data["minute_counts"], dtype=np.int64)
        if not out.ts.shape == out.items.shape == out.ratings.shape:
            raise ValueError("ts, items and ratings must have the same length")
        if out.minutes.shape != out.minute_counts.shape:
            raise ValueError("minutes and minute_counts must have the same length")
        run = data["run_rating"]
        out.run_rating = float("nan") if run is None else float(run)
        out.run_length = int(data["run_length"])
        out.n_events = int(data["n_events"])
        return out


@dataclass
class _Layout:
    """Histories and batch events of U users as one flat array of per-user segments."""

    seg: np.ndarray  # (N,) user slot of every flat element
    start: np.ndarray  # (U,) first flat index of each segment
    length: np.ndarray  # (U,) segment lengths (history + batch)
    batch_pos: np.ndarray  # (n,) flat index of each batch event, events grouped by user
    batch_seg: np.ndarray  # (n,) user slot of each batch event
    ms: np.ndarray  # (N,) int64 ms since the segment's base, non-decreasing within it
    items: np.ndarray  # (N,) int64
    ratings: np.ndarray  # (N,) float, NaN without rating
    base_ms: np.ndarray  # (U,) int64 absolute ms of ms == 0, per segment


def _segment_offsets(lengths: np.ndarray) -> np.ndarray:
    return np.cumsum(lengths) - lengths


def _position_in_segment(lengths: np.ndarray) -> np.ndarray:
    """0, 1, …, L_u − 1 for every segment u, concatenated."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(_segment_offsets(lengths), lengths)


class Guard:
    """Rate limits and spam checks over batches of events of many users.

    Parameters
    ----------
    config : limits, thresholds and score weights

    >>> guard, state = Guard(), GuardState()
    >>> bot = guard.observe_one(state, np.arange(60) * 0.2, np.arange(60), np.full(60, 5.0))
    >>> bot.flagged[:5].tolist(), bot.flagged[-5:].tolist()
    ([False, False, False, False, False], [True, True, True, True, True])
    >>> round(float(bot.score[-1]), 1), bool(bot.rate_limited[-1])
    (10.0, True)
    """

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()

    def observe_one(
        self,
        state: GuardState,
        ts: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray | None = None,
    ) -> GuardResult:
        """Check a batch of one user's events; see :meth:`observe`.

        >>> r = Guard().observe_one(GuardState(), np.array([0.0, 40.0, 95.0]), np.array([1, 2, 3]))
        >>> r.score.tolist(), r.flagged.tolist(), r.per_minute.tolist()
        ([100.0, 100.0, 100.0], [False, False, False], [1, 2, 2])
        """
        return self.observe([state], np.zeros(np.shape(ts), dtype=np.int64), ts, items, ratings)

    def observe(
        self,
        states: Sequence[GuardState],
        users: np.ndarray,
        ts: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray | None = None,
    ) -> GuardResult:
        """Check a batch of events and add them to their users' states.

        Each event is judged in event time against the user's events that arrived before
        it: its rate windows and timing gaps are taken among those events ordered by
        timestamp. An event stamped before events already seen (explicit feedback that reached
        the guard behind implicit feedback read from another topic) is placed at its own time,
        not counted as a burst at the latest one. A batch whose user streams go back in time
        is judged in arrival rounds (each a run of non-decreasing timestamps per user), so a
        verdict does not depend on how the stream was cut into batches; past
        :data:`MAX_ROUNDS` rounds the rest of a batch is judged as one time-ordered round.

        Parameters
        ----------
        states : U user states, updated in place
        users : (n,) int index into ``states`` of each event's user
        ts : (n,) timestamps in seconds, clamped to [0, 2**42 ms) (see the module docstring)
        items : (n,) int item keys (:func:`item_key`)
        ratings : (n,) rating values, NaN for events without one; default all NaN

        Returns
        -------
        GuardResult with one verdict per event, in input order

        >>> guard, people = Guard(), [GuardState(), GuardState()]
        >>> r = guard.observe(people, np.array([0, 1, 0]), np.array([0.0, 5.0, 1.0]),
        ...                   np.array([10, 11, 12]))
        >>> r.per_minute.tolist(), [p.n_events for p in people]
        ([1, 1, 2], [2, 1])
        """
        u = np.asarray(users)
        t = np.asarray(ts, dtype=float)
        it = np.asarray(items)
        rt = np.full(t.shape, np.nan) if ratings is None else np.asarray(ratings, dtype=float)
        if t.ndim != 1 or not (u.shape == it.shape == rt.shape == t.shape):
            raise ValueError("users, ts, items and ratings must have the same shape (n,)")
        if not np.all(np.isfinite(t)):
            raise ValueError("timestamps must be finite")
        # A new array: the caller's stays as it was. Valid (schema) times are left unchanged.
        t = np.clip(t, 0.0, _MAX_S)
        for name, arr in (("users", u), ("items", it)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        if u.size and (u.min() < 0 or u.max() >= len(states)):
            raise ValueError(f"users must index states, i.e. lie in [0, {len(states)})")
        n = t.size
        rounds = arrival_rounds(u, t) if n else np.zeros(0, dtype=np.int64)
        if n == 0 or rounds.max() == 0:  # the usual batch: every user's times in order
            return self._observe_round(states, u, t, it, rt)
        result = GuardResult.zeros(n)
        for r in range(int(rounds.max()) + 1):
            idx = np.flatnonzero(rounds == r)
            # Only the users of this round: the layout walks every state it is given.
            present, local = np.unique(u[idx], return_inverse=True)
            part = self._observe_round([states[i] for i in present.tolist()], local, t[idx],
                                       it[idx], rt[idx])  # fmt: skip
            _put(result, idx, part)
        return result

    def _observe_round(
        self,
        states: Sequence[GuardState],
        u: np.ndarray,
        t: np.ndarray,
        it: np.ndarray,
        rt: np.ndarray,
    ) -> GuardResult:
        """:meth:`observe` for events whose timestamps do not decrease per user."""
        cfg = self.config
        n = t.size
        if n == 0:
            return GuardResult.zeros(0)
        if len(states) > _MAX_SEGMENTS:
            # The user slot must fit above the time bits of the segment keys.
            result = GuardResult.zeros(n)
            for lo in range(0, len(states), _MAX_SEGMENTS):
                idx = np.flatnonzero((u >= lo) & (u < lo + _MAX_SEGMENTS))
                if idx.size:
                    part = self._observe_round(states[lo : lo + _MAX_SEGMENTS], u[idx] - lo,
                                               t[idx], it[idx], rt[idx])  # fmt: skip
                    _put(result, idx, part)
            return result
        # By user, then time (ties keep arrival order).
        order = np.lexsort((t, u))
        lay = self._layout(states, u[order], t[order], it[order].astype(np.int64), rt[order])
        minute = (lay.base_ms[lay.batch_seg] + lay.ms[lay.batch_pos]) // _MINUTE_MS
        # Stored minutes in the range of the clamped times (they are unless a state was written
        # from out-of-range times), so the minute keys below cannot overflow either.
        hist_minutes = np.clip(np.concatenate([s.minutes for s in states]), 0, _MAX_MINUTE)

        severities = np.zeros((n, len(SEVERITY_NAMES)))
        key = (lay.seg.astype(np.int64) << _TIME_BITS) + lay.ms
        first_recent = np.searchsorted(key, key[lay.batch_pos] - _MINUTE_MS, side="right")
        # A query within a minute of a segment's base reaches below its slot; it finds nothing
        # of the previous user unless that one spans almost 2**42 ms (only clamped times can,
        # the schemas' range is 2**42 ms minus 9 years), but the bound makes sure.
        first_recent = np.maximum(first_recent, lay.start[lay.batch_seg])
        # Only the last `history` events are kept, so the count saturates there (history
        # exceeds max_per_minute, so the limit is still enforced exactly).
        per_minute = np.minimum(lay.batch_pos + 1 - first_recent, cfg.history)
        per_hour = self._hourly_counts(states, lay, minute, hist_minutes)
        ratio = np.maximum(per_minute / cfg.max_per_minute, per_hour / cfg.max_per_hour)
        severities[:, 2] = _ramp(ratio, 0.5, 1.0)
        window, valid = self._windows(lay)
        severities[:, 0], severities[:, 1] = self._timing(lay, window, valid)
        severities[:, 3] = self._repeats(lay, window, valid)
        severities[:, 4], runs = self._identical_runs(states, lay)

        score = reliability_score(severities, cfg.weights)
        rate_limited = (per_minute > cfg.max_per_minute) | (per_hour > cfg.max_per_hour)
        self._remember(states, lay, minute, hist_minutes, runs)

        def unsort(values: np.ndarray) -> np.ndarray:
            out = np.empty_like(values)
            out[order] = values
            return out

        return GuardResult(
            score=unsort(score),
            flagged=unsort(rate_limited | (score < cfg.flag_below)),
            rate_limited=unsort(rate_limited),
            per_minute=unsort(per_minute),
            per_hour=unsort(per_hour),
            severities=unsort(severities),
        )

    def _layout(
        self,
        states: Sequence[GuardState],
        seg_b: np.ndarray,
        ts_b: np.ndarray,
        items_b: np.ndarray,
        ratings_b: np.ndarray,
    ) -> _Layout:
        n_users = len(states)
        h = np.fromiter((s.ts.size for s in states), dtype=np.int64, count=n_users)
        m = np.bincount(seg_b, minlength=n_users)
        length = h + m
        start = _segment_offsets(length)
        seg = np.repeat(np.arange(n_users), length)
        hist_pos = np.repeat(start, h) + _position_in_segment(h)
        batch_pos = np.repeat(start + h, m) + _position_in_segment(m)
        total = int(length.sum())

        abs_ms = np.empty(total, dtype=np.int64)
        # Stored times are clamped like the batch's (observe): every time is in [0, _MAX_MS].
        hist_s = np.clip(np.concatenate([s.ts for s in states]), 0.0, _MAX_S)
        abs_ms[hist_pos] = np.rint(hist_s * 1000.0)
        abs_ms[batch_pos] = np.rint(ts_b * 1000.0)
        # Relative to each user's earliest, so in [0, _MAX_MS]: the segment keys below cannot
        # overflow, however far apart (up to the whole valid range) one user's events are.
        base_ms = np.zeros(n_users, dtype=np.int64)
        filled = length > 0
        base_ms[filled] = np.minimum.reduceat(abs_ms, start[filled])
        ms = abs_ms - base_ms[seg]
        items = np.empty(total, dtype=np.int64)
        items[hist_pos] = np.concatenate([s.items for s in states])
        items[batch_pos] = items_b
        ratings = np.empty(total)
        ratings[hist_pos] = np.concatenate([s.ratings for s in states])
        ratings[batch_pos] = ratings_b
        # Each user's history and batch merged by time: the history holds the latest events
        # seen, and a batch event may be older than some of them. Segment keys increase from
        # one user to the next, so one stable sort orders every segment without crossing
        # users; on equal times the history (placed first) stays first.
        merged = np.argsort((seg.astype(np.int64) << _TIME_BITS) + ms, kind="stable")
        position = np.empty(total, dtype=np.int64)
        position[merged] = np.arange(total)
        return _Layout(seg, start, length, position[batch_pos], seg_b, ms[merged],
                       items[merged], ratings[merged], base_ms)  # fmt: skip

    def _hourly_counts(
        self, states: Sequence[GuardState], lay: _Layout, minute: np.ndarray, minutes: np.ndarray
    ) -> np.ndarray:
        """Events in each event's minute and the 59 before, history and batch so far.

        ``minutes`` are the states' minute indices, concatenated (and clamped)."""
        counts = np.concatenate([s.minute_counts for s in states])
        n_hist = np.fromiter((s.minutes.size for s in states), dtype=np.int64, count=len(states))
        seg_h = np.repeat(np.arange(len(states)), n_hist).astype(np.int64)
        lowest = min(minute.min(), minutes.min()) if minutes.size else minute.min()
        start = minute - (_HOUR_MINUTES - 1) - lowest + _HOUR_MINUTES  # ≥ 1
        seg_b = lay.batch_seg.astype(np.int64)
        low_key = (seg_b << _MINUTE_BITS) + start

        hist_key = (seg_h << _MINUTE_BITS) + (minutes - lowest + _HOUR_MINUTES)
        cum = np.concatenate([[0], np.cumsum(counts)])
        # Up to the event's own minute: the history may hold later minutes (a late event).
        own_key = (seg_b << _MINUTE_BITS) + (minute - lowest + _HOUR_MINUTES)
        hist_end = np.searchsorted(hist_key, own_key, side="right")
        from_history = cum[hist_end] - cum[np.searchsorted(hist_key, low_key, side="left")]

        index = np.arange(minute.size)
        from_batch = index + 1 - np.searchsorted(own_key, low_key, side="left")
        return from_history + from_batch

    def _windows(self, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
        """(n, history) flat indices of the trailing window of each event, and their validity."""
        width = self.config.history
        index = lay.batch_pos[:, None] - np.arange(width - 1, -1, -1)
        valid = index >= lay.start[lay.batch_seg][:, None]
        return np.where(valid, index, 0), valid

    def _timing(
        self, lay: _Layout, window: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        n = window.shape[0]
        regular, fast = np.zeros(n), np.zeros(n)
        n_events = valid.sum(axis=1)
        enough = n_events >= cfg.min_timing_events
        if not np.any(enough):
            return regular, fast
        # Whole milliseconds (exact in float64) keep the gaps independent of the batch's base.
        times_ms = np.where(valid[enough], lay.ms[window[enough]], np.nan)
        # Invalid (older) slots lead each row; after sorting the NaN gaps come last, so the
        # first c sorted values of a row are its c gaps.
        gaps = np.sort(np.diff(times_ms, axis=1), axis=1) / 1000.0
        c = n_events[enough] - 1
        present = np.isnan(gaps)
        mean = np.where(present, 0.0, gaps).sum(axis=1) / c
        dev = np.where(present, 0.0, gaps - mean[:, None])
        sd = np.sqrt((dev**2).sum(axis=1) / c)
        cv = np.divide(sd, mean, out=np.zeros_like(mean), where=mean > 0)
        rows = np.arange(gaps.shape[0])
        median = 0.5 * (gaps[rows, (c - 1) // 2] + gaps[rows, c // 2])
        regular[enough] = _ramp(cv, 2 * cfg.regular_cv, cfg.regular_cv)
        fast[enough] = _ramp(median, 2 * cfg.min_median_gap_s, cfg.min_median_gap_s)
        return regular, fast

    def _repeats(self, lay: _Layout, window: np.ndarray, valid: np.ndarray) -> np.ndarray:
        cfg = self.config
        rated = ~np.isnan(lay.ratings)
        item = lay.items[lay.batch_pos]
        same = valid & rated[window] & (lay.items[window] == item[:, None])
        severity = _ramp(same.sum(axis=1), cfg.repeat_allowed, 2 * cfg.repeat_allowed)
        return np.where(rated[lay.batch_pos], severity, 0.0)

    def _identical_runs(
        self, states: Sequence[GuardState], lay: _Layout
    ) -> tuple[np.ndarray, np.ndarray]:
        """Identical-rating severity per event and (n_rated,) run lengths of rated events."""
        cfg = self.config
        ratings = lay.ratings[lay.batch_pos]
        rated = ~np.isnan(ratings)
        r = ratings[rated]
        seg = lay.batch_seg[rated]
        idx = np.arange(r.size)
        first = np.ones(r.size, dtype=bool)
        first[1:] = seg[1:] != seg[:-1]
        carry_rating = np.array([s.run_rating for s in states])
        carry_length = np.fromiter((s.run_length for s in states), np.int64, len(states))
        previous = np.where(first, carry_rating[seg], np.concatenate([[np.nan], r[:-1]]))
        last_break = np.maximum.accumulate(np.where(r != previous, idx, -1))
        seg_first = np.maximum.accumulate(np.where(first, idx, 0))
        runs = np.where(
            last_break >= seg_first,
            idx - last_break + 1,
            idx - seg_first + 1 + carry_length[seg],
        )
        severity = np.zeros(ratings.size)
        severity[rated] = _ramp(runs, cfg.identical_run / 2, cfg.identical_run)
        return severity, runs

    def _remember(
        self,
        states: Sequence[GuardState],
        lay: _Layout,
        minute: np.ndarray,
        hist_minutes: np.ndarray,
        runs: np.ndarray,
    ) -> None:
        keep = self.config.history
        m = np.bincount(lay.batch_seg, minlength=len(states))
        seconds = (lay.base_ms[lay.seg] + lay.ms) / 1000.0

        # Minute counters: history and batch merged, the last hour per user kept.
        n_hist = np.fromiter((s.minutes.size for s in states), np.int64, len(states))
        seg_all = np.concatenate([np.repeat(np.arange(len(states)), n_hist), lay.batch_seg])
        minutes_all = np.concatenate([hist_minutes, minute])
        counts_all = np.concatenate(
            [s.minute_counts for s in states] + [np.ones(minute.size, np.int64)]
        )
        lowest = minutes_all.min()
        keys, inverse = np.unique(
            (seg_all.astype(np.int64) << _MINUTE_BITS) + (minutes_all - lowest),
            return_inverse=True,
        )
        counts = np.bincount(inverse, weights=counts_all).astype(np.int64)
        key_seg = keys >> _MINUTE_BITS
        key_minute = (keys & ((1 << _MINUTE_BITS) - 1)) + lowest
        newest = np.full(len(states), np.iinfo(np.int64).min)
        np.maximum.at(newest, key_seg, key_minute)
        recent = key_minute > newest[key_seg] - _HOUR_MINUTES
        kept_minutes, kept_counts = key_minute[recent], counts[recent]
        bounds = np.searchsorted(key_seg[recent], np.arange(len(states) + 1))

        batch_ratings = lay.ratings[lay.batch_pos]
        rated = ~np.isnan(batch_ratings)
        rated_seg = lay.batch_seg[rated]
        active = np.flatnonzero(m)
        # The last rated event of each active user, if any, carries the identical-rating run.
        last = np.searchsorted(rated_seg, active, side="right") - 1
        pick = np.where(last >= 0, last, rated_seg.size)  # the size points at a sentinel
        has_run = np.append(rated_seg, -1)[pick] == active
        run_values = np.append(batch_ratings[rated], np.nan)[pick]
        run_lengths = np.where(has_run, np.append(runs, -1)[pick], -1)
        # Python scalars: indexing numpy arrays element by element in this loop costs more.
        end = (lay.start + lay.length)[active]
        begin = np.maximum(lay.start[active], end - keep)
        for user, b, e, lo, hi, run_value, run_length, count in zip(
            active.tolist(),
            begin.tolist(),
            end.tolist(),
            bounds[active].tolist(),
            bounds[active + 1].tolist(),
            run_values.tolist(),
            run_lengths.tolist(),
            m[active].tolist(),
            strict=True,
        ):
            state = states[user]
            state.ts = seconds[b:e].copy()
            state.items = lay.items[b:e].copy()
            state.ratings = lay.ratings[b:e].copy()
            state.minutes = kept_minutes[lo:hi].copy()
            state.minute_counts = kept_counts[lo:hi].copy()
            if run_length >= 0:
                state.run_rating = run_value
                state.run_length = run_length
            state.n_events += count

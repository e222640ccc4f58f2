"""Attribution of clicks and conversions to served impressions, per input partition.

An impression (attributed to an algorithm, for a user in a segment) opens a record that
waits ``window`` for its first click or conversion: that success counts one trial and one
success for (segment, algorithm); an impression still waiting when its window closes counts
one trial and no success (the default reward), so delayed conversions are neither lost nor
counted twice. Later clicks on the same impression change nothing.

Counts are kept per input partition in a :class:`Partial` (absolute values, summed over
partitions by the ``bandits`` publisher). Idempotency under at-least-once delivery:

* each impression record remembers the offset that created it and the offset that resolved
  it; the partial remembers the last offset it applied. A replayed event changes a record
  only past the record's offset and the partial only past the partial's offset, so a crash
  between the two writes is repaired by the replay, never doubled;
* windows close by the partition's *event time* (Kafka timestamps of what it has applied),
  not the wall clock, so a lagging consumer does not close windows before their clicks are
  read, and a replay takes the same decisions. ``watermark`` records how far closing went:
  a record whose deadline is at or below it was already counted (the partial is written
  before the records are deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

DAY_MS = 86_400_000
PENDING, SUCCEEDED = 0, 1


@dataclass
class Partial:
    """(segment × algorithm) trial and success counts of one input partition."""

    n_segments: int
    n_algorithms: int
    offset: int = -1
    event_time: int = 0
    watermark: int = 0
    version: int = 0
    trials: np.ndarray = field(init=False)
    successes: np.ndarray = field(init=False)
    # day index → (2, S, K): trials and successes resolved that day, for sliding windows
    days: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (self.n_segments, self.n_algorithms)
        self.trials = np.zeros(shape, dtype=np.int64)
        self.successes = np.zeros(shape, dtype=np.int64)

    def count(
        self, segment: int, algorithm: int, success: bool, ts_ms: int, keep_days: int
    ) -> None:
        self.trials[segment, algorithm] += 1
        self.successes[segment, algorithm] += int(success)
        day = ts_ms // DAY_MS
        bucket = self.days.get(day)
        if bucket is None:
            bucket = self.days[day] = np.zeros((2, self.n_segments, self.n_algorithms), np.int64)
            for old in [d for d in self.days if d <= day - keep_days]:
                del self.days[old]
        bucket[0, segment, algorithm] += 1
        bucket[1, segment, algorithm] += int(success)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "shape": [self.n_segments, self.n_algorithms],
                "offset": self.offset,
                "event_time": self.event_time,
                "watermark": self.watermark,
                "version": self.version,
                "trials": self.trials,
                "successes": self.successes,
                "days": {str(d): b for d, b in self.days.items()},
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Partial:
        data = orjson.loads(blob)
        p = cls(
            *data["shape"], data["offset"], data["event_time"], data["watermark"], data["version"]
        )
        p.trials = np.asarray(data["trials"], dtype=np.int64).reshape(p.trials.shape)
        p.successes = np.asarray(data["successes"], dtype=np.int64).reshape(p.trials.shape)
        p.days = {int(d): np.asarray(b, dtype=np.int64) for d, b in data["days"].items()}
        return p


@dataclass(frozen=True, slots=True)
class Signal:
    """One implicit event relevant to attribution, from one partition, in offset order."""

    offset: int
    ts_ms: int  # Kafka timestamp of the message
    kind: str  # impression, click or conversion
    impression_id: str
    algorithm: int  # index, impressions only (else -1)
    segment: int  # index of the user's segment, impressions only (else -1)


def record_key(impression_id: str) -> str:
    return f"imp|{impression_id}"


def apply_signals(
    partial: Partial,
    signals: Iterable[Signal],
    get_record: Callable[[str], dict[str, Any] | None],
    window_ms: int,
    keep_days: int,
) -> dict[str, dict[str, Any]]:
    """Apply one partition's signals; returns the impression records that changed.

    ``get_record`` reads a record from the table (None when absent); the caller writes the
    returned records and then the partial.
    """
    changed: dict[str, dict[str, Any]] = {}

    def record(key: str) -> dict[str, Any] | None:
        return changed[key] if key in changed else get_record(key)

    for sig in signals:
        key = record_key(sig.impression_id)
        rec = record(key)
        partial_applies = sig.offset > partial.offset
        if sig.kind == "impression":
            if rec is None and sig.ts_ms + window_ms > partial.watermark:
                deadline = sig.ts_ms + window_ms
                changed[key] = {"a": sig.algorithm, "g": sig.segment, "d": deadline,
                                "o": sig.offset, "r": PENDING, "ro": -1}  # fmt: skip
        elif rec is not None and sig.ts_ms <= rec["d"]:
            if rec["r"] == PENDING and sig.offset > rec["o"]:
                rec = {**rec, "r": SUCCEEDED, "ro": sig.offset}
                changed[key] = rec
            if rec["r"] == SUCCEEDED and rec["ro"] == sig.offset and partial_applies:
                partial.count(rec["g"], rec["a"], True, sig.ts_ms, keep_days)
        if partial_applies:
            partial.offset = sig.offset
            partial.event_time = max(partial.event_time, sig.ts_ms)
    return changed


def close_windows(
    partial: Partial, records: Iterable[tuple[str, dict[str, Any]]], until_ms: int, keep_days: int
) -> list[str]:
    """Count every pending record whose deadline passed ``until_ms`` as a failure.

    Returns the keys to delete (expired records, whether they succeeded or not). Records at
    or below the partial's previous watermark were counted before a crash and are only
    deleted. The caller writes the partial, then deletes.
    """
    expired = []
    for key, rec in records:
        if rec["d"] > until_ms:
            continue
        expired.append(key)
        if rec["r"] == PENDING and rec["d"] > partial.watermark:
            partial.count(rec["g"], rec["a"], False, rec["d"], keep_days)
    partial.watermark = max(partial.watermark, until_ms)
    return expired


def sum_partials(
    partials: Iterable[Partial], since_day: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(S, K) trials and successes summed over partitions; over days ≥ ``since_day`` if given."""
    trials = successes = None
    for p in partials:
        if since_day is None:
            t, s = p.trials, p.successes
        else:
            window = [b for d, b in p.days.items() if d >= since_day]
            t = sum((b[0] for b in window), np.zeros_like(p.trials))
            s = sum((b[1] for b in window), np.zeros_like(p.trials))
        trials = t.copy() if trials is None else trials + t
        successes = s.copy() if successes is None else successes + s
    if trials is None or successes is None:
        raise ValueError("no partials to sum")
    return trials, successes

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

Two optional extras ride on the same counts, guarded by the same offsets and watermark:

* **Discounted counts** (``half_life_ms > 0``): every trial also adds
  ``0.5**((ref − t)/h)`` to discounted successes or failures, where ``t`` is the
  *impression's* event time and ``ref`` the latest impression time the partial has counted.
  A partial stores its discounted counts at its own ``discount_ref``; the publisher decays
  every partial to the common (latest) reference before summing
  (:func:`sum_discounted`), so the sum equals one pass over all partitions' events whatever
  the order, batching or partitioning — discounting commutes with the merge.
* **Linear sufficient statistics** (``ctx_dim > 0``, contextual mode): every trial adds
  ``x xᵀ`` and ``r·x`` to its (segment, algorithm), where ``x`` is the context the impression
  carried (the user's preference vector when it was served, with a leading 1 for the
  intercept) and ``r`` 1 for a success, 0 for a failure. Sums, so partials add up exactly;
  with a half-life they are discounted with the same weights and reference as the counts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

DAY_MS = 86_400_000
PENDING, SUCCEEDED = 0, 1


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float64).tobytes()).decode()


def _from_b64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float64).reshape(shape).copy()


def encode_context(x: np.ndarray) -> str:
    """A context vector as it is kept in an impression record (float32, base64)."""
    return base64.b64encode(np.asarray(x, dtype=np.float32).tobytes()).decode()


def decode_context(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32).astype(np.float64)


@dataclass
class Partial:
    """(segment × algorithm) trial and success counts of one input partition."""

    n_segments: int
    n_algorithms: int
    offset: int = -1
    event_time: int = 0
    watermark: int = 0
    version: int = 0
    # Discounted counts: 0 keeps none (stationary mode).
    half_life_ms: float = 0.0
    # Contextual statistics: context dimension, 0 keeps none.
    ctx_dim: int = 0
    trials: np.ndarray = field(init=False)
    successes: np.ndarray = field(init=False)
    # day index → (2, S, K): trials and successes resolved that day, for sliding windows
    days: dict[int, np.ndarray] = field(default_factory=dict)
    discount_ref: int = field(init=False, default=0)  # ms the discounted counts refer to
    d_successes: np.ndarray = field(init=False)
    d_failures: np.ndarray = field(init=False)
    xx: np.ndarray = field(init=False)  # (S, K, D, D) Σ x xᵀ
    xr: np.ndarray = field(init=False)  # (S, K, D) Σ r x
    ctx_trials: np.ndarray = field(init=False)  # (S, K) trials that carried a context

    def __post_init__(self) -> None:
        shape = (self.n_segments, self.n_algorithms)
        self.trials = np.zeros(shape, dtype=np.int64)
        self.successes = np.zeros(shape, dtype=np.int64)
        self._reset_discount(self.half_life_ms)
        self._reset_context(self.ctx_dim)

    def _reset_discount(self, half_life_ms: float) -> None:
        shape = (self.n_segments, self.n_algorithms)
        self.half_life_ms = float(half_life_ms)
        self.discount_ref = 0
        self.d_successes = np.zeros(shape)
        self.d_failures = np.zeros(shape)

    def _reset_context(self, dim: int) -> None:
        s, k = self.n_segments, self.n_algorithms
        self.ctx_dim = int(dim)
        self.xx = np.zeros((s, k, dim, dim))
        self.xr = np.zeros((s, k, dim))
        self.ctx_trials = np.zeros((s, k), dtype=np.int64)

    def configure(self, half_life_ms: float, ctx_dim: int) -> bool:
        """Adopt the configured half-life and context dimension; True if anything changed.

        Discounted counts made with another half-life (or contextual statistics of another
        dimension) cannot be converted, so they restart from zero: the integer counts and
        the auto-disable windows are unaffected.
        """
        changed = False
        if float(half_life_ms) != self.half_life_ms:
            self._reset_discount(half_life_ms)
            changed = True
        if int(ctx_dim) != self.ctx_dim:
            self._reset_context(ctx_dim)
            changed = True
        return changed

    def count(
        self,
        segment: int,
        algorithm: int,
        success: bool,
        ts_ms: int,
        keep_days: int,
        trial_ms: int | None = None,
        context: np.ndarray | None = None,
    ) -> None:
        """Count one resolved trial.

        ``ts_ms`` is when it was resolved (its day bucket for the sliding windows);
        ``trial_ms`` when the impression was served, which is what the discount weighs (the
        resolution time would weigh failures, resolved a whole window later, above the
        successes of the same impressions); ``context`` the impression's context vector.
        """
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
        weight = 1.0
        if self.half_life_ms > 0:
            weight = self._count_discounted(
                segment, algorithm, success, ts_ms if trial_ms is None else trial_ms
            )
        if self.ctx_dim > 0 and context is not None and context.shape == (self.ctx_dim,):
            # discounted like the Beta counts (same weight, same reference) when a half-life
            # is set, so the per-user models follow changes too
            self.xx[segment, algorithm] += weight * np.outer(context, context)
            self.xr[segment, algorithm] += (weight * float(success)) * context
            self.ctx_trials[segment, algorithm] += 1

    def _count_discounted(self, segment: int, algorithm: int, success: bool, t_ms: int) -> float:
        """Add one discounted trial; returns its weight at the (possibly moved) reference."""
        if t_ms > self.discount_ref:
            # Move the reference forward: everything counted so far ages by the difference.
            factor = np.exp2(-(t_ms - self.discount_ref) / self.half_life_ms)
            self.d_successes *= factor
            self.d_failures *= factor
            if self.ctx_dim > 0:
                self.xx *= factor
                self.xr *= factor
            self.discount_ref = int(t_ms)
            weight = 1.0
        else:  # an older impression (failures resolve late): weighed by its age
            weight = float(np.exp2(-(self.discount_ref - t_ms) / self.half_life_ms))
        if success:
            self.d_successes[segment, algorithm] += weight
        else:
            self.d_failures[segment, algorithm] += weight
        return weight

    def discounted_at(self, ref_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(S, K) discounted successes and failures decayed to ``ref_ms`` (≥ discount_ref)."""
        if self.half_life_ms <= 0:
            raise ValueError("this partial keeps no discounted counts")
        factor = np.exp2(-max(0, ref_ms - self.discount_ref) / self.half_life_ms)
        return self.d_successes * factor, self.d_failures * factor

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "shape": [self.n_segments, self.n_algorithms],
            "offset": self.offset,
            "event_time": self.event_time,
            "watermark": self.watermark,
            "version": self.version,
            "trials": self.trials,
            "successes": self.successes,
            "days": {str(d): b for d, b in self.days.items()},
        }
        if self.half_life_ms > 0:
            data["discount"] = {
                "half_life_ms": self.half_life_ms,
                "ref": self.discount_ref,
                "successes": self.d_successes,
                "failures": self.d_failures,
            }
        if self.ctx_dim > 0:
            # float64 bytes: exact, and about a third of the size of JSON numbers
            data["context"] = {
                "dim": self.ctx_dim,
                "xx": _b64(self.xx),
                "xr": _b64(self.xr),
                "trials": self.ctx_trials,
            }
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Partial:
        data = orjson.loads(blob)
        p = cls(
            *data["shape"], data["offset"], data["event_time"], data["watermark"], data["version"]
        )
        p.trials = np.asarray(data["trials"], dtype=np.int64).reshape(p.trials.shape)
        p.successes = np.asarray(data["successes"], dtype=np.int64).reshape(p.trials.shape)
        p.days = {int(d): np.asarray(b, dtype=np.int64) for d, b in data["days"].items()}
        shape = p.trials.shape
        if (disc := data.get("discount")) is not None:
            p._reset_discount(disc["half_life_ms"])
            p.discount_ref = int(disc["ref"])
            p.d_successes = np.asarray(disc["successes"], dtype=float).reshape(shape)
            p.d_failures = np.asarray(disc["failures"], dtype=float).reshape(shape)
        if (ctx := data.get("context")) is not None:
            d = int(ctx["dim"])
            p._reset_context(d)
            p.xx = _from_b64(ctx["xx"], (*shape, d, d))
            p.xr = _from_b64(ctx["xr"], (*shape, d))
            p.ctx_trials = np.asarray(ctx["trials"], dtype=np.int64).reshape(shape)
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
    context: str | None = None  # impressions in contextual mode: encode_context(x)


def _context(rec: dict[str, Any]) -> np.ndarray | None:
    x = rec.get("x")
    return None if x is None else decode_context(x)


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
                rec = {"a": sig.algorithm, "g": sig.segment, "d": deadline, "t": sig.ts_ms,
                       "o": sig.offset, "r": PENDING, "ro": -1}  # fmt: skip
                if sig.context is not None:
                    rec["x"] = sig.context
                changed[key] = rec
        elif rec is not None and sig.ts_ms <= rec["d"]:
            if rec["r"] == PENDING and sig.offset > rec["o"]:
                rec = {**rec, "r": SUCCEEDED, "ro": sig.offset}
                changed[key] = rec
            if rec["r"] == SUCCEEDED and rec["ro"] == sig.offset and partial_applies:
                partial.count(rec["g"], rec["a"], True, sig.ts_ms, keep_days,
                              rec.get("t", sig.ts_ms), _context(rec))  # fmt: skip
        if partial_applies:
            partial.offset = sig.offset
            partial.event_time = max(partial.event_time, sig.ts_ms)
    return changed


def close_attribution_windows(
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
            # records written before impression times were kept: the deadline stands in
            partial.count(rec["g"], rec["a"], False, rec["d"], keep_days, rec.get("t", rec["d"]),
                          _context(rec))  # fmt: skip
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


def sum_discounted(
    partials: Iterable[Partial], half_life_ms: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """(S, K) discounted successes and failures summed over partitions, and their reference.

    Every partial is first decayed to the common reference — the latest impression time any
    partial counted — so the sum is the same as one partial that counted every event.
    Partials kept with another half-life (a worker not yet restarted with the new setting)
    contribute nothing rather than a mis-weighted count.
    """
    kept = [p for p in partials if p.half_life_ms == float(half_life_ms)]
    if not kept:
        raise ValueError(f"no partials with discounted counts at half-life {half_life_ms} ms")
    ref = max(p.discount_ref for p in kept)
    successes = np.zeros_like(kept[0].d_successes)
    failures = np.zeros_like(kept[0].d_failures)
    for p in kept:
        s, f = p.discounted_at(ref)
        successes += s
        failures += f
    return successes, failures, ref


def sum_context(
    partials: Iterable[Partial], dim: int, half_life_ms: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(S, K, D, D) Σ w x xᵀ, (S, K, D) Σ w r x and (S, K) counts over partitions, or None.

    ``w`` is 1, or with a half-life the discount weight at the common (latest) reference:
    like :func:`sum_discounted`, every partial is decayed to it before summing.
    """
    kept = [p for p in partials if p.ctx_dim == dim and p.half_life_ms == float(half_life_ms)]
    if not kept:
        return None
    ref = max(p.discount_ref for p in kept)
    xx = np.zeros_like(kept[0].xx)
    xr = np.zeros_like(kept[0].xr)
    n = np.zeros_like(kept[0].ctx_trials)
    for p in kept:
        factor = 1.0
        if half_life_ms > 0:
            factor = float(np.exp2(-max(0, ref - p.discount_ref) / half_life_ms))
        xx += factor * p.xx
        xr += factor * p.xr
        n += p.ctx_trials
    return xx, xr, n

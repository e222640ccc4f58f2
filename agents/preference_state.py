"""The per-user value of the preferences table, packed into compact bytes.

One value holds everything needed to apply an event at most once, so that the guard and
the update land in the same changelog record (at-least-once delivery, idempotent effect):

* the last applied source offset per input topic — a replay from an older committed offset
  skips what was applied;
* the hashes of the user's recent event ids with their arrival time (seconds) — the same
  event produced again (at another offset) is applied once. Ids are kept for a horizon
  (``LOOPWISE_DEDUPE_HORIZON_S``, and at least the last ``LOOPWISE_DEDUPE_IDS``): a
  duplicate that arrives later than that is not recognised.

The version is deterministic: it derives from the applied offsets (:meth:`event_version`),
so a replay that rebuilds a state after a crash gives it the same version it had, and a
Redis value written before the crash never looks newer than the rebuilt one.

It also holds the implicit-feedback window still open (the weighted sum of its signals),
the segment last published, and the partition the key lives on (timers write the table
outside stream iteration and must name it).

Layout (little-endian): header ``<qqqqqqqdHHHHH`` = version, interactions, last_ts_ms,
last_active_ms, explicit_offset, implicit_offset, window_opened_ms, window_weight,
partition, segment code, dim, n_ids, has_window; then n_ids uint64 id hashes; dim float32
vector; n_ids uint32 arrival seconds; and, when a window is open, dim float32 window sum.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

from agents.learning.segments import SEGMENTS

_HEADER = struct.Struct("<qqqqqqqdHHHHH")
TOPIC_SLOTS = {"feedback.explicit": 0, "feedback.implicit": 1}
NO_SEGMENT = 0xFFFF


def event_id_hash(event_id: str) -> int:
    """64-bit hash of an event id (blake2b, so it is stable across processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass
class PreferenceState:
    vector: np.ndarray
    version: int = 0
    interactions: int = 0
    last_ts: int = 0
    last_active: int = 0
    offsets: list[int] = field(default_factory=lambda: [-1, -1])
    recent_ids: list[int] = field(default_factory=list)
    window_opened: int = 0
    window_weight: float = 0.0
    window_sum: np.ndarray | None = None
    partition: int = 0
    segment: str | None = None
    recent_seen: list[int] = field(default_factory=list)  # arrival time (s) of each id

    @classmethod
    def empty(cls, dim: int) -> PreferenceState:
        return cls(vector=np.zeros(dim, dtype=np.float32))

    @property
    def has_window(self) -> bool:
        return self.window_sum is not None

    def pack(self) -> bytes:
        vec = np.asarray(self.vector, dtype=np.float32)
        segment = NO_SEGMENT if self.segment is None else SEGMENTS.index(self.segment)
        header = _HEADER.pack(
            self.version, self.interactions, self.last_ts, self.last_active,
            self.offsets[0], self.offsets[1], self.window_opened, self.window_weight,
            self.partition, segment, vec.shape[0], len(self.recent_ids), int(self.has_window),
        )  # fmt: skip
        parts = [
            header,
            np.asarray(self.recent_ids, dtype=np.uint64).tobytes(),
            vec.tobytes(),
            # one arrival time per id (0 = unknown), so the layout never goes out of step
            np.resize(np.asarray(self.recent_seen, dtype=np.uint32), len(self.recent_ids))
            .astype(np.uint32)
            .tobytes(),
        ]
        if self.window_sum is not None:
            parts.append(np.asarray(self.window_sum, dtype=np.float32).tobytes())
        return b"".join(parts)

    @classmethod
    def unpack(cls, blob: bytes) -> PreferenceState:
        (version, interactions, last_ts, last_active, off_e, off_i, opened, weight,
         partition, segment, dim, n_ids, has_window) = _HEADER.unpack_from(blob)  # fmt: skip
        pos = _HEADER.size
        ids = np.frombuffer(blob, dtype=np.uint64, count=n_ids, offset=pos).tolist()
        pos += 8 * n_ids
        vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
        pos += 4 * dim
        seen = np.frombuffer(blob, dtype=np.uint32, count=n_ids, offset=pos).tolist()
        pos += 4 * n_ids
        window = (
            np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
            if has_window
            else None
        )
        return cls(
            vec, version, interactions, last_ts, last_active, [off_e, off_i], ids,
            opened, weight, window, partition,
            None if segment == NO_SEGMENT else SEGMENTS[segment], seen,
        )  # fmt: skip

    def seen(self, topic_slot: int, offset: int, id_hash: int) -> bool:
        """True when this event was already applied (by offset or by event id)."""
        return offset <= self.offsets[topic_slot] or id_hash in self.recent_ids

    def remember(
        self, topic_slot: int, offset: int, id_hash: int, arrived_s: int, min_ids: int,
        horizon_s: float,
    ) -> None:  # fmt: skip
        """Record an applied event; forget ids older than the horizon beyond the last
        ``min_ids``."""
        self.offsets[topic_slot] = max(self.offsets[topic_slot], offset)
        self.recent_ids.append(id_hash)
        self.recent_seen.append(arrived_s)
        horizon = arrived_s - horizon_s
        drop = 0
        while len(self.recent_ids) - drop > min_ids and self.recent_seen[drop] < horizon:
            drop += 1
        if drop:
            del self.recent_ids[:drop], self.recent_seen[:drop]

    def event_version(self) -> int:
        """The version after applying events: grows by 1024 per applied offset, leaving
        room for timer-driven changes (window closes, segment moves) in between."""
        return ((self.offsets[0] + 1) + (self.offsets[1] + 1)) << 10

    def add_to_window(self, signal_sum: np.ndarray, weight: float, now_ms: int) -> None:
        """Accumulate implicit signals (Σ w·s·x and Σ w) into the open window."""
        if self.window_sum is None:
            self.window_sum = np.zeros_like(self.vector)
            self.window_weight = 0.0
            self.window_opened = now_ms
        self.window_sum = self.window_sum + signal_sum.astype(np.float32)
        self.window_weight += weight

    def close_window(self) -> tuple[np.ndarray, float] | None:
        """The window's (Σ w·s·x, Σ w), emptied; None when no window is open."""
        if self.window_sum is None:
            return None
        closed = (self.window_sum.astype(np.float64), self.window_weight)
        self.window_sum, self.window_weight, self.window_opened = None, 0.0, 0
        return closed

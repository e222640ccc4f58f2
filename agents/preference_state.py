"""The per-user value of the preferences table, packed into compact bytes.

One value holds everything needed to apply an event at most once, so that the guard and
the update land in the same changelog record (at-least-once delivery, idempotent effect):

* the last applied source offset per input topic — a replay from an older committed offset
  skips what was applied;
* the hashes of the user's most recent event ids — the same event produced twice (at two
  offsets) is applied once. Only the last ``max_ids`` ids are kept: a duplicate that
  arrives after that many newer events of the same user is not recognised.

Layout (little-endian): header ``<qqqqqHH`` = version, interactions, last_ts_ms,
explicit_offset, implicit_offset, dim, n_ids; then n_ids uint64 id hashes; then dim float32.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

_HEADER = struct.Struct("<qqqqqHH")
TOPIC_SLOTS = {"feedback.explicit": 0, "feedback.implicit": 1}


def event_id_hash(event_id: str) -> int:
    """64-bit hash of an event id (blake2b, so it is stable across processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass
class PreferenceState:
    vector: np.ndarray
    version: int = 0
    interactions: int = 0
    last_ts: int = 0
    offsets: list[int] = field(default_factory=lambda: [-1, -1])
    recent_ids: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, dim: int) -> PreferenceState:
        return cls(vector=np.zeros(dim, dtype=np.float32))

    def pack(self) -> bytes:
        vec = np.asarray(self.vector, dtype=np.float32)
        header = _HEADER.pack(
            self.version,
            self.interactions,
            self.last_ts,
            self.offsets[0],
            self.offsets[1],
            vec.shape[0],
            len(self.recent_ids),
        )
        ids = np.asarray(self.recent_ids, dtype=np.uint64).tobytes()
        return header + ids + vec.tobytes()

    @classmethod
    def unpack(cls, blob: bytes) -> PreferenceState:
        version, interactions, last_ts, off_e, off_i, dim, n_ids = _HEADER.unpack_from(blob)
        pos = _HEADER.size
        ids = np.frombuffer(blob, dtype=np.uint64, count=n_ids, offset=pos).tolist()
        pos += 8 * n_ids
        vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
        return cls(vec, version, interactions, last_ts, [off_e, off_i], ids)

    def seen(self, topic_slot: int, offset: int, id_hash: int) -> bool:
        """True when this event was already applied (by offset or by event id)."""
        return offset <= self.offsets[topic_slot] or id_hash in self.recent_ids

    def remember(self, topic_slot: int, offset: int, id_hash: int, max_ids: int) -> None:
        self.offsets[topic_slot] = max(self.offsets[topic_slot], offset)
        self.recent_ids.append(id_hash)
        if len(self.recent_ids) > max_ids:
            del self.recent_ids[: len(self.recent_ids) - max_ids]

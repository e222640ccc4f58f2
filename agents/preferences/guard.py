"""The guard: rate limits and spam checks on feedback before anything learns from it.

Runs inside the feedback agent's batch (the events are validated once) and uses the pure
checks of :mod:`agents.learning.spam`. Per user it keeps a :class:`GuardState` in the
preferences table under ``g|<user>`` (same partition as the user; ``|`` cannot occur in an
id), with the offsets it has observed and the offsets it flagged. Flagged events go to the
``quarantine`` topic with their score and reasons and never train a model.

Replays: an event at or below the guard's offset watermark was judged before; its verdict
is read back from the flagged offsets instead of being judged again, so a crash between the
guard's write and the preference state's write cannot let a flagged event through.

Guard states of users from whom nothing arrived for longer than the rate windows (an hour,
by the Kafka timestamps of their events) are dropped by the periodic scan, so their memory
follows the active users, not all users.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from agents.learning.spam import SEVERITY_NAMES, Guard, GuardConfig, GuardState, item_key
from streams.boundary import Boundary, Valid
from streams.codecs import dead_letter, encode
from streams.metrics import QUARANTINED

log = logging.getLogger(__name__)
KEY_PREFIX = "g|"
MAX_FLAGGED_KEPT = 256
_MAGIC = b"G2"
# magic, partition, events kept, minutes kept, flagged offsets, identical-rating run length,
# events observed, run rating (NaN: none), offset watermark per input slot, last arrival (s)
_HEAD = struct.Struct("<2sHHHHIqdqqd")
IDLE_DROP_S = 3600.0


def guard_key(user: str) -> str:
    return f"{KEY_PREFIX}{user}"


@dataclass
class UserGuard:
    """A user's guard state plus its replay bookkeeping."""

    state: GuardState = field(default_factory=GuardState)
    watermark: list[int] = field(default_factory=lambda: [-1, -1])  # per input topic slot
    flagged: list[list[int]] = field(default_factory=list)  # [slot, offset] judged bad
    last_s: float = 0.0
    partition: int = 0

    def to_bytes(self) -> bytes:
        """Binary: a header (:data:`_HEAD`) and the state's arrays as raw little-endian
        numbers. Written for every user of every batch, so it must be cheap: the JSON it
        replaced cost ~35 µs per user and batch to read and write, this ~6 µs."""
        s = self.state
        flagged = np.asarray(self.flagged, dtype="<i8").reshape(-1)
        head = _HEAD.pack(
            _MAGIC, self.partition, s.ts.size, s.minutes.size, flagged.size // 2,
            s.run_length, s.n_events, s.run_rating, self.watermark[0], self.watermark[1],
            self.last_s,
        )  # fmt: skip
        return b"".join(
            (
                head,
                s.ts.astype("<f8", copy=False).tobytes(),
                s.items.astype("<i8", copy=False).tobytes(),
                s.ratings.astype("<f8", copy=False).tobytes(),
                s.minutes.astype("<i8", copy=False).tobytes(),
                s.minute_counts.astype("<i8", copy=False).tobytes(),
                flagged.tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> UserGuard:
        if blob[:1] == b"{":  # the JSON form written before the binary one
            data = orjson.loads(blob)
            return cls(GuardState.from_dict(data["s"]), data["w"], data["f"], data["t"],
                       data["p"])  # fmt: skip
        (magic, partition, n_ts, n_min, n_flagged, run_length, n_events, run_rating, w0, w1,
         last_s) = _HEAD.unpack_from(blob)  # fmt: skip
        if magic != _MAGIC:
            raise ValueError(f"not a guard state (magic {magic!r})")
        state = GuardState.__new__(GuardState)  # every field is set below
        pos = _HEAD.size
        # Read-only views of the blob: the guard replaces these arrays, never writes them.
        state.ts = np.frombuffer(blob, "<f8", n_ts, pos)
        state.items = np.frombuffer(blob, "<i8", n_ts, pos + 8 * n_ts)
        state.ratings = np.frombuffer(blob, "<f8", n_ts, pos + 16 * n_ts)
        pos += 24 * n_ts
        state.minutes = np.frombuffer(blob, "<i8", n_min, pos)
        state.minute_counts = np.frombuffer(blob, "<i8", n_min, pos + 8 * n_min)
        pos += 16 * n_min
        flagged = np.frombuffer(blob, "<i8", 2 * n_flagged, pos).reshape(-1, 2).tolist()
        state.run_rating, state.run_length, state.n_events = run_rating, run_length, n_events
        return cls(state, [w0, w1], flagged, last_s, partition)


@dataclass(frozen=True)
class Verdict:
    score: float
    reasons: list[str]


class FeedbackGuard:
    def __init__(self, config: GuardConfig, boundary: Boundary, quarantine: Any) -> None:
        self.guard = Guard(config)
        self.boundary = boundary
        self.quarantine = quarantine

    def judge(
        self,
        valid: list[Valid],
        slot_of: dict[str, int],
        load: Any,
    ) -> tuple[dict[int, Verdict], dict[str, UserGuard]]:
        """Verdicts for the flagged events (by index into ``valid``) and the guard states to
        write back. ``load(key)`` reads a table value."""
        users: dict[str, UserGuard] = {}
        flagged: dict[int, Verdict] = {}
        new_idx: list[int] = []
        for i, v in enumerate(valid):
            user = v.payload["user_id"]
            g = users.get(user)
            if g is None:
                blob = load(guard_key(user))
                g = users[user] = UserGuard.from_bytes(blob) if blob else UserGuard()
                g.partition = v.partition
            slot = slot_of[v.topic]
            if v.offset <= g.watermark[slot]:
                if [slot, v.offset] in g.flagged:
                    flagged[i] = Verdict(0.0, ["judged before the replay"])
                continue
            new_idx.append(i)
        if not new_idx:
            return flagged, users
        names = list(users)
        row = {u: r for r, u in enumerate(names)}
        events = [valid[i] for i in new_idx]
        result = self.guard.observe(
            [users[u].state for u in names],
            np.array([row[v.payload["user_id"]] for v in events], dtype=np.int64),
            np.array([v.payload["ts"] / 1000.0 for v in events]),
            np.array([item_key(v.payload["item_id"]) for v in events], dtype=np.int64),
            np.array(
                [
                    float(v.payload["value"]) if v.payload["kind"] == "rating" else np.nan
                    for v in events
                ]
            ),
        )
        for j, (i, v) in enumerate(zip(new_idx, events, strict=True)):
            g = users[v.payload["user_id"]]
            slot = slot_of[v.topic]
            g.watermark[slot] = max(g.watermark[slot], v.offset)
            # When it reached Kafka, not its event time: the scan drops the states of users
            # from whom nothing arrived for an hour, and a backfill of old events is activity.
            g.last_s = max(g.last_s, v.timestamp)
            if result.flagged[j] or result.rate_limited[j]:
                reasons = [n for n, sev in zip(SEVERITY_NAMES, result.severities[j], strict=True)
                           if sev > 0]  # fmt: skip
                if result.rate_limited[j]:
                    reasons.append("rate_limit")
                flagged[i] = Verdict(float(result.score[j]), reasons)
                g.flagged.append([slot, v.offset])
                del g.flagged[:-MAX_FLAGGED_KEPT]
        return flagged, users

    async def quarantine_events(self, valid: list[Valid], flagged: dict[int, Verdict]) -> None:
        for i, verdict in flagged.items():
            msg = valid[i].event.message
            record = dead_letter(
                raw=msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                key=msg.key, kind="quarantined",
                message=f"reliability score {verdict.score:.0f}/100: {', '.join(verdict.reasons)}",
                max_record_bytes=self.boundary.max_record_bytes,
            )  # fmt: skip
            await self.quarantine.send(key=msg.topic.encode(), value=encode(record))
            for reason in verdict.reasons or ["score"]:
                QUARANTINED.labels(topic=msg.topic, reason=reason).inc()

"""Table values and pure steps of the customer choice loop (no I/O; used by the agent).

The loop runs in three keyed stages, because the state it needs lives under three keys:

1. **sessions** (key ``session_id``; ``recs.sessions`` + ``recs.choices`` +
   ``recs.interactions``, co-partitioned): joins a session with its choice and interactions
   (:class:`SessionState`). A choice or interaction that arrives before its session waits in
   the value (:class:`Pending`, with its original bytes and coordinates) and is dead-lettered
   as ``missing_session`` when the session has not come within the wait. When the choice
   arrives (a candidate, or ``null`` for "no choice"), or a session passes its TTL without
   one ("abandoned", also no choice), the session is complete and one *observation* goes to
   ``choices.customer_observations`` keyed by customer. Interactions after the choice go on
   as small interaction observations.
2. **customers** (key ``customer_id``): behaviour and stated preferences per customer
   (:class:`CustomerState`) → segment (:func:`classify_customers`, the rules of
   :mod:`agents.learning.customer_segments`); each observation goes on to
   ``choices.segment_observations`` keyed by the customer's segment, tagged with its source
   coordinates (partition, offset in stage 2's input).
3. **segments** (key ``segment``): the per-segment conditional-logit model
   (:mod:`agents.learning.choice_model`), rolling analytics and alert state
   (:class:`SegmentState`).

Idempotency (at-least-once delivery) is kept inside each value:

* stage 1: the last applied offset per input topic and the hashes of the session's recent
  event ids (a replay or a re-sent event is skipped). Each observation carries the
  coordinates of the event that produced it (``src`` = topic slot, partition, offset); a
  replayed event re-sends exactly the observations it produced (a crash may have come
  between the table write and the send), a re-sent event (new offset) sends nothing;
* stage 2: per customer, the highest stage-1 source offset applied per (topic slot,
  partition) — stage 1 sends a partition's observations in offset order — so a re-sent
  observation is recognised however old it is; for its own replays, the last applied offset
  and a ring of the recent observations' ids with the segment each was forwarded with, so a
  replayed observation is forwarded again with the same segment and source coordinates;
* stage 3: per source partition of stage 2, the highest source offset applied (stage 2
  forwards a partition's observations in offset order), so any re-forwarded observation is
  recognised however long ago it was first applied.
"""

from __future__ import annotations

import base64
import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from agents.learning.choice_model import (
    ChoiceModelConfig,
    ChoiceModelState,
    PublishedWeights,
    absorb,
    initial_state,
    publish_weights,
)
from agents.learning.customer_segments import (
    SEGMENTS,
    BehaviourSummary,
    SegmentAssignment,
    SegmentRules,
    classify_segments,
    summarise_behaviour,
)
from agents.preferences.state import event_id_hash

__all__ = [
    "ANALYTICS_FIELDS",
    "COMPLEXITIES",
    "INTERACTION_FIELDS",
    "TOPIC_SLOTS",
    "AlertThresholds",
    "ChoiceRejection",
    "CustomerState",
    "Pending",
    "SegmentState",
    "SessionState",
    "event_id_hash",
]

SESSION, CHOICE, INTERACTION = 0, 1, 2
TIMER = 3  # source slot of observations made by the TTL scan (abandoned sessions)
TOPIC_SLOTS = {"recs.sessions": SESSION, "recs.choices": CHOICE, "recs.interactions": INTERACTION}
COMPLEXITIES = ("simple", "moderate", "complex")
INTERACTION_KINDS = ("viewed", "expanded", "compared", "contacted")
#: Interaction counters of a session (and of an analytics bucket), in this order.
INTERACTION_FIELDS = (
    "interactions",
    "time_spent_sum",
    "helpful_sum",
    "helpful_n",
    "viewed",
    "expanded",
    "compared",
    "contacted",
    "detailed_explanations",
)
#: Counters of an analytics bucket, in this order.
ANALYTICS_FIELDS = (
    "sessions",
    "conversions",
    "rank_sum",
    "satisfaction_sum",
    "satisfaction_n",
    "decision_time_sum",
    "decision_time_n",
    "abandoned",
    *INTERACTION_FIELDS,
)
_A = {name: i for i, name in enumerate(ANALYTICS_FIELDS)}
_I = {name: i for i, name in enumerate(INTERACTION_FIELDS)}
_INTERACTION_OFFSET = _A["interactions"]

MAX_IDS = 64  # recent event / observation ids kept per key
MAX_PENDING = 64  # events waiting for one session; more are dead-lettered at once
MAX_LATE = 32  # interaction observations after the choice kept for re-sending


class ChoiceRejection(Exception):
    """An input the choice loop cannot use; it goes to the dead-letter topic."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


# ============================================================================ stage 1: sessions


@dataclass
class Pending:
    """A choice or interaction waiting for its session, with what a dead letter needs."""

    slot: int
    payload: dict[str, Any]
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    arrived_ms: int
    id_hash: int

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "payload": self.payload,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": _b64(self.key),
            "raw": _b64(self.raw),
            "arrived": self.arrived_ms,
            "id": self.id_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(
            slot=data["slot"],
            payload=data["payload"],
            topic=data["topic"],
            partition=data["partition"],
            offset=data["offset"],
            key=_unb64(data["key"]),
            raw=_unb64(data["raw"]) or b"",
            arrived_ms=data["arrived"],
            id_hash=data["id"],
        )


@dataclass
class SessionState:
    """One session: what was shown, the choice, interactions, waiting events, guards.

    ``session`` holds the parsed session (:func:`parse_session`); ``choice`` the applied
    choice (``chosen`` is the candidate index, -1 for none); ``counters`` the interaction
    counters (:data:`INTERACTION_FIELDS`) up to the choice; ``late`` the interaction
    observations sent after it. ``completed_ms`` is the wall-clock time the session was
    completed (0 while open), ``completed_by`` the source coordinates of the event that
    completed it, ``outcome`` ``choice``, ``none`` or ``abandoned``.
    """

    partition: int = 0
    offsets: list[int] = field(default_factory=lambda: [-1, -1, -1])
    recent_ids: list[int] = field(default_factory=list)
    session: dict[str, Any] | None = None
    choice: dict[str, Any] | None = None
    counters: list[float] = field(default_factory=lambda: [0.0] * len(INTERACTION_FIELDS))
    pending: list[Pending] = field(default_factory=list)
    created_ms: int = 0
    completed_ms: int = 0
    completed_by: list[int] | None = None
    outcome: str = ""
    late: list[dict[str, Any]] = field(default_factory=list)
    touched_ms: int = 0

    # ------------------------------------------------------------------ bytes

    def pack(self) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "p": self.partition,
                "off": self.offsets,
                "ids": self.recent_ids,
                "session": self.session,
                "choice": self.choice,
                "counters": self.counters,
                "pending": [p.to_json() for p in self.pending],
                "created": self.created_ms,
                "completed": self.completed_ms,
                "completed_by": self.completed_by,
                "outcome": self.outcome,
                "late": self.late,
                "touched": self.touched_ms,
            }
        )

    @classmethod
    def unpack(cls, blob: bytes) -> SessionState:
        d = orjson.loads(blob)
        if d.get("v") != 1:
            raise ValueError(f"unsupported session state version {d.get('v')}")
        return cls(
            partition=d["p"],
            offsets=d["off"],
            recent_ids=d["ids"],
            session=d["session"],
            choice=d["choice"],
            counters=d["counters"],
            pending=[Pending.from_json(p) for p in d["pending"]],
            created_ms=d["created"],
            completed_ms=d["completed"],
            completed_by=d["completed_by"],
            outcome=d["outcome"],
            late=d["late"],
            touched_ms=d["touched"],
        )

    # ------------------------------------------------------------------ guards

    @property
    def completed(self) -> bool:
        return self.completed_ms > 0

    def seen(self, slot: int, offset: int, id_hash: int) -> bool:
        """True when this event was already applied (by offset or by event id)."""
        return offset <= self.offsets[slot] or id_hash in self.recent_ids

    def remember(self, slot: int, offset: int, id_hash: int) -> None:
        self.offsets[slot] = max(self.offsets[slot], offset)
        self.recent_ids.append(id_hash)
        if len(self.recent_ids) > MAX_IDS:
            del self.recent_ids[: len(self.recent_ids) - MAX_IDS]

    def forget(self, id_hash: int) -> None:
        """Drop an event id (a dead-lettered event may be replayed from the dead letters)."""
        self.recent_ids = [h for h in self.recent_ids if h != id_hash]

    # ------------------------------------------------------------------ waiting events

    def earliest_pending(self) -> int | None:
        return min((p.arrived_ms for p in self.pending), default=None)

    def take_due_pending(self, now_ms: int, wait_ms: int) -> list[Pending]:
        """Remove and return the waiting events older than the wait (ids forgotten)."""
        due = [p for p in self.pending if p.arrived_ms <= now_ms - wait_ms]
        if due:
            self.pending = [p for p in self.pending if p.arrived_ms > now_ms - wait_ms]
            for p in due:
                self.forget(p.id_hash)
        return due


def parse_session(payload: dict[str, Any], factors: Sequence[str]) -> dict[str, Any]:
    """The parts of a validated ``recs.sessions`` event the loop keeps.

    Checks what the schema cannot: candidate ids and ranks are distinct, and every candidate
    scores every configured factor (extra factors are ignored).

    >>> s = parse_session({"session_id": "s", "customer_id": "c", "complexity": "simple",
    ...     "algorithm_version": "v1", "ts": 5, "stated_preferences": {"price": 0.8},
    ...     "candidates": [{"candidate_id": "a", "rank": 1, "predicted_score": 0.9,
    ...                     "factor_scores": {"price": 0.2, "quality": 1.0}}]},
    ...     ("price", "quality"))
    >>> s["X"], s["stated"], s["ranks"]
    ([[0.2, 1.0]], [0.8, 0.0], [1])
    """
    candidates = payload["candidates"]
    ids = [c["candidate_id"] for c in candidates]
    ranks = [int(c["rank"]) for c in candidates]
    if len(set(ids)) != len(ids):
        raise ChoiceRejection("schema_violation", "candidate ids of the session are not distinct")
    if len(set(ranks)) != len(ranks):
        raise ChoiceRejection("schema_violation", "candidate ranks of the session are not distinct")
    X = []
    for c in candidates:
        scores = c["factor_scores"]
        missing = [f for f in factors if f not in scores]
        if missing:
            raise ChoiceRejection(
                "dimension_mismatch",
                f"candidate {c['candidate_id']!r} has no score for {', '.join(missing)} "
                f"(LOOPWISE_CHOICE_FACTORS={','.join(factors)})",
            )
        X.append([float(scores[f]) for f in factors])
    stated = payload.get("stated_preferences")
    return {
        "customer_id": payload["customer_id"],
        "complexity": payload["complexity"],
        "algorithm_version": payload["algorithm_version"],
        "ts": int(payload["ts"]),
        "stated": None if stated is None else [float(stated.get(f, 0.0)) for f in factors],
        "cands": ids,
        "ranks": ranks,
        "X": X,
    }


def _interaction_counters(payload: dict[str, Any]) -> list[float]:
    counters = [0.0] * len(INTERACTION_FIELDS)
    counters[_I["interactions"]] = 1.0
    counters[_I["time_spent_sum"]] = float(payload.get("time_spent_seconds", 0.0))
    if "helpful_rating" in payload:
        counters[_I["helpful_sum"]] = float(payload["helpful_rating"])
        counters[_I["helpful_n"]] = 1.0
    counters[_I[payload["kind"]]] = 1.0
    if payload.get("explanation_level") == "detailed":
        counters[_I["detailed_explanations"]] = 1.0
    return counters


def session_observation(session_id: str, state: SessionState) -> dict[str, Any]:
    """The observation of a completed session (stage 1 → stage 2)."""
    s, c = state.session, state.choice
    assert s is not None and state.completed
    chosen = -1 if c is None else int(c["chosen"])
    return {
        "id": f"obs:{session_id}",
        "kind": "session",
        "session_id": session_id,
        "customer_id": s["customer_id"],
        "complexity": s["complexity"],
        "ts": s["ts"],
        "X": s["X"],
        "chosen": chosen,
        "rank": s["ranks"][chosen] if chosen >= 0 else None,
        "outcome": state.outcome,
        "satisfaction": None if c is None else c.get("satisfaction"),
        "decision_time": None if c is None else c.get("decision_time"),
        "stated": s["stated"],
        "important": None if c is None else c.get("important"),
        "counters": state.counters,
        "src": state.completed_by,
    }


def _late_observation(
    session_id: str, state: SessionState, payload: dict[str, Any], src: list[int]
) -> dict[str, Any]:
    s = state.session
    assert s is not None
    return {
        "id": f"int:{session_id}:{payload['event_id']}",
        "kind": "interaction",
        "session_id": session_id,
        "customer_id": s["customer_id"],
        "complexity": s["complexity"],
        "ts": s["ts"],
        "counters": _interaction_counters(payload),
        "src": src,
    }


def apply_choice(
    state: SessionState,
    session_id: str,
    payload: dict[str, Any],
    factors: Sequence[str],
    now_ms: int,
    src: list[int],
) -> list[dict[str, Any]]:
    """Apply a choice to a known session; returns the observation of the completed session.

    ``src`` is ``[topic slot, partition, offset]`` of the event being processed (the one
    that completes the session; the observation carries it).
    """
    s = state.session
    assert s is not None
    if state.completed:
        raise ChoiceRejection(
            "other", f"session {session_id!r} is already complete ({state.outcome})"
        )
    chosen_id = payload["chosen_candidate_id"]
    if chosen_id is None:
        chosen = -1
    elif chosen_id in s["cands"]:
        chosen = s["cands"].index(chosen_id)
    else:
        raise ChoiceRejection(
            "schema_violation", f"chosen candidate {chosen_id!r} was not shown in the session"
        )
    important = payload.get("important_factors")
    state.choice = {
        "chosen": chosen,
        "ts": int(payload["ts"]),
        "satisfaction": payload.get("satisfaction"),
        "decision_time": payload.get("decision_time_seconds"),
        "important": None if not important else [1.0 if f in important else 0.0 for f in factors],
    }
    state.completed_ms = now_ms
    state.completed_by = list(src)
    state.outcome = "choice" if chosen >= 0 else "none"
    return [session_observation(session_id, state)]


def apply_interaction(
    state: SessionState, session_id: str, payload: dict[str, Any], src: list[int]
) -> list[dict[str, Any]]:
    """Apply an interaction to a known session; after the choice it is its own observation."""
    s = state.session
    assert s is not None
    if payload["candidate_id"] not in s["cands"]:
        raise ChoiceRejection(
            "schema_violation",
            f"interaction with candidate {payload['candidate_id']!r}, not shown in the session",
        )
    if state.completed:
        obs = _late_observation(session_id, state, payload, list(src))
        state.late.append(obs)
        if len(state.late) > MAX_LATE:
            del state.late[: len(state.late) - MAX_LATE]
        return [obs]
    counters = _interaction_counters(payload)
    state.counters = [a + b for a, b in zip(state.counters, counters, strict=True)]
    return []


def apply_session(
    state: SessionState,
    session_id: str,
    session: dict[str, Any],
    factors: Sequence[str],
    now_ms: int,
    src: list[int],
) -> tuple[list[dict[str, Any]], list[tuple[Pending, ChoiceRejection]]]:
    """Set the session and apply the events that waited for it, in arrival order.

    Returns the observations produced (their source is the session event, ``src``) and the
    waiting events that turned out invalid.
    """
    if state.session is not None:
        raise ChoiceRejection(
            "other", f"session {session_id!r} is already known (its first event is kept)"
        )
    state.session = session
    state.created_ms = now_ms
    observations: list[dict[str, Any]] = []
    rejected: list[tuple[Pending, ChoiceRejection]] = []
    waiting, state.pending = state.pending, []
    # Interactions before the choice count toward the session; a choice completes it.
    order = sorted(waiting, key=lambda p: (p.slot == CHOICE, p.arrived_ms, p.offset))
    for p in order:
        try:
            if p.slot == CHOICE:
                observations += apply_choice(state, session_id, p.payload, factors, now_ms, src)
            else:
                observations += apply_interaction(state, session_id, p.payload, src)
        except ChoiceRejection as exc:
            rejected.append((p, exc))
    return observations, rejected


def abandon(state: SessionState, session_id: str, now_ms: int) -> dict[str, Any]:
    """Close an open session that passed its TTL as "no choice"; returns its observation."""
    assert state.session is not None and not state.completed
    state.completed_ms = now_ms
    state.completed_by = [TIMER, state.partition, now_ms]
    state.outcome = "abandoned"
    return session_observation(session_id, state)


def replayed_observations(
    session_id: str, state: SessionState, src: Sequence[int]
) -> list[dict[str, Any]]:
    """The observations the event at ``src`` produced when it was first applied.

    Re-sent when that event is replayed (after a crash, the send may never have happened);
    stage 2 drops those it already has by their source coordinates.
    """
    src = list(src)
    found = [o for o in state.late if o["src"] == src]
    if state.completed and state.session is not None and state.completed_by == src:
        found.insert(0, session_observation(session_id, state))
    return found


# ============================================================================ stage 2: customers


@dataclass
class CustomerState:
    """Per-customer evidence for the segment rules, plus the dedupe guards.

    ``sources`` maps ``"<slot>:<partition>"`` of stage 1's input to the highest offset whose
    observation was applied. ``recent`` holds ``[observation id hash, segment code]`` pairs,
    newest last: the segment each recent observation was forwarded with, so that a replay
    forwards it identically.
    """

    factors: int
    partition: int = 0
    offset: int = -1
    sources: dict[str, int] = field(default_factory=dict)
    recent: list[list[int]] = field(default_factory=list)
    stated_sum: list[float] = field(default_factory=list)
    stated_n: int = 0
    chosen_sum: list[float] = field(default_factory=list)
    shown_sum: list[float] = field(default_factory=list)
    sessions: int = 0
    choices: int = 0
    level_sum: float = 0.0
    level_n: int = 0
    segment: str | None = None
    rule: str = ""
    evidence: str = ""
    version: int = 0
    last_change: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("stated_sum", "chosen_sum", "shown_sum"):
            if not getattr(self, name):
                setattr(self, name, [0.0] * self.factors)

    def pack(self) -> bytes:
        return orjson.dumps({"v": 1, **self.__dict__})

    @classmethod
    def unpack(cls, blob: bytes) -> CustomerState:
        d = orjson.loads(blob)
        if d.pop("v", None) != 1:
            raise ValueError("unsupported customer state version")
        return cls(**d)

    def seen_source(self, src: Sequence[int]) -> bool:
        """True when an observation from these stage-1 coordinates was already applied."""
        slot, partition, offset = src
        return offset <= self.sources.get(f"{slot}:{partition}", -1)

    def advance_source(self, src: Sequence[int]) -> None:
        slot, partition, offset = src
        key = f"{slot}:{partition}"
        self.sources[key] = max(self.sources.get(key, -1), offset)

    def lookup(self, id_hash: int) -> int | None:
        """Segment code an observation was forwarded with, if it is among the recent ones."""
        for h, code in reversed(self.recent):
            if h == id_hash:
                return code
        return None

    def remember(self, offset: int, id_hash: int, segment_code: int) -> None:
        self.offset = max(self.offset, offset)
        self.recent.append([id_hash, segment_code])
        if len(self.recent) > MAX_IDS:
            del self.recent[: len(self.recent) - MAX_IDS]


def per_session_behaviour(
    observations: Sequence[dict[str, Any]], n_factors: int, price_index: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chosen scores, mean shown scores and chosen price level of each chosen session.

    Only observations with a chosen candidate may be passed. Uses
    :func:`agents.learning.customer_segments.summarise_behaviour` with one "customer" per
    session, so the sums over a customer's sessions equal its summary.
    """
    n = len(observations)
    if n == 0:
        empty = np.zeros((0, n_factors))
        return empty, empty, np.zeros(0)
    X, mask = pad([o["X"] for o in observations], n_factors)
    chosen = np.array([o["chosen"] for o in observations], dtype=np.int64)
    b = summarise_behaviour(X, mask, chosen, np.arange(n), n, price_index)
    return b.chosen_mean, b.shown_mean, b.chosen_price_level


def pad(rows: Sequence[Sequence[Sequence[float]]], n_factors: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged candidate lists → padded ``X`` (n, J, F) and ``mask`` (n, J)."""
    n = len(rows)
    J = max((len(r) for r in rows), default=1)
    X = np.zeros((n, J, n_factors))
    mask = np.zeros((n, J), dtype=bool)
    for i, r in enumerate(rows):
        if r:
            X[i, : len(r)] = r
            mask[i, : len(r)] = True
    return X, mask


def accumulate_customer(
    state: CustomerState,
    observation: dict[str, Any],
    chosen_x: np.ndarray | None,
    shown_mean: np.ndarray | None,
    level: float,
) -> None:
    """Add one session observation to the customer's evidence (interactions add nothing)."""
    if observation["kind"] != "session":
        return
    state.sessions += 1
    for stated in (observation.get("stated"), observation.get("important")):
        if stated is not None and any(v > 0 for v in stated):
            state.stated_sum = [a + float(b) for a, b in zip(state.stated_sum, stated, strict=True)]
            state.stated_n += 1
    if chosen_x is not None and shown_mean is not None:
        state.chosen_sum = [a + float(b) for a, b in zip(state.chosen_sum, chosen_x, strict=True)]
        state.shown_sum = [a + float(b) for a, b in zip(state.shown_sum, shown_mean, strict=True)]
        state.choices += 1
        if math.isfinite(level):
            state.level_sum += float(level)
            state.level_n += 1


def classify_customers(
    states: Sequence[CustomerState], factors: Sequence[str], rules: SegmentRules
) -> SegmentAssignment:
    """Segment of each customer from its accumulated evidence (vectorised)."""
    m, F = len(states), len(factors)
    stated = np.full((m, F), np.nan)
    chosen_mean = np.full((m, F), np.nan)
    shown_mean = np.full((m, F), np.nan)
    n_choices = np.zeros(m, dtype=np.int64)
    level = np.full(m, np.nan)
    for r, s in enumerate(states):
        if s.stated_n:
            stated[r] = np.asarray(s.stated_sum) / s.stated_n
        if s.choices:
            chosen_mean[r] = np.asarray(s.chosen_sum) / s.choices
            shown_mean[r] = np.asarray(s.shown_sum) / s.choices
            n_choices[r] = s.choices
        if s.level_n:
            level[r] = s.level_sum / s.level_n
    behaviour = BehaviourSummary(chosen_mean, shown_mean, n_choices, level)
    return classify_segments(factors, stated, behaviour, rules)


def _item_behaviour(
    items: Sequence[tuple[str, dict[str, Any]]], factors: Sequence[str], rules: SegmentRules
) -> list[tuple[np.ndarray | None, np.ndarray | None, float]]:
    """Per item: chosen scores, mean shown scores and chosen price level (vectorised)."""
    price_index = list(factors).index(rules.price_factor) if rules.price_factor in factors else None
    picked = [o for _, o in items if o["kind"] == "session" and o["chosen"] >= 0 and o["X"]]
    chosen_x, shown_mean, level = per_session_behaviour(picked, len(factors), price_index)
    row = {id(o): r for r, o in enumerate(picked)}
    out: list[tuple[np.ndarray | None, np.ndarray | None, float]] = []
    for _, o in items:
        r = row.get(id(o))
        out.append((None, None, math.nan) if r is None else (chosen_x[r], shown_mean[r], level[r]))
    return out


def observe_customers(
    states: dict[str, CustomerState],
    items: Sequence[tuple[str, dict[str, Any]]],
    factors: Sequence[str],
    rules: SegmentRules,
    now_ms: int,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Add observations one at a time, in order, classifying the customer after each one.

    Returns the segment of each item (the customer's segment right after its observation
    was added: the segment it is fitted in) and the ``customers.segments`` events of the
    changes, in order (``last_change`` holds each customer's latest). Classifying after each
    observation, not after a batch, makes both depend on the order of the observations only,
    not on where a stream's batches begin and end; every intermediate evidence is classified
    in one vectorised call, so it costs no more than classifying once per batch.
    """
    if not items:
        return [], []
    snapshots: list[CustomerState] = []
    for (customer, o), behaviour in zip(items, _item_behaviour(items, factors, rules), strict=True):
        state = states[customer]
        accumulate_customer(state, o, *behaviour)
        # accumulate_customer replaces the evidence lists, never mutates them, so a shallow
        # copy is a snapshot of the evidence after this observation.
        snapshots.append(copy.copy(state))
    result = classify_customers(snapshots, factors, rules)
    segments: list[str] = []
    changes: list[dict[str, Any]] = []
    for k, (customer, _) in enumerate(items):
        state, snap = states[customer], snapshots[k]
        segment = str(result.segments[k])
        state.rule, state.evidence = str(result.rules[k]), str(result.evidence[k])
        if segment != state.segment:
            previous = state.segment
            state.segment = segment
            state.version += 1
            snap.segment, snap.version = segment, state.version
            snap.rule, snap.evidence = state.rule, state.evidence
            state.last_change = segment_change_event(customer, previous, snap, now_ms)
            changes.append(state.last_change)
        segments.append(segment)
    return segments, changes


def segment_change_event(
    customer_id: str, previous: str | None, state: CustomerState, now_ms: int
) -> dict[str, Any]:
    """``customers.segments`` event for the customer's current segment and version."""
    assert state.segment is not None
    return {
        "event_id": f"cseg:{customer_id}:{state.version}",
        "schema_version": 1,
        "ts": now_ms,
        "customer_id": customer_id,
        "previous_segment": previous,
        "segment": state.segment,
        "rule": state.rule,
        "evidence": state.evidence,
        "sessions": state.sessions,
        "choices": state.choices,
        "version": state.version,
    }


def segment_code(segment: str) -> int:
    return SEGMENTS.index(segment)


def segment_name(code: int) -> str:
    return SEGMENTS[code]


# ============================================================================ stage 3: segments


@dataclass(frozen=True)
class AlertThresholds:
    """Alert rules of the choice analytics (see the ``LOOPWISE_CHOICE_ALERT_*`` settings)."""

    conversion_below: float = 0.6
    rank_above: float = 2.0
    confidence_below: float = 0.5
    confidence_period_s: float = 86_400.0
    satisfaction_below: float = 3.5
    min_sessions: int = 20
    repeat_s: float = 3600.0


ALERT_METRICS = (
    "choice_conversion_rate",
    "choice_avg_chosen_rank",
    "choice_satisfaction",
    "choice_learning_confidence",
)


@dataclass
class SegmentState:
    """A segment's choice model, rolling analytics and alert state.

    ``buckets`` maps a bucket start (event time, ms, as a string) to the counters
    (:data:`ANALYTICS_FIELDS`) per complexity; ``bucket_confidence`` the learning confidence
    when the bucket was the newest. ``now_ts`` is the newest session time seen (the event-time
    clock of the rolling window). ``version`` counts model updates (the ``weights.scoring``
    version), ``stats_version`` every applied change.
    """

    partition: int = 0
    watermarks: dict[str, int] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    version: int = 0
    stats_version: int = 0
    now_ts: int = 0
    buckets: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    bucket_confidence: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.0
    low_confidence_since: int | None = None
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_alerts: list[dict[str, Any]] = field(default_factory=list)
    too_late: int = 0

    def pack(self) -> bytes:
        return orjson.dumps({"v": 1, **self.__dict__})

    @classmethod
    def unpack(cls, blob: bytes) -> SegmentState:
        d = orjson.loads(blob)
        if d.pop("v", None) != 1:
            raise ValueError("unsupported segment state version")
        return cls(**d)

    def seen(self, src_partition: int, src_offset: int) -> bool:
        return src_offset <= self.watermarks.get(str(src_partition), -1)

    def advance(self, src_partition: int, src_offset: int) -> None:
        key = str(src_partition)
        self.watermarks[key] = max(self.watermarks.get(key, -1), src_offset)

    def model_state(self, config: ChoiceModelConfig) -> ChoiceModelState:
        """The current posterior; the prior when there is none or the factors changed."""
        if self.model is not None:
            state = ChoiceModelState.from_dict(self.model)
            if state.mean.size == len(config.factors) + 1:
                return state
        return initial_state(config)


def bucket_start(ts_ms: int, bucket_s: float) -> int:
    """Start (ms) of the event-time bucket holding ``ts_ms``.

    >>> bucket_start(1_000_123, 60)
    960000
    """
    size = int(bucket_s * 1000)
    return (ts_ms // size) * size


def observation_counters(obs: dict[str, Any]) -> list[float]:
    """Analytics counters (:data:`ANALYTICS_FIELDS`) of one observation."""
    counters = [0.0] * len(ANALYTICS_FIELDS)
    if obs["kind"] == "session":
        counters[_A["sessions"]] = 1.0
        if obs["chosen"] >= 0:
            counters[_A["conversions"]] = 1.0
            counters[_A["rank_sum"]] = float(obs["rank"])
        if obs.get("satisfaction") is not None:
            counters[_A["satisfaction_sum"]] = float(obs["satisfaction"])
            counters[_A["satisfaction_n"]] = 1.0
        if obs.get("decision_time") is not None:
            counters[_A["decision_time_sum"]] = float(obs["decision_time"])
            counters[_A["decision_time_n"]] = 1.0
        if obs.get("outcome") == "abandoned":
            counters[_A["abandoned"]] = 1.0
    for i, v in enumerate(obs["counters"]):
        counters[_INTERACTION_OFFSET + i] = float(v)
    return counters


def add_to_window(
    state: SegmentState, obs: dict[str, Any], window_s: float, bucket_s: float
) -> str | None:
    """Count an observation in its bucket; returns the bucket key, None when too old.

    An observation whose bucket ended before the window (measured back from the newest
    session time seen) is not counted: its bucket may already be gone.
    """
    ts = int(obs["ts"])
    state.now_ts = max(state.now_ts, ts)
    start = bucket_start(ts, bucket_s)
    if start + int(bucket_s * 1000) <= state.now_ts - int(window_s * 1000):
        state.too_late += 1
        return None
    key = str(start)
    per_complexity = state.buckets.setdefault(key, {})
    row = per_complexity.setdefault(obs["complexity"], [0.0] * len(ANALYTICS_FIELDS))
    for i, v in enumerate(observation_counters(obs)):
        row[i] += v
    return key


def prune_window(state: SegmentState, window_s: float, bucket_s: float) -> None:
    """Forget buckets that ended before the rolling window."""
    limit = state.now_ts - int(window_s * 1000)
    size = int(bucket_s * 1000)
    for key in [k for k in state.buckets if int(k) + size <= limit]:
        del state.buckets[key]
        state.bucket_confidence.pop(key, None)


def summarise_counters(counters: Sequence[float]) -> dict[str, Any]:
    """Rates of a counter row; a rate without observations is None.

    >>> row = [0.0] * len(ANALYTICS_FIELDS)
    >>> row[0], row[1], row[2] = 4, 3, 6  # sessions, conversions, rank sum
    >>> s = summarise_counters(row)
    >>> s["sessions"], s["conversion_rate"], s["avg_chosen_rank"], s["satisfaction"]
    (4, 0.75, 2.0, None)
    """
    c = dict(zip(ANALYTICS_FIELDS, counters, strict=True))

    def ratio(num: str, den: str) -> float | None:
        return None if c[den] <= 0 else c[num] / c[den]

    return {
        "sessions": int(c["sessions"]),
        "conversions": int(c["conversions"]),
        "conversion_rate": ratio("conversions", "sessions"),
        "avg_chosen_rank": ratio("rank_sum", "conversions"),
        "satisfaction": ratio("satisfaction_sum", "satisfaction_n"),
        "satisfaction_n": int(c["satisfaction_n"]),
        "avg_decision_time_s": ratio("decision_time_sum", "decision_time_n"),
        "interaction_depth": ratio("interactions", "sessions"),
        "avg_time_spent_s": ratio("time_spent_sum", "interactions"),
        "helpfulness": ratio("helpful_sum", "helpful_n"),
        "abandoned": int(c["abandoned"]),
        "contacted": int(c["contacted"]),
    }


def window_totals(state: SegmentState) -> dict[str, list[float]]:
    """Counters summed over the window's buckets, per complexity and ``all``."""
    totals: dict[str, list[float]] = {}
    for per_complexity in state.buckets.values():
        for complexity, row in per_complexity.items():
            for name in (complexity, "all"):
                acc = totals.setdefault(name, [0.0] * len(ANALYTICS_FIELDS))
                for i, v in enumerate(row):
                    acc[i] += v
    totals.setdefault("all", [0.0] * len(ANALYTICS_FIELDS))
    return totals


def window_summary(state: SegmentState) -> dict[str, dict[str, Any]]:
    """Rolling-window analytics per complexity and ``all``, plus the confidence history."""
    summary = {name: summarise_counters(row) for name, row in window_totals(state).items()}
    history = [state.bucket_confidence[k] for k in sorted(state.bucket_confidence, key=int)]
    summary["all"]["learning_confidence"] = state.confidence
    summary["all"]["min_learning_confidence"] = min(history) if history else None
    return summary


def fit_segment(
    state: SegmentState, observations: Sequence[dict[str, Any]], config: ChoiceModelConfig
) -> PublishedWeights | None:
    """Absorb a batch of observations, in order, into the segment's model.

    The model is updated per fixed-size block of sessions
    (:func:`agents.learning.choice_model.absorb`), so its weights depend on the order of the
    observations only, not on where a stream's batches begin and end. Returns the weights to
    publish, or None when the batch held no session.
    """
    sessions = [o for o in observations if o["kind"] == "session" and o["X"]]
    if not sessions:
        return None
    F = len(config.factors)
    X, mask = pad([o["X"] for o in sessions], F)
    chosen = np.array([o["chosen"] for o in sessions], dtype=np.int64)
    model = absorb(state.model_state(config), X, mask, chosen, config)
    state.model = model.to_dict()
    state.version += 1
    published = publish_weights(model, config)
    state.confidence = float(published.confidence)
    if state.buckets:
        newest = max(state.buckets, key=int)
        state.bucket_confidence[newest] = state.confidence
    return published


def current_weights(state: SegmentState, config: ChoiceModelConfig) -> PublishedWeights:
    return publish_weights(state.model_state(config), config)


def scoring_event(
    segment: str, state: SegmentState, published: PublishedWeights, now_ms: int
) -> dict[str, Any]:
    """The ``weights.scoring`` event of the segment's current model version."""
    weights = np.clip(published.weights, 0.0, 1.0)
    return {
        "event_id": f"scoring:{segment}:{state.version}",
        "schema_version": 1,
        "ts": now_ms,
        "segment": segment,
        "weights": {f: float(w) for f, w in zip(published.factors, weights, strict=True)},
        "confidence": float(np.clip(published.confidence, 0.0, 1.0)),
        "sample_size": int(published.n_sessions),
        "applied": bool(published.applied),
        "is_default": bool(published.is_default),
        "version": state.version,
    }


def _breaches(
    state: SegmentState, all_window: dict[str, Any], t: AlertThresholds
) -> dict[str, tuple[float, float, str] | None]:
    """Per alert metric: (value, threshold, message) when breached, else None."""
    out: dict[str, tuple[float, float, str] | None] = dict.fromkeys(ALERT_METRICS)
    n = all_window["sessions"]
    rate = all_window["conversion_rate"]
    if n >= t.min_sessions and rate is not None and rate < t.conversion_below:
        out["choice_conversion_rate"] = (
            rate,
            t.conversion_below,
            f"conversion rate {rate:.1%} over {n} sessions is below {t.conversion_below:.0%}",
        )
    rank = all_window["avg_chosen_rank"]
    if all_window["conversions"] >= t.min_sessions and rank is not None and rank > t.rank_above:
        out["choice_avg_chosen_rank"] = (
            rank,
            t.rank_above,
            f"average chosen rank {rank:.2f} over {all_window['conversions']} choices is "
            f"above {t.rank_above:g}",
        )
    sat = all_window["satisfaction"]
    if (
        all_window["satisfaction_n"] >= t.min_sessions
        and sat is not None
        and sat < t.satisfaction_below
    ):
        out["choice_satisfaction"] = (
            sat,
            t.satisfaction_below,
            f"mean satisfaction {sat:.2f} over {all_window['satisfaction_n']} ratings is "
            f"below {t.satisfaction_below:g}",
        )
    since = state.low_confidence_since
    if since is not None and state.now_ts - since >= t.confidence_period_s * 1000:
        hours = (state.now_ts - since) / 3_600_000
        out["choice_learning_confidence"] = (
            state.confidence,
            t.confidence_below,
            f"learning confidence {state.confidence:.2f} has been below "
            f"{t.confidence_below:g} for {hours:.1f} h",
        )
    return out


def evaluate_alerts(
    segment: str,
    state: SegmentState,
    summary: dict[str, dict[str, Any]],
    thresholds: AlertThresholds,
    window_s: float,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Alerts that start (or repeat, escalated) now; de-duplicated by their state.

    An alert fires once when its condition starts (a new *episode*), again with a higher
    escalation level every ``repeat_s`` of event time while it holds, and re-arms when it
    clears. Event ids are ``alert:choices:<segment>:<metric>:<episode>:<level>``.
    """
    if state.version > 0 and state.confidence < thresholds.confidence_below:
        if state.low_confidence_since is None:
            state.low_confidence_since = state.now_ts
    else:
        state.low_confidence_since = None
    fired: list[dict[str, Any]] = []
    for metric, breach in _breaches(state, summary["all"], thresholds).items():
        st = state.alerts.setdefault(
            metric, {"active": False, "episode": 0, "level": 0, "fired_ts": 0}
        )
        if breach is None:
            st["active"] = False
            continue
        if not st["active"]:
            st.update(active=True, episode=st["episode"] + 1, level=0, fired_ts=state.now_ts)
        elif state.now_ts - st["fired_ts"] >= thresholds.repeat_s * 1000:
            st.update(level=min(st["level"] + 1, 100), fired_ts=state.now_ts)
        else:
            continue
        value, threshold, message = breach
        fired.append(
            {
                "event_id": f"alert:choices:{segment}:{metric}:{st['episode']}:{st['level']}",
                "schema_version": 1,
                "ts": now_ms,
                "component": "choices",
                "metric": metric,
                "severity": "warning" if st["level"] == 0 else "critical",
                "escalation_level": st["level"],
                "message": f"segment {segment}: {message}"[:1024],
                "value": float(value),
                "threshold": float(threshold),
                "dimensions": {
                    "segment": segment,
                    "window_s": f"{window_s:g}",
                    "sessions": str(summary["all"]["sessions"]),
                    "event_time_ms": str(state.now_ts),
                },
            }
        )
    return fired


def iter_bucket_rows(
    state: SegmentState, keys: Iterable[str] | None = None
) -> Iterable[tuple[int, str, list[float]]]:
    """(bucket start ms, complexity, counters) of the given (default: all) buckets."""
    for key in sorted(state.buckets if keys is None else keys, key=int):
        for complexity, row in sorted(state.buckets.get(key, {}).items()):
            yield int(key), complexity, row

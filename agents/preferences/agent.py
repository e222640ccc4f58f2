"""Agent ``preferences``: per-user preference vectors from explicit and implicit feedback.

Per batch: validate (dead letters) → look up item features → drop events already applied
(offset or event id, see :mod:`agents.preferences.state`) → explicit events: one vectorized
EMA over every user in the batch, applied at once → implicit events: added to the user's
open window, applied as one EMA step when the window closes (``LOOPWISE_IMPLICIT_WINDOW_S``;
0 applies each batch's implicit events at once) → segment → table (changelog) → Redis →
PostgreSQL → ``weights.preferences`` (and ``segments.changes`` when the segment moves).

A timer closes windows that have been open long enough and, every
``LOOPWISE_INACTIVITY_SCAN_S``, scans this worker's users for inactivity. Batch processing
and the timer share one lock, so they never interleave on a user's state.

Sinks and the output are written for every user the batch touched, even when all of its
events were duplicates: after a crash between the table write and a sink, the replay finds
the events applied and still heals the sink (idempotent writes with the same version and
event id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faust.types import StreamT

from agents.bandits import agent as bandits
from agents.learning.activity_segments import SegmentThresholds, classify
from agents.learning.preference import (
    KIND_INDEX,
    EmaParams,
    ema_batch,
    learning_rates,
    signal_strength,
    window_contributions,
    window_rates,
)
from agents.learning.spam import GuardConfig
from agents.preferences.guard import IDLE_DROP_S, KEY_PREFIX, FeedbackGuard, UserGuard, guard_key
from agents.preferences.state import (
    TOPIC_SLOTS,
    PreferenceState,
    event_id_hash,
    set_vector_dtype,
)
from agents.preferences.windows import windows
from streams.app import (
    admission,
    app,
    catalog,
    deadletter_topic,
    fast_producer,
    postgres,
    preferences_table,
    redis_values,
    settings,
    topic,
)
from streams.boundary import Boundary, Valid
from streams.clock import now_ms
from streams.codecs import EventDecoder, encode
from streams.metrics import (
    EVENT_TO_OUTPUT_SECONDS,
    EVENTS_DUPLICATE,
    EVENTS_OUT,
    TABLE_KEYS,
)
from streams.state import crash_point, put_fast

log = logging.getLogger(__name__)
AGENT = "preferences"
EXPLICIT = TOPIC_SLOTS["feedback.explicit"]

# Implicit feedback arrives through the batched relay (agents.preferences.relay) by default.
feedback_topic = topic("feedback.explicit", settings.implicit_input)
output_topic = topic("weights.preferences")
segment_topic = topic("segments.changes")
boundary = Boundary(
    AGENT,
    {
        settings.topic(name): EventDecoder(name, settings.max_message_bytes)
        for name in ("feedback.explicit", "feedback.implicit")
    },
    deadletter_topic,
    relayed=[settings.topic("feedback.implicit.relay")],
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
params = EmaParams(
    base_alpha=settings.base_alpha,
    max_alpha=settings.max_alpha,
    type_multipliers=settings.type_multipliers,
)
set_vector_dtype(settings.vector_dtype)
thresholds = SegmentThresholds(
    new_below=settings.segment_new_below,
    power_above=settings.segment_power_above,
    inactive_after_s=settings.inactive_after_days * 86_400.0,
)
_slot_of_topic = {settings.topic(name): slot for name, slot in TOPIC_SLOTS.items()}
quarantine_topic = topic("quarantine")
feedback_guard = FeedbackGuard(
    GuardConfig(
        max_per_minute=settings.guard_max_per_minute,
        max_per_hour=settings.guard_max_per_hour,
        history=max(32, settings.guard_max_per_minute + 1),
        flag_below=settings.guard_flag_below,
    ),
    boundary,
    quarantine_topic,
)

# One statement per batch: the rows are the batch's output events, already encoded for Redis
# and the topic, sent as one JSON array (json_to_recordset reads the columns it names and
# ignores the other fields). Users are unique in a batch, as ON CONFLICT DO UPDATE requires.
UPSERT_SQL = """
INSERT INTO user_preferences
    (user_id, vector, version, segment, interactions, source_ts, updated_at)
SELECT user_id, vector, version, segment, interactions, source_ts, now()
FROM json_to_recordset(%s::json) AS t(
    user_id text, vector real[], version bigint, segment text, interactions bigint,
    source_ts bigint)
ON CONFLICT (user_id) DO UPDATE SET
    vector = EXCLUDED.vector, version = EXCLUDED.version, segment = EXCLUDED.segment,
    interactions = EXCLUDED.interactions, source_ts = EXCLUDED.source_ts, updated_at = now()
WHERE user_preferences.version < EXCLUDED.version
"""


def json_rows(encoded: Iterable[bytes]) -> str:
    """One JSON array of already-encoded JSON objects. (psycopg adapts Python lists element
    by element, escaping each string: most of the upsert's cost before.)"""
    return "[" + b",".join(encoded).decode() + "]"


def read_value(key: str) -> bytes | None:
    """A table value straight from the memory store's dict: faust's ``Table.get`` adds
    sensor, default and mapping layers worth ~10 µs per key, twice per user and batch on
    the hot path. (The store keeps that dict for its lifetime; it clears, never replaces
    it.)"""
    return preferences_table.data.data.get(key)  # type: ignore[no-any-return]


@dataclass
class Worklist:
    """Users touched by one unit of work and what happened to them."""

    states: dict[str, PreferenceState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # table value changed
    segment_moves: dict[str, str | None] = field(default_factory=dict)  # user → old segment

    def load(self, user: str, partition: int) -> PreferenceState:
        state = self.states.get(user)
        if state is None:
            blob = read_value(user)
            state = (
                PreferenceState.unpack(blob) if blob else PreferenceState.empty(settings.item_dim)
            )
            state.partition = partition
            self.states[user] = state
        return state


def close_implicit_windows(work: Worklist, users: Iterable[str]) -> None:
    """Apply the open windows of ``users`` as one EMA step each."""
    closed = [(u, w) for u in users if (w := work.states[u].close_window()) is not None]
    for user, _ in closed:
        windows.opened.pop(user, None)
    closed = [(u, w) for u, w in closed if w[1] > 0]
    if not closed:
        return
    before = np.stack([work.states[u].vector for u, _ in closed]).astype(np.float64)
    sums = np.stack([s for _, (s, _) in closed])
    weights = np.array([w for _, (_, w) in closed])
    n = len(closed)
    after = ema_batch(before, np.arange(n), window_rates(weights, params), np.ones(n),
                      sums / weights[:, None])  # fmt: skip
    # Vectors first: their rounding is salted with the version before the bump.
    PreferenceState.assign_vectors([work.states[u] for u, _ in closed], after)
    for user, _ in closed:
        work.states[user].version += 1
        work.dirty.add(user)


def update_segments(work: Worklist, users: Iterable[str], now: int) -> None:
    users = list(users)
    if not users:
        return
    states = [work.states[u] for u in users]
    labels = classify(
        np.array([s.interactions for s in states]),
        np.array([s.last_active / 1000.0 for s in states]),
        now / 1000.0,
        thresholds,
    )
    for user, state, label in zip(users, states, labels, strict=True):
        if state.segment != label:
            work.segment_moves.setdefault(user, state.segment)
            state.segment = str(label)
            state.version += 1
            work.dirty.add(user)


async def resolve_items(valid: list[Valid]) -> tuple[list[Valid], np.ndarray]:
    """Item features for each event; events whose item is unknown are dead-lettered."""
    item_ids = [v.payload["item_id"] for v in valid]
    features, found = catalog.lookup(item_ids)
    if not found.all():
        # The item may have been published a moment ago: wait for the catalog to read
        # everything written so far before calling it unknown.
        await asyncio.to_thread(catalog.catch_up_for_unknown)
        features, found = catalog.lookup(item_ids)
    for v, ok in zip(valid, found, strict=True):
        if not ok:
            await boundary.reject(
                v.event, "unknown_item", f"item {v.payload['item_id']!r} is not in the catalog"
            )
    kept = [v for v, ok in zip(valid, found, strict=True) if ok]
    return kept, features[found]


def apply_events(work: Worklist, valid: list[Valid], features: np.ndarray, now: int) -> None:
    """Dedupe, then explicit events at once and implicit events into the windows."""
    applied: list[int] = []
    for i, v in enumerate(valid):
        state = work.load(v.payload["user_id"], v.partition)
        slot = _slot_of_topic[v.topic]
        id_hash = event_id_hash(v.payload["event_id"])
        if state.seen(slot, v.offset, id_hash):
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
            continue
        state.remember(slot, v.offset, id_hash, int(v.timestamp), settings.dedupe_ids,
                       settings.dedupe_horizon_s)  # fmt: skip
        state.interactions += 1
        state.last_ts = max(state.last_ts, int(v.payload["ts"]))
        state.last_active = max(state.last_active, int(v.timestamp * 1000))
        work.dirty.add(v.payload["user_id"])
        applied.append(i)
    if not applied:
        return
    users = list(work.states)
    row_of = {u: r for r, u in enumerate(users)}
    idx = np.asarray(applied)
    owner = np.array([row_of[valid[i].payload["user_id"]] for i in applied])
    kinds = np.array([KIND_INDEX[valid[i].payload["kind"]] for i in applied])
    values = np.array([float(valid[i].payload.get("value", np.nan)) for i in applied])
    explicit = np.array([_slot_of_topic[valid[i].topic] == EXPLICIT for i in applied])
    strength = signal_strength(kinds, values, params)

    # Windows that expired before this batch close first, in arrival order.
    due = [u for u in users if work.states[u].has_window
           and work.states[u].window_opened <= now - settings.implicit_window_s * 1000]  # fmt: skip
    close_implicit_windows(work, due)

    if explicit.any():
        alpha = learning_rates(kinds[explicit], strength[explicit], params)
        before = np.stack([work.states[u].vector for u in users]).astype(np.float64)
        after = ema_batch(before, owner[explicit], alpha, strength[explicit],
                          features[idx[explicit]])  # fmt: skip
        rows = np.unique(owner[explicit])
        PreferenceState.assign_vectors([work.states[users[r]] for r in rows], after[rows])

    implicit = ~explicit
    if implicit.any():
        sums, weights = window_contributions(
            owner[implicit], kinds[implicit], strength[implicit], features[idx[implicit]],
            params, len(users),
        )  # fmt: skip
        touched = np.unique(owner[implicit])
        for r in touched:
            state = work.states[users[r]]
            state.add_to_window(sums[r], float(weights[r]), now)
            windows.opened.setdefault(users[r], state.window_opened)
        if settings.implicit_window_s == 0:
            close_implicit_windows(work, [users[r] for r in touched])
    for r in np.unique(owner):
        state = work.states[users[r]]
        state.version = max(state.version + 1, state.event_version())


def output_event(user_id: str, state: PreferenceState) -> dict[str, Any]:
    return {
        "event_id": f"pref:{user_id}:{state.version}",
        "schema_version": 1,
        "ts": now_ms(),
        "user_id": user_id,
        "vector": state.vector.tolist(),
        "dim": int(state.vector.shape[0]),
        "version": state.version,
        "segment": state.segment or "new",
        "interactions": state.interactions,
        "source_ts": state.last_ts,
    }


def segment_event(user: str, previous: str | None, state: PreferenceState) -> dict[str, Any]:
    if previous is None:
        reason = "first_seen"
    elif state.segment == "inactive":
        reason = "inactivity"
    elif previous == "inactive":
        reason = "reactivation"
    else:
        reason = "interaction_count"
    return {
        "event_id": f"seg:{user}:{state.version}",
        "schema_version": 1,
        "ts": now_ms(),
        "user_id": user,
        "previous_segment": previous,
        "segment": state.segment,
        "reason": reason,
    }


async def persist_and_publish(work: Worklist, valid: list[Valid] | None = None) -> None:
    """Table → Redis → PostgreSQL → outputs, with the crash hooks between them."""
    for user in work.dirty:
        put_fast(preferences_table, work.states[user].partition, user, work.states[user].pack())
    await fast_producer.flush()  # the table before the sinks: a crash past here keeps it
    crash_point("after_table")

    # A user seen only through duplicates still gets its current value re-written (heals a
    # sink after a crash); a user with no published version has nothing to publish.
    events = {u: output_event(u, s) for u, s in work.states.items() if s.version > 0}
    payloads = {user: encode(ev) for user, ev in events.items()}
    await redis_values.write_many(
        "pref", ((user, events[user]["version"], payloads[user]) for user in events)
    )
    crash_point("after_redis")
    await postgres.execute_batch(UPSERT_SQL, [json_rows(payloads.values())], len(events))
    crash_point("after_postgres")
    outputs, segments = output_topic.get_topic_name(), segment_topic.get_topic_name()
    for user, payload in payloads.items():
        fast_producer.send(outputs, user.encode(), payload)
    for user, previous in work.segment_moves.items():
        change = segment_event(user, previous, work.states[user])
        fast_producer.send(segments, user.encode(), encode(change))
    await fast_producer.flush()
    EVENTS_OUT.labels(topic=output_topic.get_topic_name(), agent=AGENT).inc(len(payloads))
    now = time.time()
    latency = EVENT_TO_OUTPUT_SECONDS.labels(agent=AGENT)
    for v in valid or ():
        latency.observe(max(0.0, now - v.timestamp))
    crash_point("after_output")
    TABLE_KEYS.labels(table="preferences").set(len(preferences_table))


async def reject_unknown_algorithms(valid: list[Valid]) -> list[Valid]:
    kept = []
    for v in valid:
        problem = bandits.unknown_algorithm(v)
        if problem is None:
            kept.append(v)
        else:
            await boundary.reject(v.event, "unknown_arm", problem)
    return kept


async def reject_foreign_partition(valid: list[Valid]) -> list[Valid]:
    """Events of users whose state lives on another partition are refused, not applied:
    the offset watermarks are one partition's, so on another partition an event could be
    taken for a replay and dropped. Input that passed the boundary's partition check only
    gets here after the topic's partition count changed (docs/operations.md, "Adding
    partitions")."""
    kept = []
    for v in valid:
        blob = read_value(v.payload["user_id"])
        home = PreferenceState.partition_of(blob) if blob else v.partition
        if home == v.partition:
            kept.append(v)
            continue
        await boundary.refuse_foreign(v, f"user {v.payload['user_id']!r}", home)
    return kept


async def guard_batch(
    valid: list[Valid], features: np.ndarray
) -> tuple[list[Valid], np.ndarray, list[Valid]]:
    """Judge the batch: (events to learn from, their features, quarantined events)."""
    flagged, guards = feedback_guard.judge(valid, _slot_of_topic, read_value)
    for user, g in guards.items():
        put_fast(preferences_table, g.partition, guard_key(user), g.to_bytes())
    if not flagged:
        return valid, features, []
    await feedback_guard.quarantine_events(valid, flagged)
    keep = [i for i in range(len(valid)) if i not in flagged]
    return [valid[i] for i in keep], features[keep], [valid[i] for i in flagged]


def mark_consumed(work: Worklist, quarantined: list[Valid]) -> None:
    """Quarantined events never train, but their offsets and ids count as applied, so a
    replay skips them. Called after the batch's other events were applied: remembering an
    offset first would make the earlier events of the same user look already applied."""
    for v in quarantined:
        state = work.load(v.payload["user_id"], v.partition)
        slot = _slot_of_topic[v.topic]
        id_hash = event_id_hash(v.payload["event_id"])
        if not state.seen(slot, v.offset, id_hash):
            state.remember(slot, v.offset, id_hash, int(v.timestamp), settings.dedupe_ids,
                           settings.dedupe_horizon_s)  # fmt: skip
            work.dirty.add(v.payload["user_id"])


async def process(valid: list[Valid]) -> None:
    valid = await reject_foreign_partition(valid)
    valid = await reject_unknown_algorithms(valid)
    valid, features = await resolve_items(valid)
    if not valid:
        return
    now = now_ms()
    work = Worklist()
    quarantined: list[Valid] = []
    if settings.guard_enabled:
        valid, features, quarantined = await guard_batch(valid, features)
    apply_events(work, valid, features, now)
    mark_consumed(work, quarantined)
    update_segments(work, list(work.dirty), now)
    implicit = [v for v in valid if _slot_of_topic[v.topic] != EXPLICIT]
    if implicit:
        for v in implicit:  # the segment at impression time, also for users not yet stored
            work.load(v.payload["user_id"], v.partition)
        await bandits.attribute(implicit, {u: s.segment or "new" for u, s in work.states.items()})
    await persist_and_publish(work, valid)


@app.agent(feedback_topic, name=f"{settings.app_id}.preferences")
async def preferences(stream: StreamT) -> None:
    await boundary.consume(
        stream,
        process,
        settings.batch_size,
        settings.batch_within_s,
        windows.lock,
        max_events=settings.batch_max_events,
    )


def _assignment() -> frozenset[Any]:
    try:
        return frozenset(app.consumer.assignment())
    except Exception:  # consumer not started yet
        return frozenset()


async def scan_local_users() -> None:
    """Rebuild the open-window index and re-classify every user this worker holds.

    Runs after the assignment changed (partitions moved here with their windows) and every
    ``LOOPWISE_INACTIVITY_SCAN_S`` (users who went quiet become ``inactive``).
    """
    now = now_ms()
    work = Worklist()
    pruned: dict[str, PreferenceState] = {}
    idle_before = now / 1000.0 - IDLE_DROP_S
    for user, blob in list(preferences_table.items()):
        if user.startswith(KEY_PREFIX):
            g = UserGuard.from_bytes(blob)
            if g.last_s < idle_before:  # quiet for longer than any rate window
                put_fast(preferences_table, g.partition, user, None)
            continue
        state = PreferenceState.unpack(blob)
        # Expired event ids of quiet users: the table value only (memory); no version
        # bump, nothing published.
        if state.prune(now / 1000.0, settings.dedupe_horizon_s, settings.dedupe_ids):
            pruned[user] = state
        if state.has_window:
            windows.opened.setdefault(user, state.window_opened)
        work.states[user] = state
    update_segments(work, list(work.states), now)
    work.states = {u: work.states[u] for u in work.dirty}
    if work.dirty:
        log.info("preferences: %d users changed segment in the scan", len(work.dirty))
        await persist_and_publish(work)  # the same objects: moved users are written pruned
    for user, state in pruned.items():
        if user not in work.dirty:
            put_fast(preferences_table, state.partition, user, state.pack())
    await fast_producer.flush()  # the dropped guard states and the pruned values


@app.timer(interval=1.0, name=f"{settings.app_id}.preference-windows")
async def close_due_windows() -> None:
    if not app.tables.recovery.completed.is_set() or app.rebalancing:
        return
    async with windows.lock:
        assignment = _assignment()
        scan_every = settings.inactivity_scan_s
        if (
            assignment != windows.scanned_assignment
            or time.monotonic() - windows.last_scan > scan_every
        ):
            windows.scanned_assignment = assignment
            windows.last_scan = time.monotonic()
            windows.opened.clear()
            await scan_local_users()
        due = windows.due(now_ms(), settings.implicit_window_s)
        if not due:
            return
        work = Worklist()
        for user in due:
            blob = preferences_table.get(user)
            if blob is None:  # moved to another worker
                windows.opened.pop(user, None)
                continue
            work.states[user] = PreferenceState.unpack(blob)
        close_implicit_windows(work, list(work.states))
        update_segments(work, list(work.states), now_ms())
        await persist_and_publish(work)

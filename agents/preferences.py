"""Agent ``preferences``: per-user preference vectors from explicit and implicit feedback.

Per batch: validate (dead letters) → look up item features → drop events already applied
(offset or event id, see :mod:`agents.preference_state`) → one vectorized EMA over every
user in the batch → table (changelog) → Redis → PostgreSQL → ``weights.preferences``.

Sinks and the output are written for every user the batch touched, even when all of its
events were duplicates: after a crash between the table write and a sink, the replay finds
the events applied and still heals the sink (idempotent writes with the same version and
event id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from faust.types import StreamT

from agents.learning.preference import (
    KIND_INDEX,
    EmaParams,
    ema_batch,
    learning_rates,
    signal_strength,
)
from agents.preference_state import TOPIC_SLOTS, PreferenceState, event_id_hash
from streams.app import (
    app,
    catalog,
    deadletter_topic,
    postgres,
    preferences_table,
    redis_values,
    settings,
    topic,
)
from streams.boundary import Boundary, Valid
from streams.codecs import EventDecoder, encode
from streams.metrics import (
    AGENT_ERRORS,
    BATCH_SIZE,
    EVENT_TO_OUTPUT_SECONDS,
    EVENTS_DUPLICATE,
    EVENTS_OUT,
    PROCESSING_SECONDS,
    TABLE_KEYS,
)
from streams.state import crash_point, put

log = logging.getLogger(__name__)
AGENT = "preferences"
MAX_RECENT_IDS = 64
UNKNOWN_ITEM_WAIT_S = 2.0

feedback_topic = topic("feedback.explicit", "feedback.implicit")
output_topic = topic("weights.preferences")
boundary = Boundary(
    AGENT,
    {
        settings.topic(name): EventDecoder(name, settings.max_message_bytes)
        for name in ("feedback.explicit", "feedback.implicit")
    },
    deadletter_topic,
)
params = EmaParams(
    base_alpha=settings.base_alpha,
    max_alpha=settings.max_alpha,
    type_multipliers=settings.type_multipliers,
)
_slot_of_topic = {settings.topic(name): slot for name, slot in TOPIC_SLOTS.items()}

UPSERT_SQL = """
INSERT INTO user_preferences
    (user_id, vector, version, segment, interactions, source_ts, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, now())
ON CONFLICT (user_id) DO UPDATE SET
    vector = EXCLUDED.vector, version = EXCLUDED.version, segment = EXCLUDED.segment,
    interactions = EXCLUDED.interactions, source_ts = EXCLUDED.source_ts, updated_at = now()
WHERE user_preferences.version < EXCLUDED.version
"""


def segment_of(interactions: int) -> str:
    # Inactivity (30+ days) is detected by a timer in the learning issue; here, activity only.
    if interactions < 5:
        return "new"
    if interactions > 100:
        return "power"
    return "regular"


def output_event(user_id: str, state: PreferenceState) -> dict[str, Any]:
    return {
        "event_id": f"pref:{user_id}:{state.version}",
        "schema_version": 1,
        "ts": int(time.time() * 1000),
        "user_id": user_id,
        "vector": [float(x) for x in state.vector],
        "dim": int(state.vector.shape[0]),
        "version": state.version,
        "segment": segment_of(state.interactions),
        "interactions": state.interactions,
        "source_ts": state.last_ts,
    }


async def resolve_items(valid: list[Valid]) -> tuple[list[Valid], np.ndarray]:
    """Item features for each event; events whose item is unknown are dead-lettered."""
    item_ids = [v.payload["item_id"] for v in valid]
    features, found = catalog.lookup(item_ids)
    if not found.all():
        # The item may have been published a moment ago: wait for the catalog to read
        # everything written so far before calling it unknown.
        await asyncio.to_thread(catalog.wait_caught_up, UNKNOWN_ITEM_WAIT_S)
        features, found = catalog.lookup(item_ids)
    for v, ok in zip(valid, found, strict=True):
        if not ok:
            await boundary.reject(
                v.event, "unknown_item", f"item {v.payload['item_id']!r} is not in the catalog"
            )
    kept = [v for v, ok in zip(valid, found, strict=True) if ok]
    return kept, features[found]


async def process(valid: list[Valid]) -> None:
    valid, features = await resolve_items(valid)
    if not valid:
        return
    states: dict[str, PreferenceState] = {}
    partitions: dict[str, int] = {}
    applied: list[int] = []
    for i, v in enumerate(valid):
        user = v.payload["user_id"]
        state = states.get(user)
        if state is None:
            blob = preferences_table.get(user)
            state = (
                PreferenceState.unpack(blob) if blob else PreferenceState.empty(settings.item_dim)
            )
            states[user] = state
            partitions[user] = v.partition
        slot = _slot_of_topic[v.topic]
        id_hash = event_id_hash(v.payload["event_id"])
        if state.seen(slot, v.offset, id_hash):
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
            continue
        state.remember(slot, v.offset, id_hash, MAX_RECENT_IDS)
        applied.append(i)

    changed = apply_updates(valid, features, applied, states)
    for user in changed:
        put(preferences_table, partitions[user], user, states[user].pack())
    crash_point("after_table")

    # A user seen only through duplicates still gets its current value re-written (heals a
    # sink after a crash); a user with no applied event at all has nothing to publish.
    events = {u: output_event(u, s) for u, s in states.items() if s.version > 0}
    payloads = {user: encode(ev) for user, ev in events.items()}
    await redis_values.write_many(
        "pref", ((user, events[user]["version"], payloads[user]) for user in events)
    )
    crash_point("after_redis")
    await postgres.execute_many(
        UPSERT_SQL,
        [
            (u, e["vector"], e["version"], e["segment"], e["interactions"], e["source_ts"])
            for u, e in events.items()
        ],
    )
    crash_point("after_postgres")
    for user, payload in payloads.items():
        await output_topic.send(key=user.encode(), value=payload)
    EVENTS_OUT.labels(topic=output_topic.get_topic_name(), agent=AGENT).inc(len(payloads))
    now = time.time()
    for v in valid:
        EVENT_TO_OUTPUT_SECONDS.labels(agent=AGENT).observe(max(0.0, now - v.timestamp))
    crash_point("after_output")
    TABLE_KEYS.labels(table="preferences").set(len(preferences_table))


def apply_updates(
    valid: Sequence[Valid],
    features: np.ndarray,
    applied: list[int],
    states: dict[str, PreferenceState],
) -> set[str]:
    """One vectorized EMA for every applied event; returns the users whose state changed."""
    if not applied:
        return set()
    users = list(states)
    row_of = {u: r for r, u in enumerate(users)}
    idx = np.asarray(applied)
    owner = np.array([row_of[valid[i].payload["user_id"]] for i in applied])
    kinds = np.array([KIND_INDEX[valid[i].payload["kind"]] for i in applied])
    values = np.array([float(valid[i].payload.get("value", np.nan)) for i in applied])
    strength = signal_strength(kinds, values, params)
    alpha = learning_rates(kinds, strength, params)
    before = np.stack([states[u].vector for u in users]).astype(np.float64)
    after = ema_batch(before, owner, alpha, strength, features[idx])
    changed = set()
    for r in np.unique(owner):
        state = states[users[r]]
        state.vector = after[r].astype(np.float32)
        state.version += 1
        changed.add(users[r])
    for i, r in zip(applied, owner, strict=True):
        state = states[users[r]]
        state.interactions += 1
        state.last_ts = max(state.last_ts, int(valid[i].payload["ts"]))
    return changed


async def process_isolating_failures(valid: list[Valid]) -> None:
    """Process a batch; if it raises, retry event by event and dead-letter the culprits.

    Transient sink faults never reach here (sinks retry them). Anything else is a bug or an
    input the validation let through: faust would ack the batch and restart the agent,
    silently dropping it, so the failing event is dead-lettered instead and the rest applied.
    """
    try:
        await process(valid)
        return
    except Exception:
        AGENT_ERRORS.labels(agent=AGENT).inc()
        log.exception("preferences: batch failed; retrying its %d events one by one", len(valid))
    for v in valid:
        try:
            await process([v])
        except Exception as exc:
            AGENT_ERRORS.labels(agent=AGENT).inc()
            await boundary.reject(v.event, "other", f"processing failed: {exc!r}")


@app.agent(feedback_topic, name=f"{settings.app_id}.preferences")
async def preferences(stream: StreamT) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        started = time.perf_counter()
        BATCH_SIZE.labels(agent=AGENT).observe(len(events))
        await process_isolating_failures(await boundary.split(events))
        PROCESSING_SECONDS.labels(agent=AGENT).observe(time.perf_counter() - started)

"""Agent ``choices``: the customer choice loop — sessions → customers → segments.

Three agents, one per key that owns state (the values and pure steps are in
:mod:`agents.choices.state`):

1. ``choices`` on ``recs.sessions`` + ``recs.choices`` + ``recs.interactions`` (keyed by
   session, co-partitioned) joins each session with its choice and interactions in the
   ``choice_sessions`` table. Events whose session is unknown wait in the value; a timer
   dead-letters them as ``missing_session`` after ``LOOPWISE_CHOICE_SESSION_WAIT_S`` (with
   the original bytes and coordinates kept in the value). A completed session (a choice, a
   "none" choice, or no choice within ``LOOPWISE_CHOICE_SESSION_TTL_S``) is sent as one
   observation to ``choices.customer_observations``, keyed by customer.
2. ``choice-customers`` keeps each customer's stated preferences and choice behaviour in
   ``choice_customers``, classifies the segment after each observation
   (``agents.learning.customer_segments``),
   emits ``customers.segments`` when it changes (plus Redis / PostgreSQL) and forwards every
   observation to ``choices.segment_observations``, keyed by segment.
3. ``choice-segments`` fits each segment's conditional-logit model online, one Laplace
   update per block of ``block_size`` sessions in arrival order, the open block absorbed
   provisionally when publishing (``agents.learning.choice_model``: the weights do not
   depend on where the batches begin and end), keeps rolling analytics
   in event-time buckets and the alert state in ``choice_segments``, and publishes
   ``weights.scoring`` (learned, or the defaults flagged ``is_default`` below the minimum
   sample or confidence), Redis ``scoring:<segment>`` and ``choice_stats:<segment>``,
   PostgreSQL records and ``alerts``.

Every stage follows docs/agents.md: validated input (dead letters), table first (guards in
the same value), then Redis, PostgreSQL and outputs for every key the batch touched, crash
hooks between, failing events isolated and dead-lettered
(``Boundary.process_isolating_failures``). One refinement in stage 1, whose outputs feed a
counting stage: a replayed event (offset already applied) re-sends exactly the observations
it produced, a re-sent event (same id, new offset) sends nothing — re-sending a session's
whole history on every touch would ask stage 2 to recognise arbitrarily old observations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import StreamT, TableT

from agents.choices.state import (
    CHOICE,
    MAX_PENDING,
    SESSION,
    TOPIC_SLOTS,
    AlertThresholds,
    ChoiceRejection,
    CustomerState,
    Pending,
    SegmentState,
    SessionState,
    abandon,
    add_to_window,
    apply_choice,
    apply_interaction,
    apply_session,
    current_weights,
    evaluate_alerts,
    event_id_hash,
    fit_segment,
    iter_bucket_rows,
    observe_customers,
    parse_session,
    prune_window,
    replayed_observations,
    scoring_event,
    segment_code,
    segment_name,
    window_summary,
)
from agents.learning.choice_model import ChoiceModelConfig, PublishedWeights
from agents.learning.customer_segments import SEGMENTS, SegmentRules
from streams.app import (
    admission,
    alerts_topic,
    app,
    deadletter_topic,
    postgres,
    redis_values,
    settings,
    topic,
)
from streams.boundary import Boundary, Valid
from streams.clock import now_ms
from streams.codecs import EventDecoder, Rejected, encode
from streams.metrics import (
    EVENT_TO_OUTPUT_SECONDS,
    EVENTS_DUPLICATE,
    EVENTS_OUT,
    TABLE_KEYS,
)
from streams.state import assigned_partitions, crash_point, delete, put

log = logging.getLogger(__name__)
AGENT = "choices"
AGENT_CUSTOMERS = "choice-customers"
AGENT_SEGMENTS = "choice-segments"
RECS = ("recs.sessions", "recs.choices", "recs.interactions")
#: Rows of several deployments may share one database; the topic prefix tells them apart.
DEPLOYMENT = settings.topic_prefix

FACTORS: tuple[str, ...] = settings.choice_factors
model_config = ChoiceModelConfig(
    factors=FACTORS,
    default_weights=tuple(settings.choice_default_weights[f] for f in FACTORS)
    if settings.choice_default_weights
    else None,
    w_min=settings.choice_weight_min,
    w_max=settings.choice_weight_max,
    min_sample_size=settings.choice_min_sample,
    min_confidence=settings.choice_min_confidence,
)
segment_rules = SegmentRules()
thresholds = AlertThresholds(
    conversion_below=settings.choice_alert_conversion_below,
    rank_above=settings.choice_alert_rank_above,
    confidence_below=settings.choice_alert_confidence_below,
    confidence_period_s=settings.choice_alert_confidence_period_s,
    satisfaction_below=settings.choice_alert_satisfaction_below,
    min_sessions=settings.choice_alert_min_sessions,
    repeat_s=settings.choice_alert_repeat_s,
)
WAIT_MS = int(settings.choice_session_wait_s * 1000)
WINDOW_S, BUCKET_S = settings.choice_window_s, settings.choice_bucket_s

recs_topic = topic(*RECS)
customer_obs_topic = topic("choices.customer_observations")
segment_obs_topic = topic("choices.segment_observations")
scoring_topic = topic("weights.scoring")
customer_segments_topic = topic("customers.segments")


def _table(name: str) -> TableT:
    table = app.Table(
        name, default=None, key_type=str, value_type=bytes, partitions=settings.partitions
    )
    table.value_serializer = "raw"  # values are packed by agents.choices.state
    return table


sessions_table = _table("choice_sessions")
customers_table = _table("choice_customers")
segments_table = _table("choice_segments")


class ObservationDecoder(EventDecoder):
    """Decoder of the loop's own internal topics: JSON objects with the fields it relies on."""

    def __init__(self, required: Iterable[str], max_bytes: int) -> None:
        self.required = tuple(required)
        self.max_bytes = max_bytes

    def __call__(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None or len(raw) > self.max_bytes:
            raise Rejected("oversize" if raw else "not_json", "bad internal observation")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Rejected("not_json", f"not JSON: {exc}") from exc
        if not isinstance(payload, dict) or any(k not in payload for k in self.required):
            raise Rejected("schema_violation", f"observation lacks one of {self.required}")
        return payload


_OBS_FIELDS = ("id", "kind", "session_id", "customer_id", "complexity", "ts", "counters", "src")
# Observations carry every candidate's factor scores: allow for 50 candidates x 32 factors.
_OBS_MAX_BYTES = max(settings.max_message_bytes, 4_000_000)
boundary = Boundary(
    AGENT,
    {settings.topic(n): EventDecoder(n, settings.max_message_bytes) for n in RECS},
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
customer_boundary = Boundary(
    AGENT_CUSTOMERS,
    {
        settings.topic("choices.customer_observations"): ObservationDecoder(
            _OBS_FIELDS, _OBS_MAX_BYTES
        )
    },
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
segment_boundary = Boundary(
    AGENT_SEGMENTS,
    {
        settings.topic("choices.segment_observations"): ObservationDecoder(
            (*_OBS_FIELDS, "segment", "src"), _OBS_MAX_BYTES
        )
    },
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
_slot_of_topic = {settings.topic(name): slot for name, slot in TOPIC_SLOTS.items()}


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


async def send_dead_letter(p: Pending, kind: str, message: str) -> None:
    """Dead-letter an event that waited in a table value (its bytes and coordinates kept)."""
    await boundary.send_dead_letter(
        p.raw,
        topic=p.topic,
        partition=p.partition,
        offset=p.offset,
        key=p.key,
        kind=kind,
        message=message,
    )


def _observe_latency(agent: str, valid: Iterable[Valid]) -> None:
    now = time.time()
    for v in valid:
        EVENT_TO_OUTPUT_SECONDS.labels(agent=agent).observe(max(0.0, now - v.timestamp))


# ================================================================ stage 1: sessions


class WaitingIndex:
    """This worker's sessions with events waiting for them (session → earliest arrival)."""

    def __init__(self) -> None:
        self.earliest: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.scanned_assignment: frozenset[int] = frozenset()
        self.last_scan = 0.0

    def set(self, session_id: str, earliest: int | None) -> None:
        if earliest is None:
            self.earliest.pop(session_id, None)
        else:
            self.earliest[session_id] = earliest

    def due(self, now: int) -> list[str]:
        return [s for s, t in self.earliest.items() if t <= now - WAIT_MS]


waiting = WaitingIndex()


@dataclass
class SessionWork:
    states: dict[str, SessionState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    delayed_rejects: list[tuple[Pending, str, str]] = field(default_factory=list)

    def load(self, session_id: str, partition: int) -> SessionState:
        state = self.states.get(session_id)
        if state is None:
            blob = sessions_table.get(session_id)
            if blob:
                state = SessionState.unpack(blob)
            else:
                state = SessionState()
                state.partition = partition
            self.states[session_id] = state
        return state


async def apply_recs_event(work: SessionWork, v: Valid, now: int) -> None:
    slot = _slot_of_topic[v.topic]
    session_id = v.payload["session_id"]
    state = work.load(session_id, v.partition)
    if state.partition != v.partition:
        await boundary.refuse_foreign(v, f"session {session_id!r}", state.partition)
        return
    id_hash = event_id_hash(v.payload["event_id"])
    src = [slot, v.partition, v.offset]
    if v.offset <= state.offsets[slot]:
        # A replay (after a crash): re-send what this event produced, in case the send
        # never happened; stage 2 recognises what it has by the source coordinates.
        EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
        work.outputs.extend(replayed_observations(session_id, state, src))
        return
    if state.seen(slot, v.offset, id_hash):  # the same event produced twice
        EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
        return
    state.remember(slot, v.offset, id_hash)
    state.touched_ms = now
    work.dirty.add(session_id)
    try:
        if slot == SESSION:
            observations, rejected = apply_session(
                state, session_id, parse_session(v.payload, FACTORS), FACTORS, now, src
            )
            for p, exc in rejected:
                state.forget(p.id_hash)
                work.delayed_rejects.append((p, exc.kind, exc.message))
        elif state.session is None:
            if len(state.pending) >= MAX_PENDING:
                raise ChoiceRejection(
                    "missing_session",
                    f"session {session_id!r} unknown and {MAX_PENDING} events already wait",
                )
            msg = v.event.message
            state.pending.append(
                Pending(slot, v.payload, v.topic, v.partition, v.offset, msg.key,
                        msg.value or b"", now, id_hash)
            )  # fmt: skip
            observations = []
        elif slot == CHOICE:
            observations = apply_choice(state, session_id, v.payload, FACTORS, now, src)
        else:
            observations = apply_interaction(state, session_id, v.payload, src)
    except ChoiceRejection as exc:
        # A dead-lettered event may come back from the dead letters (dlq replay).
        state.forget(id_hash)
        await boundary.reject(v.event, exc.kind, exc.message)
        return
    waiting.set(session_id, state.earliest_pending())
    work.outputs.extend(observations)


async def persist_sessions(work: SessionWork) -> None:
    """Delayed dead letters → table → observations (also those of replayed events)."""
    # Before the table: once the table forgets a waiting event, nothing would re-send it.
    for p, kind, message in work.delayed_rejects:
        await send_dead_letter(p, kind, message)
    for session_id in work.dirty:
        state = work.states[session_id]
        put(sessions_table, state.partition, session_id, state.pack())
    crash_point("after_table")
    outputs = work.outputs
    for obs in outputs:
        await customer_obs_topic.send(key=obs["customer_id"].encode(), value=encode(obs))
    EVENTS_OUT.labels(topic=customer_obs_topic.get_topic_name(), agent=AGENT).inc(len(outputs))
    crash_point("after_output")
    TABLE_KEYS.labels(table="choice_sessions").set(len(sessions_table))


async def process_sessions(valid: list[Valid]) -> None:
    now = now_ms()
    work = SessionWork()
    for v in valid:
        await apply_recs_event(work, v, now)
    await persist_sessions(work)
    _observe_latency(AGENT, valid)


@app.agent(recs_topic, name=f"{settings.app_id}.choices")
async def choices(stream: StreamT) -> None:
    await boundary.consume(
        stream, process_sessions, settings.batch_size, settings.batch_within_s, waiting.lock
    )


async def scan_sessions(assigned: frozenset[int]) -> None:
    """Rebuild the waiting index; drop expired sessions; close sessions past the TTL."""
    now = now_ms()
    retention_ms = int(settings.choice_session_retention_s * 1000)
    ttl_ms = int(settings.choice_session_ttl_s * 1000)
    waiting.earliest.clear()
    deleted = abandoned = 0
    for session_id, blob in list(sessions_table.items()):
        state = SessionState.unpack(blob)
        if state.partition not in assigned:
            continue
        if state.pending:
            waiting.set(session_id, state.earliest_pending())
            continue
        expired = state.completed_ms if state.completed else state.touched_ms
        if (state.completed or state.session is None) and expired <= now - retention_ms:
            delete(sessions_table, state.partition, session_id)
            deleted += 1
        elif (
            state.session is not None
            and not state.completed
            and ttl_ms > 0
            and state.created_ms <= now - ttl_ms
        ):
            obs = abandon(state, session_id, now)
            # Output first: if the worker dies before the table write, the next scan
            # abandons the session again with the same observation id.
            await customer_obs_topic.send(key=obs["customer_id"].encode(), value=encode(obs))
            put(sessions_table, state.partition, session_id, state.pack())
            abandoned += 1
    if deleted or abandoned:
        log.info("choices: scan deleted %d expired sessions, abandoned %d", deleted, abandoned)


@app.timer(interval=0.5, name=f"{settings.app_id}.choice-sessions")
async def release_waiting_events() -> None:
    """Dead-letter events whose session did not come in time; periodic scan."""
    if not app.tables.recovery.completed.is_set() or app.rebalancing:
        return
    async with waiting.lock:
        assigned = assigned_partitions("recs.sessions")
        if (
            assigned != waiting.scanned_assignment
            or time.monotonic() - waiting.last_scan > settings.choice_scan_s
        ):
            waiting.scanned_assignment = assigned
            waiting.last_scan = time.monotonic()
            await scan_sessions(assigned)
        now = now_ms()
        for session_id in waiting.due(now):
            blob = sessions_table.get(session_id)
            if blob is None:
                waiting.set(session_id, None)
                continue
            state = SessionState.unpack(blob)
            if state.partition not in assigned:  # moved to another worker
                waiting.set(session_id, None)
                continue
            due = state.take_due_pending(now, WAIT_MS)
            # Dead letters first, then the table: a crash in between re-sends the same
            # dead letters (deterministic ids), it never loses one.
            for p in due:
                await send_dead_letter(
                    p,
                    "missing_session",
                    f"session {session_id!r} did not arrive within "
                    f"{settings.choice_session_wait_s:g} s",
                )
            if due:
                put(sessions_table, state.partition, session_id, state.pack())
            waiting.set(session_id, state.earliest_pending())


# ================================================================ stage 2: customers

CUSTOMER_UPSERT_SQL = """
INSERT INTO customer_segments
    (deployment, customer_id, segment, previous_segment, rule, evidence, sessions, choices,
     version, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (deployment, customer_id) DO UPDATE SET
    segment = EXCLUDED.segment, previous_segment = EXCLUDED.previous_segment,
    rule = EXCLUDED.rule, evidence = EXCLUDED.evidence, sessions = EXCLUDED.sessions,
    choices = EXCLUDED.choices, version = EXCLUDED.version, updated_at = now()
WHERE customer_segments.version < EXCLUDED.version
"""


@dataclass
class CustomerWork:
    states: dict[str, CustomerState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    fresh: set[str] = field(default_factory=set)
    new: list[tuple[str, dict[str, Any], int, int]] = field(default_factory=list)
    forwards: list[tuple[int, dict[str, Any], int, int]] = field(default_factory=list)

    def load(self, customer_id: str, partition: int) -> CustomerState:
        state = self.states.get(customer_id)
        if state is None:
            blob = customers_table.get(customer_id)
            state = CustomerState.unpack(blob) if blob else CustomerState(len(FACTORS))
            state.partition = partition
            self.states[customer_id] = state
        return state


async def process_customers(valid: list[Valid]) -> None:
    now = now_ms()
    work = CustomerWork()
    for v in valid:
        obs = v.payload
        customer = obs["customer_id"]
        state = work.load(customer, v.partition)
        id_hash = event_id_hash(obs["id"])
        if v.offset <= state.offset:  # replay: forward again exactly as the first time
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT_CUSTOMERS).inc()
            known = state.lookup(id_hash)
            if known is not None:
                work.forwards.append((known, obs, v.partition, v.offset))
            continue
        work.dirty.add(customer)
        if state.seen_source(obs["src"]):  # stage 1 sent it again (its replay)
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT_CUSTOMERS).inc()
            state.offset = v.offset
            continue
        state.advance_source(obs["src"])
        work.fresh.add(customer)
        work.new.append((customer, obs, v.partition, v.offset))

    # Each observation is fitted in the customer's segment right after it: per observation,
    # not per batch, so that where the batches begin and end changes nothing downstream.
    segments, changes = observe_customers(
        work.states, [(c, o) for c, o, _, _ in work.new], FACTORS, segment_rules, now
    )
    for (customer, obs, partition, offset), segment in zip(work.new, segments, strict=True):
        code = segment_code(segment)
        work.states[customer].remember(offset, event_id_hash(obs["id"]), code)
        work.forwards.append((code, obs, partition, offset))

    for customer in work.dirty:
        state = work.states[customer]
        put(customers_table, state.partition, customer, state.pack())
    crash_point("after_table")

    # Every change of this batch in order, and the latest change of customers touched only
    # by a replay (heal: the send may never have happened). A crash after the table write
    # re-sends only the latest change of a customer that changed twice in the batch.
    changed = list(changes)
    for customer in set(work.states) - work.fresh:
        if work.states[customer].last_change is not None:
            changed.append(work.states[customer].last_change)
    events = {e["customer_id"]: e for e in changed}  # the latest per customer
    await redis_values.write_many(
        "customer_segment", ((c, e["version"], encode(e)) for c, e in events.items())
    )
    crash_point("after_redis")
    await postgres.execute_many(
        CUSTOMER_UPSERT_SQL,
        [
            (DEPLOYMENT, c, e["segment"], e["previous_segment"], e["rule"], e["evidence"],
             e["sessions"], e["choices"], e["version"])
            for c, e in events.items()
        ],
    )  # fmt: skip
    crash_point("after_postgres")
    for event in changed:
        await customer_segments_topic.send(key=event["customer_id"].encode(), value=encode(event))
    # Per source partition in offset order: stage 3 keeps a watermark per source partition.
    work.forwards.sort(key=lambda f: (f[2], f[3]))
    for code, obs, partition, offset in work.forwards:
        segment = segment_name(code)
        forwarded = {**obs, "segment": segment, "src": [partition, offset]}
        await segment_obs_topic.send(key=segment.encode(), value=encode(forwarded))
    EVENTS_OUT.labels(topic=segment_obs_topic.get_topic_name(), agent=AGENT_CUSTOMERS).inc(
        len(work.forwards)
    )
    EVENTS_OUT.labels(topic=customer_segments_topic.get_topic_name(), agent=AGENT_CUSTOMERS).inc(
        len(changed)
    )
    _observe_latency(AGENT_CUSTOMERS, valid)
    crash_point("after_output")
    TABLE_KEYS.labels(table="choice_customers").set(len(customers_table))


@app.agent(customer_obs_topic, name=f"{settings.app_id}.choice-customers")
async def choice_customers(stream: StreamT) -> None:
    await customer_boundary.consume(
        stream, process_customers, settings.batch_size, settings.batch_within_s
    )


# ================================================================ stage 3: segments

WEIGHTS_INSERT_SQL = """
INSERT INTO choice_scoring_weights
    (deployment, segment, version, weights, confidence, sample_size, no_choice, applied,
     is_default, reason, learned_weights, standard_errors, coefficients)
VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb)
ON CONFLICT (deployment, segment, version) DO NOTHING
"""
STATS_UPSERT_SQL = """
INSERT INTO choice_segment_stats
    (deployment, segment, version, weights_version, window_s, event_time_ms, summary,
     confidence, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, now())
ON CONFLICT (deployment, segment) DO UPDATE SET
    version = EXCLUDED.version, weights_version = EXCLUDED.weights_version,
    window_s = EXCLUDED.window_s, event_time_ms = EXCLUDED.event_time_ms,
    summary = EXCLUDED.summary, confidence = EXCLUDED.confidence, updated_at = now()
WHERE choice_segment_stats.version < EXCLUDED.version
"""
_BUCKET_COLUMNS = (
    "sessions, conversions, rank_sum, satisfaction_sum, satisfaction_n, decision_time_sum, "
    "decision_time_n, abandoned, interactions, time_spent_sum, helpful_sum, helpful_n, "
    "viewed, expanded, compared, contacted, detailed_explanations"
)
_BUCKET_NAMES = [c.strip() for c in _BUCKET_COLUMNS.split(",")]
BUCKET_UPSERT_SQL = f"""
INSERT INTO choice_analytics_buckets
    (deployment, segment, complexity, bucket_start_ms, bucket_s, version, confidence,
     {_BUCKET_COLUMNS}, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, {", ".join(["%s"] * len(_BUCKET_NAMES))}, now())
ON CONFLICT (deployment, segment, complexity, bucket_start_ms) DO UPDATE SET
    bucket_s = EXCLUDED.bucket_s, version = EXCLUDED.version, confidence = EXCLUDED.confidence,
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _BUCKET_NAMES)}, updated_at = now()
WHERE choice_analytics_buckets.version < EXCLUDED.version
"""
ALERT_INSERT_SQL = """
INSERT INTO choice_alerts
    (event_id, deployment, segment, metric, severity, escalation_level, value, threshold,
     message, dimensions, event_time_ms, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, now())
ON CONFLICT (deployment, event_id) DO NOTHING
"""


@dataclass
class SegmentWork:
    states: dict[str, SegmentState] = field(default_factory=dict)
    new: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    buckets: dict[str, set[str]] = field(default_factory=dict)
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def load(self, segment: str, partition: int) -> SegmentState:
        state = self.states.get(segment)
        if state is None:
            blob = segments_table.get(segment)
            state = SegmentState.unpack(blob) if blob else SegmentState()
            state.partition = partition
            self.states[segment] = state
        return state


def _usable(obs: dict[str, Any]) -> bool:
    if obs["segment"] not in SEGMENTS:
        return False
    return obs["kind"] != "session" or all(len(x) == len(FACTORS) for x in obs.get("X", ()))


def stats_payload(segment: str, state: SegmentState) -> dict[str, Any]:
    return {
        "segment": segment,
        "version": state.stats_version,
        "weights_version": state.version,
        "window_s": WINDOW_S,
        "event_time_ms": state.now_ts,
        "summary": window_summary(state),
        "confidence": state.confidence,
        "sample_size": (state.model or {}).get("n_sessions", 0),
        "too_late": state.too_late,
    }


async def process_segments(valid: list[Valid]) -> None:
    now = now_ms()
    work = SegmentWork()
    for v in valid:
        obs = v.payload
        segment = obs["segment"]
        state = work.load(segment, v.partition)
        src_partition, src_offset = int(obs["src"][0]), int(obs["src"][1])
        if state.seen(src_partition, src_offset):
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT_SEGMENTS).inc()
            continue
        state.advance(src_partition, src_offset)
        work.new.setdefault(segment, [])
        if not _usable(obs):
            log.warning("choice-segments: observation %s does not fit the factors", obs["id"])
            continue
        key = add_to_window(state, obs, WINDOW_S, BUCKET_S)
        if key is not None:
            work.buckets.setdefault(segment, set()).add(key)
        work.new[segment].append(obs)

    for segment, observations in work.new.items():
        state = work.states[segment]
        fit_segment(state, observations, model_config)
        prune_window(state, WINDOW_S, BUCKET_S)
        state.stats_version += 1
        fired = evaluate_alerts(segment, state, window_summary(state), thresholds, WINDOW_S, now)
        if fired:
            state.last_alerts = fired
        work.alerts[segment] = fired
    for segment in work.new:
        state = work.states[segment]
        put(segments_table, state.partition, segment, state.pack())
    crash_point("after_table")
    await publish_segments(work, now)
    _observe_latency(AGENT_SEGMENTS, valid)
    TABLE_KEYS.labels(table="choice_segments").set(len(segments_table))


async def publish_segments(work: SegmentWork, now: int) -> None:
    """Redis → PostgreSQL → topics for every segment the batch touched."""
    published: dict[str, PublishedWeights] = {}
    scoring: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for segment, state in work.states.items():
        stats[segment] = stats_payload(segment, state)
        if state.version > 0:
            published[segment] = current_weights(state, model_config)
            scoring[segment] = scoring_event(segment, state, published[segment], now)
    await redis_values.write_many(
        "scoring", ((s, e["version"], encode(e)) for s, e in scoring.items())
    )
    await redis_values.write_many(
        "choice_stats", ((s, p["version"], encode(p)) for s, p in stats.items() if p["version"])
    )
    crash_point("after_redis")

    await postgres.execute_many(
        WEIGHTS_INSERT_SQL,
        [
            (DEPLOYMENT, s, scoring[s]["version"], _json(scoring[s]["weights"]),
             scoring[s]["confidence"], scoring[s]["sample_size"],
             (work.states[s].model or {}).get("n_no_choice", 0), p.applied, p.is_default,
             p.reason, _json(p.learned_weights), _json(p.standard_errors),
             _json(p.coefficients))
            for s, p in published.items()
        ],
    )  # fmt: skip
    await postgres.execute_many(
        STATS_UPSERT_SQL,
        [
            (DEPLOYMENT, s, p["version"], p["weights_version"], WINDOW_S, p["event_time_ms"],
             _json(p["summary"]), p["confidence"])
            for s, p in stats.items()
            if p["version"]
        ],
    )  # fmt: skip
    bucket_rows = []
    for segment, state in work.states.items():
        # New data: the buckets it landed in; a replay-only touch: the whole window (heal).
        keys = work.buckets.get(segment) if segment in work.new else None
        if keys is not None and not keys:
            continue
        for start, complexity, row in iter_bucket_rows(state, keys):
            confidence = state.bucket_confidence.get(str(start))
            bucket_rows.append(
                (DEPLOYMENT, segment, complexity, start, BUCKET_S, state.stats_version,
                 confidence, *row)
            )  # fmt: skip
    await postgres.execute_many(BUCKET_UPSERT_SQL, bucket_rows)
    alerts = {
        s: (work.alerts[s] if s in work.new else work.states[s].last_alerts) for s in work.states
    }
    await postgres.execute_many(
        ALERT_INSERT_SQL,
        [
            (a["event_id"], DEPLOYMENT, s, a["metric"], a["severity"], a["escalation_level"],
             a["value"], a["threshold"], a["message"], _json(a["dimensions"]),
             int(a["dimensions"]["event_time_ms"]))
            for s, fired in alerts.items()
            for a in fired
        ],
    )  # fmt: skip
    crash_point("after_postgres")

    for segment, event in scoring.items():
        await scoring_topic.send(key=segment.encode(), value=encode(event))
    n_alerts = 0
    for fired in alerts.values():
        for alert in fired:
            await alerts_topic.send(key=alert["component"].encode(), value=encode(alert))
            n_alerts += 1
    EVENTS_OUT.labels(topic=scoring_topic.get_topic_name(), agent=AGENT_SEGMENTS).inc(len(scoring))
    EVENTS_OUT.labels(topic=alerts_topic.get_topic_name(), agent=AGENT_SEGMENTS).inc(n_alerts)
    crash_point("after_output")


@app.agent(segment_obs_topic, name=f"{settings.app_id}.choice-segments")
async def choice_segments(stream: StreamT) -> None:
    await segment_boundary.consume(
        stream, process_segments, settings.batch_size, settings.batch_within_s
    )

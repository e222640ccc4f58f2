"""Agent ``experiments``: streaming A/B statistics, results and decisions per experiment.

Input: ``experiments.exposures``, ``experiments.conversions`` and ``experiments.definitions``,
all keyed by experiment id and read as one stream, so the partition that receives an
experiment's events owns it: its aggregate and its units live in the ``experiments`` table
on that partition (:mod:`agents.experiments.state`).

Definitions. PostgreSQL is the source of truth (:mod:`agents.experiments.store`). The agent
reads a definition from PostgreSQL the first time it meets an experiment's exposure or
conversion (and again while it is a draft, so an experiment started a moment ago is seen
at once); announcements on ``experiments.definitions`` then move the status forward for
experiments it already holds (others are ignored: they are loaded when their data comes).
Before a decision is announced the status is re-read from PostgreSQL, so an experiment an
operator stopped meanwhile never receives a stop, rollback or reallocation.

Per batch: validate (dead letters) → group by experiment → skip events at or below the
applied offset of their topic → exposures and conversions update unit records and
mergeable statistics (:meth:`ExperimentState.apply_exposure` / ``apply_conversion``) →
units, then the aggregate, to the table (changelog) → for experiments whose result is due:
one look (:func:`agents.experiments.results.evaluate`) → Redis (``exp:<id>``, versioned) →
PostgreSQL (latest result, history, decision records, status / weights) → the
``experiments.results`` and ``actions`` topics.

Rejected (dead-lettered, kind ``schema_violation`` unless noted): events of an experiment
that PostgreSQL does not know (``unknown_experiment``) or of a draft; an exposure whose
variant, or a conversion whose metric, is not in the definition; a binary metric value other
than 0 or 1; conversions of a unit that is never exposed (``unexposed_unit``, below); events
of an experiment whose unit records were purged (``other``).

Conversions of units whose exposure has not arrived yet (the topics are read concurrently,
so this happens) are held in the unit record, with their bytes and coordinates, and applied
when the exposure arrives: at most 16 per unit and ``LOOPWISE_EXPERIMENT_MAX_HELD_UNITS``
units per experiment (beyond: ``unexposed_unit`` at once). The wait is bounded in *event
time*: once an applied exposure is ``LOOPWISE_EXPERIMENT_UNEXPOSED_WAIT_S`` later than a held
conversion, that conversion is dead-lettered (``unexposed_unit``). Event time, not the wall
clock, so that consumer lag on the exposures topic never expires conversions whose exposures
are merely unread; an experiment whose exposures stop keeps its held conversions until its
unit records are purged, which dead-letters them. ``srm.held_units`` reports units waiting,
``srm.unexposed_conversions`` the conversions dead-lettered. An in-memory index (rebuilt from
the table after each rebalance) finds the due units without scanning the table.

Retention: when an experiment is stopped or concluded the aggregate records the wall-clock
time; ``LOOPWISE_EXPERIMENT_UNIT_RETENTION_S`` later a timer deletes its unit records
(changelog tombstones, :func:`purge_ended`). The aggregate, with the final statistics, stays.

Results are rate-limited per experiment (``LOOPWISE_EXPERIMENT_RESULTS_INTERVAL_S``): a batch
that changes an experiment emits at once if the last result is older than the interval,
else the state is marked dirty and a timer emits it when the interval has passed, so the
last change of a burst is always published. Dirty flags are in the table, so a result owed
at a crash or rebalance is emitted by the next owner. Result event ids are
``res:<experiment>:<version>``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP, StreamT

from agents.experiments.results import Evaluation, Policy, evaluate
from agents.experiments.state import (
    APPLIED,
    DUPLICATE,
    HELD,
    HOLD_LIMIT,
    TOPIC_SLOTS,
    ExperimentState,
    HeldIndex,
    Unit,
    definition_payload,
    definition_revision,
    event_id_hash,
    unit_key,
)
from agents.experiments.store import _COLUMNS, Experiment
from streams.app import (
    actions_topic,
    admission,
    app,
    deadletter_topic,
    postgres,
    redis_values,
    settings,
    topic,
)
from streams.boundary import Boundary, Valid
from streams.codecs import EventDecoder, dead_letter, encode
from streams.metrics import (
    DEAD_LETTERS,
    EVENT_TO_OUTPUT_SECONDS,
    EVENTS_DUPLICATE,
    EVENTS_OUT,
    EXPERIMENT_EXPOSURES,
    EXPERIMENTS_ACTIVE,
    TABLE_KEYS,
)
from streams.retry import retry_transient
from streams.sinks.postgres_sink import jsonb
from streams.state import crash_point, delete, put

log = logging.getLogger(__name__)
AGENT = "experiments"
INPUTS = ("experiments.exposures", "experiments.conversions", "experiments.definitions")
FLUSH_EVERY_S = 0.1
# Fault-test hook (LOOPWISE_CRASH_AT): exit between the unit records and the aggregate.
CRASH_AFTER_UNITS = "experiments_after_units"

experiments_stream = topic(*INPUTS)
results_topic = topic("experiments.results")
definitions_topic = topic("experiments.definitions")
experiments_table = app.Table(
    "experiments", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
experiments_table.value_serializer = "raw"
boundary = Boundary(
    AGENT,
    {settings.topic(name): EventDecoder(name, settings.max_message_bytes) for name in INPUTS},
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
policy = Policy.from_settings(settings)
_slot_of_topic = {settings.topic(name): TOPIC_SLOTS[name] for name in INPUTS}
_owner_topic = settings.topic("experiments.exposures")

PURGE_CHECK_EVERY_S = 30.0
PURGE_CHUNK = 1000  # unit deletions between yields to the event loop


_lock = asyncio.Lock()
_last_emit: dict[str, float] = {}
_pending: dict[str, int] = {}  # experiment id -> partition, results owed (rate limit)
_held = HeldIndex()
_scan_needed = True
_last_purge_check = 0.0

UPSERT_LATEST = """
INSERT INTO experiment_results_latest (experiment_id, version, result, computed_at)
VALUES (%s, %s, %s, to_timestamp(%s / 1000.0))
ON CONFLICT (experiment_id) DO UPDATE SET
    version = EXCLUDED.version, result = EXCLUDED.result,
    computed_at = EXCLUDED.computed_at, updated_at = now()
WHERE experiment_results_latest.version < EXCLUDED.version
"""
INSERT_HISTORY = """
INSERT INTO experiment_results (experiment_id, version, result, computed_at)
VALUES (%s, %s, %s, to_timestamp(%s / 1000.0))
ON CONFLICT (experiment_id, version) DO NOTHING
"""
INSERT_DECISION = """
INSERT INTO experiment_decisions
    (action_id, experiment_id, kind, variant, parameters, evidence, reason, result_version)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (action_id) DO NOTHING
"""
SET_WEIGHTS = """
UPDATE experiments SET current_weights = %s, revision = revision + 1, updated_at = now()
WHERE experiment_id = %s AND status = 'running' AND current_weights IS DISTINCT FROM %s
"""
CONCLUDE = f"""
UPDATE experiments SET status = 'concluded', revision = revision + 1, updated_at = now(),
    ended_at = now(), stop_reason = %s
WHERE experiment_id = %s AND status = 'running'
RETURNING {_COLUMNS}
"""
SELECT_MANY = f"SELECT {_COLUMNS} FROM experiments WHERE experiment_id = ANY(%s)"


async def _fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return await retry_transient(
        lambda: postgres.fetch(sql, params),
        sink="postgres",
        max_backoff_s=settings.sink_retry_max_s,
    )


async def load_definitions(experiment_ids: Sequence[str]) -> dict[str, Experiment]:
    rows = await _fetch(SELECT_MANY, (list(experiment_ids),))
    return {row[0]: Experiment.from_row(row) for row in rows}


def _state_from(row: Experiment, start_ms: int) -> ExperimentState:
    names = [v["name"] for v in row.definition["variants"]]
    weights = row.weights
    state = ExperimentState.new(
        row.definition, row.status, [weights.get(n, 0.0) for n in names], start_ms
    )
    state.revision = row.revision
    return state


# --------------------------------------------------------------------------------------
# One look, and everything it produces
# --------------------------------------------------------------------------------------


@dataclass
class Emission:
    experiment_id: str
    partition: int
    state: ExperimentState
    evaluation: Evaluation | None  # None: re-send the last result and actions (healing)
    history: bool = False


async def look(experiment_id: str, state: ExperimentState, partition: int) -> Emission:
    """Evaluate; if that decided something, confirm the status in PostgreSQL first."""
    now_ms = int(time.time() * 1000)
    snapshot = state.pack()
    previous_status = (state.last_result or {}).get("status")
    ev = evaluate(state, now_ms, policy)
    if ev.decisions:
        rows = await load_definitions([experiment_id])
        row = rows.get(experiment_id)
        if row is not None and row.status != "running":
            log.info("experiments: %s is %s in PostgreSQL; no decision", experiment_id, row.status)
            state = ExperimentState.unpack(snapshot)
            state.status = row.status
            ev = evaluate(state, now_ms, policy)
    history = bool(
        ev.decisions
        or state.result_version == 1
        or now_ms - state.history_ms >= settings.experiment_history_interval_s * 1000
        or previous_status != state.status
    )
    if history:
        state.history_ms = now_ms
    _last_emit[experiment_id] = time.monotonic()
    _pending.pop(experiment_id, None)
    return Emission(experiment_id, partition, state, ev, history)


async def publish(emissions: Sequence[Emission]) -> None:
    """Redis, PostgreSQL, then the output topics; every write idempotent."""
    if not emissions:
        return
    results = [(e, e.state.last_result) for e in emissions if e.state.last_result]
    await redis_values.write_many(
        "exp", ((e.experiment_id, r["version"], encode(r)) for e, r in results)
    )
    crash_point("after_redis")
    rows = [(e.experiment_id, r["version"], jsonb(r), r["computed_at"]) for e, r in results]
    await postgres.execute_many(UPSERT_LATEST, rows)
    await postgres.execute_many(
        INSERT_HISTORY, [row for (e, _), row in zip(results, rows, strict=True) if e.history]
    )
    records = []
    for e in emissions:
        actions = (
            list(e.state.actions.values())
            if e.evaluation is None
            else [e.state.actions[a["action_id"]] for a in e.evaluation.actions]
        )
        for entry in actions:
            kind, variant, params, evidence, reason, version = entry["record"]
            records.append(
                (
                    entry["action"]["action_id"],
                    e.experiment_id,
                    kind,
                    variant,
                    jsonb(params),
                    jsonb(evidence),
                    reason,
                    version,
                )
            )
    await postgres.execute_many(INSERT_DECISION, records)
    for e in emissions:
        await _apply_decisions(e)
    crash_point("after_postgres")

    for e, r in results:
        await results_topic.send(key=e.experiment_id.encode(), value=encode(r))
    EVENTS_OUT.labels(topic=results_topic.get_topic_name(), agent=AGENT).inc(len(results))
    sent = 0
    for e in emissions:
        actions = (
            [a["action"] for a in e.state.actions.values()]
            if e.evaluation is None
            else e.evaluation.actions
        )
        for action in actions:
            await actions_topic.send(key=e.experiment_id.encode(), value=encode(action))
            sent += 1
    EVENTS_OUT.labels(topic=actions_topic.get_topic_name(), agent=AGENT).inc(sent)
    crash_point("after_output")


async def _apply_decisions(e: Emission) -> None:
    """The decisions' effects on the experiment's row, guarded by its status, so that a
    replay (``evaluation is None``: all decisions kept in the state) repeats them safely:
    the current weights after a rollback or reallocation, and the conclusion."""
    entries = (
        list(e.state.actions.values())
        if e.evaluation is None
        else [e.state.actions[a["action_id"]] for a in e.evaluation.actions]
    )
    kinds = {entry["action"]["kind"] for entry in entries}
    if kinds & {"rollback_variant", "reallocate_traffic"}:
        total = sum(e.state.weights)
        current = {
            name: (w / total if total > 0 else 0.0)
            for name, w in zip(e.state.defn.variants, e.state.weights, strict=True)
        }
        weights = jsonb(current)
        await postgres.execute_many(SET_WEIGHTS, [(weights, e.experiment_id, weights)])
    for entry in entries:
        action = entry["action"]
        if action["kind"] != "stop_experiment":
            continue
        rows = await _fetch(CONCLUDE, (action["reason"], e.experiment_id))
        if rows:
            # Same partition as the experiment's other events (and the CLI's
            # announcements): one partition holds the latest definition of a key.
            announced = Experiment.from_row(rows[0])
            await definitions_topic.send(
                key=e.experiment_id.encode(),
                value=encode(announced.event()),
                partition=e.partition,
            )


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


@dataclass
class _UnitSlot:
    unit: Unit
    committed: Unit | None
    partition: int


async def process(valid: list[Valid]) -> None:
    groups: dict[str, list[Valid]] = {}
    for v in valid:
        groups.setdefault(v.payload["experiment_id"], []).append(v)
    states: dict[str, ExperimentState | None] = {}
    partitions: dict[str, int] = {}
    refresh = []
    for exp, events in groups.items():
        blob = experiments_table.get(exp)
        states[exp] = ExperimentState.unpack(blob) if blob else None
        partitions[exp] = events[0].partition
        has_data = any(_slot_of_topic[v.topic] != 2 for v in events)
        if has_data and (states[exp] is None or states[exp].status == "draft"):  # type: ignore[union-attr]
            refresh.append(exp)
    if refresh:
        rows = await load_definitions(refresh)
        for exp in refresh:
            row = rows.get(exp)
            if row is None:
                continue
            state = states[exp]
            if state is None:
                ts = min(int(v.payload["ts"]) for v in groups[exp])
                states[exp] = _state_from(row, ts)
            else:
                state.apply_definition(row.definition, row.status, row.revision)

    units: dict[str, _UnitSlot] = {}
    changed: set[str] = set()
    heal: set[str] = set()
    for exp, events in groups.items():
        state = states[exp]
        if state is not None:
            if state.partition is None:
                state.partition = partitions[exp]  # a new experiment: its first event's
            partitions[exp] = state.partition
        if await _apply_events(exp, state, events, units):
            changed.add(exp)
        elif state is not None and state.result_version > 0:
            heal.add(exp)

    # Unit records first, the aggregate last: a crash in between is undone on recovery.
    for exp in changed:
        state = states[exp]
        assert state is not None
        mark = state.offsets[:2]
        prefix = f"{exp}|"
        for key, slot in units.items():
            if key.startswith(prefix):
                put(experiments_table, slot.partition, key, slot.unit.pack(mark, slot.committed))
    if changed and settings.crash_at == CRASH_AFTER_UNITS:
        await app.producer.flush()  # the unit records reach the changelog; the aggregate not
        crash_point(CRASH_AFTER_UNITS)

    interval = settings.experiment_results_interval_s
    emissions: list[Emission] = []
    now = time.monotonic()
    for exp in changed:
        state = states[exp]
        assert state is not None
        if now - _last_emit.get(exp, -1e18) >= interval:
            emission = await look(exp, state, partitions[exp])
            state = states[exp] = emission.state
            emissions.append(emission)
        else:
            state.dirty = True
            _pending[exp] = partitions[exp]
        put(experiments_table, partitions[exp], exp, _pack(state, partitions[exp]))
    crash_point("after_table")

    for exp in heal:
        state = states[exp]
        assert state is not None
        emissions.append(Emission(exp, partitions[exp], state, None))
    await publish(emissions)
    if emissions:
        now_s = time.time()
        for v in valid:
            EVENT_TO_OUTPUT_SECONDS.labels(agent=AGENT).observe(max(0.0, now_s - v.timestamp))
    TABLE_KEYS.labels(table="experiments").set(len(experiments_table))


def _pack(state: ExperimentState, partition: int) -> bytes:
    state.partition = partition  # also for the dirty scan after a rebalance
    _remember_status(state.defn.experiment_id, state)
    _set_active_gauge()
    state.mark_ended(int(time.time() * 1000))
    return state.pack()


async def _apply_events(
    exp: str,
    state: ExperimentState | None,
    events: list[Valid],
    units: dict[str, _UnitSlot],
) -> bool:
    """Apply one experiment's events in order; whether the state changed."""
    changed = False
    home = None if state is None else state.partition
    applied = [-1, -1] if state is None else list(state.offsets[:2])  # before this batch
    exposure_ts = 0 if state is None else state.last_exposure_ts
    held_any = False
    for v in events:
        slot = _slot_of_topic[v.topic]
        payload = v.payload
        if home is not None and v.partition != home:
            # Offsets of two partitions cannot be compared: refuse rather than lose events.
            if slot != 2:
                await boundary.refuse_foreign(v, f"experiment {exp!r}", home)
            continue
        if slot == 2:
            if state is None:
                continue  # loaded from PostgreSQL when the experiment's data arrives
            if v.offset <= state.offsets[2]:
                EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
                continue
            state.offsets[2] = v.offset
            error = state.apply_definition(
                definition_payload(payload),
                payload["status"],
                definition_revision(payload["event_id"]),
            )
            if error:
                await boundary.reject(v.event, "schema_violation", error)
            changed = True
            continue
        if state is None:
            await boundary.reject(
                v.event,
                "unknown_experiment",
                f"unknown experiment {exp!r}: no such definition in PostgreSQL "
                "(create it with `loopwise experiments create` or POST /experiments)",
            )
            continue
        if v.offset <= state.offsets[slot]:
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
            continue
        state.offsets[slot] = v.offset
        changed = True  # offsets moved, even if the event is rejected below
        if state.purged:
            # Its units are gone: a late exposure would count a unit twice.
            await boundary.reject(
                v.event,
                "other",
                f"experiment {exp!r} is {state.status} and its unit records were deleted "
                f"after LOOPWISE_EXPERIMENT_UNIT_RETENTION_S="
                f"{settings.experiment_unit_retention_s:g} s; late events are not counted",
            )
            continue
        if state.status == "draft":
            await boundary.reject(
                v.event,
                "schema_violation",
                f"experiment {exp!r} is a draft: start it (`loopwise experiments start "
                f"{exp}`) before exposing units",
            )
            continue
        d = state.defn
        if slot == 0:
            variant = payload["variant"]
            if variant not in d.variants:
                await boundary.reject(
                    v.event,
                    "schema_violation",
                    f"variant {variant!r} is not a variant of experiment {exp!r} "
                    f"(variants: {', '.join(d.variants)})",
                )
                continue
            unit = _unit(state, applied, exp, payload["unit_id"], v.partition, units)
            outcome = state.apply_exposure(
                unit, d.variants.index(variant), payload.get("covariate")
            )
            if outcome == APPLIED:
                EXPERIMENT_EXPOSURES.labels(experiment=exp, variant=variant).inc()
            state.observe_ts(int(payload["ts"]), exposure=True)
        else:
            metric = payload["metric"]
            if metric not in d.metrics:
                await boundary.reject(
                    v.event,
                    "schema_violation",
                    f"metric {metric!r} is not the primary metric or a guardrail of "
                    f"experiment {exp!r} (metrics: {', '.join(d.metrics)})",
                )
                continue
            m = d.metrics.index(metric)
            value = float(payload["value"])
            if d.metric_types[m] == "binary" and value not in (0.0, 1.0):
                await boundary.reject(
                    v.event,
                    "schema_violation",
                    f"metric {metric!r} of experiment {exp!r} is binary: value must be 0 or 1, "
                    f"not {payload['value']}",
                )
                continue
            unit = _unit(state, applied, exp, payload["unit_id"], v.partition, units)
            outcome = state.apply_conversion(
                unit,
                m,
                value,
                event_id_hash(payload["event_id"]),
                settings.experiment_max_held_units,
                ts=int(payload["ts"]),
                source=_source(v),
            )
            if outcome == HOLD_LIMIT:
                await boundary.reject(
                    v.event,
                    "unexposed_unit",
                    f"conversion of unit {payload['unit_id']!r}, which has no exposure in "
                    f"experiment {exp!r}: holding limit reached (16 per unit, "
                    f"LOOPWISE_EXPERIMENT_MAX_HELD_UNITS={settings.experiment_max_held_units} "
                    "units); is the exposure logged?",
                )
                continue
            if outcome == HELD:
                _held.add(exp, int(payload["ts"]), payload["unit_id"])
                held_any = True
            state.observe_ts(int(payload["ts"]), exposure=False)
        if outcome == DUPLICATE:
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
    if state is not None and (state.last_exposure_ts > exposure_ts or held_any):
        # Exposures advanced, or a conversion came in already past the wait. Either way
        # this batch moves the aggregate's offsets, so the expired units are written under
        # the batch's mark like any other change.
        await _expire_unexposed(exp, state, applied, units)
    return changed


def _source(v: Valid) -> list[Any]:
    """Coordinates and bytes of an input event, kept to dead-letter it later."""
    msg = v.event.message
    key = None if msg.key is None else base64.b64encode(msg.key).decode()
    return [msg.topic, msg.partition, msg.offset, key, base64.b64encode(msg.value or b"").decode()]


async def _dead_letter_held(entry: list[Any], kind: str, message: str) -> None:
    """Dead-letter a held conversion from the bytes and coordinates kept with it; its id
    comes from the coordinates, so a repeat after a crash is the same dead letter."""
    topic_name, partition, offset, key, original = entry[4]
    record = dead_letter(
        raw=base64.b64decode(original),
        topic=topic_name,
        partition=partition,
        offset=offset,
        key=None if key is None else base64.b64decode(key),
        kind=kind,
        message=message,
    )
    await deadletter_topic.send(key=topic_name.encode(), value=encode(record))
    DEAD_LETTERS.labels(topic=topic_name, reason=kind).inc()
    log.info("dead letter %s:%d:%d %s: %s", topic_name, partition, offset, kind, message)


async def _expire_unexposed(
    exp: str, state: ExperimentState, applied: list[int], units: dict[str, _UnitSlot]
) -> None:
    """Dead-letter held conversions that the exposure stream has passed by the wait."""
    wait_s = settings.experiment_unexposed_wait_s
    before = state.last_exposure_ts - wait_s * 1000
    assert state.partition is not None
    for unit_id in _held.due(exp, before):
        touched = unit_key(exp, unit_id) in units
        unit = _unit(state, applied, exp, unit_id, state.partition, units)
        expired = state.expire_held(unit, before)
        if not expired and not touched:
            del units[unit_key(exp, unit_id)]  # a stale entry: write nothing
        for entry in expired:
            await _dead_letter_held(
                entry,
                "unexposed_unit",
                f"conversion of unit {unit_id!r} in experiment {exp!r}: no exposure of the "
                f"unit arrived although exposures reached {wait_s:g} s (event time, "
                "LOOPWISE_EXPERIMENT_UNEXPOSED_WAIT_S) past it; is the exposure logged? "
                "(`loopwise dlq replay --reason unexposed_unit` counts it once it is)",
            )


def _unit(
    state: ExperimentState,
    applied: list[int],
    exp: str,
    unit_id: str,
    partition: int,
    units: dict[str, _UnitSlot],
) -> Unit:
    """The unit's value for this batch; ``applied``: the committed aggregate's offsets."""
    key = unit_key(exp, unit_id)
    slot = units.get(key)
    if slot is None:
        n_metrics = len(state.defn.metrics)
        committed = Unit.unpack(experiments_table.get(key), applied, n_metrics)
        unit = committed.copy() if committed is not None else Unit.new(n_metrics)
        slot = units[key] = _UnitSlot(unit, committed, partition)
    return slot.unit


@app.agent(experiments_stream, name=f"{settings.app_id}.experiments")
async def experiments(stream: StreamT) -> None:
    await boundary.consume(stream, process, settings.batch_size, settings.batch_within_s, _lock)


# --------------------------------------------------------------------------------------
# Results owed by the rate limit
# --------------------------------------------------------------------------------------


def _owned(partition: int) -> bool:
    try:
        return TP(_owner_topic, partition) in app.consumer.assignment()
    except Exception:  # consumer not started yet
        return False


_running: dict[str, int] = {}  # experiment id -> partition, running ones in the table


def _remember_status(experiment_id: str, state: ExperimentState) -> None:
    if state.status == "running" and state.partition is not None:
        _running[experiment_id] = state.partition
    else:
        _running.pop(experiment_id, None)


def _set_active_gauge() -> None:
    # Owned partitions only, so that during a handover two workers never both count one.
    EXPERIMENTS_ACTIVE.set(sum(1 for partition in _running.values() if _owned(partition)))


def _scan_table() -> None:
    """After a rebalance: the results owed, and the index of held conversions."""
    _held.clear()
    _running.clear()
    aggregates: dict[str, ExperimentState | None] = {}
    for key in list(experiments_table.data.keys()):
        blob = experiments_table.data.get(key)
        if not blob:
            continue
        if "|" not in key:
            state = ExperimentState.unpack(blob)
            _remember_status(key, state)
            if state.dirty and state.partition is not None:
                _pending.setdefault(key, state.partition)
            continue
        if not blob.startswith(b"[-1,"):
            continue  # an exposed unit (its variant comes first) holds nothing
        exp, unit_id = key.split("|", 1)  # experiment ids cannot contain "|"
        if exp not in aggregates:
            agg = experiments_table.data.get(exp)
            aggregates[exp] = ExperimentState.unpack(agg) if agg else None
        owner = aggregates[exp]
        if owner is None:
            continue
        unit = Unit.unpack(blob, owner.offsets[:2], len(owner.defn.metrics))
        for entry in [] if unit is None else unit.held:
            if len(entry) >= 5:
                _held.add(exp, int(entry[3]), unit_id)


async def purge_ended(now_ms: int) -> int:
    """Delete the unit records of experiments ended longer than the retention ago.

    Tombstones go to the changelog on the experiment's partition; held conversions still
    waiting for an exposure are dead-lettered first (``unexposed_unit``). The aggregate
    (final statistics, result, decisions) stays and is marked ``purged``, so later events
    of the experiment are refused instead of counting its units again. A crash part-way
    leaves the aggregate unmarked: the next check deletes the rest. Returns the records
    deleted. Called with the agent's lock held.
    """
    retention_ms = int(settings.experiment_unit_retention_s * 1000)
    due = []
    for key in list(experiments_table.data.keys()):
        if "|" in key:
            continue
        blob = experiments_table.data.get(key)
        if not blob:
            continue
        state = ExperimentState.unpack(blob)
        owner = state.partition
        if owner is not None and state.purge_due(now_ms, retention_ms) and _owned(owner):
            due.append((key, state))
    deleted = 0
    for exp, state in due:
        assert state.partition is not None
        prefix = f"{exp}|"
        keys = [k for k in list(experiments_table.data.keys()) if k.startswith(prefix)]
        n_metrics = len(state.defn.metrics)
        for i, key in enumerate(keys):
            blob = experiments_table.data.get(key)
            if blob is not None and blob.startswith(b"[-1,"):
                unit = Unit.unpack(blob, state.offsets[:2], n_metrics)
                for entry in [] if unit is None else state.expire_held(unit, math.inf):
                    await _dead_letter_held(
                        entry,
                        "unexposed_unit",
                        f"conversion of unit {key[len(prefix) :]!r} in experiment {exp!r}: "
                        f"the experiment is {state.status} and the unit was never exposed",
                    )
            delete(experiments_table, state.partition, key)
            if (i + 1) % PURGE_CHUNK == 0:
                await asyncio.sleep(0)
        state.purged = True
        state.count("purged_units", len(keys))
        put(experiments_table, state.partition, exp, _pack(state, state.partition))
        _held.drop(exp)
        deleted += len(keys)
        log.info(
            "experiments: %s ended %.0f s ago; deleted its %d unit records",
            exp,
            (now_ms - (state.ended_ms or now_ms)) / 1000,
            len(keys),
        )
    if deleted:
        TABLE_KEYS.labels(table="experiments").set(len(experiments_table))
    return deleted


@app.on_rebalance_complete.connect
async def _after_rebalance(*args: Any, **kwargs: Any) -> None:
    global _scan_needed
    _scan_needed = True


@app.timer(FLUSH_EVERY_S, name=f"{settings.app_id}.experiments-flush")
async def flush_pending() -> None:
    """Emit the results the rate limit deferred, once their interval has passed."""
    global _scan_needed, _last_purge_check
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        return
    if _scan_needed:
        _scan_needed = False
        _scan_table()
        _set_active_gauge()
    # A short retention (tests) is checked more often than the default's every 30 s.
    every_s = min(PURGE_CHECK_EVERY_S, max(0.5, settings.experiment_unit_retention_s / 2))
    if time.monotonic() - _last_purge_check >= every_s:
        _last_purge_check = time.monotonic()
        async with _lock:
            await purge_ended(int(time.time() * 1000))
    if not _pending:
        return
    interval = settings.experiment_results_interval_s
    async with _lock:
        now = time.monotonic()
        due = [
            (exp, part)
            for exp, part in _pending.items()
            if now - _last_emit.get(exp, -1e18) >= interval
        ]
        emissions = []
        for exp, partition in due:
            _pending.pop(exp, None)
            blob = experiments_table.get(exp)
            if not blob or not _owned(partition):
                continue
            state = ExperimentState.unpack(blob)
            if not state.dirty:
                continue
            emission = await look(exp, state, partition)
            put(experiments_table, partition, exp, _pack(emission.state, partition))
            emissions.append(emission)
        if emissions:
            crash_point("after_table")
            await publish(emissions)

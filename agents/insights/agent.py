"""Agent ``insights``: windowed analytics, health, trends and insights from decisions and
metrics (both keyed by component, so one component's windows live on one partition); agent
``insight-signals``: insights from the other agents' outputs (``weights.algorithms``,
``experiments.results``, ``weights.scoring``).

Per batch: validate (dead letters) → window of each event by its ``ts`` (length
``LOOPWISE_INSIGHTS_WINDOW_S``; events older than the retention are counted and skipped,
events more than an hour in the future are dead-lettered) → drop events the window already
applied (offset or event id, :class:`agents.insights.windows.WindowState`) → vectorised
summaries per group (:func:`apply_decisions`, :func:`apply_metrics`) → table (changelog) →
Redis (``insight-window:<component>|<start>``) → PostgreSQL ``insight_windows``.

A timer on every worker (``LOOPWISE_INSIGHTS_EVAL_INTERVAL_S``) evaluates the components
of its own partitions (:func:`agents.insights.evaluation.evaluate_component`): closed windows are
checked against the health thresholds (alerts on ``alerts``, de-duplicated, escalating after
``LOOPWISE_INSIGHTS_ESCALATE_AFTER`` consecutive failures), trends and comparisons become
insights (``insights`` and PostgreSQL ``insights``), scheduled components are watched for
missed runs, expired windows are deleted. The evaluation state (per component, table
``insight_health``) is written *with* its pending outputs first; the outputs are then
written (PostgreSQL, Redis, topics) and cleared — a crash in between re-sends them with the
same ids. Batches and the timer share one lock.

A timer on the leader runs the scheduled jobs of :mod:`agents.insights.jobs`: optimization
cycles (actions), improvement tickets and their measurement, reports.

``insight-signals`` validates its inputs at the same boundary (dead letters), applies each
record to its key's state in the table ``insight_signals`` (:mod:`agents.insights.signals`:
disabled and dominant algorithms, experiment winners, guardrail breaches and SRM, scoring
weights stuck on the defaults) and writes the resulting insights like the evaluation does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from faust.types import TP, StreamT
from prometheus_client import Counter

from agents.insights import jobs
from agents.insights.evaluation import EvalConfig, EvalState, WindowView, evaluate_component
from agents.insights.rules import ACTION_RISK
from agents.insights.signals import (
    KEY_FIELDS,
    SignalConfig,
    SignalState,
    apply_signal,
    latest_refreshes,
)
from agents.insights.windows import (
    TOPIC_SLOTS,
    WindowState,
    apply_decisions,
    apply_metrics,
    event_id_hash,
    window_start,
)
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
from streams.codecs import EventDecoder, encode
from streams.config import parse_health_thresholds
from streams.metrics import (
    AGENT_ERRORS,
    EVENTS_DUPLICATE,
    EVENTS_OUT,
    REGISTRY,
    TABLE_KEYS,
)
from streams.sinks.postgres_sink import jsonb
from streams.state import assigned_partitions, crash_point, put

log = logging.getLogger(__name__)
AGENT = "insights"
MAX_FUTURE_MS = 3_600_000
INPUTS = ("decisions", "metrics")

input_topic = topic(*INPUTS)
insights_topic = topic("insights")
boundary = Boundary(
    AGENT,
    {settings.topic(n): EventDecoder(n, settings.max_message_bytes) for n in INPUTS},
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
_slot_of_topic = {settings.topic(n): TOPIC_SLOTS[n] for n in INPUTS}

# The other agents' outputs: keyed by segment or experiment, not by component, so they have
# their own agent and table (one value per source key, agents.insights.signals).
SIGNALS_AGENT = "insight-signals"
SIGNAL_INPUTS = tuple(KEY_FIELDS)
signal_topic = topic(*SIGNAL_INPUTS)
signal_boundary = Boundary(
    SIGNALS_AGENT,
    {settings.topic(n): EventDecoder(n, settings.max_message_bytes) for n in SIGNAL_INPUTS},
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)
_signal_of_topic = {settings.topic(n): n for n in SIGNAL_INPUTS}

windows_table = app.Table(
    "insight_windows", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
windows_table.value_serializer = "raw"
health_table = app.Table(
    "insight_health", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
health_table.value_serializer = "raw"
signals_table = app.Table(
    "insight_signals", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
signals_table.value_serializer = "raw"

LATE_EVENTS = Counter(
    "loopwise_insights_late_events_total",
    "Decisions and metrics older than the insights retention (not counted)",
    ["topic"],
    registry=REGISTRY,
)
ALERTS_OUT = Counter(
    "loopwise_insights_alerts_total",
    "Alerts emitted by the insights agent",
    ["severity", "status"],
    registry=REGISTRY,
)

WINDOW_MS = int(settings.insights_window_s * 1000)
DEPLOYMENT = settings.topic_prefix  # scopes this deployment's rows in PostgreSQL
eval_config = EvalConfig(
    window_ms=WINDOW_MS,
    grace_ms=int(settings.insights_grace_s * 1000),
    retention_ms=int(settings.insights_retention_h * 3_600_000),
    min_samples=settings.insights_min_samples,
    trend_windows=settings.insights_trend_windows,
    trend_min_windows=settings.insights_trend_min_windows,
    alpha=settings.insights_alpha,
    min_change=settings.insights_min_change,
    high_change=settings.insights_high_change,
    thresholds=parse_health_thresholds(settings.insights_thresholds),
    escalate_after=settings.insights_escalate_after,
    heartbeats=dict(settings.insights_heartbeats),
    heartbeat_grace_s=settings.insights_heartbeat_grace_s,
)
signal_config = SignalConfig(
    dominant_prob=settings.insights_dominant_prob,
    disable_ctr=settings.disable_ctr,
    scoring_min_confidence=settings.choice_min_confidence,
    scoring_min_sample=settings.choice_min_sample,
    scoring_stuck_s=settings.insights_scoring_stuck_s,
)

UPSERT_WINDOW_SQL = """
INSERT INTO insight_windows
    (deployment, component, window_start, window_end, version, stats, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, now())
ON CONFLICT (deployment, component, window_start) DO UPDATE SET
    version = EXCLUDED.version, stats = EXCLUDED.stats, updated_at = now()
WHERE insight_windows.version < EXCLUDED.version
"""
UPSERT_INSIGHT_SQL = """
INSERT INTO insights (deployment, insight_id, revision, subject, component, kind, metric, grp,
    direction, title, evidence, confidence, priority, recommended_action, action_kind,
    action_params, risk, status, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'active', now())
ON CONFLICT (deployment, insight_id) DO UPDATE SET
    revision = EXCLUDED.revision, subject = EXCLUDED.subject, kind = EXCLUDED.kind,
    direction = EXCLUDED.direction, title = EXCLUDED.title, evidence = EXCLUDED.evidence,
    confidence = EXCLUDED.confidence, priority = EXCLUDED.priority,
    recommended_action = EXCLUDED.recommended_action, action_kind = EXCLUDED.action_kind,
    action_params = EXCLUDED.action_params, risk = EXCLUDED.risk, status = 'active',
    resolved_at = NULL, updated_at = now()
WHERE insights.revision < EXCLUDED.revision
   OR (insights.revision = EXCLUDED.revision AND insights.status = 'active')
"""
RESOLVE_INSIGHT_SQL = """
UPDATE insights SET revision = %s, status = 'resolved', resolved_at = now(), updated_at = now()
WHERE deployment = %s AND insight_id = %s AND revision < %s
"""
INSERT_ALERT_SQL = """
INSERT INTO insight_alerts (deployment, event_id, component, metric, severity,
    escalation_level, status, value, threshold, window_start, message)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (deployment, event_id) DO NOTHING
"""


class Local:
    """This worker's view of its components: windows (as views) and evaluation states."""

    def __init__(self) -> None:
        self.windows: dict[str, dict[int, WindowView]] = defaultdict(dict)
        self.partition_of: dict[str, int] = {}
        self.states: dict[str, EvalState] = {}
        self.assignment: frozenset[int] = frozenset()
        self.lock = asyncio.Lock()
        # (topic, partition) → highest offset processed, and since when a partition has been
        # found behind the broker (see _catching_up)
        self.processed: dict[tuple[str, int], int] = {}
        self.behind_since: dict[int, int] = {}

    def add(self, st: WindowState) -> None:
        self.windows[st.component][st.start] = WindowView(
            st.start, st.end, st.last_ts, st.updated_wall, st.stats()
        )
        self.partition_of[st.component] = st.partition

    def rebuild(self, assigned: frozenset[int]) -> None:
        self.windows.clear()
        self.states.clear()
        self.partition_of.clear()
        for _, blob in list(windows_table.items()):
            if blob is None:
                continue
            st = WindowState.unpack(blob)
            if st.partition in assigned:
                self.add(st)
        for component, blob in list(health_table.items()):
            if blob is None:
                continue
            state = EvalState.unpack(blob)
            if state.partition in assigned:
                self.states[component] = state
                self.partition_of.setdefault(component, state.partition)
        self.assignment = assigned


local = Local()


# --------------------------------------------------------------------------- batches


async def process(valid: list[Valid]) -> None:
    now = now_ms()
    oldest = now - eval_config.retention_ms
    states: dict[str, WindowState] = {}
    dirty: set[str] = set()
    index: dict[str, int] = {}
    dec_owner: list[int] = []
    dec_payloads: list[dict[str, Any]] = []
    met_owner: list[int] = []
    met_payloads: list[dict[str, Any]] = []
    order: list[WindowState] = []
    for v in valid:
        tp_key = (v.topic, v.partition)
        local.processed[tp_key] = max(local.processed.get(tp_key, -1), v.offset)
        p = v.payload
        ts = int(p["ts"])
        if ts > now + MAX_FUTURE_MS:
            await boundary.reject(v.event, "other", f"ts {ts} is more than an hour in the future")
            continue
        if ts < oldest:
            LATE_EVENTS.labels(topic=v.topic).inc()
            continue
        start = window_start(ts, WINDOW_MS)
        key = f"{p['component']}|{start}"
        st = states.get(key)
        if st is None:
            blob = windows_table.get(key)
            st = (
                WindowState.unpack(blob)
                if blob
                else WindowState(p["component"], start, start + WINDOW_MS, partition=v.partition)
            )
            st.partition = v.partition
            states[key] = st
            index[key] = len(order)
            order.append(st)
        slot = _slot_of_topic[v.topic]
        id_hash = event_id_hash(p["event_id"])
        if st.seen(slot, v.offset, id_hash):
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=AGENT).inc()
            continue
        st.remember(slot, v.offset, id_hash, settings.insights_dedupe_ids)
        st.version += 1
        st.first_ts = ts if st.first_ts == 0 else min(st.first_ts, ts)
        st.last_ts = max(st.last_ts, ts)
        st.updated_wall = now
        dirty.add(key)
        if slot == TOPIC_SLOTS["decisions"]:
            dec_owner.append(index[key])
            dec_payloads.append(p)
        else:
            met_owner.append(index[key])
            met_payloads.append(p)
    apply_decisions(order, dec_owner, dec_payloads, settings.insights_max_groups)
    apply_metrics(order, met_owner, met_payloads, settings.insights_max_groups)
    await persist_windows(states, dirty)


async def persist_windows(states: dict[str, WindowState], dirty: set[str]) -> None:
    """Table → Redis → PostgreSQL for every window the batch touched (also duplicates only)."""
    for key in dirty:
        put(windows_table, states[key].partition, key, states[key].pack())
    crash_point("after_table")
    stats = {key: st.stats() for key, st in states.items()}
    payloads = {
        key: encode({"component": st.component, "start": st.start, "end": st.end,
                     "version": st.version, **stats[key]})
        for key, st in states.items()
    }  # fmt: skip
    await redis_values.write_many(
        "insight-window", ((key, states[key].version, payloads[key]) for key in states)
    )
    crash_point("after_redis")
    await postgres.execute_many(
        UPSERT_WINDOW_SQL,
        [(DEPLOYMENT, st.component, st.start, st.end, st.version, jsonb(stats[key]))
         for key, st in states.items()],
    )  # fmt: skip
    crash_point("after_postgres")
    crash_point("after_output")
    for st in states.values():
        if st.partition in local.assignment:
            local.add(st)
    TABLE_KEYS.labels(table="insight_windows").set(len(windows_table))


@app.agent(input_topic, name=f"{settings.app_id}.insights")
async def insights(stream: StreamT) -> None:
    await boundary.consume(
        stream, process, settings.batch_size, settings.batch_within_s, local.lock
    )


# --------------------------------------------------------------------------- evaluation


async def flush_outputs(pending: list[dict[str, Any]]) -> None:
    """Write pending outputs (of a component or a signal key): Redis, PostgreSQL, then the
    topics."""
    if not pending:
        return
    insight_rows, resolve_rows, alert_rows = [], [], []
    redis_items = []
    sends: list[tuple[Any, bytes, bytes]] = []
    for out in pending:
        if out["type"] == "insight":
            i, rev = out["insight"], out["revision"]
            insight_rows.append(
                (DEPLOYMENT, i["insight_id"], rev, i["subject"], i["component"], i["kind"],
                 i["metric"], i["group"], i["direction"], i["title"], jsonb(i["evidence"]),
                 i["confidence"], i["priority"], i["recommended_action"], i["action_kind"],
                 jsonb(i["action_params"]), ACTION_RISK.get(i["action_kind"] or ""))
            )  # fmt: skip
            if out.get("emit"):
                payload = encode(out["event"])
                redis_items.append((i["insight_id"], rev, payload))
                sends.append((insights_topic, i["subject"].encode(), payload))
        elif out["type"] == "resolve":
            resolve_rows.append((out["revision"], DEPLOYMENT, out["insight_id"], out["revision"]))
        elif out["type"] == "alert":
            ev = out["event"]
            dims = ev["dimensions"]
            alert_rows.append(
                (DEPLOYMENT, ev["event_id"], ev["component"], ev["metric"], ev["severity"],
                 ev["escalation_level"], dims["status"], ev["value"], ev["threshold"],
                 int(dims["window_start"]) if "window_start" in dims else None, ev["message"])
            )  # fmt: skip
            sends.append((alerts_topic, ev["component"].encode(), encode(ev)))
            ALERTS_OUT.labels(severity=ev["severity"], status=dims["status"]).inc()
    if redis_items:
        await redis_values.write_many("insight", redis_items)
    crash_point("after_redis")
    await postgres.execute_many(UPSERT_INSIGHT_SQL, insight_rows)
    await postgres.execute_many(RESOLVE_INSIGHT_SQL, resolve_rows)
    await postgres.execute_many(INSERT_ALERT_SQL, alert_rows)
    crash_point("after_postgres")
    for out_topic, key, payload in sends:
        await out_topic.send(key=key, value=payload)
        EVENTS_OUT.labels(topic=out_topic.get_topic_name(), agent=AGENT).inc()
    crash_point("after_output")


def _catching_up(partition: int, now: int) -> bool:
    """Whether to put off evaluating a partition's components: the broker holds events of the
    partition (its high watermark) that this worker has not processed yet — a burst or a
    backlog read in several batches. Closing windows and testing trends between those
    batches would publish findings on part of the data and revise them moments later.

    Put off for at most ``grace`` in a row, so a partition whose consumer never catches up
    (or whose last event was dead-lettered, which ``process`` never sees) is still evaluated.
    """
    behind = False
    for name in INPUTS:
        tp = TP(settings.topic(name), partition)
        done = local.processed.get((tp.topic, partition))
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:  # consumer not started or partition just revoked: no opinion
            highwater = None
        if highwater is not None and done is not None and done < highwater - 1:
            behind = True
    if not behind:
        local.behind_since.pop(partition, None)
        return False
    since = local.behind_since.setdefault(partition, now)
    return now - since < eval_config.grace_ms


async def evaluate_local(now: int) -> None:
    assigned = assigned_partitions("decisions")
    if assigned != local.assignment:
        local.rebuild(assigned)
    components = set(local.windows) | set(local.states)
    for component in sorted(components):
        partition = local.partition_of.get(component)
        if partition is None or partition not in assigned or _catching_up(partition, now):
            continue
        state = local.states.get(component) or EvalState(component, partition=partition)
        state.partition = partition
        if state.pending:  # left by a crash between the table and the outputs
            await flush_outputs(state.pending)
            state.pending = []
            put(health_table, partition, component, state.pack())
        views = list(local.windows.get(component, {}).values())
        state, expired, changed = evaluate_component(component, views, state, now, eval_config)
        local.states[component] = state
        for start in expired:
            key = f"{component}|{start}"
            windows_table.send_changelog(partition, key, None)
            windows_table.data.pop(key, None)
            local.windows[component].pop(start, None)
        if not changed:
            continue
        put(health_table, partition, component, state.pack())
        crash_point("after_table")
        if state.pending:
            await flush_outputs(state.pending)
            state.pending = []
            put(health_table, partition, component, state.pack())
    TABLE_KEYS.labels(table="insight_health").set(len(health_table))


@app.timer(interval=settings.insights_eval_interval_s, name=f"{settings.app_id}.insights-eval")
async def evaluate_windows() -> None:
    if not app.tables.recovery.completed.is_set() or app.rebalancing:
        return
    async with local.lock:
        try:
            await evaluate_local(now_ms())
        except Exception:
            AGENT_ERRORS.labels(agent=AGENT).inc()
            log.exception("insights: evaluation pass failed; retried at the next tick")


@app.timer(
    interval=min(settings.optimization_interval_s, 60.0),
    on_leader=True,
    name=f"{settings.app_id}.insights-jobs",
)
async def leader_jobs() -> None:

    await jobs.run_due(now_ms())


# --------------------------------------------------------------------------- other agents


async def process_signals(valid: list[Valid]) -> None:
    """Insights from the other agents' outputs (:mod:`agents.insights.signals`).

    Per key, new and changed insights and resolutions are written to the table with the
    key's state *before* they are sent (as ``pending``) and cleared afterwards: a crash in
    between leaves them in the table, and the replayed records (skipped by their version)
    touch the key again and send them with the same ids. Refreshes of an unchanged insight's
    numbers only update PostgreSQL and need no such care.
    """
    now = now_ms()
    states: dict[str, SignalState] = {}
    changed: set[str] = set()
    outputs: list[dict[str, Any]] = []
    for v in valid:
        name = _signal_of_topic[v.topic]
        subject = str(v.payload[KEY_FIELDS[name]])
        key = f"{name}|{subject}"
        st = states.get(key)
        if st is None:
            blob = signals_table.get(key)
            st = SignalState.unpack(blob) if blob else SignalState(name, subject)
            outputs += st.pending  # left by a crash: first, in their order
            states[key] = st
        st.partition = v.partition
        produced = apply_signal(st, v.payload, now, signal_config)
        if produced is None:
            EVENTS_DUPLICATE.labels(topic=v.topic, agent=SIGNALS_AGENT).inc()
            continue
        changed.add(key)
        outputs += produced
        st.pending += [o for o in produced if o["type"] == "resolve" or o.get("emit")]
    for key in changed:
        put(signals_table, states[key].partition, key, states[key].pack())
    crash_point("after_table")
    await flush_outputs(latest_refreshes(outputs))
    for key, st in states.items():
        if st.pending:
            st.pending = []
            put(signals_table, st.partition, key, st.pack())
    TABLE_KEYS.labels(table="insight_signals").set(len(signals_table))


@app.agent(signal_topic, name=f"{settings.app_id}.insight-signals")
async def insight_signals(stream: StreamT) -> None:
    await signal_boundary.consume(
        stream, process_signals, settings.batch_size, settings.batch_within_s
    )

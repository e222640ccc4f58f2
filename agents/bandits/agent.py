"""Bandits: per (segment, algorithm) Beta posteriors and the weights every worker serves.

Two halves:

* **Attribution** (per input partition, inside the feedback agent's batch — the events are
  validated once): impressions, clicks and conversions update impression records and the
  partition's :class:`~agents.bandits.attribution.Partial` in the ``bandits`` table, and the
  partial (absolute counts, versioned) is sent to the compacted ``bandits.partials`` topic.
  A timer closes attribution windows (failures) by event time.
* **Publishing** (the leader, every ``LOOPWISE_BANDIT_PUBLISH_S``): every worker reads all
  partials (:class:`streams.compacted.CompactedTopicReader`); the leader sums them, computes
  the posteriors Beta(1 + successes, 1 + failures), each algorithm's exact probability of
  being best, the segment's exploration rate and the auto-disabled set, and publishes
  ``weights.algorithms`` (plus Redis and PostgreSQL). Summing absolute partials makes the
  publisher idempotent: re-reading a partial twice changes nothing.

Auto-disable is evaluated on the last ``LOOPWISE_DISABLE_WINDOW_DAYS`` days: an algorithm
with at least ``LOOPWISE_DISABLE_MIN_IMPRESSIONS`` resolved impressions whose Clopper–Pearson
upper bound of CTR is below ``LOOPWISE_DISABLE_CTR`` is disabled (weight 0) and announced on
``actions``. A disabled algorithm gets no traffic, so its evidence ages out of the window;
it is then enabled again — re-probed at its exploration share — and disabled again if it is
still bad. The cool-down is therefore the window length.

Modes (recorded in every ``weights.algorithms`` event):

* ``stationary`` (default): Beta(1 + successes, 1 + failures) over all counts.
* ``discounted`` (``LOOPWISE_BANDIT_HALF_LIFE_S`` > 0): every trial weighs
  ``0.5**((ref − t)/h)`` by its impression's event time ``t``; each partial keeps its own
  discounted counts at its own reference time, and the publisher decays all of them to the
  latest reference before summing, so the result does not depend on how events were spread
  over partitions and batches. The event carries ``half_life_s`` and ``reference_ts``.
* ``contextual`` (``LOOPWISE_BANDIT_CONTEXTUAL``): additionally, every trial adds its
  impression's context ``x = [1, user vector when served]`` to the linear-regression
  statistics ``Σ x xᵀ``, ``Σ r x`` of its (segment, algorithm); the summed statistics ride on
  the event (``algorithms[].linear``), so Redis, PostgreSQL and the topic hold them like the
  posteriors, and ``GET /users/{id}/strategy`` turns them into per-user weights by linear
  Thompson sampling (:func:`contextual_strategy`). With a half-life the statistics are
  discounted like the counts. The Beta posteriors (discounted or not) stay the segment-level
  fallback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

import faust
import numpy as np
import orjson

from agents.bandits import weights
from agents.bandits.attribution import (
    DAY_MS,
    Partial,
    Signal,
    apply_signals,
    close_attribution_windows,
    encode_context,
    sum_context,
    sum_partials,
)
from agents.learning.activity_segments import SEGMENTS
from agents.learning.thompson import (
    linear_context,
)
from agents.preferences.state import PreferenceState
from agents.preferences.windows import windows  # the feedback agent's lock: no interleaving
from streams.app import (
    actions_topic,
    app,
    postgres,
    preferences_table,
    redis_values,
    settings,
    topic,
)
from streams.boundary import Valid
from streams.codecs import encode
from streams.compacted import CompactedTopicReader
from streams.metrics import EVENTS_OUT, LEARNING_ALGORITHM_WEIGHT, LEARNING_POSTERIOR_MEAN
from streams.state import assigned_partitions, delete, put

log = logging.getLogger(__name__)
AGENT = "bandits"
ALGORITHMS: tuple[str, ...] = settings.algorithms
ALGORITHM_INDEX = {name: i for i, name in enumerate(ALGORITHMS)}
SEGMENT_INDEX = {name: i for i, name in enumerate(SEGMENTS)}
WINDOW_MS = int(settings.attribution_window_s * 1000)
KEEP_DAYS = settings.disable_window_days + 1
HALF_LIFE_MS = settings.bandit_half_life_s * 1000.0  # 0: stationary
# Context = [1, preference vector]; 0 keeps no contextual statistics.
CTX_DIM = settings.item_dim + 1 if settings.bandit_contextual else 0
MODE = "contextual" if CTX_DIM else ("discounted" if HALF_LIFE_MS > 0 else "stationary")

bandits_table = app.Table(
    "bandits", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
bandits_table.value_serializer = "raw"
partials_topic = topic("bandits.partials")
weights_topic = topic("weights.algorithms")
WEIGHTS = weights.WeightsConfig.from_settings(settings, MODE)

UPSERT_SQL = """
INSERT INTO algorithm_weights (segment, version, payload, updated_at)
VALUES (%s, %s, %s, now())
ON CONFLICT (segment) DO UPDATE SET version = EXCLUDED.version, payload = EXCLUDED.payload,
    updated_at = now()
WHERE algorithm_weights.version < EXCLUDED.version
"""


def partial_key(partition: int) -> str:
    return f"partial|{partition}"


def new_partial() -> Partial:
    return Partial(len(SEGMENTS), len(ALGORITHMS), half_life_ms=HALF_LIFE_MS, ctx_dim=CTX_DIM)


def load_partial(partition: int) -> Partial:
    blob = bandits_table.get(partial_key(partition))
    if not blob:
        return new_partial()
    partial = Partial.from_bytes(blob)
    if partial.configure(HALF_LIFE_MS, CTX_DIM) and partition not in _reconfigured:
        # Saved with the partition's next change (until then every load repeats this);
        # the integer counts are untouched.
        _reconfigured.add(partition)
        log.warning("bandits: partition %d restarts its %s statistics (setting changed)",
                    partition, MODE)  # fmt: skip
    return partial


_reconfigured: set[int] = set()


def get_record(key: str) -> dict[str, Any] | None:
    blob = bandits_table.get(key)
    return orjson.loads(blob) if blob else None


class Deadlines:
    """This worker's open impression records by partition: key → deadline (ms)."""

    def __init__(self) -> None:
        self.by_partition: dict[int, dict[str, int]] = defaultdict(dict)
        self.scanned_assignment: frozenset[Any] = frozenset()


deadlines = Deadlines()


def unknown_algorithm(valid: Valid) -> str | None:
    """Why an impression cannot be attributed (dead-letter message), or None."""
    return unknown_algorithm_of(valid.payload)


def unknown_algorithm_of(p: dict[str, Any]) -> str | None:
    """:func:`unknown_algorithm` for a bare payload (the implicit relay's check)."""
    if p["kind"] == "impression" and p.get("algorithm") not in ALGORITHM_INDEX:
        return f"unknown algorithm {p.get('algorithm')!r}; known: {', '.join(ALGORITHMS)}"
    return None


def user_context(user_id: str) -> str:
    """Contextual mode: the impression's context, ``[1, the user's stored vector]``.

    The stored vector is the one from before the current batch, i.e. the one the server
    had when it chose the algorithm; a user not stored yet has the zero vector.
    """
    blob = preferences_table.get(user_id)
    vector = PreferenceState.unpack(blob).vector if blob else None
    if vector is None or vector.shape != (CTX_DIM - 1,):
        vector = np.zeros(CTX_DIM - 1)
    return encode_context(linear_context(vector))


def _cached_context(cache: dict[str, str], user_id: str) -> str:
    if user_id not in cache:
        cache[user_id] = user_context(user_id)
    return cache[user_id]


async def attribute(implicit: list[Valid], segment_of: dict[str, str]) -> None:
    """Attribution for a batch's implicit events (already de-duplicated per user upstream
    only for learning — attribution keeps its own offsets, so it sees every event)."""
    by_partition: dict[int, list[Signal]] = defaultdict(list)
    contexts: dict[str, str] = {}  # one stored vector per user and batch
    for v in implicit:
        p = v.payload
        if p["kind"] not in ("impression", "click", "conversion") or "impression_id" not in p:
            continue
        is_impression = p["kind"] == "impression"
        by_partition[v.partition].append(
            Signal(
                offset=v.offset,
                ts_ms=int(v.timestamp * 1000),
                kind=p["kind"],
                impression_id=p["impression_id"],
                algorithm=ALGORITHM_INDEX[p["algorithm"]] if is_impression else -1,
                segment=SEGMENT_INDEX[segment_of.get(p["user_id"]) or "new"]
                if is_impression
                else -1,
                context=_cached_context(contexts, p["user_id"])
                if is_impression and CTX_DIM
                else None,
            )
        )
    for partition, signals in by_partition.items():
        signals.sort(key=lambda s: s.offset)
        partial = load_partial(partition)
        before = (partial.offset, partial.trials.sum())
        changed = apply_signals(partial, signals, get_record, WINDOW_MS, KEEP_DAYS)
        for key, rec in changed.items():
            rec["p"] = partition
            put(bandits_table, partition, key, orjson.dumps(rec))
            deadlines.by_partition[partition][key] = rec["d"]
        if (partial.offset, partial.trials.sum()) != before or changed:
            await save_partial(partition, partial)


async def save_partial(partition: int, partial: Partial) -> None:
    partial.version += 1
    blob = partial.to_bytes()
    put(bandits_table, partition, partial_key(partition), blob)
    await partials_topic.send(key=str(partition).encode(), value=blob)


def _rescan(assigned: set[int]) -> None:
    deadlines.by_partition.clear()
    for key, blob in list(bandits_table.items()):
        if key.startswith("imp|"):
            rec = orjson.loads(blob)
            deadlines.by_partition[rec.get("p", -1)][key] = rec["d"]


async def close_due(now_ms: int) -> None:
    """Close attribution windows whose deadline passed the partition's event time."""
    assigned = assigned_partitions(settings.implicit_input)
    for partition in assigned:
        partial = load_partial(partition)
        idle_until = now_ms - int(settings.attribution_idle_grace_s * 1000)
        until = max(partial.event_time, idle_until) if partial.offset >= 0 else idle_until
        open_records = deadlines.by_partition.get(partition, {})
        due = [k for k, d in open_records.items() if d <= until]
        if not due:
            continue
        records = [(k, r) for k in due if (r := get_record(k)) is not None]
        expired = close_attribution_windows(partial, records, until, KEEP_DAYS)
        await save_partial(partition, partial)  # before the deletions: see attribution
        for key in expired:
            delete(bandits_table, partition, key)
            open_records.pop(key, None)
        for key in set(due) - set(expired):
            open_records.pop(key, None)


class PartialsView:
    """Latest partial of every input partition, read by every worker."""

    def __init__(self) -> None:
        self.latest: dict[int, Partial] = {}
        self.lock = threading.Lock()
        self.reader = CompactedTopicReader(
            settings.kafka_bootstrap_servers, settings.topic("bandits.partials"), self._apply
        )

    def _apply(self, key: bytes | None, value: bytes | None, *_: object) -> None:
        if key is None or value is None:
            return
        partial = Partial.from_bytes(value)
        partition = int(key)
        with self.lock:
            current = self.latest.get(partition)
            if current is None or current.version <= partial.version:
                self.latest[partition] = partial

    def snapshot(self) -> list[Partial]:
        with self.lock:
            return list(self.latest.values())


partials_view = PartialsView()


@app.service
class PartialsReader(faust.Service):
    """Starts the partials reader with the worker."""

    async def on_start(self) -> None:
        partials_view.reader.start()

    async def on_stop(self) -> None:
        partials_view.reader.stop()


_published_disabled: dict[str, set[str]] = {}


def posteriors(
    partials: list[Partial], half_life_ms: float
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """:func:`agents.bandits.weights.posteriors` for this deployment's segments and arms."""
    return weights.posteriors(partials, half_life_ms, (len(SEGMENTS), len(ALGORITHMS)))


def segment_weights(*args: Any, names: tuple[str, ...] = ALGORITHMS, **kwargs: Any) -> dict:
    """:func:`agents.bandits.weights.segment_weights` with this deployment's settings."""
    return weights.segment_weights(*args, config=WEIGHTS, names=names, **kwargs)


contextual_strategy = weights.contextual_strategy


async def publish() -> int:
    """Sum the partials and publish every segment's weights; returns the segments sent."""
    partials = partials_view.snapshot()
    if not partials:
        return 0
    alpha, beta, ref = posteriors(partials, HALF_LIFE_MS)
    since = int(time.time() * 1000) // DAY_MS - settings.disable_window_days + 1
    w_trials, w_successes = sum_partials(partials, since_day=since)
    linear = sum_context(partials, CTX_DIM, HALF_LIFE_MS) if CTX_DIM else None
    version = int(time.time() * 1000)
    events = [
        segment_weights(
            seg,
            alpha[s],
            beta[s],
            w_trials[s],
            w_successes[s],
            version,
            reference_ts=ref,
            linear=None if linear is None else (linear[0][s], linear[1][s], linear[2][s]),
        )
        for s, seg in enumerate(SEGMENTS)
    ]
    payloads = [encode(ev) for ev in events]
    await redis_values.write_many(
        "alg",
        ((ev["segment"], version, payload) for ev, payload in zip(events, payloads, strict=True)),
    )
    await postgres.execute_many(
        UPSERT_SQL,
        [
            (ev["segment"], version, payload.decode())
            for ev, payload in zip(events, payloads, strict=True)
        ],
    )
    for ev, payload in zip(events, payloads, strict=True):
        for algo in ev["algorithms"]:
            LEARNING_POSTERIOR_MEAN.labels(segment=ev["segment"], arm=algo["name"]).set(
                algo["mean"]
            )
            LEARNING_ALGORITHM_WEIGHT.labels(segment=ev["segment"], algorithm=algo["name"]).set(
                algo["weight"]
            )
        await weights_topic.send(key=ev["segment"].encode(), value=payload)
        await announce_transitions(ev)
    EVENTS_OUT.labels(topic=weights_topic.get_topic_name(), agent=AGENT).inc(len(events))
    return len(events)


async def announce_transitions(event: dict[str, Any]) -> None:
    segment = event["segment"]
    now_disabled = {a["name"] for a in event["algorithms"] if a["disabled"]}
    before = _published_disabled.get(segment, set())
    for name in sorted(now_disabled ^ before):
        kind = "disable_algorithm" if name in now_disabled else "enable_algorithm"
        algo = next(a for a in event["algorithms"] if a["name"] == name)
        action = {
            "event_id": f"act:{kind}:{segment}:{name}:{event['version']}",
            "schema_version": 1,
            "ts": event["ts"],
            "action_id": f"{kind}:{segment}:{name}:{event['version']}",
            "target": "recommendation-orchestrator",
            "kind": kind,
            "parameters": {"segment": segment, "algorithm": name},
            "reason": (
                f"{settings.disable_window_days}-day CTR upper bound "
                f"{'below' if kind == 'disable_algorithm' else 'no longer confidently below'} "
                f"{settings.disable_ctr:.4f}; posterior mean {algo['mean']:.5f}"
            ),
            "source": AGENT,
        }
        await actions_topic.send(key=action["target"].encode(), value=encode(action))
    _published_disabled[segment] = now_disabled


@app.timer(interval=1.0, name=f"{settings.app_id}.bandit-windows")
async def attribution_window_timer() -> None:
    if not app.tables.recovery.completed.is_set() or app.rebalancing:
        return
    async with windows.lock:
        assigned = assigned_partitions(settings.implicit_input)
        if assigned != deadlines.scanned_assignment:
            deadlines.scanned_assignment = assigned
            _rescan(set(assigned))
        await close_due(int(time.time() * 1000))


@app.timer(
    interval=settings.bandit_publish_s, on_leader=True, name=f"{settings.app_id}.bandit-publish"
)
async def publish_weights() -> None:
    await publish()

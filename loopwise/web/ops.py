"""Worker HTTP endpoints: ``/health`` (alive), ``/ready`` (serving), ``/metrics``.

Ready means the broker answers a metadata request, table recovery has completed for the
current assignment (no rebalance in progress), the item catalog has been read up to the end
of its topic as of start-up, and no consumer is stuck (:mod:`streams.consumer_health`:
failing, or not advancing while it has lag, for ``LOOPWISE_STUCK_AFTER_S``; the reasons
are in the body's ``stuck``).
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka.admin import AdminClient
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from streams import consumer_health
from streams.app import app, catalog, settings
from streams.metrics import CONSUMER_LAG, exposition
from streams.security import confluent_config

_started = time.time()
_catalog_synced = False


def _broker_reachable() -> bool:
    admin = AdminClient(confluent_config(settings.kafka_bootstrap_servers, log_level=0))
    try:
        admin.list_topics(timeout=2)
        return True
    except Exception:
        return False


async def readiness() -> dict[str, bool]:
    global _catalog_synced
    broker = await asyncio.to_thread(_broker_reachable)
    recovered = app.tables.recovery.completed.is_set() and not app.rebalancing
    if not _catalog_synced and broker:
        _catalog_synced = await asyncio.to_thread(catalog.wait_caught_up, 1.0)
    from agents.preferences.relay import relay  # agents import this module's app: late import

    return {
        "broker": broker,
        "tables_recovered": recovered,
        "catalog_loaded": _catalog_synced,
        "implicit_relay": relay.alive or not settings.implicit_relay,
        "consumers_progressing": not consumer_health.stuck(
            settings.stuck_after_s, paused=not recovered
        ),
    }


@app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        # The input partitions this worker owns now: operators (and the scale-out test) see
        # partitions move between workers.
        assigned: dict[str, list[int]] = {}
        for tp in app.consumer.assignment():
            if not tp.topic.endswith("-changelog") and not tp.topic.endswith("__leader"):
                assigned.setdefault(tp.topic, []).append(tp.partition)
        return self.json(
            {
                "status": "ok",
                "uptime_s": round(time.time() - _started, 1),
                "assigned": {topic: sorted(parts) for topic, parts in sorted(assigned.items())},
                "implicit_relay": relay_status(),
            }
        )


def relay_status() -> dict[str, object]:
    from agents.preferences.relay import relay  # agents import this module's app: late import

    return {
        "enabled": settings.implicit_relay,
        "running": relay.alive,
        "assigned": sorted(relay.assigned),
        "relayed_events": relay.relayed,
        "last_error": relay.last_error,
    }


@app.page("/ready")
class Ready(View):
    async def get(self, request: Request) -> Response:
        checks = await readiness()
        ready = all(checks.values())
        stuck = {name: h.stuck_reason for name, h in consumer_health.registered().items()
                 if h.stuck_reason}  # fmt: skip
        return self.json({"ready": ready, **checks, "stuck": stuck}, status=200 if ready else 503)


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        # aiohttp refuses parameters in content_type=, so the header is set directly.
        return self.bytes(exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.page("/state/preferences/{user_id}")
class PreferenceStateView(View):
    """The user's table value on this worker (404 when this worker does not hold it)."""

    async def get(self, request: Request, user_id: str) -> Response:
        from agents.preferences.state import PreferenceState
        from streams.app import preferences_table

        blob = preferences_table.get(user_id)
        if blob is None:
            return self.json({"user_id": user_id, "found": False}, status=404)
        state = PreferenceState.unpack(blob)
        return self.json(
            {
                "user_id": user_id,
                "found": True,
                "version": state.version,
                "interactions": state.interactions,
                "last_ts": state.last_ts,
                "offsets": state.offsets,
                "vector": [float(x) for x in state.vector],
            }
        )


@app.timer(interval=5.0, name=f"{settings.app_id}.consumer-lag")
async def record_consumer_lag() -> None:
    """Committed lag per assigned partition: high watermark minus the last committed offset.

    Reads only faust's own bookkeeping. Asking the aiokafka consumer for its position here
    (``consumer.position``) can start an offset reset of its own right after a rebalance,
    racing faust's seek to the committed offsets; a worker restarted after a crash then
    fetched nothing. Partitions that moved away are removed from the gauge.
    """
    try:
        assignment = app.consumer.assignment()
        committed = app.consumer._committed_offset  # faust's record of what it committed
    except Exception:  # consumer not started yet
        return
    seen = set()
    for tp in assignment:
        highwater = app.consumer.highwater(tp)
        done = committed.get(tp)
        if highwater is None or done is None:
            continue
        CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
            max(0, highwater - done)
        )
        seen.add((tp.topic, str(tp.partition)))
    for labels in list(_lag_labels - seen):
        CONSUMER_LAG.remove(*labels)
    _lag_labels.clear()
    _lag_labels.update(seen)
    # Stuck consumers are logged and shown in loopwise_consumer_stuck even when nobody
    # polls /ready.
    consumer_health.stuck(
        settings.stuck_after_s,
        paused=not app.tables.recovery.completed.is_set() or app.rebalancing,
    )


_lag_labels: set[tuple[str, str]] = set()

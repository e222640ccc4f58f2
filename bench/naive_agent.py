"""The baseline of ``bench.bench_feedback``: a naive per-event faust agent.

What a user would write with faust to learn preference vectors from implicit feedback: one
event at a time, ``async for value in stream``, the same boundary decode and validation as
the worker (orjson + the compiled JSON Schema), the same EMA step for that one event
(``v ← (1 − α)·v + α·s·x``, α and s as in :mod:`agents.learning.preference`, computed with
scalar math), a table write and an output event. No dead letters, no de-duplication, no
Redis/PostgreSQL, no bandit attribution, no guard: it does less than the worker per event.

``NAIVE_MODE`` selects what the agent does (``naive`` by default); two more modes measure
faust's own cost per event, with no work at all, for ``bench_feedback --machinery``:

* ``stream``: ``async for value in stream`` and nothing else;
* ``take``: ``async for events in stream.take_events(LOOPWISE_BATCH_SIZE,
  LOOPWISE_BATCH_WITHIN_S)`` and nothing else (what the worker's batch path costs before
  its first line of code).

Those two modes send one marker record for the first and the last offset of each partition
(``NAIVE_ENDS="partition:end,..."``) so the bench can time them.

Run by the bench as a subprocess (its own app id and consumer group)::

    python -m bench.naive_agent worker --loglevel=info

Configuration comes from the same environment as a worker (``LOOPWISE_TOPIC_PREFIX``,
``KAFKA_BOOTSTRAP_SERVERS``, ``LOOPWISE_PARTITIONS``, ``LOOPWISE_ITEM_DIM``, the EMA
settings) plus ``NAIVE_APP_ID`` (default ``<LOOPWISE_APP_ID>-naive``), ``NAIVE_OUTPUT_TOPIC``
(default ``<prefix>naive.preferences``) and ``NAIVE_DATA_DIR``. Item features are read from
the whole ``items`` topic once at start-up.
"""

from __future__ import annotations

import math
import os
import tempfile
from datetime import timedelta

import faust
import numpy as np
import orjson
from faust.types import EventT, StreamT, TopicT

from agents.learning.preference import KINDS, EmaParams
from streams.codecs import EventDecoder, Rejected
from streams.config import Settings
from streams.kafka_admin import read_topic
from streams.security import current as current_security
from streams.security import faust_app_settings

settings = Settings.from_env()
APP_ID = os.environ.get("NAIVE_APP_ID", f"{settings.app_id}-naive")
OUTPUT_TOPIC = os.environ.get("NAIVE_OUTPUT_TOPIC", settings.topic("naive.preferences"))
DATA_DIR = os.environ.get("NAIVE_DATA_DIR") or tempfile.mkdtemp(prefix="naive-agent-")
MODE = os.environ.get("NAIVE_MODE", "naive")
ENDS = {
    int(p): int(end)
    for p, end in (pair.split(":") for pair in os.environ.get("NAIVE_ENDS", "").split(",") if pair)
}

params = EmaParams(settings.base_alpha, settings.max_alpha, settings.type_multipliers)
MULTIPLIER = dict(zip(KINDS, params.multipliers().tolist(), strict=True))
DWELL_NORM = math.log1p(params.dwell_ref_s)
CONVERSION_NORM = math.log1p(params.conversion_ref)


def load_items() -> dict[str, np.ndarray]:
    """Item id → float32 features, from the whole ``items`` topic (last value wins)."""
    items: dict[str, np.ndarray] = {}
    for _, raw in read_topic(settings, settings.topic("items"), timeout_s=3.0):
        if raw is None:
            continue
        event = orjson.loads(raw)
        items[event["item_id"]] = np.asarray(event["features"], dtype=np.float32)
    return items


ITEMS = load_items()

app = faust.App(
    APP_ID,
    broker=f"kafka://{settings.kafka_bootstrap_servers}",
    store="memory://",
    datadir=DATA_DIR,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    broker_commit_every=10_000,
    broker_commit_interval=timedelta(seconds=1.0),
    stream_buffer_maxsize=8192,
    web_enabled=False,
    table_standby_replicas=0,
    key_serializer="raw",
    value_serializer="raw",
    **faust_app_settings(current_security().kafka),
)


def raw_topic(name: str) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication_factor,
    )


source = raw_topic(settings.topic("feedback.implicit"))
output = raw_topic(OUTPUT_TOPIC)
vectors = app.Table(
    "naive-vectors", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
vectors.value_serializer = "raw"
decode = EventDecoder("feedback.implicit", settings.max_message_bytes)
zeros = np.zeros(settings.item_dim, dtype=np.float32)


def strength(kind: str, value: float) -> float:
    """Signed strength of one implicit event (agents.learning.preference.signal_strength)."""
    if kind == "dwell":
        s = math.log1p(max(value, 0.0)) / DWELL_NORM
    elif kind == "conversion":
        s = 0.5 + 0.5 * math.log1p(max(value, 0.0)) / CONVERSION_NORM
    elif kind == "impression":
        s = 0.0
    else:  # view, click
        s = 1.0
    return min(1.0, max(-1.0, s))


async def learn(stream: StreamT) -> None:
    async for raw in stream:
        try:
            event = decode(raw)
        except Rejected:
            continue
        x = ITEMS.get(event["item_id"])
        if x is None:
            continue
        user = event["user_id"]
        kind = event["kind"]
        s = strength(kind, float(event.get("value", 0.0)))
        alpha = min(params.max_alpha, max(0.0, params.base_alpha * MULTIPLIER[kind] * abs(s)))
        blob = vectors.get(user)
        v = np.frombuffer(blob, dtype=np.float32) if blob else zeros
        v = ((1.0 - alpha) * v + (alpha * s) * x).astype(np.float32)
        vectors[user] = v.tobytes()
        out = {
            "event_id": f"naive:{user}:{event['event_id']}",
            "ts": event["ts"],
            "user_id": user,
            "vector": v,
            "dim": int(v.shape[0]),
        }
        await output.send(
            key=user.encode(), value=orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
        )


def is_marker(event: EventT) -> bool:
    offset, partition = event.message.offset, event.message.partition
    return offset == 0 or offset + 1 == ENDS.get(partition)


async def send_marker(event: EventT) -> None:
    await output.send(key=str(event.message.partition).encode(), value=b"{}")


async def stream_only(stream: StreamT) -> None:
    async for event in stream.events():
        if is_marker(event):
            await send_marker(event)


async def take_only(stream: StreamT) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        for event in events:
            if is_marker(event):
                await send_marker(event)


MODES = {"naive": learn, "stream": stream_only, "take": take_only}
app.agent(source, name=f"{APP_ID}.{MODE}")(MODES[MODE])

if __name__ == "__main__":
    app.main()

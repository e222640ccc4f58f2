"""Agent ``items``: validates catalog events so that invalid ones are dead-lettered once.

The catalog itself is read by every worker (:mod:`streams.catalog`); this agent is the
single consumer-group member per partition that reports bad item events.
"""

from __future__ import annotations

from faust.types import StreamT

from streams.app import admission, app, deadletter_topic, settings, topic
from streams.boundary import Boundary, Valid
from streams.codecs import EventDecoder

AGENT = "items"
items_topic = topic("items")
boundary = Boundary(
    AGENT,
    {settings.topic("items"): EventDecoder("items", settings.max_message_bytes)},
    deadletter_topic,
    admission=admission,
    max_record_bytes=settings.max_message_bytes,
)


async def process(valid: list[Valid]) -> None:
    for v in valid:
        if len(v.payload["features"]) != settings.item_dim:
            await boundary.reject(
                v.event,
                "dimension_mismatch",
                f"item has {len(v.payload['features'])} features, "
                f"LOOPWISE_ITEM_DIM is {settings.item_dim}",
            )


@app.agent(items_topic, name=f"{settings.app_id}.items")
async def items(stream: StreamT) -> None:
    await boundary.consume(stream, process, settings.batch_size, settings.batch_within_s)

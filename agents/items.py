"""Agent ``items``: validates catalog events so that invalid ones are dead-lettered once.

The catalog itself is read by every worker (:mod:`streams.catalog`); this agent is the
single consumer-group member per partition that reports bad item events.
"""

from __future__ import annotations

from faust.types import StreamT

from streams.app import app, deadletter_topic, settings, topic
from streams.boundary import Boundary
from streams.codecs import EventDecoder

AGENT = "items"
items_topic = topic("items")
boundary = Boundary(
    AGENT,
    {settings.topic("items"): EventDecoder("items", settings.max_message_bytes)},
    deadletter_topic,
)


@app.agent(items_topic, name=f"{settings.app_id}.items")
async def items(stream: StreamT) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        for valid in await boundary.split(events):
            if len(valid.payload["features"]) != settings.item_dim:
                await boundary.reject(
                    valid.event,
                    "dimension_mismatch",
                    f"item has {len(valid.payload['features'])} features, "
                    f"LOOPWISE_ITEM_DIM is {settings.item_dim}",
                )

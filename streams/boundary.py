"""The first step of every agent's batch: decode, validate, dead-letter the rest.

An agent calls :meth:`Boundary.split` on the events it took; it gets back only valid
payloads with their source coordinates. Rejected messages are sent to the dead-letter topic
(original bytes, topic/partition/offset, reason) and counted; nothing raises.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from faust.types import EventT, StreamT, TopicT

from streams import relay_records
from streams.codecs import EventDecoder, Rejected, dead_letter, encode
from streams.metrics import (
    AGENT_ERRORS,
    BATCH_SIZE,
    DEAD_LETTERS,
    EVENTS_IN,
    EVENTS_VALID,
    PROCESSING_SECONDS,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Valid:
    """A validated input event with where it came from."""

    payload: dict[str, Any]
    event: EventT

    @property
    def topic(self) -> str:
        return self.event.message.topic

    @property
    def partition(self) -> int:
        return self.event.message.partition

    @property
    def offset(self) -> int:
        return self.event.message.offset

    @property
    def timestamp(self) -> float:
        return self.event.message.timestamp


class Boundary:
    """Validation of several input topics for one agent, with the dead-letter sender."""

    def __init__(
        self,
        agent: str,
        decoders: dict[str, EventDecoder],
        deadletter: TopicT,
        relayed: Sequence[str] = (),
    ) -> None:
        self.agent = agent
        self.decoders = decoders
        self.deadletter = deadletter
        # Topics whose records each carry many events validated upstream (streams.relay_records)
        self.relayed = frozenset(relayed)

    async def split(self, events: Sequence[EventT]) -> list[Valid]:
        valid: list[Valid] = []
        for event in events:
            msg = event.message
            if msg.topic in self.relayed:
                valid.extend(await self.unpack_relayed(event))
                continue
            EVENTS_IN.labels(topic=msg.topic, agent=self.agent).inc()
            try:
                payload = self.decoders[msg.topic](msg.value)
            except Rejected as rejected:
                await self.reject(event, rejected.kind, rejected.message)
                continue
            EVENTS_VALID.labels(topic=msg.topic, agent=self.agent).inc()
            valid.append(Valid(payload, event))
        return valid

    async def unpack_relayed(self, record: EventT) -> list[Valid]:
        """The events of one relay record, parsed (the relay validated them)."""
        try:
            events = relay_records.unpack(record.message.value)
        except relay_records.BadRelayRecord as exc:
            await self.reject(record, "other", f"malformed relay record: {exc}")
            return []
        valid: list[Valid] = []
        for event in events:
            msg = event.message
            try:
                payload = orjson.loads(msg.value)
            except orjson.JSONDecodeError as exc:  # only a relay bug could get here
                await self.reject(event, "not_json", f"not JSON: {exc}")  # type: ignore[arg-type]
                continue
            valid.append(Valid(payload, event))  # type: ignore[arg-type]
        if events:
            topic = events[0].message.topic
            EVENTS_IN.labels(topic=topic, agent=self.agent).inc(len(events))
            EVENTS_VALID.labels(topic=topic, agent=self.agent).inc(len(valid))
        return valid

    async def reject(self, event: EventT, kind: str, message: str) -> None:
        """Dead-letter an event of the batch at hand (its message gives bytes and source)."""
        msg = event.message
        await self.send_dead_letter(
            msg.value,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            kind=kind,
            message=message,
        )

    async def send_dead_letter(
        self,
        raw: bytes | None,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        kind: str,
        message: str,
    ) -> None:
        """Dead-letter the original bytes of an event read at ``topic/partition/offset``.

        The coordinates are explicit because the message may be long gone: an event that
        waited in a table value (e.g. a choice waiting for its session) is rejected by a
        timer, from the bytes and coordinates kept in the value.
        """
        record = dead_letter(
            raw=raw,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            kind=kind,
            message=message,
        )
        await self.deadletter.send(key=topic.encode(), value=encode(record))
        DEAD_LETTERS.labels(topic=topic, reason=kind).inc()
        log.info("dead letter %s:%d:%d %s: %s", topic, partition, offset, kind, message)

    async def process_isolating_failures(
        self, process: Callable[[list[Valid]], Awaitable[None]], valid: list[Valid]
    ) -> None:
        """Run ``process`` on a batch; if it raises, re-run it event by event and dead-letter
        only the events that fail.

        Transient sink faults never get here (sinks retry them). Anything else is a bug or an
        input validation let through: left alone, faust would ack the batch and restart the
        agent, silently dropping it. Work done before the failure is not repeated: agents are
        idempotent per event (offsets and ids in their table values).
        """
        try:
            await process(valid)
            return
        except Exception:
            AGENT_ERRORS.labels(agent=self.agent).inc()
            log.exception("%s: batch failed; retrying its %d events one by one",
                          self.agent, len(valid))  # fmt: skip
        for v in valid:
            try:
                await process([v])
            except Exception as exc:
                AGENT_ERRORS.labels(agent=self.agent).inc()
                await self.reject(v.event, "other", f"processing failed: {exc!r}")

    async def consume(
        self,
        stream: StreamT,
        process: Callable[[list[Valid]], Awaitable[None]],
        batch_size: int,
        within_s: float,
        lock: contextlib.AbstractAsyncContextManager[Any] | None = None,
        max_events: int = 20_000,
    ) -> None:
        """The agent loop: take batches, validate, process (under ``lock``, shared with the
        agent's timers), with batch-size and processing-time metrics."""
        guard = lock if lock is not None else contextlib.nullcontext()
        async for events in stream.take_events(batch_size, within=within_s):
            started = time.perf_counter()
            valid = await self.split(events)
            BATCH_SIZE.labels(agent=self.agent).observe(len(valid))
            # Relay records hold many events each: process at most max_events at a time.
            for start in range(0, max(len(valid), 1), max_events):
                async with guard:
                    await self.process_isolating_failures(
                        process, valid[start : start + max_events]
                    )
            PROCESSING_SECONDS.labels(agent=self.agent).observe(time.perf_counter() - started)

"""The first step of every agent's batch, and the loop that never loses one.

An agent calls :meth:`Boundary.split` on the events it took; it gets back only valid
payloads with their source coordinates. Rejected messages (schema, size, a key on the wrong
partition, a timestamp out of range: :mod:`streams.admission`) are sent to the dead-letter
topic (original bytes or, past a limit, a prefix with length and hash; topic/partition/
offset; reason) and counted.

:meth:`Boundary.consume` is the agent loop. faust acks the events of a ``take_events``
batch when the batch's iteration ends, *also* when it ends with an exception (its
supervisor then restarts the agent and the batch is committed unprocessed). So no
exception leaves the loop: a batch that fails is first isolated event by event (a bad event
is dead-lettered once, the others learned), and a failure that is not one event's fault (a
transient fault, a dead letter that cannot be sent) retries the whole batch with back-off,
its offsets uncommitted, for as long as it takes. The consumer's health record says so, and
``/ready`` turns 503 after ``LOOPWISE_STUCK_AFTER_S``. Agents are idempotent per event
(offsets and ids in their table values), so a retried batch applies nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from faust.types import EventT, StreamT, TopicT

from streams import faults, relay_records
from streams.admission import Admission
from streams.codecs import DEFAULT_MAX_RECORD_BYTES, EventDecoder, Rejected, dead_letter, encode
from streams.consumer_health import register
from streams.metrics import (
    AGENT_ERRORS,
    BATCH_RETRIES,
    BATCH_SIZE,
    DEAD_LETTERS,
    EVENTS_IN,
    EVENTS_VALID,
    PROCESSING_SECONDS,
)

log = logging.getLogger(__name__)
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


def is_transient(exc: BaseException) -> bool:
    """A fault outside the event (a store or the broker away): retry the batch, never
    dead-letter its events for it."""
    from aiokafka.errors import KafkaError as AIOKafkaError
    from confluent_kafka import KafkaException

    from streams.retry import TRANSIENT_ERRORS

    if isinstance(exc, (*TRANSIENT_ERRORS, KafkaException, asyncio.TimeoutError)):
        return True
    return isinstance(exc, AIOKafkaError) and bool(getattr(exc, "retriable", False))


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
        admission: Admission | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.agent = agent
        self.decoders = decoders
        self.deadletter = deadletter
        # Topics whose records each carry many events validated upstream (streams.relay_records)
        self.relayed = frozenset(relayed)
        self.admission = admission
        self.max_record_bytes = max_record_bytes
        self.health = register(agent)
        # Coordinates dead-lettered while handling the current batch: a batch that is
        # isolated event by event, or retried whole, rejects each bad event once.
        self._dead_lettered: set[tuple[str, int, int]] = set()
        self._in_batch = False
        # The last offset handled per (topic, partition), for the lag /ready judges.
        self._handled: dict[tuple[str, int], int] = {}

    async def split(self, events: Sequence[EventT]) -> list[Valid]:
        faults.point("decode")
        valid: list[Valid] = []
        for event in events:
            msg = event.message
            if msg.topic in self.relayed:
                valid.extend(await self.unpack_relayed(event))
                continue
            EVENTS_IN.labels(topic=msg.topic, agent=self.agent).inc()
            try:
                payload = self.decoders[msg.topic](msg.value)
                if self.admission is not None:
                    self.admission.check(msg.topic, msg.partition, _ms(msg.timestamp), payload)
            except Rejected as rejected:
                await self.reject(
                    event, rejected.kind, rejected.message, rejected.expected_partition
                )
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

    async def reject(
        self, event: EventT, kind: str, message: str, expected_partition: int | None = None
    ) -> None:
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
            timestamp_ms=_ms(getattr(msg, "timestamp", None)),
            expected_partition=expected_partition,
        )

    async def refuse_foreign(self, v: Valid, what: str, home: int) -> None:
        """Dead-letter an event of a key whose state lives on partition ``home``, not on the
        event's: the state's offset watermarks are that partition's, so the event could be
        taken for a replay and dropped. Only a change of a topic's partition count gets such
        an event past :meth:`split`'s partition check."""
        await self.reject(
            v.event,
            "wrong_partition",
            f"{what} has its state on partition {home}, this event arrived on partition "
            f"{v.partition} (did the topic's partition count change?)",
            home,
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
        timestamp_ms: int | None = None,
        expected_partition: int | None = None,
    ) -> None:
        """Dead-letter the original bytes of an event read at ``topic/partition/offset``.

        The coordinates are explicit because the message may be long gone: an event that
        waited in a table value (e.g. a choice waiting for its session) is rejected by a
        timer, from the bytes and coordinates kept in the value. The record always fits
        the producers' limit (:func:`streams.codecs.dead_letter`).
        """
        where = (topic, partition, offset)
        if self._in_batch and where in self._dead_lettered:
            return
        faults.point("deadletter")
        record = dead_letter(
            raw=raw,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            kind=kind,
            message=message,
            max_record_bytes=self.max_record_bytes,
            timestamp_ms=timestamp_ms,
            expected_partition=expected_partition,
        )
        await self.deadletter.send(key=topic.encode(), value=encode(record))
        self._dead_lettered.add(where)
        DEAD_LETTERS.labels(topic=topic, reason=kind).inc()
        log.info("dead letter %s:%d:%d %s: %s", topic, partition, offset, kind, message)

    async def process_isolating_failures(
        self, process: Callable[[list[Valid]], Awaitable[None]], valid: list[Valid]
    ) -> None:
        """Run ``process`` on a batch; if it raises, re-run it event by event and dead-letter
        only the events that fail.

        A transient fault (a store or the broker away; sinks retry most of them themselves)
        is no event's fault: it propagates, and :meth:`consume` retries the whole batch.
        Work done before the failure is not repeated: agents are idempotent per event
        (offsets and ids in their table values).
        """
        try:
            await process(valid)
            return
        except Exception as exc:
            AGENT_ERRORS.labels(agent=self.agent).inc()
            if is_transient(exc):
                raise
            log.exception("%s: batch failed; retrying its %d events one by one",
                          self.agent, len(valid))  # fmt: skip
        for v in valid:
            try:
                await process([v])
            except Exception as exc:
                AGENT_ERRORS.labels(agent=self.agent).inc()
                if is_transient(exc):
                    raise
                await self.reject(v.event, "other", f"processing failed: {exc!r}")

    async def handle(
        self,
        events: Sequence[EventT],
        process: Callable[[list[Valid]], Awaitable[None]],
        lock: contextlib.AbstractAsyncContextManager[Any] | None = None,
        max_events: int = 20_000,
        still_owned: Callable[[EventT], bool] | None = None,
    ) -> None:
        """One batch, start to end; returns only when it is done (or its partitions moved
        to another worker, which reads it again from the committed offsets)."""
        guard = lock if lock is not None else contextlib.nullcontext()
        attempt = 0
        self._in_batch = True
        try:
            while True:
                started = time.perf_counter()
                try:
                    with faults.armed():
                        await self._handle_once(events, process, guard, max_events)
                except Exception as exc:
                    attempt += 1
                    BATCH_RETRIES.labels(consumer=self.agent).inc()
                    self.health.failed(exc)
                    delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempt - 1, 8))
                    log.exception(
                        "%s: a batch of %d records failed (attempt %d); its offsets stay "
                        "uncommitted, retrying in %.1f s", self.agent, len(events), attempt,
                        delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    if still_owned is not None and not any(still_owned(e) for e in events):
                        log.warning("%s: the failing batch's partitions moved away; the "
                                    "new owner reads it again", self.agent)  # fmt: skip
                        return
                    continue
                PROCESSING_SECONDS.labels(agent=self.agent).observe(time.perf_counter() - started)
                break
        finally:
            self._dead_lettered.clear()
            self._in_batch = False
        for event in events:
            msg = event.message
            self._handled[(msg.topic, msg.partition)] = msg.offset
        self.health.succeeded()

    async def _handle_once(
        self,
        events: Sequence[EventT],
        process: Callable[[list[Valid]], Awaitable[None]],
        guard: contextlib.AbstractAsyncContextManager[Any],
        max_events: int,
    ) -> None:
        valid = await self.split(events)
        BATCH_SIZE.labels(agent=self.agent).observe(len(valid))
        # Relay records hold many events each: process at most max_events at a time.
        for start in range(0, max(len(valid), 1), max_events):
            async with guard:
                await self.process_isolating_failures(process, valid[start : start + max_events])

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
        agent's timers), with batch-size and processing-time metrics. Never raises out of
        a batch (see the module docstring)."""
        consumer = stream.app.consumer
        self.health.lag = lambda: self.lag(consumer)

        def still_owned(event: EventT) -> bool:
            return event.message.tp in consumer.assignment()

        async for events in stream.take_events(batch_size, within=within_s):
            await self.handle(events, process, lock, max_events, still_owned)

    def lag(self, consumer: Any) -> int | None:
        """Records behind the end of this agent's assigned input partitions: the high
        watermark minus what was handled (or committed, before anything was)."""
        topics = set(self.decoders) | self.relayed
        committed = consumer._committed_offset  # faust's record of what it committed
        total = 0
        known = False
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            high = consumer.highwater(tp)
            position = max(self._handled.get((tp.topic, tp.partition), -1) + 1,
                           committed.get(tp) or 0)  # fmt: skip
            if high is None:
                continue
            known = True
            total += max(0, high - position)
        return total if known else None


def _ms(timestamp: float | None) -> int | None:
    """A faust message timestamp (seconds) in epoch ms; None when the record has none."""
    if timestamp is None or timestamp <= 0:
        return None
    return round(timestamp * 1000)

"""The implicit relay: the batched fast path in front of the preferences agent.

faust's stream hands an agent one event at a time through several layers (consumer →
conductor → topic → stream → ``take_events``); on this kind of machine that costs about as
much per event as everything the agent then does with it. Implicit feedback is the
high-volume input, so it takes a shorter road:

1. a confluent-kafka consumer in a thread of each worker (group ``<app id>.implicit-relay``)
   reads ``feedback.implicit`` in batches of up to ``LOOPWISE_RELAY_MAX_EVENTS``;
2. each event is decoded and validated (the same :class:`~streams.codecs.EventDecoder` as
   every agent), and checked for an unknown item or algorithm; rejects go to the dead-letter
   topic with their original bytes and coordinates, as from any agent;
3. the valid events of each partition are packed, original bytes and source coordinates
   included, into records of up to ``LOOPWISE_RELAY_RECORD_EVENTS`` events
   (:mod:`streams.relay_records`) on the same partition of ``feedback.implicit.relay``;
4. once the broker acknowledged them, the relay commits its input offsets.

The preferences agent reads the relay topic with faust (its table, changelog and commit
machinery are unchanged) and pays faust's per-record cost once per thousand events.

**Delivery.** At least once, with no second book-keeping: a relay that dies between its
produce and its commit relays the same events again, and the agent drops them as it drops
any replay — by the source offset kept per user in the preferences table (events of one
user come from one partition, in offset order, and the relay keeps that order). The same
partition number on both topics keeps the table co-partitioned with the input.

The thread restarts its Kafka clients after an unexpected error (a broker that is away is
waited out by librdkafka itself); what was read and not committed is read again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agents.bandits.agent import unknown_algorithm_of
from streams import faults
from streams.app import admission, app, catalog, settings
from streams.codecs import EventDecoder, Rejected, dead_letter, encode
from streams.consumer_health import register
from streams.kafka_admin import producer as new_producer
from streams.metrics import DEAD_LETTERS, EVENTS_IN, EVENTS_OUT, EVENTS_VALID
from streams.relay_records import RECORD_MAX_BYTES, SourceEvent, chunks, pack
from streams.security import confluent_config
from streams.state import crash_point

log = logging.getLogger(__name__)
AGENT = "implicit-relay"
FLUSH_TIMEOUT_S = 30.0


# (the record, dead-letter kind, message, expected partition of a misrouted record)
Reject = tuple[Message, str, str, int | None]


class RelayDeliveryFailed(RuntimeError):
    """The broker did not take a relay record (after librdkafka's own retries)."""


class ImplicitRelay:
    """Reads, validates and forwards ``feedback.implicit`` in a background thread."""

    def __init__(self) -> None:
        self.source = settings.topic("feedback.implicit")
        self.target = settings.topic("feedback.implicit.relay")
        self.deadletter = settings.topic("deadletter")
        self.decode = EventDecoder("feedback.implicit", settings.max_message_bytes)
        # A relay record always fits the producer's limit (an event travels alone when
        # large); the header and index take far less than the overhead allowance.
        self.record_bytes = min(RECORD_MAX_BYTES, settings.max_message_bytes)
        self.assigned: frozenset[int] = frozenset()
        self.relayed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []
        self._catalog_loaded = False
        self.health = register(AGENT)
        # (partition, offset) dead-lettered and not yet committed: a batch read again after
        # the clients restarted dead-letters each bad event once.
        self._dead_lettered: set[tuple[int, int]] = set()
        self.health.lag = lambda: self.lag_estimate
        self.lag_estimate: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="implicit-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception as exc:
                # What was read and not committed is read again by the new clients; a
                # failure that repeats shows in /ready (streams.consumer_health).
                self.last_error = repr(exc)
                self.health.failed(exc)
                log.exception("implicit relay: restarting its Kafka clients in 1 s")
                self._stop.wait(1.0)

    def _consumer(self) -> Consumer:
        return Consumer(
            confluent_config(
                settings.kafka_bootstrap_servers,
                **{
                    "group.id": f"{settings.app_id}.implicit-relay",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": int(settings.session_timeout_s * 1000),
                    "heartbeat.interval.ms": int(settings.session_timeout_s * 250),
                    "enable.partition.eof": False,
                    "log_level": 4,
                },
            )
        )

    def _serve(self) -> None:
        self.assigned = frozenset()
        consumer = self._consumer()
        out = new_producer(settings, **{"linger.ms": 2})
        # Subscribed first: librdkafka joins the group in the background meanwhile.
        consumer.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            # Items published before the worker started must be known before the first
            # check, or their feedback would be dead-lettered as unknown while it loads.
            while not self._catalog_loaded and not self._stop.is_set():
                self._catalog_loaded = catalog.wait_caught_up(1.0)
                if not self._catalog_loaded:
                    log.info("implicit relay: waiting for the item catalog to load")
            lag_read = 0.0
            while not self._stop.is_set():
                messages = consumer.consume(settings.relay_max_events, settings.relay_within_s)
                if messages:
                    with faults.armed():
                        self._relay_batch(consumer, out, messages)
                    self.health.succeeded()
                if time.monotonic() - lag_read >= 1.0:  # /ready's view, not per batch
                    self.lag_estimate, lag_read = self._lag(consumer), time.monotonic()
        finally:
            out.flush(FLUSH_TIMEOUT_S)
            consumer.close()  # leaves the group at once: the partitions move without waiting

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = self.assigned | {tp.partition for tp in partitions}
        log.info("implicit relay: assigned %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = self.assigned - {tp.partition for tp in partitions}

    def _lag(self, consumer: Consumer) -> int | None:
        """Records behind the ends of the assigned partitions, from the watermarks the last
        fetches returned (no request to the broker)."""
        try:
            positions = consumer.position(
                [TopicPartition(self.source, p) for p in sorted(self.assigned)]
            )
            total = 0
            for tp in positions:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    total += max(0, high - tp.offset)
            return total
        except KafkaException:
            return None

    # -- one batch ---------------------------------------------------------------------

    def _relay_batch(self, consumer: Consumer, out: Any, messages: list[Message]) -> None:
        valid, rejects, ends = self._split(messages)
        valid = self._drop_unknown_items(valid, rejects)
        for msg, kind, text, expected in rejects:
            self._dead_letter(out, msg, kind, text, expected)
        by_partition: dict[int, list[SourceEvent]] = defaultdict(list)
        for msg, _ in valid:
            by_partition[msg.partition()].append(
                SourceEvent(msg.offset(), msg.timestamp()[1], msg.key(), msg.value())
            )
        self._failures.clear()
        records = 0
        for partition, events in by_partition.items():
            for run in chunks(events, settings.relay_record_events, self.record_bytes):
                out.produce(
                    self.target,
                    value=pack(self.source, partition, run),
                    partition=partition,
                    on_delivery=self._delivered,
                )
                records += 1
                out.poll(0)
        left = out.flush(FLUSH_TIMEOUT_S)
        if left or self._failures:
            raise RelayDeliveryFailed(
                f"{left} records undelivered after {FLUSH_TIMEOUT_S} s; {self._failures[:3]}"
            )
        crash_point("relay_after_produce")
        self.relayed += len(valid)
        EVENTS_OUT.labels(topic=self.target, agent=AGENT).inc(records)
        self._commit(consumer, ends)

    def _split(
        self, messages: list[Message]
    ) -> tuple[
        list[tuple[Message, dict[str, Any]]],
        list[Reject],
        dict[int, int],
    ]:
        valid: list[tuple[Message, dict[str, Any]]] = []
        rejects: list[Reject] = []
        ends: dict[int, int] = {}
        faults.point("relay_decode")
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("implicit relay: consume error %s", error)
                continue
            ends[msg.partition()] = msg.offset() + 1
            try:
                payload = self.decode(msg.value())
                ts_type, ts = msg.timestamp()
                admission.check(self.source, msg.partition(), ts if ts_type else None, payload)
            except Rejected as rejected:
                rejects.append((msg, rejected.kind, rejected.message, rejected.expected_partition))
                continue
            problem = unknown_algorithm_of(payload)
            if problem is not None:
                rejects.append((msg, "unknown_arm", problem, None))
                continue
            valid.append((msg, payload))
        EVENTS_IN.labels(topic=self.source, agent=AGENT).inc(len(messages))
        EVENTS_VALID.labels(topic=self.source, agent=AGENT).inc(len(valid))
        return valid, rejects, ends

    def _drop_unknown_items(
        self,
        valid: list[tuple[Message, dict[str, Any]]],
        rejects: list[Reject],
    ) -> list[tuple[Message, dict[str, Any]]]:
        ids = [payload["item_id"] for _, payload in valid]
        known = catalog.known(ids)
        if all(known):
            return valid
        # The item may have been published a moment ago: let the catalog read everything
        # written so far before calling it unknown.
        catalog.catch_up_for_unknown()
        known = catalog.known(ids)
        kept = []
        for (msg, payload), ok in zip(valid, known, strict=True):
            if ok:
                kept.append((msg, payload))
            else:
                rejects.append(
                    (msg, "unknown_item", f"item {payload['item_id']!r} is not in the catalog",
                     None)
                )  # fmt: skip
        return kept

    def _dead_letter(
        self, out: Any, msg: Message, kind: str, text: str, expected: int | None = None
    ) -> None:
        where = (msg.partition(), msg.offset())
        if where in self._dead_lettered:
            return
        faults.point("relay_deadletter")
        ts_type, ts = msg.timestamp()
        record = dead_letter(
            raw=msg.value(),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            kind=kind,
            message=text,
            max_record_bytes=settings.max_message_bytes,
            timestamp_ms=ts if ts_type else None,
            expected_partition=expected,
        )

        def delivered(err: KafkaError | None, sent: Message) -> None:
            # Remembered once the broker has it: a batch that fails later and is read again
            # after the clients restart must not dead-letter this event a second time.
            if err is None:
                self._dead_lettered.add(where)
            else:
                self._failures.append(f"{sent.topic()}[{sent.partition()}]: {err}")

        out.produce(self.deadletter, key=msg.topic().encode(), value=encode(record),
                    on_delivery=delivered)  # fmt: skip
        DEAD_LETTERS.labels(topic=msg.topic(), reason=kind).inc()
        log.info("dead letter %s:%d:%d %s: %s", msg.topic(), msg.partition(), msg.offset(),
                 kind, text)  # fmt: skip

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _commit(self, consumer: Consumer, ends: dict[int, int]) -> None:
        offsets = [TopicPartition(self.source, p, end) for p, end in ends.items()]
        if not offsets:
            return
        self._dead_lettered = {(p, o) for p, o in self._dead_lettered if o >= ends.get(p, 0)}
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Partitions moved mid-batch: the next owner relays these events again and the
            # agent drops them by offset. Nothing to repair here.
            log.warning("implicit relay: commit failed (%s); the next owner re-reads", exc)


relay = ImplicitRelay()


class RelayService(faust.Service):
    """Runs the relay thread with the worker; off with ``LOOPWISE_IMPLICIT_RELAY=0``."""

    async def on_start(self) -> None:
        if settings.implicit_relay:
            relay.start()

    async def on_stop(self) -> None:
        await asyncio.to_thread(relay.stop)


relay_service = app.service(RelayService)

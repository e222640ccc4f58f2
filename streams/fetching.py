"""A faust consumer that never lets a fetched record vanish.

faust-streaming 0.15's fetch (``AIOKafkaConsumerThread._fetch_records``) hands aiokafka the
consumer's *live* set of active partitions and waits up to a second for records. Two things
go wrong when that set changes during the wait, which it does at every rebalance and at the
end of every table recovery:

* the set becomes empty (recovery pauses the changelog partitions before it resumes the
  stream partitions), and aiokafka reads an empty set as "every partition": it drains the
  records it prefetched for the still-paused stream partitions;
* a partition is paused while its records are being drained.

Either way faust then skips those records as "not active" without a word, while aiokafka
has already moved its position past them. The partition's backlog is silently skipped
until the next seek: we saw a restarted worker stop consuming a partition for good, and
faust's commit book-keeping stall behind the hole.

This consumer passes aiokafka a snapshot of the set and, in the same event-loop step in
which aiokafka drained the records, seeks every partition that is no longer active back to
its first drained offset, so the records are fetched again once the partition is resumed.
With :mod:`streams.recovery` (seek while paused, then resume) a restarted or rebalanced
worker resumes every partition exactly at its committed offset.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


class RewindingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        requested = set(active_partitions or ())
        if not requested:
            # An empty set means "all partitions" to aiokafka; nothing is active, so
            # nothing may be drained.
            return {}
        records = await super()._fetch_records(
            consumer, requested, timeout=timeout, max_records=max_records
        )
        # No await since aiokafka drained: the active set seen here is the one at the drain.
        still_active = self.consumer._active_partitions or set()
        for tp in [tp for tp in records if tp not in still_active]:
            drained = records.pop(tp)
            if drained:
                consumer.seek(tp, drained[0].offset)
                log.info("rewound %s to %d: paused while being fetched", tp, drained[0].offset)
        return records


class RewindingConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> RewindingConsumerThread:
        return RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)


class RewindingTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`RewindingConsumer` (see ``LoopwiseApp``)."""

    Consumer = RewindingConsumer

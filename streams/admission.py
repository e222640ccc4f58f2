"""The checks on an input record's envelope, after its schema: where it arrived and when.

:class:`Admission` is applied by every consumer of an input topic (the agents' boundary,
the implicit relay, the item catalog) to a payload that passed its schema:

* **partition**: the record's partition must be the one its key field hashes to
  (:mod:`streams.partitioning`), or it is rejected as ``wrong_partition`` with the expected
  partition and counted in ``loopwise_events_misrouted_total{topic}``;
* **event time**: ``ts`` may lie at most ``LOOPWISE_TS_MAX_AGE_S`` before and
  ``LOOPWISE_TS_MAX_AHEAD_S`` after the record's Kafka timestamp, or the event is rejected
  as ``timestamp_out_of_range`` (a clock at 0, seconds sent as milliseconds, a year typed
  wrong). The Kafka timestamp, not the worker's clock, is the reference: a backlog read
  days later, or a compacted catalog read years later, is judged as it was produced.

Output topics of other agents (read by the insights agent) are produced by workers and are
not checked.
"""

from __future__ import annotations

from typing import Any

from streams.codecs import Rejected, key_of
from streams.config import Settings
from streams.metrics import EVENTS_MISROUTED
from streams.partitioning import PartitionCounts, misrouted
from streams.topics import TOPICS, Direction


class Admission:
    def __init__(self, settings: Settings, counts: PartitionCounts) -> None:
        self.counts = counts
        inputs = [spec for spec in TOPICS if spec.direction is Direction.INPUT]
        self.key_field = {settings.topic(s.name): s.key_field for s in inputs}
        self.max_age_ms = round(settings.ts_max_age_s * 1000)
        self.max_ahead_ms = round(settings.ts_max_ahead_s * 1000)

    def check(
        self, topic: str, partition: int, record_ts_ms: int | None, payload: dict[str, Any]
    ) -> None:
        """Raise :class:`Rejected` when the record is misrouted or its time is out of range;
        records of topics that are not Loopwise inputs pass."""
        key_field = self.key_field.get(topic)
        if key_field is None:
            return
        key = key_of(payload, key_field)
        expected = misrouted(key, partition, self.counts.get(topic, partition))
        if expected is not None:
            EVENTS_MISROUTED.labels(topic=topic).inc()
            raise Rejected(
                "wrong_partition",
                f"{key_field} {key[:200]!r} belongs on partition {expected} (murmur2 of the "
                f"key, see docs/producers.md), but the record is on partition {partition}",
                expected,
            )
        ts = payload.get("ts")
        # The schemas take 12.0 for an integer: a float ts is judged as well.
        if record_ts_ms is None or record_ts_ms <= 0 or not isinstance(ts, int | float):
            return
        if ts > record_ts_ms + self.max_ahead_ms or ts < record_ts_ms - self.max_age_ms:
            raise Rejected(
                "timestamp_out_of_range",
                f"ts {ts} is {(ts - record_ts_ms) / 1000:+.0f} s from the record's Kafka "
                f"timestamp {record_ts_ms}; allowed: {-self.max_age_ms / 1000:+.0f} s to "
                f"{self.max_ahead_ms / 1000:+.0f} s (LOOPWISE_TS_MAX_AGE_S, "
                "LOOPWISE_TS_MAX_AHEAD_S)",
            )

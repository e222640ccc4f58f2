"""The one registry of Loopwise topics: name, key, partitioning, retention and schema.

Names here are unprefixed (``feedback.explicit``); the deployed name is
``Settings.topic_prefix + name``. Keyed input topics share the partition count of the
settings so that tables built from different topics with the same key are co-partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from streams.config import Settings

DAY_MS = 24 * 3600 * 1000


class Direction(Enum):
    INPUT = "input"
    OUTPUT = "output"
    INTERNAL = "internal"  # written and read only by Loopwise workers; no public schema


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the registry.

    ``key_field`` names the event field whose value is the Kafka key; ``compacted`` topics
    keep the latest value per key forever; the others are deleted after ``retention_ms``.
    ``keyed_partitions`` topics use the settings' partition count (state lives by key);
    the rest use ``fixed_partitions``.
    """

    name: str
    key_field: str
    schema: str | None
    direction: Direction
    description: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    keyed_partitions: bool = True
    fixed_partitions: int = 1

    def partitions(self, settings: Settings) -> int:
        return settings.partitions if self.keyed_partitions else self.fixed_partitions

    def config(self) -> dict[str, str]:
        """Kafka topic configuration for AdminClient.create_topics."""
        if self.compacted:
            return {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


_IN, _OUT = Direction.INPUT, Direction.OUTPUT

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "feedback.explicit",
        "user_id",
        "feedback.explicit",
        _IN,
        "rating 1-5, like, dislike, save, share",
    ),
    TopicSpec(
        "feedback.implicit",
        "user_id",
        "feedback.implicit",
        _IN,
        "impression, view, click, dwell, conversion",
    ),
    TopicSpec("items", "item_id", "items", _IN, "item feature vectors (catalog)", compacted=True),
    TopicSpec(
        "recs.sessions", "session_id", "recs.sessions", _IN, "ranked candidates shown to a customer"
    ),
    TopicSpec("recs.choices", "session_id", "recs.choices", _IN, "the customer's choice or none"),
    TopicSpec(
        "recs.interactions",
        "session_id",
        "recs.interactions",
        _IN,
        "viewed / expanded / compared / contacted",
    ),
    TopicSpec(
        "experiments.definitions",
        "experiment_id",
        "experiments.definitions",
        _IN,
        "experiment definitions (announced on create/stop)",
        compacted=True,
    ),
    TopicSpec(
        "experiments.exposures",
        "experiment_id",
        "experiments.exposures",
        _IN,
        "unit exposed to a variant",
    ),
    TopicSpec(
        "experiments.conversions",
        "experiment_id",
        "experiments.conversions",
        _IN,
        "unit's metric value",
    ),
    TopicSpec("decisions", "component", "decisions", _IN, "production decision logs"),
    TopicSpec("metrics", "component", "metrics", _IN, "performance metrics of other components"),
    TopicSpec(
        "weights.preferences",
        "user_id",
        "weights.preferences",
        _OUT,
        "latest preference vector per user",
        compacted=True,
    ),
    TopicSpec("segments.changes", "user_id", "segments.changes", _OUT, "user segment changes"),
    TopicSpec(
        "weights.algorithms",
        "segment",
        "weights.algorithms",
        _OUT,
        "per-segment algorithm weights",
        compacted=True,
    ),
    TopicSpec(
        "weights.scoring",
        "segment",
        "weights.scoring",
        _OUT,
        "per-segment choice-scoring weights",
        compacted=True,
    ),
    TopicSpec(
        "experiments.results", "experiment_id", "experiments.results", _OUT, "experiment statistics"
    ),
    TopicSpec("insights", "subject", "insights", _OUT, "insights with evidence"),
    TopicSpec("actions", "target", "actions", _OUT, "optimization actions"),
    TopicSpec("alerts", "component", "alerts", _OUT, "health alerts"),
    TopicSpec(
        "deadletter",
        "source.topic",
        "deadletter",
        _OUT,
        "rejected input with reason and source coordinates",
        retention_ms=30 * DAY_MS,
    ),
    TopicSpec(
        "quarantine",
        "source.topic",
        "deadletter",
        _OUT,
        "feedback the guard kept from learning, with score and reasons",
        retention_ms=30 * DAY_MS,
    ),
    TopicSpec(
        "bandits.partials",
        "partition",
        None,
        Direction.INTERNAL,
        "per input partition: absolute bandit counts (agents/bandits/attribution.py)",
        compacted=True,
    ),
    TopicSpec(
        "feedback.implicit.relay",
        "partition",
        None,
        Direction.INTERNAL,
        "validated feedback.implicit events, many per record (agents/preferences/relay.py)",
    ),
    TopicSpec(
        "customers.segments",
        "customer_id",
        "customers.segments",
        _OUT,
        "customer segment changes (choice loop)",
    ),
    TopicSpec(
        "choices.customer_observations",
        "customer_id",
        None,
        Direction.INTERNAL,
        "completed choice sessions, re-keyed by customer (agents/choices/agent.py)",
    ),
    TopicSpec(
        "choices.segment_observations",
        "segment",
        None,
        Direction.INTERNAL,
        "completed choice sessions with their segment, re-keyed by segment (agents/choices)",
    ),
)

_BY_NAME = {t.name: t for t in TOPICS}


def get_topic(name: str) -> TopicSpec:
    """The spec for an unprefixed topic name; KeyError lists the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise KeyError(f"unknown topic {name!r}; known topics: {known}") from None


def resolve(settings: Settings, name_or_full: str) -> TopicSpec:
    """Accept either the registry name or the prefixed deployed name."""
    prefix = settings.topic_prefix
    if prefix and name_or_full.startswith(prefix) and name_or_full[len(prefix) :] in _BY_NAME:
        return _BY_NAME[name_or_full[len(prefix) :]]
    return get_topic(name_or_full)

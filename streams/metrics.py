"""The Prometheus registry of a worker and every metric it exports.

A dedicated registry (not the library's global one) so tests and several apps in one
process do not collide, and ``/metrics`` shows only Loopwise's series plus process stats.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_IN = Counter(
    "loopwise_events_in_total",
    "Input events read by an agent",
    ["topic", "agent"],
    registry=REGISTRY,
)
EVENTS_VALID = Counter(
    "loopwise_events_valid_total",
    "Input events that passed validation",
    ["topic", "agent"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "loopwise_events_duplicate_total",
    "Input events skipped because their offset was already applied (replays)",
    ["topic", "agent"],
    registry=REGISTRY,
)
EVENTS_OUT = Counter(
    "loopwise_events_out_total", "Output events sent", ["topic", "agent"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "loopwise_dead_letters_total",
    "Input events sent to the dead-letter topic",
    ["topic", "reason"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "loopwise_batch_size",
    "Events per batch taken by an agent",
    ["agent"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000),
    registry=REGISTRY,
)
PROCESSING_SECONDS = Histogram(
    "loopwise_batch_processing_seconds",
    "Time to process one batch",
    ["agent"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_TO_OUTPUT_SECONDS = Histogram(
    "loopwise_event_to_output_seconds",
    "From the input event's timestamp to its output event being sent",
    ["agent"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "loopwise_quarantined_total",
    "Events the guard kept from learning, by reason",
    ["topic", "reason"],
    registry=REGISTRY,
)
LEARNING_POSTERIOR_MEAN = Gauge(
    "loopwise_learning_posterior_mean",
    "Posterior mean success rate per segment and algorithm (published by the leader)",
    ["segment", "arm"],
    registry=REGISTRY,
)
LEARNING_ALGORITHM_WEIGHT = Gauge(
    "loopwise_learning_algorithm_weight",
    "Serving weight (propensity) per segment and algorithm (published by the leader)",
    ["segment", "algorithm"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "loopwise_consumer_lag",
    "Messages behind the end of each assigned partition (high watermark minus position)",
    ["topic", "partition"],
    registry=REGISTRY,
)
SINK_RETRIES = Counter(
    "loopwise_sink_retries_total",
    "Retries of transient sink faults",
    ["sink"],
    registry=REGISTRY,
)
SINK_WRITES = Counter(
    "loopwise_sink_writes_total", "Values written to a sink", ["sink"], registry=REGISTRY
)
TABLE_KEYS = Gauge(
    "loopwise_table_keys", "Keys held in a table on this worker", ["table"], registry=REGISTRY
)
EVENTS_MISROUTED = Counter(
    "loopwise_events_misrouted_total",
    "Input events whose key does not hash to the partition they arrived on (dead-lettered)",
    ["topic"],
    registry=REGISTRY,
)
BATCH_RETRIES = Counter(
    "loopwise_batch_retries_total",
    "Batches retried whole after a failure (their offsets stayed uncommitted)",
    ["consumer"],
    registry=REGISTRY,
)
CONSUMER_STUCK = Gauge(
    "loopwise_consumer_stuck",
    "1 while a consumer has been failing, or has lag and has not advanced, for "
    "LOOPWISE_STUCK_AFTER_S (then /ready answers 503)",
    ["consumer"],
    registry=REGISTRY,
)
FAULTS_INJECTED = Counter(
    "loopwise_faults_injected_total",
    "Transient faults raised on purpose by the fault tests (LOOPWISE_FAULTS)",
    ["point"],
    registry=REGISTRY,
)
AGENT_ERRORS = Counter(
    "loopwise_agent_errors_total",
    "Unexpected exceptions caught inside an agent",
    ["agent"],
    registry=REGISTRY,
)
EXPERIMENTS_ACTIVE = Gauge(
    "loopwise_experiments_active",
    "Running experiments owned by this worker (sum over workers for the deployment)",
    registry=REGISTRY,
)
EXPERIMENT_EXPOSURES = Counter(
    "loopwise_experiment_exposures_total",
    "Units exposed to an experiment for the first time, by experiment and variant",
    ["experiment", "variant"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The text exposition format of the registry, for ``/metrics``."""
    return generate_latest(REGISTRY)

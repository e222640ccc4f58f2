"""Faust records of the event schemas, for typed use in the HTTP API and the CLI.

The JSON Schemas in ``schemas/json/`` are the source of truth; the hot path validates
plain dicts with the compiled schemas (``schemas.registry``) and never builds records.
Each record is named after its schema in CamelCase (``feedback.explicit`` ->
``FeedbackExplicit``; version ``n > 1`` adds ``V<n>``), has one field per schema property,
and a field is required exactly when the schema requires it (checked by
``tests/contract``). Nested objects stay plain dicts and lists.

>>> event = FeedbackExplicit(
...     event_id="e-1", schema_version=1, ts=1767225600000,
...     user_id="u-1", item_id="i-1", kind="like",
... )
>>> sorted(event.asdict())  # value and context are unset, so left out
['event_id', 'item_id', 'kind', 'schema_version', 'ts', 'user_id']
"""

from typing import Any, ClassVar

import faust


class EventRecord(faust.Record, abstract=True, serializer="json", include_metadata=False):
    """Base of the event records: ``asdict()`` and ``dumps()`` give the event as its schema
    expects it.

    Optional fields default to ``None`` but the schemas do not accept ``null`` for them, so
    ``None``-valued optional fields are left out. Faust treats every ``X | None`` field as
    optional; a field the schema requires but allows to be ``null`` is named in
    ``required_nullable`` and kept. No faust metadata key is added (the schemas forbid
    unknown properties).
    """

    required_nullable: ClassVar[frozenset[str]] = frozenset()

    # faust's generated asdict() passes its payload through this hook.
    def _prepare_dict(self, payload: dict[str, Any]) -> dict[str, Any]:
        omit_if_none = self._options.optionalset - self.required_nullable
        return {k: v for k, v in payload.items() if v is not None or k not in omit_if_none}


class Actions(EventRecord):
    """An optimization action for another service to execute."""

    event_id: str
    schema_version: int
    ts: int
    action_id: str
    target: str
    kind: str
    parameters: dict[str, Any]
    reason: str
    source: str
    insight_id: str | None = None
    confidence: float | None = None
    strategy: str | None = None


class Alerts(EventRecord):
    """A health alert with severity and escalation level."""

    event_id: str
    schema_version: int
    ts: int
    component: str
    metric: str
    severity: str
    escalation_level: int
    message: str
    value: float
    threshold: float
    dimensions: dict[str, str] | None = None


class CustomersSegments(EventRecord):
    """A customer of the choice loop moved to another customer segment."""

    required_nullable = frozenset({"previous_segment"})

    event_id: str
    schema_version: int
    ts: int
    customer_id: str
    previous_segment: str | None
    segment: str
    rule: str
    evidence: str
    version: int
    sessions: int | None = None
    choices: int | None = None


class Deadletter(EventRecord):
    """A rejected input message with its origin, the reason and the original bytes."""

    event_id: str
    schema_version: int
    ts: int
    source: dict[str, Any]
    error_kind: str
    error_message: str
    original: str
    expected_partition: int | None = None
    original_length: int | None = None
    original_sha256: str | None = None


class Decisions(EventRecord):
    """A production decision log of an AI component: method, confidence,
    timing, success and quality labels; with a propensity for off-policy evaluation."""

    event_id: str
    schema_version: int
    ts: int
    log_type: str
    component: str
    session_id: str
    method: str
    confidence: float
    processing_time_ms: float
    success: bool
    subject: str | None = None
    input_summary: dict[str, Any] | None = None
    output_summary: dict[str, Any] | None = None
    quality_score: float | None = None
    success_indicator: bool | None = None
    improvement_potential: str | None = None
    propensity: float | None = None
    persona: str | None = None
    device: str | None = None
    strategy: str | None = None


class ExperimentsConversions(EventRecord):
    """A unit's value of an experiment metric (the primary metric or a guardrail)."""

    event_id: str
    schema_version: int
    ts: int
    experiment_id: str
    unit_id: str
    metric: str
    value: float


class ExperimentsDefinitions(EventRecord):
    """An experiment definition (created by the API or CLI and announced on this topic)."""

    event_id: str
    schema_version: int
    ts: int
    experiment_id: str
    name: str
    variants: list[dict[str, Any]]
    control: str
    traffic_fraction: float
    primary_metric: dict[str, Any]
    guardrails: list[dict[str, Any]]
    alpha: float
    power: float
    mde: float
    monitoring: str
    allocation_mode: str
    status: str
    description: str | None = None
    targeting: dict[str, Any] | None = None
    correction: str | None = None
    cuped: bool | None = None
    min_sample_size: int | None = None
    min_runtime_seconds: int | None = None
    allocation_floor: float | None = None
    burn_in: int | None = None


class ExperimentsExposures(EventRecord):
    """A unit (user) was exposed to a variant of an experiment."""

    event_id: str
    schema_version: int
    ts: int
    experiment_id: str
    unit_id: str
    variant: str
    device: str | None = None
    persona: str | None = None
    segment: str | None = None
    covariate: float | None = None


class ExperimentsResults(EventRecord):
    """The full statistical result of an experiment; statistics are null where undefined."""

    event_id: str
    schema_version: int
    ts: int
    experiment_id: str
    version: int
    computed_at: int
    variants: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    srm: dict[str, Any]
    power: dict[str, Any]
    status: str | None = None
    primary_metric: str | None = None
    total_units: int | None = None


class FeedbackExplicit(EventRecord):
    """Explicit feedback of a user on an item: a 1-5 rating, like, dislike, save or share."""

    event_id: str
    schema_version: int
    ts: int
    user_id: str
    item_id: str
    kind: str
    value: float | None = None
    context: dict[str, Any] | None = None


class FeedbackImplicit(EventRecord):
    """Implicit feedback of a user on an item: impression, view, click, dwell or conversion."""

    event_id: str
    schema_version: int
    ts: int
    user_id: str
    item_id: str
    kind: str
    value: float | None = None
    impression_id: str | None = None
    algorithm: str | None = None
    propensity: float | None = None
    context: dict[str, Any] | None = None


class Insights(EventRecord):
    """An insight with its evidence, confidence, priority and recommended action."""

    event_id: str
    schema_version: int
    ts: int
    insight_id: str
    subject: str
    kind: str
    evidence: dict[str, Any]
    confidence: float
    priority: str
    recommended_action: str
    title: str | None = None


class Items(EventRecord):
    """An item of the catalog: its feature vector and metadata (compacted by item_id)."""

    event_id: str
    schema_version: int
    ts: int
    item_id: str
    features: list[float]
    metadata: dict[str, Any] | None = None


class Metrics(EventRecord):
    """A performance metric sample published by another component."""

    event_id: str
    schema_version: int
    ts: int
    component: str
    metric: str
    value: float
    unit: str
    dimensions: dict[str, str] | None = None


class RecsChoices(EventRecord):
    """The customer's choice in a session (or none), with reasons, time and satisfaction."""

    required_nullable = frozenset({"chosen_candidate_id"})

    event_id: str
    schema_version: int
    ts: int
    session_id: str
    chosen_candidate_id: str | None
    customer_id: str | None = None
    reasons: list[str] | None = None
    important_factors: list[str] | None = None
    decision_time_seconds: float | None = None
    satisfaction: int | None = None


class RecsInteractions(EventRecord):
    """An interaction with a candidate in a session: viewed, expanded, compared or contacted."""

    event_id: str
    schema_version: int
    ts: int
    session_id: str
    candidate_id: str
    kind: str
    customer_id: str | None = None
    time_spent_seconds: float | None = None
    explanation_level: str | None = None
    expanded_sections: list[str] | None = None
    helpful_rating: int | None = None


class RecsSessions(EventRecord):
    """A recommendation session: the ranked candidates shown to a customer with factor scores."""

    event_id: str
    schema_version: int
    ts: int
    session_id: str
    customer_id: str
    algorithm_version: str
    complexity: str
    candidates: list[dict[str, Any]]
    stated_preferences: dict[str, float] | None = None


class SegmentsChanges(EventRecord):
    """A user moved from one activity segment to another."""

    required_nullable = frozenset({"previous_segment"})

    event_id: str
    schema_version: int
    ts: int
    user_id: str
    previous_segment: str | None
    segment: str
    reason: str
    interactions: int | None = None


class WeightsAlgorithms(EventRecord):
    """Per-segment recommendation-algorithm weights: Beta posteriors, probability of being
    best (Thompson sampling), exploration rate and disabled set."""

    event_id: str
    schema_version: int
    ts: int
    segment: str
    algorithms: list[dict[str, Any]]
    exploration_rate: float
    seed: int
    mode: str
    version: int
    half_life_s: float | None = None
    reference_ts: int | None = None
    contextual: dict[str, Any] | None = None


class WeightsPreferences(EventRecord):
    """A user's latest preference vector with its version and activity segment."""

    event_id: str
    schema_version: int
    ts: int
    user_id: str
    vector: list[float]
    dim: int
    version: int
    segment: str
    interactions: int
    source_ts: int


class WeightsScoring(EventRecord):
    """Learned choice-scoring weights of a customer segment (or the defaults, flagged)."""

    event_id: str
    schema_version: int
    ts: int
    segment: str
    weights: dict[str, float]
    confidence: float
    sample_size: int
    applied: bool
    is_default: bool
    version: int

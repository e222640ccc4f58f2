"""Experiment definitions: validation, PostgreSQL records, lifecycle, announcements.

PostgreSQL (``experiments``, migration 002) is the source of truth; every change is then
announced on the compacted ``experiments.definitions`` topic (key: experiment id) for the
``experiments`` agent and any other consumer. Used by the CLI (synchronous psycopg and a
confluent-kafka producer) and by the worker's HTTP views (the same functions in a thread,
the announcement through the faust topic).

Lifecycle: ``draft → running → stopped | concluded`` (and ``draft → stopped``). ``stopped``
is an operator's decision, ``concluded`` the agent's (the sequential test decided, or every
treatment was rolled back); both are final. Transitions are serialised by a row lock, so
two operators (or an operator and the agent) cannot both end an experiment.

Validation (:func:`validate_definition`) applies defaults, checks what the JSON schema cannot
express (unique variant names, control among the variants, metric names, floor ≤ 1/k, …) and
then the schema itself; every problem found is reported, each prefixed with its field path.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fastjsonschema
import orjson

from agents.experiments.ids import bounded_id
from agents.learning.assignment import assign
from schemas.registry import get_schema, validation_error_message
from streams.sinks.postgres_sink import jsonb

STATUSES = ("draft", "running", "stopped", "concluded")
FINAL = frozenset({"stopped", "concluded"})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "draft": frozenset({"running", "stopped"}),
    "running": frozenset({"stopped", "concluded"}),
    "stopped": frozenset(),
    "concluded": frozenset(),
}
EVENT_FIELDS = ("event_id", "schema_version", "ts")
DEFAULTS: Mapping[str, Any] = {
    "traffic_fraction": 1.0,
    "guardrails": [],
    "alpha": 0.05,
    "power": 0.8,
    "monitoring": "sequential",
    "allocation_mode": "fixed",
    "status": "draft",
    "correction": "holm",
}
REQUIRED = ("experiment_id", "variants", "control", "primary_metric", "mde")
_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_SCHEMA = get_schema("experiments.definitions")
DEFINITION_FIELDS = tuple(
    name for name in _SCHEMA.json_schema["properties"] if name not in EVENT_FIELDS
)


class DefinitionError(ValueError):
    """An experiment definition was refused; ``errors`` lists every reason."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid experiment definition:\n  " + "\n  ".join(self.errors))


class NotFound(LookupError):
    """No experiment with this id."""


class Conflict(ValueError):
    """The request contradicts the experiment's state (exists already, wrong transition)."""


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_definition(data: Any) -> dict[str, Any]:
    """The normalised definition (defaults applied, no event fields) or DefinitionError.

    Event fields (``event_id``, ``schema_version``, ``ts``) are accepted and ignored, so
    a definition event read from the topic can be re-submitted; ``status`` may only be
    ``draft`` (the default) or ``running`` at creation. Variant weights default to 1 and
    ``name`` to the experiment id.

    >>> d = validate_definition({"experiment_id": "e1", "variants": [{"name": "a"},
    ...     {"name": "b"}], "control": "a", "primary_metric": {"name": "buy",
    ...     "type": "binary"}, "mde": 0.02})
    >>> d["status"], d["variants"][1], d["alpha"]
    ('draft', {'name': 'b', 'weight': 1.0}, 0.05)
    >>> try:
    ...     validate_definition({"experiment_id": "e1", "variants": [{"name": "a"},
    ...         {"name": "a"}], "control": "c", "primary_metric": {"name": "buy",
    ...         "type": "binary"}, "mde": 2})
    ... except DefinitionError as exc:
    ...     print("\\n".join(exc.errors))
    variants[1].name: 'a' is used by more than one variant
    control: 'c' is not one of the variants ['a', 'a']
    mde: 2 is not below 1: for a binary metric it is an absolute difference of rates
    """
    if not isinstance(data, Mapping):
        raise DefinitionError([f"a definition is a JSON object, not {type(data).__name__}"])
    errors: list[str] = []
    unknown = sorted(set(data) - set(DEFINITION_FIELDS) - set(EVENT_FIELDS))
    for name in unknown:
        errors.append(f"{name}: unknown field (known: {', '.join(DEFINITION_FIELDS)})")
    for name in REQUIRED:
        if name not in data:
            errors.append(f"{name}: required")
    defn: dict[str, Any] = {k: v for k, v in data.items() if k in DEFINITION_FIELDS}
    for name, value in DEFAULTS.items():
        defn.setdefault(name, list(value) if isinstance(value, list) else value)
    if "name" not in defn and isinstance(defn.get("experiment_id"), str):
        defn["name"] = defn["experiment_id"]

    variants = defn.get("variants")
    names: list[Any] = []
    if isinstance(variants, list):
        normalised = []
        for i, v in enumerate(variants):
            if isinstance(v, Mapping):
                v = dict(v)
                v.setdefault("weight", 1.0)
                weight = v["weight"]
                if _is_number(weight) and not (math.isfinite(weight) and weight > 0):
                    errors.append(f"variants[{i}].weight: {weight} must be a number > 0")
                if v.get("name") in names:
                    errors.append(
                        f"variants[{i}].name: {v['name']!r} is used by more than one variant"
                    )
                names.append(v.get("name"))
            normalised.append(v)
        defn["variants"] = normalised
    control = defn.get("control")
    if names and "control" in defn and control not in names:
        errors.append(f"control: {control!r} is not one of the variants {names}")

    metrics: list[Any] = []
    primary = defn.get("primary_metric")
    if isinstance(primary, Mapping):
        metrics.append(primary.get("name"))
        mde = defn.get("mde")
        if primary.get("type") == "binary" and _is_number(mde) and mde >= 1:
            errors.append(
                f"mde: {mde} is not below 1: for a binary metric it is an absolute "
                "difference of rates"
            )
    guardrails = defn.get("guardrails")
    if isinstance(guardrails, list):
        for i, g in enumerate(guardrails):
            if not isinstance(g, Mapping):
                continue
            if g.get("name") in metrics:
                errors.append(
                    f"guardrails[{i}].name: {g.get('name')!r} is already the primary metric "
                    "or another guardrail"
                )
            metrics.append(g.get("name"))

    floor = defn.get("allocation_floor")
    if _is_number(floor) and names and floor > 1.0 / len(names) + 1e-12:
        errors.append(
            f"allocation_floor: {floor} is above 1/{len(names)}: the floors of "
            f"{len(names)} variants cannot exceed 100 %"
        )
    if defn.get("status") not in ("draft", "running"):
        errors.append(
            f"status: a new experiment is 'draft' or 'running', not {defn.get('status')!r}"
        )
    exp_id = defn.get("experiment_id")
    if "experiment_id" in defn and not (isinstance(exp_id, str) and _ID.fullmatch(exp_id)):
        errors.append(f"experiment_id: {exp_id!r} must be 1-128 characters from [A-Za-z0-9._:-]")
    if isinstance(variants, list) and not 2 <= len(variants) <= 10:
        errors.append(f"variants: an experiment has 2 to 10 variants, not {len(variants)}")

    if not any(name not in data for name in REQUIRED):
        # The schema reports its first violation only; the checks above cover the usual ones.
        event = definition_event(defn, str(defn.get("status")), 1, 0)
        event["event_id"] = "def:validation:1"
        try:
            _SCHEMA.validate(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            message = validation_error_message(exc)
            path = message.split(":", 1)[0]
            if not any(e.startswith(f"{path}:") for e in errors):  # said better above
                errors.append(message)
    if errors:
        raise DefinitionError(list(dict.fromkeys(errors)))
    return defn


def definition_event(
    definition: Mapping[str, Any], status: str, revision: int, ts_ms: int | None = None
) -> dict[str, Any]:
    """The ``experiments.definitions`` event announcing a definition at a revision."""
    exp_id = definition.get("experiment_id")
    return {
        "event_id": bounded_id("def", exp_id, revision),
        "schema_version": 1,
        "ts": int(time.time() * 1000) if ts_ms is None else ts_ms,
        **{k: v for k, v in definition.items() if k != "status"},
        "status": status,
    }


# --------------------------------------------------------------------------------------
# PostgreSQL (psycopg connections; the worker runs these in a thread)
# --------------------------------------------------------------------------------------

_COLUMNS = (
    "experiment_id, definition, status, revision, current_weights, stop_reason, "
    "created_at, started_at, ended_at, updated_at"
)


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    definition: dict[str, Any]
    status: str
    revision: int
    current_weights: dict[str, float] | None
    stop_reason: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Experiment:
        return cls(*row)

    @property
    def weights(self) -> dict[str, float]:
        """Current allocation: after reallocation / rollback, else the definition's."""
        if self.current_weights:
            return {k: float(v) for k, v in self.current_weights.items()}
        return {v["name"]: float(v["weight"]) for v in self.definition["variants"]}

    def event(self) -> dict[str, Any]:
        ts = self.updated_at or self.created_at
        return definition_event(
            self.definition,
            self.status,
            self.revision,
            int(ts.timestamp() * 1000) if ts else None,
        )

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "experiment_id": self.experiment_id,
            "status": self.status,
            "revision": self.revision,
            "definition": self.definition,
            "weights": self.weights,
            "stop_reason": self.stop_reason,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "updated_at": iso(self.updated_at),
        }


def create(conn: Any, definition: Mapping[str, Any], deployment: str | None = None) -> Experiment:
    """Insert a validated definition (its ``status`` becomes the row's status).

    ``deployment`` (the topic prefix) scopes the row like the insights rows, so a
    deployment's report lists only its own experiments (migration 008).
    """
    defn = {k: v for k, v in definition.items() if k != "status"}
    status = definition.get("status", "draft")
    with conn.transaction():
        row = conn.execute(
            f"""INSERT INTO experiments
                    (experiment_id, definition, status, started_at, deployment)
                VALUES (%s, %s, %s, CASE WHEN %s = 'running' THEN now() END, %s)
                ON CONFLICT (experiment_id) DO NOTHING
                RETURNING {_COLUMNS}""",
            (defn["experiment_id"], jsonb(defn), status, status, deployment),
        ).fetchone()
    if row is None:
        raise Conflict(f"experiment {defn['experiment_id']!r} already exists")
    return Experiment.from_row(row)


def get(conn: Any, experiment_id: str) -> Experiment | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM experiments WHERE experiment_id = %s", (experiment_id,)
    ).fetchone()
    return Experiment.from_row(row) if row else None


def get_many(conn: Any, experiment_ids: Sequence[str]) -> dict[str, Experiment]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM experiments WHERE experiment_id = ANY(%s)",
        (list(experiment_ids),),
    ).fetchall()
    return {row[0]: Experiment.from_row(row) for row in rows}


def list_experiments(conn: Any, status: str | None = None, limit: int = 1000) -> list[Experiment]:
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    rows = conn.execute(
        f"""SELECT {_COLUMNS} FROM experiments
            WHERE (%s::text IS NULL OR status = %s)
            ORDER BY created_at DESC, experiment_id LIMIT %s""",
        (status, status, limit),
    ).fetchall()
    return [Experiment.from_row(r) for r in rows]


def transition(
    conn: Any, experiment_id: str, to_status: str, reason: str | None = None
) -> Experiment:
    """Move an experiment along its lifecycle (row-locked); Conflict when not allowed."""
    if to_status not in STATUSES:
        raise ValueError(f"unknown status {to_status!r}")
    with conn.transaction():
        row = conn.execute(
            "SELECT status FROM experiments WHERE experiment_id = %s FOR UPDATE",
            (experiment_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no experiment {experiment_id!r}")
        current = row[0]
        if to_status not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (it is final)"
            raise Conflict(
                f"experiment {experiment_id!r} is {current}: cannot become {to_status} "
                f"(allowed: {allowed})"
            )
        updated = conn.execute(
            f"""UPDATE experiments SET status = %s, revision = revision + 1, updated_at = now(),
                    started_at = CASE WHEN %s = 'running' THEN now() ELSE started_at END,
                    ended_at = CASE WHEN %s IN ('stopped', 'concluded') THEN now()
                                    ELSE ended_at END,
                    stop_reason = COALESCE(%s, stop_reason)
                WHERE experiment_id = %s
                RETURNING {_COLUMNS}""",
            (to_status, to_status, to_status, reason, experiment_id),
        ).fetchone()
    return Experiment.from_row(updated)


RAMPABLE = frozenset({"draft", "running"})


def check_traffic(traffic: Any) -> float:
    """The traffic fraction as a float, or DefinitionError naming the field.

    >>> check_traffic(0.25)
    0.25
    >>> try:
    ...     check_traffic(0)
    ... except DefinitionError as exc:
    ...     print(exc.errors[0])
    traffic: 0 must be a number in (0, 1] (a traffic fraction; stop the experiment to end it)
    """
    if not (_is_number(traffic) and math.isfinite(traffic) and 0 < traffic <= 1):
        raise DefinitionError(
            [
                f"traffic: {traffic!r} must be a number in (0, 1] (a traffic fraction; stop "
                "the experiment to end it)"
            ]
        )
    return float(traffic)


def ramp(conn: Any, experiment_id: str, traffic: Any, reason: str | None = None) -> Experiment:
    """Change the traffic fraction of a draft or running experiment (row-locked).

    The new definition gets a new revision and the change a row of ``experiment_changes``,
    in one transaction. Assignment stays sticky (docs/assignment.md): the traffic gate uses
    its own hash, so ramping up only adds units and ramping down only removes the units
    above the new fraction; no unit that stays in changes variant. The same fraction again
    changes nothing (no new revision).
    """
    fraction = check_traffic(traffic)
    with conn.transaction():
        row = conn.execute(
            "SELECT status, definition FROM experiments WHERE experiment_id = %s FOR UPDATE",
            (experiment_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no experiment {experiment_id!r}")
        status, definition = row
        if status not in RAMPABLE:
            raise Conflict(
                f"experiment {experiment_id!r} is {status}: its traffic cannot change "
                "(only a draft or running experiment can be ramped)"
            )
        before = float(definition.get("traffic_fraction", 1.0))
        if before == fraction:
            current = get(conn, experiment_id)
            assert current is not None
            return current
        updated = conn.execute(
            f"""UPDATE experiments SET
                    definition = jsonb_set(
                        definition, '{{traffic_fraction}}', to_jsonb(%s::float8)),
                    revision = revision + 1, updated_at = now()
                WHERE experiment_id = %s
                RETURNING {_COLUMNS}""",
            (fraction, experiment_id),
        ).fetchone()
        experiment = Experiment.from_row(updated)
        conn.execute(
            """INSERT INTO experiment_changes
                   (experiment_id, revision, kind, before, after, reason)
               VALUES (%s, %s, 'traffic', %s, %s, %s)""",
            (
                experiment_id,
                experiment.revision,
                jsonb({"traffic_fraction": before}),
                jsonb({"traffic_fraction": fraction}),
                reason,
            ),
        )
    return experiment


def changes(conn: Any, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's recorded definition changes, oldest first."""
    rows = conn.execute(
        """SELECT revision, kind, before, after, reason, changed_at FROM experiment_changes
           WHERE experiment_id = %s ORDER BY revision""",
        (experiment_id,),
    ).fetchall()
    keys = ("revision", "kind", "before", "after", "reason")
    return [{**dict(zip(keys, r[:5], strict=True)), "changed_at": r[5].isoformat()} for r in rows]


def latest_result(conn: Any, experiment_id: str) -> tuple[int, dict[str, Any]] | None:
    row = conn.execute(
        "SELECT version, result FROM experiment_results_latest WHERE experiment_id = %s",
        (experiment_id,),
    ).fetchone()
    return (int(row[0]), row[1]) if row else None


def decisions(conn: Any, experiment_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT action_id, kind, variant, parameters, evidence, reason, result_version,
                  decided_at
           FROM experiment_decisions WHERE experiment_id = %s ORDER BY decided_at, action_id""",
        (experiment_id,),
    ).fetchall()
    keys = ("action_id", "kind", "variant", "parameters", "evidence", "reason", "result_version")
    return [{**dict(zip(keys, r[:7], strict=True)), "decided_at": r[7].isoformat()} for r in rows]


# --------------------------------------------------------------------------------------
# Assignment for other services
# --------------------------------------------------------------------------------------


def assignment(
    experiment: Experiment, unit_id: str, attributes: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """The unit's variant (``None`` when not running, not targeted or gated out by traffic).

    ``attributes`` (``device``, ``persona``, ``segment``) are checked against the
    targeting: a restricted dimension the caller does not supply is not eligible.
    """
    out: dict[str, Any] = {
        "experiment_id": experiment.experiment_id,
        "unit_id": unit_id,
        "status": experiment.status,
        "variant": None,
    }
    if experiment.status != "running":
        out["reason"] = f"experiment is {experiment.status}, not running"
        return out
    targeting = experiment.definition.get("targeting") or {}
    attrs = attributes or {}
    for dim, attr in (("devices", "device"), ("personas", "persona"), ("segments", "segment")):
        allowed = targeting.get(dim) or []
        if allowed and attrs.get(attr) not in allowed:
            out["reason"] = f"{attr} {attrs.get(attr)!r} is not targeted ({dim}: {allowed})"
            return out
    weights = experiment.weights
    names = [v["name"] for v in experiment.definition["variants"]]
    w = [weights.get(n, 0.0) for n in names]
    if sum(w) <= 0:
        out["reason"] = "no variant has traffic"
        return out
    variant = assign(
        experiment.experiment_id,
        unit_id,
        names,
        w,
        float(experiment.definition["traffic_fraction"]),
    )
    out["variant"] = variant
    if variant is None:
        out["reason"] = "outside the traffic fraction"
    return out


# --------------------------------------------------------------------------------------
# Announcements and the CLI's connections
# --------------------------------------------------------------------------------------


def encode_event(experiment: Experiment) -> tuple[bytes, bytes]:
    """(key, value) of the definition event, validated against its schema."""
    event = experiment.event()
    _SCHEMA.validate(event)
    return experiment.experiment_id.encode(), orjson.dumps(event)


def announce_sync(settings: Any, experiment: Experiment, timeout_s: float = 30.0) -> None:
    """Produce the definition event with a confluent-kafka producer and wait for it."""
    from streams.kafka_admin import producer

    key, value = encode_event(experiment)
    prod = producer(settings)
    prod.produce(settings.topic("experiments.definitions"), key=key, value=value)
    if prod.flush(timeout_s):
        raise TimeoutError(
            f"experiment {experiment.experiment_id!r} is stored but its announcement was not "
            f"delivered within {timeout_s:.0f} s (the worker still reads it from PostgreSQL)"
        )


def connect(settings: Any) -> Any:
    import psycopg

    return psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10)


def with_connection(settings: Any, fn: Callable[[Any], Any]) -> Any:
    with connect(settings) as conn:
        return fn(conn)


# --------------------------------------------------------------------------------------
# ``loopwise experiments ...`` (registered by loopwise.cli.main)
# --------------------------------------------------------------------------------------


def latest_result_sync(settings: Any, conn: Any, experiment_id: str) -> dict[str, Any] | None:
    """The latest result: Redis (as the agent wrote it), else PostgreSQL."""
    try:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=3)
        value = client.hget(f"{settings.topic_prefix}exp:{experiment_id}", "value")
        if value:
            return orjson.loads(value)
    except Exception as exc:  # Redis down: PostgreSQL has it too
        print(f"loopwise: Redis unavailable ({exc!r}); reading PostgreSQL", file=sys.stderr)
    row = latest_result(conn, experiment_id)
    return row[1] if row else None

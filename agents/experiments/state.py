"""State of the ``experiments`` agent: one aggregate per experiment, one record per unit.

Both live in the one ``experiments`` table, on the partition of the experiment's events:

* key ``"<experiment_id>"`` — :class:`ExperimentState`: the definition and status, mergeable
  sufficient statistics per allocation period × metric × variant (``n``; ``sum``,
  ``sum_squares`` and ``sum_xy`` per metric; ``sum_x``, ``sum_x2`` of the CUPED covariate),
  the last applied offset per input topic, the running states of the sequential tests, the
  result version, the last result and the decisions taken;
* key ``"<experiment_id>|<unit_id>"`` — :class:`Unit`: the unit's variant and period (from
  its first exposure), covariate, metric values, recent conversion-event ids and conversions
  held until the unit's exposure arrives.

Exactly-once effect under at-least-once delivery. A batch writes the unit records first and
the aggregate last, all to the same changelog partition, so after a crash the changelog
holds a prefix of those writes. A unit record carries the unit's previous value and the
batch's *mark*: the aggregate's exposure and conversion offsets after that batch. It is
committed once the aggregate's offsets reach its mark; until then (its batch's aggregate was
lost) it reads as its previous value, and the aggregate's offsets make the replay re-apply
exactly the lost events, which touch the unit again. Offsets, unlike a batch counter, are
never reused: a replay with other batch boundaries cannot make a lost record look
committed. Re-sent events (same event id, new offset) are recognised per unit: an exposure
of an exposed unit changes nothing (a different variant is counted as a crossover, the
first exposure wins); a binary conversion counts once per unit; continuous values are
summed per unit, de-duplicated by the last ``MAX_UNIT_IDS`` conversion-event ids of the
unit.

Everything here is pure (no I/O) and unit-tested in ``tests/unit/experiments/test_state.py``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.learning.abstats import VariantStats

TOPIC_SLOTS = {
    "experiments.exposures": 0,
    "experiments.conversions": 1,
    "experiments.definitions": 2,
}
MAX_UNIT_IDS = 16
MAX_HELD_PER_UNIT = 16
MAX_PERIODS = 256
MAX_DECIDED_ACTIONS = 16
STATUS_RANK = {"draft": 0, "running": 1, "stopped": 2, "concluded": 2}

APPLIED = "applied"
DUPLICATE = "duplicate"
CROSSOVER = "crossover"
HELD = "held"
HOLD_LIMIT = "hold_limit"


def event_id_hash(event_id: str) -> int:
    """63-bit hash of an event id (blake2b; stable across processes, fits JSON integers)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Definition:
    """The parts of an experiment definition the agent computes with."""

    experiment_id: str
    variants: tuple[str, ...]
    weights: tuple[float, ...]
    control: str
    traffic: float
    metrics: tuple[str, ...]
    metric_types: tuple[str, ...]
    directions: tuple[str | None, ...]
    alpha: float
    power: float
    mde: float
    monitoring: str
    allocation_mode: str
    correction: str
    cuped: bool
    min_sample_size: int | None
    min_runtime_seconds: int | None
    allocation_floor: float
    burn_in: int | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Definition:
        """From a definition (the event or the stored one).

        >>> d = Definition.from_dict({"experiment_id": "e", "control": "a",
        ...     "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}],
        ...     "primary_metric": {"name": "buy", "type": "binary"}, "mde": 0.01,
        ...     "guardrails": [{"name": "ms", "type": "continuous",
        ...                     "direction": "increase_is_bad"}]})
        >>> d.metrics, d.control_index, d.directions
        (('buy', 'ms'), 0, (None, 'increase_is_bad'))
        """
        primary = d["primary_metric"]
        guardrails = list(d.get("guardrails") or [])
        return cls(
            experiment_id=d["experiment_id"],
            variants=tuple(v["name"] for v in d["variants"]),
            weights=tuple(float(v.get("weight", 1.0)) for v in d["variants"]),
            control=d["control"],
            traffic=float(d.get("traffic_fraction", 1.0)),
            metrics=(primary["name"], *(g["name"] for g in guardrails)),
            metric_types=(primary["type"], *(g["type"] for g in guardrails)),
            directions=(None, *(g["direction"] for g in guardrails)),
            alpha=float(d.get("alpha", 0.05)),
            power=float(d.get("power", 0.8)),
            mde=float(d["mde"]),
            monitoring=d.get("monitoring", "sequential"),
            allocation_mode=d.get("allocation_mode", "fixed"),
            correction=d.get("correction", "holm"),
            cuped=bool(d.get("cuped", False)),
            min_sample_size=d.get("min_sample_size"),
            min_runtime_seconds=d.get("min_runtime_seconds"),
            allocation_floor=float(d.get("allocation_floor", 0.0)),
            burn_in=d.get("burn_in"),
        )

    @property
    def control_index(self) -> int:
        return self.variants.index(self.control)

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def same_design(self, other: Definition) -> bool:
        """Whether the statistics kept for ``self`` still fit ``other`` (same layout)."""
        return (
            self.variants == other.variants
            and self.metrics == other.metrics
            and self.metric_types == other.metric_types
            and self.control == other.control
        )


def definition_revision(event_id: str) -> int | None:
    """The revision in a definition event id (``def:<experiment>:<revision>``).

    >>> definition_revision("def:checkout:7"), definition_revision("elsewhere")
    (7, None)
    """
    tail = event_id.rsplit(":", 1)[-1]
    return int(tail) if event_id.startswith("def:") and tail.isdigit() else None


def definition_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """A definition event without its event fields and status."""
    return {
        k: v for k, v in event.items() if k not in ("event_id", "schema_version", "ts", "status")
    }


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One unit's membership and metric values in one experiment."""

    variant: int = -1
    period: int = 0
    covariate: float | None = None
    values: list[float | None] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    # [metric index, value, id hash, event ts, source]; ``source`` is [topic, partition,
    # offset, key (base64 or None), original (base64)], for the dead letter if the
    # exposure never comes (entries written before these two fields never expire).
    held: list[list[Any]] = field(default_factory=list)

    @classmethod
    def new(cls, n_metrics: int) -> Unit:
        return cls(values=[None] * n_metrics)

    @property
    def exposed(self) -> bool:
        return self.variant >= 0

    def _fields(self) -> list[Any]:
        return [self.variant, self.period, self.covariate, self.values, self.ids, self.held]

    @classmethod
    def _from_fields(cls, f: Sequence[Any]) -> Unit:
        return cls(int(f[0]), int(f[1]), f[2], list(f[3]), list(f[4]), [list(h) for h in f[5]])

    def copy(self) -> Unit:
        return Unit._from_fields(orjson.loads(orjson.dumps(self._fields())))

    def pack(self, mark: Sequence[int], committed: Unit | None) -> bytes:
        """Bytes of this value written by a batch whose aggregate will have offsets
        ``mark`` (exposures, conversions); ``committed`` is the value before the batch."""
        prev = None if committed is None else committed._fields()
        return orjson.dumps([*self._fields(), [int(mark[0]), int(mark[1])], prev])

    @classmethod
    def unpack(cls, blob: bytes | None, applied: Sequence[int], n_metrics: int) -> Unit | None:
        """The committed value, given the committed aggregate's offsets ``applied``.

        >>> u = Unit.new(1); u.variant = 1
        >>> blob = u.pack(mark=[40, 7], committed=None)
        >>> Unit.unpack(blob, applied=[40, 9], n_metrics=1).variant
        1
        >>> Unit.unpack(blob, applied=[39, 9], n_metrics=1) is None  # that batch was lost
        True
        """
        if blob is None:
            return None
        f = orjson.loads(blob)
        mark = f[6]
        if applied[0] < mark[0] or applied[1] < mark[1]:
            return None if f[7] is None else cls._from_fields(f[7])
        return cls._from_fields(f)


def unit_key(experiment_id: str, unit_id: str) -> str:
    return f"{experiment_id}|{unit_id}"


class HeldIndex:
    """This worker's held conversions: per experiment a heap of (event ts, unit id).

    In memory only: the agent rebuilds it from the table after every rebalance and keeps it
    up to date batch by batch. Entries are not removed when an exposure releases a
    unit; a stale entry finds nothing to expire when it comes due.
    """

    def __init__(self) -> None:
        self.heaps: dict[str, list[tuple[int, str]]] = {}

    def add(self, experiment_id: str, ts: int, unit_id: str) -> None:
        heapq.heappush(self.heaps.setdefault(experiment_id, []), (ts, unit_id))

    def due(self, experiment_id: str, before_ts: float) -> list[str]:
        """Units with an entry older than ``before_ts``, each once (entries removed)."""
        heap = self.heaps.get(experiment_id)
        out: dict[str, None] = {}
        while heap and heap[0][0] < before_ts:
            out[heapq.heappop(heap)[1]] = None
        if heap is not None and not heap:
            del self.heaps[experiment_id]
        return list(out)

    def drop(self, experiment_id: str) -> None:
        self.heaps.pop(experiment_id, None)

    def clear(self) -> None:
        self.heaps.clear()


# --------------------------------------------------------------------------------------
# The experiment aggregate
# --------------------------------------------------------------------------------------


def _new_period(start_ms: int, weights: Sequence[float], k: int, n_metrics: int) -> dict:
    return {
        "start": start_ms,
        "w": [float(w) for w in weights],
        "n": [0] * k,
        "sx": [0.0] * k,
        "sx2": [0.0] * k,
        # per metric, per variant: [sum, sum_squares, sum_xy]
        "m": [[[0.0, 0.0, 0.0] for _ in range(k)] for _ in range(n_metrics)],
    }


@dataclass
class ExperimentState:
    """The aggregate of one experiment (see the module docstring)."""

    definition: dict[str, Any]
    status: str
    offsets: list[int] = field(default_factory=lambda: [-1, -1, -1])
    periods: list[dict[str, Any]] = field(default_factory=list)
    first_ts: int | None = None
    last_ts: int = 0
    last_exposure_ts: int = 0  # event time of the exposure stream: held conversions expire
    ended_ms: int | None = None  # wall clock when the status became final (unit retention)
    purged: bool = False  # the unit records were deleted after the retention
    counters: dict[str, int] = field(default_factory=dict)
    sequential: dict[str, dict[str, Any]] = field(default_factory=dict)
    srm: dict[str, Any] = field(default_factory=lambda: {"p": 1.0, "looks": 0})
    result_version: int = 0
    last_result: dict[str, Any] | None = None
    history_ms: int = 0
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    dirty: bool = False
    partition: int | None = None  # the source partition that owns this experiment
    revision: int = 0  # of the definition held; an older announcement read late is ignored
    _def: Definition | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(
        cls,
        definition: Mapping[str, Any],
        status: str,
        weights: Sequence[float] | None = None,
        start_ms: int = 0,
    ) -> ExperimentState:
        state = cls(definition=dict(definition), status=status)
        d = state.defn
        w = d.weights if weights is None else weights
        state.periods = [_new_period(start_ms, w, len(d.variants), len(d.metrics))]
        return state

    @property
    def defn(self) -> Definition:
        if self._def is None:
            self._def = Definition.from_dict(self.definition)
        return self._def

    # -- serialisation -------------------------------------------------------------------

    _FIELDS = (
        "definition",
        "status",
        "offsets",
        "periods",
        "first_ts",
        "last_ts",
        "last_exposure_ts",
        "ended_ms",
        "purged",
        "counters",
        "sequential",
        "srm",
        "result_version",
        "last_result",
        "history_ms",
        "actions",
        "rolled_back",
        "dirty",
        "partition",
        "revision",
    )

    def pack(self) -> bytes:
        return orjson.dumps({name: getattr(self, name) for name in self._FIELDS})

    @classmethod
    def unpack(cls, blob: bytes) -> ExperimentState:
        data = orjson.loads(blob)
        return cls(**{name: data[name] for name in cls._FIELDS if name in data})

    # -- lifecycle -----------------------------------------------------------------------

    def apply_definition(
        self, definition: Mapping[str, Any], status: str, revision: int | None = None
    ) -> str | None:
        """Apply an announced definition; returns an error message when it is refused.

        Status only moves forward (draft → running → stopped/concluded): an older
        announcement read late changes nothing. The variants, control and metrics cannot
        change once statistics are kept for them; the rest of the definition (a traffic
        ramp) is taken from an announcement of a newer ``revision``. A ramp needs no new
        allocation period: the traffic gate admits or removes units independently of their
        variant, so every variant's share of the units stays the allocation.
        """
        new = Definition.from_dict(definition)
        if not self.defn.same_design(new):
            return (
                f"experiment {self.defn.experiment_id!r}: variants, control and metrics "
                "cannot change after creation (create a new experiment)"
            )
        if STATUS_RANK[status] > STATUS_RANK[self.status]:
            self.status = status
        if revision is not None and revision > self.revision:
            self.definition = dict(definition)
            self._def = None
            self.revision = revision
        return None

    @property
    def ended(self) -> bool:
        return STATUS_RANK[self.status] == STATUS_RANK["stopped"]

    def mark_ended(self, now_ms: int) -> None:
        """Remember when a final status was first seen (the unit retention starts then)."""
        if self.ended and self.ended_ms is None:
            self.ended_ms = int(now_ms)

    def purge_due(self, now_ms: int, retention_ms: int) -> bool:
        """Whether the unit records of this ended experiment should now be deleted.

        >>> s = ExperimentState.new({"experiment_id": "e", "control": "a", "mde": 0.1,
        ...     "variants": [{"name": "a"}, {"name": "b"}],
        ...     "primary_metric": {"name": "m", "type": "binary"}}, "stopped")
        >>> s.mark_ended(1_000); s.purge_due(60_999, 60_000), s.purge_due(61_000, 60_000)
        (False, True)
        """
        return (
            not self.purged and self.ended_ms is not None and now_ms - self.ended_ms >= retention_ms
        )

    @property
    def period(self) -> dict[str, Any]:
        return self.periods[-1]

    @property
    def weights(self) -> list[float]:
        return list(self.period["w"])

    def start_period(self, start_ms: int, weights: Sequence[float]) -> int:
        """Start a new allocation period (bandit reallocation, rollback); its index."""
        d = self.defn
        self.periods.append(_new_period(start_ms, weights, len(d.variants), len(d.metrics)))
        return len(self.periods) - 1

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def observe_ts(self, ts: int, exposure: bool) -> None:
        self.last_ts = max(self.last_ts, ts)
        if exposure:
            self.last_exposure_ts = max(self.last_exposure_ts, ts)
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts

    # -- events --------------------------------------------------------------------------

    def apply_exposure(self, unit: Unit, variant: int, covariate: float | None) -> str:
        """Count a unit's exposure; later exposures of the same unit change nothing."""
        if unit.exposed:
            if unit.variant != variant:
                self.count("crossover_exposures")
                return CROSSOVER
            self.count("duplicate_exposures")
            return DUPLICATE
        p = len(self.periods) - 1
        period = self.periods[p]
        unit.variant, unit.period, unit.covariate = variant, p, covariate
        x = 0.0 if covariate is None else float(covariate)
        period["n"][variant] += 1
        period["sx"][variant] += x
        period["sx2"][variant] += x * x
        if covariate is not None:
            self.count("units_with_covariate")
        if unit.held:
            held, unit.held = unit.held, []
            self.count("held_units", -1)
            for entry in held:
                self._add_value(unit, int(entry[0]), float(entry[1]))
                self._remember_id(unit, int(entry[2]))
        return APPLIED

    def apply_conversion(
        self,
        unit: Unit,
        metric: int,
        value: float,
        id_hash: int,
        max_held_units: int,
        ts: int | None = None,
        source: list[Any] | None = None,
    ) -> str:
        """Apply a metric value, or hold it until the unit's exposure arrives.

        ``ts`` (event time) and ``source`` (see :attr:`Unit.held`) are kept with a held
        value so that :meth:`expire_held` can dead-letter it if the exposure never comes.
        """
        if id_hash in unit.ids or any(h[2] == id_hash for h in unit.held):
            self.count("duplicate_conversions")
            return DUPLICATE
        if not unit.exposed:
            if len(unit.held) >= MAX_HELD_PER_UNIT:
                return HOLD_LIMIT
            if not unit.held:
                if self.counters.get("held_units", 0) >= max_held_units:
                    return HOLD_LIMIT
                self.count("held_units")
            entry: list[Any] = [metric, value, id_hash]
            if ts is not None:
                entry += [int(ts), source]
            unit.held.append(entry)
            return HELD
        self._add_value(unit, metric, value)
        self._remember_id(unit, id_hash)
        return APPLIED

    def expire_held(self, unit: Unit, before_ts: float) -> list[list[Any]]:
        """Take the held values of an unexposed unit whose event time is before
        ``before_ts`` (``math.inf``: all of them); the caller dead-letters them.

        Exposures precede conversions in event time, so once the exposure stream has
        passed a held conversion's time by the wait, its exposure is not coming: counting
        it later would need it to be re-sent (``loopwise dlq replay``).
        """
        if unit.exposed or not unit.held:
            return []
        expired = [h for h in unit.held if len(h) >= 5 and h[3] < before_ts]
        if not expired:
            return []
        unit.held = [h for h in unit.held if not (len(h) >= 5 and h[3] < before_ts)]
        if not unit.held:
            self.count("held_units", -1)
        self.count("unexposed_conversions", len(expired))
        return expired

    @staticmethod
    def _remember_id(unit: Unit, id_hash: int) -> None:
        unit.ids.append(id_hash)
        if len(unit.ids) > MAX_UNIT_IDS:
            del unit.ids[: len(unit.ids) - MAX_UNIT_IDS]

    def _add_value(self, unit: Unit, metric: int, value: float) -> None:
        cell = self.periods[unit.period]["m"][metric][unit.variant]
        x = 0.0 if unit.covariate is None else float(unit.covariate)
        old = unit.values[metric]
        if self.defn.metric_types[metric] == "binary":
            if value != 1 or old == 1:
                return  # a 0 is no conversion; the first conversion counts, once
            unit.values[metric] = 1
            cell[0] += 1.0
            cell[1] += 1.0
            cell[2] += x
            return
        before = 0.0 if old is None else float(old)
        after = before + value
        unit.values[metric] = after
        cell[0] += value
        cell[1] += after * after - before * before
        cell[2] += x * value

    # -- statistics ----------------------------------------------------------------------

    def stats(self, metric: int, periods: Sequence[int] | None = None) -> list[VariantStats]:
        """Mergeable statistics per variant, summed over ``periods`` (default: all)."""
        k = len(self.defn.variants)
        chosen = range(len(self.periods)) if periods is None else periods
        out = [VariantStats.zero()] * k
        for p in chosen:
            period = self.periods[p]
            for v in range(k):
                s, sq, sxy = period["m"][metric][v]
                out[v] = out[v] + VariantStats(
                    period["n"][v], s, sq, period["sx"][v], period["sx2"][v], sxy
                )
        return out

    def units(self) -> list[int]:
        k = len(self.defn.variants)
        return [sum(p["n"][v] for p in self.periods) for v in range(k)]

    def runtime_s(self) -> float:
        return 0.0 if self.first_ts is None else max(0.0, (self.last_ts - self.first_ts) / 1000)

    def remember_action(self, action: Mapping[str, Any], record: Sequence[Any]) -> None:
        """Keep an emitted action and its decision record, to re-send them after a crash.

        ``record`` is ``[kind, variant, parameters, evidence, reason, result_version]``.
        Bounded: only the latest reallocation is kept, and at most ``MAX_DECIDED_ACTIONS``.
        """
        if action["kind"] == "reallocate_traffic":
            for key in [
                k for k, a in self.actions.items() if a["action"]["kind"] == "reallocate_traffic"
            ]:
                del self.actions[key]
        self.actions[action["action_id"]] = {"action": dict(action), "record": list(record)}
        while len(self.actions) > MAX_DECIDED_ACTIONS:
            del self.actions[next(iter(self.actions))]


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)

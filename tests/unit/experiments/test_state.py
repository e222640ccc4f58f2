"""The experiments agent's state: de-duplication, mergeable statistics, crash recovery."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from agents.experiments.state import (
    APPLIED,
    CROSSOVER,
    DUPLICATE,
    HELD,
    HOLD_LIMIT,
    MAX_HELD_PER_UNIT,
    ExperimentState,
    HeldIndex,
    Unit,
    event_id_hash,
)
from agents.learning.abstats import VariantStats

DEFINITION: dict[str, Any] = {
    "experiment_id": "exp-s",
    "name": "exp-s",
    "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}],
    "control": "control",
    "traffic_fraction": 1.0,
    "primary_metric": {"name": "conversion", "type": "binary"},
    "guardrails": [{"name": "revenue", "type": "continuous", "direction": "decrease_is_bad"}],
    "alpha": 0.05,
    "power": 0.8,
    "mde": 0.02,
    "monitoring": "sequential",
    "allocation_mode": "fixed",
    "cuped": True,
}


def new_state() -> ExperimentState:
    return ExperimentState.new(DEFINITION, "running")


def test_a_unit_exposed_twice_counts_once_and_crossovers_are_counted() -> None:
    state, unit = new_state(), Unit.new(2)
    assert state.apply_exposure(unit, 1, None) == APPLIED
    assert state.apply_exposure(unit, 1, None) == DUPLICATE
    assert state.apply_exposure(unit, 0, None) == CROSSOVER  # the first exposure wins
    assert state.units() == [0, 1] and unit.variant == 1
    assert state.counters["duplicate_exposures"] == 1
    assert state.counters["crossover_exposures"] == 1


def test_binary_conversions_count_once_per_unit() -> None:
    state, unit = new_state(), Unit.new(2)
    state.apply_exposure(unit, 0, None)
    assert state.apply_conversion(unit, 0, 0.0, event_id_hash("c0"), 10) == APPLIED
    assert state.stats(0)[0].sum == 0  # a 0 is not a conversion
    assert state.apply_conversion(unit, 0, 1.0, event_id_hash("c1"), 10) == APPLIED
    assert state.apply_conversion(unit, 0, 1.0, event_id_hash("c2"), 10) == APPLIED
    assert state.apply_conversion(unit, 0, 1.0, event_id_hash("c1"), 10) == DUPLICATE
    assert state.stats(0)[0] == VariantStats(1, 1.0, 1.0, 0.0, 0.0, 0.0)


def test_continuous_values_are_summed_per_unit_with_exact_sufficient_statistics() -> None:
    rng = np.random.default_rng(3)
    state = new_state()
    per_unit: dict[int, list[float]] = {0: [], 1: []}
    covariates: dict[int, list[float]] = {0: [], 1: []}
    for u in range(200):
        unit, variant = Unit.new(2), u % 2
        x = float(rng.normal(5, 1))
        state.apply_exposure(unit, variant, x)
        values = rng.exponential(10, size=u % 4)  # 0 to 3 purchases
        for j, value in enumerate(values):
            state.apply_conversion(unit, 1, float(value), event_id_hash(f"{u}-{j}"), 10)
        if len(values):  # a re-sent event (same id) changes nothing
            state.apply_conversion(unit, 1, float(values[0]), event_id_hash(f"{u}-0"), 10)
        per_unit[variant].append(float(values.sum()))
        covariates[variant].append(x)
    for variant in (0, 1):
        want = VariantStats.from_values(per_unit[variant], covariate=covariates[variant])
        got = state.stats(1)[variant]
        assert got.n == want.n
        np.testing.assert_allclose(
            [got.sum, got.sum_squares, got.sum_x, got.sum_x2, got.sum_xy],
            [want.sum, want.sum_squares, want.sum_x, want.sum_x2, want.sum_xy],
            rtol=1e-12,
        )
    assert state.counters["units_with_covariate"] == 200


def test_conversions_before_the_exposure_are_held_then_applied() -> None:
    state, unit = new_state(), Unit.new(2)
    assert state.apply_conversion(unit, 0, 1.0, event_id_hash("c"), 10) == HELD
    assert state.apply_conversion(unit, 1, 12.5, event_id_hash("r"), 10) == HELD
    assert state.apply_conversion(unit, 1, 12.5, event_id_hash("r"), 10) == DUPLICATE
    assert state.counters["held_units"] == 1 and state.units() == [0, 0]
    state.apply_exposure(unit, 1, 2.0)
    assert state.counters["held_units"] == 0 and not unit.held
    assert state.stats(0)[1] == VariantStats(1, 1.0, 1.0, 2.0, 4.0, 2.0)
    assert state.stats(1)[1].sum == 12.5
    assert state.apply_conversion(unit, 1, 12.5, event_id_hash("r"), 10) == DUPLICATE


def test_holding_is_bounded_per_unit_and_per_experiment() -> None:
    state, unit = new_state(), Unit.new(2)
    for i in range(MAX_HELD_PER_UNIT):
        assert state.apply_conversion(unit, 1, 1.0, event_id_hash(f"h{i}"), 10) == HELD
    assert state.apply_conversion(unit, 1, 1.0, event_id_hash("one-more"), 10) == HOLD_LIMIT
    other = Unit.new(2)
    assert state.apply_conversion(other, 0, 1.0, event_id_hash("o"), max_held_units=1) == HOLD_LIMIT


def test_held_conversions_expire_by_event_time_with_their_source() -> None:
    state, unit = new_state(), Unit.new(2)
    src = ["p.experiments.conversions", 3, 41, None, "eyJ4IjoxfQ=="]
    state.apply_conversion(unit, 0, 1.0, event_id_hash("a"), 10, ts=1_000, source=src)
    state.apply_conversion(unit, 1, 2.0, event_id_hash("b"), 10, ts=5_000, source=src)
    assert state.expire_held(unit, before_ts=1_000) == []  # strictly older only
    expired = state.expire_held(unit, before_ts=4_000)
    assert [e[:4] for e in expired] == [[0, 1.0, event_id_hash("a"), 1_000]]
    assert expired[0][4] == src
    assert len(unit.held) == 1 and state.counters["held_units"] == 1  # still waiting
    assert state.expire_held(unit, before_ts=math.inf)[0][3] == 5_000
    assert not unit.held and state.counters["held_units"] == 0
    assert state.counters["unexposed_conversions"] == 2
    # an exposed unit holds nothing; entries kept before ts/source existed never expire
    exposed = Unit.new(2)
    state.apply_exposure(exposed, 0, None)
    assert state.expire_held(exposed, math.inf) == []
    legacy = Unit(held=[[0, 1.0, 7]], values=[None, None])
    assert state.expire_held(legacy, math.inf) == [] and legacy.held == [[0, 1.0, 7]]


def test_the_held_index_returns_due_units_once_in_time_order() -> None:
    index = HeldIndex()
    for ts, unit in ((300, "u3"), (100, "u1"), (200, "u2"), (150, "u1"), (900, "u9")):
        index.add("e", ts, unit)
    index.add("other", 50, "x")
    assert index.due("e", before_ts=300) == ["u1", "u2"]  # u1 once, though listed twice
    assert index.due("e", before_ts=300) == []
    assert index.due("e", before_ts=1_000) == ["u3", "u9"] and "e" not in index.heaps
    index.drop("other")
    assert index.due("other", math.inf) == []


def test_the_unit_retention_starts_when_the_experiment_first_ends() -> None:
    state = new_state()
    state.mark_ended(1_000)
    assert state.ended_ms is None and not state.purge_due(10**12, 0)  # running
    state.apply_definition(DEFINITION, "stopped")
    state.mark_ended(2_000)
    state.mark_ended(9_000)  # later writes keep the first time
    assert state.ended_ms == 2_000
    assert not state.purge_due(2_000 + 59_999, 60_000)
    assert state.purge_due(2_000 + 60_000, 60_000)
    state.purged = True
    assert not state.purge_due(10**12, 60_000)
    again = ExperimentState.unpack(state.pack())
    assert (again.ended_ms, again.purged) == (2_000, True)


def test_state_and_unit_round_trip_through_bytes() -> None:
    state, unit = new_state(), Unit.new(2)
    state.apply_exposure(unit, 0, 1.5)
    state.apply_conversion(unit, 1, 3.0, event_id_hash("x"), 10)
    state.offsets = [4, 7, -1]
    again = ExperimentState.unpack(state.pack())
    assert again.pack() == state.pack()
    assert again.stats(1) == state.stats(1)
    blob = unit.pack(mark=[0, 0], committed=None)
    assert Unit.unpack(blob, applied=[0, 0], n_metrics=2) == unit


def test_unit_written_by_a_batch_whose_aggregate_was_lost_reads_as_before() -> None:
    """Crash between the unit records and the aggregate: the replay must count again."""
    state = new_state()
    committed = Unit.new(2)
    state.apply_exposure(committed, 0, None)
    state.offsets = [10, 20, -1]  # the aggregate committed after these offsets
    before = committed.copy()
    state.apply_conversion(committed, 0, 1.0, event_id_hash("lost"), 10)
    blob = committed.pack(mark=[10, 25], committed=before)  # its aggregate never landed
    recovered = Unit.unpack(blob, applied=[10, 20], n_metrics=2)
    assert recovered == before and recovered.values[0] is None
    # A replay that commits an aggregate short of the mark keeps the record uncommitted
    # (a batch counter would have been reused here and made it look committed).
    assert Unit.unpack(blob, applied=[12, 24], n_metrics=2) == before
    # ... once the aggregate covers the batch's offsets, the new value holds.
    assert Unit.unpack(blob, applied=[10, 25], n_metrics=2) == committed
    # A unit first created by the lost batch does not exist.
    assert Unit.unpack(Unit.new(2).pack(mark=[11, 20], committed=None), [10, 20], 2) is None


def test_periods_merge_into_pooled_statistics() -> None:
    state = new_state()
    for u in range(10):
        state.apply_exposure(Unit.new(2), u % 2, None)
    state.start_period(1000, [0.2, 0.8])
    for u in range(10):
        unit = Unit.new(2)
        state.apply_exposure(unit, 1, None)
        state.apply_conversion(unit, 0, 1.0, event_id_hash(f"p{u}"), 10)
    assert [s.n for s in state.stats(0, [0])] == [5, 5]
    assert [s.n for s in state.stats(0, [1])] == [0, 10]
    assert state.stats(0) == [
        a + b for a, b in zip(state.stats(0, [0]), state.stats(0, [1]), strict=True)
    ]
    assert state.weights == [0.2, 0.8]


def test_definition_announcements_only_move_the_status_forward() -> None:
    state = ExperimentState.new(DEFINITION, "draft")
    assert state.apply_definition(DEFINITION, "running") is None and state.status == "running"
    assert state.apply_definition(DEFINITION, "draft") is None and state.status == "running"
    assert state.apply_definition(DEFINITION, "stopped") is None and state.status == "stopped"
    assert state.apply_definition(DEFINITION, "running") is None and state.status == "stopped"
    changed = {
        **DEFINITION,
        "variants": [{"name": "control", "weight": 1}, {"name": "b", "weight": 1}],
    }
    message = state.apply_definition(changed, "stopped")
    assert message is not None and "cannot change after creation" in message


def test_a_ramp_announcement_updates_the_traffic_of_a_newer_revision_only() -> None:
    state = new_state()
    state.revision = 2
    state.apply_exposure(Unit.new(2), 0, None)
    ramped = {**DEFINITION, "traffic_fraction": 0.4}
    assert state.apply_definition(ramped, "running", 3) is None
    assert state.defn.traffic == 0.4 and state.revision == 3
    late = {**DEFINITION, "traffic_fraction": 0.9}  # revision 2, read after revision 3
    assert state.apply_definition(late, "running", 2) is None
    assert state.defn.traffic == 0.4 and state.revision == 3
    # the statistics and the allocation period are untouched by a ramp
    assert state.units() == [1, 0] and len(state.periods) == 1
    assert ExperimentState.unpack(state.pack()).revision == 3


@pytest.mark.parametrize("event_id", ["e-1", "x" * 128])
def test_event_id_hash_is_stable_and_63_bit(event_id: str) -> None:
    h = event_id_hash(event_id)
    assert h == event_id_hash(event_id) and 0 <= h < 2**63


def test_doctests_of_the_experiment_modules() -> None:
    """``make test`` runs doctests of agents/learning only; these modules have their own."""
    import doctest

    import agents.experiments.ids
    import agents.experiments.state
    import agents.experiments.store

    for module in (agents.experiments.ids, agents.experiments.state, agents.experiments.store):
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__

"""Traffic ramps: sticky assignment through ``experiments_store.assignment`` (what the CLI
and HTTP ``assign`` serve), minimal movement, and the refusals of ``check_traffic``.

The PostgreSQL side of ``ramp`` (revision, change record, announcement) is exercised by
tests/integration/test_experiments_pipeline.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.experiments.store import (
    DefinitionError,
    Experiment,
    assignment,
    check_traffic,
    validate_definition,
)

UNITS = [f"user-{i}" for i in range(20_000)]
BASE: dict[str, Any] = {
    "experiment_id": "ramp-1",
    "variants": [{"name": "control", "weight": 2}, {"name": "a"}, {"name": "b"}],
    "control": "control",
    "primary_metric": {"name": "conversion", "type": "binary"},
    "mde": 0.02,
}


def at(traffic: float, weights: dict[str, float] | None = None) -> Experiment:
    d = validate_definition({**copy.deepcopy(BASE), "traffic_fraction": traffic})
    now = datetime.now(UTC)
    return Experiment(d["experiment_id"], d, "running", 1, weights, None, now, None, None, now)


def variants(e: Experiment) -> dict[str, str | None]:
    return {u: assignment(e, u)["variant"] for u in UNITS}


def in_experiment(v: dict[str, str | None]) -> set[str]:
    return {u for u, x in v.items() if x is not None}


def test_ramping_up_keeps_every_assigned_unit_in_its_variant() -> None:
    before, after = variants(at(0.2)), variants(at(0.5))
    kept = in_experiment(before)
    assert kept <= in_experiment(after)
    assert all(after[u] == before[u] for u in kept)  # no unit changed variant
    added = len(in_experiment(after)) - len(kept)
    assert added / len(UNITS) == pytest.approx(0.3, abs=0.015)  # exactly the new traffic


def test_ramping_down_then_up_moves_only_the_units_it_must() -> None:
    high, low = variants(at(0.5)), variants(at(0.1))
    # down: the units that stay are a subset and keep their variant; the others leave.
    assert in_experiment(low) <= in_experiment(high)
    assert all(low[u] == high[u] for u in in_experiment(low))
    left = len(in_experiment(high)) - len(in_experiment(low))
    # 40 % of the traffic has to leave; no unit moves between variants, so nothing more
    # than that moves (the minimum of any scheme).
    assert left / len(UNITS) == pytest.approx(0.4, abs=0.015)
    # up again: the same units come back to the same variants, as if never ramped down.
    assert variants(at(0.5)) == high


def test_variant_split_follows_the_weights_at_every_traffic_level() -> None:
    for traffic in (0.1, 0.5, 1.0):
        v = [x for x in variants(at(traffic)).values() if x is not None]
        share = v.count("control") / len(v)
        assert share == pytest.approx(0.5, abs=4 * (0.25 / len(v)) ** 0.5), traffic


def test_ramping_keeps_a_rollback_or_reallocation() -> None:
    rolled = {"control": 0.5, "a": 0.5, "b": 0.0}
    before, after = variants(at(0.3, rolled)), variants(at(0.9, rolled))
    assert {x for x in after.values() if x is not None} == {"control", "a"}
    assert all(after[u] == before[u] for u in in_experiment(before))


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_invalid_traffic_is_refused_with_the_field_named(bad: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        check_traffic(bad)
    assert info.value.errors[0].startswith("traffic: ")


def test_valid_traffic_is_accepted() -> None:
    assert check_traffic(1) == 1.0 and check_traffic(0.05) == 0.05

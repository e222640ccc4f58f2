"""Experiment definitions: defaults, refusals with clear messages, lifecycle, assignment."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.experiments.store import (
    TRANSITIONS,
    DefinitionError,
    Experiment,
    assignment,
    definition_event,
    validate_definition,
)
from agents.learning.assignment import assign
from schemas.registry import get_schema

MINIMAL: dict[str, Any] = {
    "experiment_id": "exp-1",
    "variants": [{"name": "control"}, {"name": "treatment"}],
    "control": "control",
    "primary_metric": {"name": "conversion", "type": "binary"},
    "mde": 0.02,
}


def errors_of(definition: Any) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        validate_definition(definition)
    return info.value.errors


def with_(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(MINIMAL)
    d.update(changes)
    return d


def test_minimal_definition_gets_defaults_and_a_valid_event() -> None:
    d = validate_definition(MINIMAL)
    assert d["status"] == "draft"
    assert d["name"] == "exp-1"
    assert [v["weight"] for v in d["variants"]] == [1.0, 1.0]
    assert (d["alpha"], d["power"], d["traffic_fraction"]) == (0.05, 0.8, 1.0)
    assert (d["monitoring"], d["allocation_mode"], d["guardrails"]) == ("sequential", "fixed", [])
    event = definition_event(d, "running", 3)
    get_schema("experiments.definitions").validate(event)
    assert event["event_id"] == "def:exp-1:3" and event["status"] == "running"


def test_example_definitions_are_accepted_and_event_fields_ignored() -> None:
    from importlib import resources

    import orjson

    folder = resources.files("schemas").joinpath("examples/experiments.definitions/valid")
    for entry in folder.iterdir():
        event = orjson.loads(entry.read_bytes())
        event["status"] = "draft"
        d = validate_definition(event)
        assert "event_id" not in d and d["experiment_id"] == event["experiment_id"]


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (
            with_(variants=[{"name": "a"}, {"name": "a"}], control="a"),
            "variants[1].name: 'a' is used by more than one variant",
        ),
        (with_(control="nope"), "control: 'nope' is not one of the variants"),
        (
            with_(variants=[{"name": "control"}, {"name": "b", "weight": 0}]),
            "variants[1].weight: 0 must be a number > 0",
        ),
        (
            with_(variants=[{"name": "control"}, {"name": "b", "weight": -2.5}]),
            "variants[1].weight: -2.5 must be a number > 0",
        ),
        (with_(variants=[{"name": "control"}]), "variants: an experiment has 2 to 10 variants"),
        (
            with_(variants=[{"name": f"v{i}"} for i in range(11)], control="v0"),
            "variants: an experiment has 2 to 10 variants, not 11",
        ),
        (with_(mde=1.5), "mde: 1.5 is not below 1"),
        (with_(status="stopped"), "status: a new experiment is 'draft' or 'running'"),
        (with_(allocation_floor=0.6), "allocation_floor: 0.6 is above 1/2"),
        (with_(colour="red"), "colour: unknown field"),
        (with_(experiment_id="has space"), "experiment_id: 'has space' must be 1-128 characters"),
        (
            with_(
                guardrails=[
                    {"name": "conversion", "type": "binary", "direction": "decrease_is_bad"}
                ]
            ),
            "guardrails[0].name: 'conversion' is already the primary metric",
        ),
        (with_(alpha=0.7), "alpha: must be smaller than 0.5"),
        (with_(monitoring="whenever"), "monitoring: must be one of"),
        (with_(primary_metric={"name": "m", "type": "ordinal"}), "primary_metric.type: must be"),
    ],
)
def test_invalid_definitions_are_refused_with_a_clear_message(
    definition: dict[str, Any], expected: str
) -> None:
    errors = errors_of(definition)
    assert any(expected in e for e in errors), errors


def test_every_missing_required_field_is_reported_at_once() -> None:
    errors = errors_of({"name": "x"})
    for name in ("experiment_id", "variants", "control", "primary_metric", "mde"):
        assert f"{name}: required" in errors
    assert errors_of([1, 2]) == ["a definition is a JSON object, not list"]


def test_several_problems_are_reported_together() -> None:
    errors = errors_of(
        with_(variants=[{"name": "a"}, {"name": "a", "weight": -1}], control="z", mde=3)
    )
    assert len(errors) >= 4, errors


def test_lifecycle_moves_forward_only() -> None:
    assert TRANSITIONS["draft"] == {"running", "stopped"}
    assert TRANSITIONS["running"] == {"stopped", "concluded"}
    assert not TRANSITIONS["stopped"] and not TRANSITIONS["concluded"]


def experiment(status: str = "running", current: dict[str, float] | None = None, **changes: Any):
    d = validate_definition(with_(**changes))
    now = datetime.now(UTC)
    return Experiment(d["experiment_id"], d, status, 1, current, None, now, None, None, now)


def test_assignment_follows_the_published_recipe() -> None:
    e = experiment(traffic_fraction=0.8)
    for unit in (f"u{i}" for i in range(200)):
        want = assign("exp-1", unit, ["control", "treatment"], [1.0, 1.0], 0.8)
        assert assignment(e, unit)["variant"] == want


def test_assignment_respects_status_targeting_and_rollback() -> None:
    assert assignment(experiment("draft"), "u1")["variant"] is None
    assert "not running" in assignment(experiment("stopped"), "u1")["reason"]
    targeted = experiment(targeting={"devices": ["mobile"], "segments": ["new"]})
    assert assignment(targeted, "u1", {"device": "desktop", "segment": "new"})["variant"] is None
    assert assignment(targeted, "u1", {"device": "mobile"})["variant"] is None
    assert assignment(targeted, "u1", {"device": "mobile", "segment": "new"})["variant"]
    rolled_back = experiment(current={"control": 1.0, "treatment": 0.0})
    assert {assignment(rolled_back, f"u{i}")["variant"] for i in range(100)} == {"control"}

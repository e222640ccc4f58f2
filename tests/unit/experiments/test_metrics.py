"""The experiments agent's Prometheus metrics, driven through the agent's own code paths.

``loopwise_experiment_exposures_total`` counts units exposed for the first time (not
re-exposures); ``loopwise_experiments_active`` counts running experiments on the partitions
this worker owns, updated whenever an aggregate is written.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from agents.experiments import agent
from agents.experiments.state import ExperimentState
from streams.boundary import Valid
from streams.metrics import REGISTRY


def definition(experiment_id: str) -> dict[str, Any]:
    return {
        "experiment_id": experiment_id,
        "name": experiment_id,
        "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}],
        "control": "control",
        "traffic_fraction": 1.0,
        "primary_metric": {"name": "conversion", "type": "binary"},
        "guardrails": [],
        "alpha": 0.05,
        "power": 0.8,
        "mde": 0.02,
        "monitoring": "sequential",
        "allocation_mode": "fixed",
    }


def exposure(experiment_id: str, offset: int, unit: str, variant: str) -> Valid:
    message = SimpleNamespace(
        topic=agent.settings.topic("experiments.exposures"),
        partition=0,
        offset=offset,
        key=experiment_id.encode(),
        value=b"{}",
        timestamp=1.0,
    )
    payload = {
        "event_id": f"x{offset}",
        "schema_version": 1,
        "ts": 1_700_000_000_000 + offset,
        "experiment_id": experiment_id,
        "unit_id": unit,
        "variant": variant,
    }
    return Valid(payload, SimpleNamespace(message=message))  # type: ignore[arg-type]


def exposures(experiment_id: str, variant: str) -> float:
    labels = {"experiment": experiment_id, "variant": variant}
    return REGISTRY.get_sample_value("loopwise_experiment_exposures_total", labels) or 0.0


def test_first_exposures_are_counted_per_variant_and_reexposures_are_not() -> None:
    exp = f"m-{uuid.uuid4().hex[:8]}"
    state = ExperimentState.new(definition(exp), "running")
    state.partition = 0
    events = [
        exposure(exp, 1, "u1", "treatment"),
        exposure(exp, 2, "u1", "treatment"),  # the same unit again
        exposure(exp, 3, "u2", "control"),
        exposure(exp, 4, "u3", "treatment"),
        exposure(exp, 5, "u2", "treatment"),  # a crossover keeps the first variant
    ]
    changed = asyncio.run(agent._apply_events(exp, state, events, {}))
    assert changed
    assert exposures(exp, "treatment") == 2
    assert exposures(exp, "control") == 1


def test_active_gauge_counts_running_experiments_on_owned_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent, "_running", {})
    monkeypatch.setattr(agent, "_owned", lambda partition: partition == 0)

    def active() -> float:
        return REGISTRY.get_sample_value("loopwise_experiments_active") or 0.0

    mine = ExperimentState.new(definition("mine"), "running")
    other = ExperimentState.new(definition("elsewhere"), "running")
    draft = ExperimentState.new(definition("draft"), "draft")
    agent._pack(mine, 0)
    agent._pack(other, 1)  # a partition another worker owns
    agent._pack(draft, 0)
    assert active() == 1

    mine.status = "stopped"
    agent._pack(mine, 0)
    assert active() == 0

"""One look of an experiment: the result's wiring to agents.learning, and the decisions.

The statistics themselves are proved against scipy/statsmodels in tests/unit/learning; here
the result must carry them for the right arms, and decisions must follow their rules once.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from agents.experiments.results import Policy, evaluate
from agents.experiments.state import ExperimentState, Unit, event_id_hash
from agents.learning.abstats import VariantStats, analyze, srm_test
from agents.learning.sequential import msprt_update
from schemas.registry import get_schema

T0 = 1_700_000_000_000
RESULTS = get_schema("experiments.results")
ACTIONS = get_schema("actions")
POLICY = Policy(min_sample=100, min_runtime_s=0, realloc_interval_s=60)

BASE: dict[str, Any] = {
    "experiment_id": "exp-r",
    "name": "exp-r",
    "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}],
    "control": "control",
    "traffic_fraction": 1.0,
    "primary_metric": {"name": "conversion", "type": "binary"},
    "guardrails": [{"name": "latency_ms", "type": "continuous", "direction": "increase_is_bad"}],
    "alpha": 0.05,
    "power": 0.8,
    "mde": 0.03,
    "monitoring": "sequential",
    "allocation_mode": "fixed",
    "min_sample_size": 100,
    "min_runtime_seconds": 0,
}


def definition(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def feed(
    state: ExperimentState,
    rates: list[float],
    n_per_arm: int,
    seed: int,
    latency: list[float] | None = None,
    split: list[float] | None = None,
    start: int = 0,
) -> None:
    """Expose units round-robin (or by ``split``) and convert them at ``rates``."""
    rng = np.random.default_rng(seed)
    k = len(rates)
    total = n_per_arm * k
    for u in range(start, start + total):
        arm = u % k if split is None else int(rng.choice(k, p=split))
        unit = Unit.new(len(state.defn.metrics))
        state.apply_exposure(unit, arm, None)
        state.observe_ts(T0 + u * 1000, exposure=True)
        if rng.random() < rates[arm]:
            state.apply_conversion(unit, 0, 1.0, event_id_hash(f"c{u}"), 10_000)
        if latency is not None:
            value = float(rng.normal(latency[arm], 20.0))
            state.apply_conversion(unit, 1, value, event_id_hash(f"l{u}"), 10_000)


def look(state: ExperimentState, policy: Policy = POLICY):
    ev = evaluate(state, T0, policy)
    RESULTS.validate(ev.result)
    for action in ev.actions:
        ACTIONS.validate(action)
    return ev


def primary(result: dict[str, Any], variant: str = "treatment") -> dict[str, Any]:
    return next(
        c
        for c in result["comparisons"]
        if c["variant"] == variant and c["metric"] == result["primary_metric"]
    )


def test_result_carries_the_learning_statistics_for_the_right_arms() -> None:
    state = ExperimentState.new(definition(), "running")
    feed(state, [0.10, 0.10], 300, seed=1, latency=[100, 100])
    ev = look(state)
    r = ev.result
    assert r["event_id"] == "res:exp-r:1" and r["version"] == 1
    counts = {v["name"]: (v["n"], v["conversions"]) for v in r["variants"]}
    stats = state.stats(0)
    assert counts == {"control": (300, int(stats[0].sum)), "treatment": (300, int(stats[1].sum))}
    want = analyze(
        {"control": stats[0], "treatment": stats[1]},
        "control",
        metric_type="binary",
        mde=0.03,
        relative_mde=False,
    )
    c = primary(r)
    assert c["p_value"] == want.comparisons["treatment"].p_value
    assert c["ci"] == [
        want.comparisons["treatment"].difference_ci_lower,
        want.comparisons["treatment"].difference_ci_upper,
    ]
    assert c["chance_to_beat_control"] == want.comparisons["treatment"].chance_to_beat_control
    assert r["power"]["required_sample_size"] == math.ceil(want.required_sample_size)
    assert r["srm"]["p_value"] == srm_test([300, 300], [1, 1]).p_value
    guard = next(x for x in r["comparisons"] if x["metric"] == "latency_ms")
    assert guard["test"] == "welch" and guard["guardrail_violated"] is False
    assert look(state).result["version"] == 2


def test_sequential_test_stops_once_with_a_deterministic_action() -> None:
    state = ExperimentState.new(definition(), "running")
    feed(state, [0.10, 0.16], 1500, seed=2)
    ev = look(state)
    stops = [a for a in ev.actions if a["kind"] == "stop_experiment"]
    assert len(stops) == 1 and stops[0]["action_id"] == "stop:exp-r"
    assert stops[0]["parameters"]["winner"] == "treatment"
    assert state.status == "concluded" and ev.result["status"] == "concluded"
    assert primary(ev.result)["sequential_decision"] == "reject_null"
    assert "stop:exp-r" in state.actions
    feed(state, [0.10, 0.16], 200, seed=3, start=10_000)
    assert look(state).actions == []  # concluded: no second stop


def test_no_stop_before_the_minimum_sample_or_run_time() -> None:
    few = ExperimentState.new(definition(min_sample_size=5000), "running")
    feed(few, [0.10, 0.16], 1500, seed=2)
    assert look(few).actions == [] and few.status == "running"
    short = ExperimentState.new(definition(min_runtime_seconds=7 * 86400), "running")
    feed(short, [0.10, 0.16], 1500, seed=2)
    assert look(short).actions == []
    defaults = ExperimentState.new(
        {k: v for k, v in definition().items() if not k.startswith("min_")}, "running"
    )
    feed(defaults, [0.10, 0.16], 1500, seed=2)  # 3000 s < default 3600 s
    assert look(defaults, Policy(min_runtime_s=3600)).actions == []


def test_aa_experiment_read_after_every_batch_does_not_stop() -> None:
    state = ExperimentState.new(definition(), "running")
    for batch in range(20):
        feed(state, [0.10, 0.10], 100, seed=100 + batch, start=batch * 1000)
        ev = look(state)
        assert not ev.actions, ev.actions
    assert state.status == "running"
    assert state.sequential["conversion|treatment"]["looks"] == 20


def test_guardrail_harm_rolls_the_variant_back_once() -> None:
    state = ExperimentState.new(
        definition(variants=[{"name": "control", "weight": 1}, {"name": "a", "weight": 1},
                             {"name": "b", "weight": 1}]),
        "running",
    )  # fmt: skip
    feed(state, [0.1, 0.1, 0.1], 600, seed=4, latency=[100.0, 100.0, 115.0])
    ev = look(state)
    kinds = [(a["kind"], a["action_id"]) for a in ev.actions]
    assert kinds == [("rollback_variant", "rollback:exp-r:b")]
    assert ev.actions[0]["parameters"]["weights"] == [0.5, 0.5, 0.0]
    assert state.rolled_back == ["b"] and state.weights == [1.0, 1.0, 0.0]
    assert len(state.periods) == 2 and state.status == "running"
    assert ev.decisions[0].weights == {"control": 0.5, "a": 0.5, "b": 0.0}
    feed(state, [0.1, 0.1, 0.1], 100, seed=5, latency=[100.0, 100.0, 115.0], start=10_000)
    assert [a["kind"] for a in look(state).actions] == []


def test_rolling_back_every_treatment_ends_the_experiment() -> None:
    state = ExperimentState.new(definition(), "running")
    feed(state, [0.1, 0.1], 600, seed=6, latency=[100.0, 120.0])
    kinds = [a["kind"] for a in look(state).actions]
    assert kinds == ["rollback_variant", "stop_experiment"]
    assert state.status == "concluded"


def test_srm_red_blocks_the_stop_and_asks_for_investigation_once() -> None:
    state = ExperimentState.new(definition(), "running")
    feed(state, [0.10, 0.16], 1500, seed=7, split=[0.56, 0.44])
    ev = look(state)
    assert ev.result["srm"]["tier"] == "red"
    assert [a["kind"] for a in ev.actions] == ["investigate"]
    assert state.status == "running"
    assert look(state).actions == []


def test_no_decisions_unless_running() -> None:
    for status in ("draft", "stopped", "concluded"):
        state = ExperimentState.new(definition(), status)
        feed(state, [0.10, 0.20], 1500, seed=2)
        ev = look(state)
        assert ev.actions == [] and ev.result["status"] == status


def test_fixed_horizon_stops_at_the_required_sample_size() -> None:
    state = ExperimentState.new(definition(monitoring="fixed_horizon", mde=0.05), "running")
    feed(state, [0.10, 0.16], 400, seed=8)
    ev = look(state)
    required = ev.result["power"]["required_sample_size"]
    assert required > 400 and ev.actions == []
    feed(state, [0.10, 0.16], required, seed=9, start=10_000)
    ev = look(state)
    assert [a["kind"] for a in ev.actions] == ["stop_experiment"]
    assert ev.actions[0]["parameters"]["decision"] in ("significant", "not_significant")


def test_bandit_reallocates_after_each_period_with_floor_and_burn_in() -> None:
    d = definition(
        variants=[{"name": "control", "weight": 1}, {"name": "a", "weight": 1},
                  {"name": "b", "weight": 1}],
        allocation_mode="bandit", allocation_floor=0.1, burn_in=50, guardrails=[],
        monitoring="fixed_horizon", mde=0.001,
    )  # fmt: skip
    state = ExperimentState.new(d, "running")
    feed(state, [0.05, 0.05, 0.15], 30, seed=10)  # 90 s, below the burn-in
    assert look(state).actions == []
    feed(state, [0.05, 0.05, 0.15], 400, seed=11, start=1000)
    ev = look(state)
    assert [a["kind"] for a in ev.actions] == ["reallocate_traffic"]
    weights = ev.actions[0]["parameters"]["weights"]
    assert min(weights) >= 0.1 - 1e-9 and abs(sum(weights) - 1) < 1e-9
    assert weights[2] == max(weights)
    assert ev.actions[0]["action_id"] == "realloc:exp-r:1"
    assert len(state.periods) == 2 and state.weights == weights
    # the same state decides the same weights (seeded by experiment and period)
    again = ExperimentState.new(d, "running")
    feed(again, [0.05, 0.05, 0.15], 30, seed=10)
    look(again)
    feed(again, [0.05, 0.05, 0.15], 400, seed=11, start=1000)
    assert look(again).actions[0]["parameters"]["weights"] == weights
    # a second period, exposed with the new weights: period-weighted estimates appear
    feed(state, [0.05, 0.05, 0.15], 400, seed=12, split=weights, start=5000)
    ev = look(state)
    assert ev.result["srm"]["tier"] == "ok"
    assert "pw_difference" in primary(ev.result, "b")
    assert [a["action_id"] for a in ev.actions] == ["realloc:exp-r:2"]
    assert [k for k in state.actions if k.startswith("realloc")] == ["realloc:exp-r:2"]


def test_cuped_is_used_when_covariates_are_present() -> None:
    d = definition(primary_metric={"name": "revenue", "type": "continuous"}, guardrails=[],
                   cuped=True, mde=1.0)  # fmt: skip
    state = ExperimentState.new(d, "running")
    rng = np.random.default_rng(13)
    for u in range(1000):
        unit, x = Unit.new(1), float(rng.normal(50, 10))
        state.apply_exposure(unit, u % 2, x)
        state.apply_conversion(unit, 0, x + float(rng.normal(0, 2)), event_id_hash(f"r{u}"), 10)
    c = primary(look(state).result)
    assert c["test"] == "welch_cuped" and c["variance_reduction"] > 0.9
    stats = state.stats(0)
    arms = dict(zip(["control", "treatment"], stats, strict=True))
    want = analyze(arms, "control", None, "continuous", mde=1.0, relative_mde=False, cuped=True)
    assert c["p_value"] == want.comparisons["treatment"].p_value


def test_cuped_also_adjusts_the_always_valid_test() -> None:
    d = definition(primary_metric={"name": "revenue", "type": "continuous"}, guardrails=[],
                   cuped=True, mde=1.0, min_sample_size=10**6)  # fmt: skip
    with_cuped = ExperimentState.new(d, "running")
    without = ExperimentState.new({**d, "cuped": False}, "running")
    rng = np.random.default_rng(14)
    for u in range(600):
        x = float(rng.normal(50, 10))
        y = x + 0.8 * (u % 2) + float(rng.normal(0, 4))
        for state in (with_cuped, without):
            unit = Unit.new(1)
            state.apply_exposure(unit, u % 2, x)
            state.apply_conversion(unit, 0, y, event_id_hash(f"r{u}"), 10)
    adjusted, plain = primary(look(with_cuped).result), primary(look(without).result)
    control, treatment = with_cuped.stats(0)
    want = msprt_update(control, treatment, "continuous", cuped=True)
    assert adjusted["sequential_cuped"] is True and "sequential_cuped" not in plain
    assert adjusted["sequential_p_value"] == want.p_value
    assert adjusted["sequential_ci_lower"] == want.ci_lower
    assert adjusted["sequential_ci_upper"] == want.ci_upper
    # the covariate explains most of the variance: a narrower sequence, a smaller p-value
    width = adjusted["sequential_ci_upper"] - adjusted["sequential_ci_lower"]
    assert width < 0.5 * (plain["sequential_ci_upper"] - plain["sequential_ci_lower"])
    assert adjusted["sequential_p_value"] < plain["sequential_p_value"]


def test_empty_experiment_has_a_valid_result() -> None:
    state = ExperimentState.new(definition(), "running")
    r = look(state).result
    assert r["total_units"] == 0 and primary(r)["p_value"] is None
    assert r["srm"]["tier"] == "ok"
    assert isinstance(VariantStats.zero(), VariantStats)

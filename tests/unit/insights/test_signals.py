"""Insights from the other agents' outputs (agents.insights.signals), on scripted records and
on real experiment results: what each rule finds, its evidence, one insight per finding
however often it is reported, resolution, and the actions the optimizer picks from them."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from agents.experiments.results import Policy, evaluate
from agents.experiments.state import ExperimentState, Unit, event_id_hash
from agents.insights.optimizer import STRATEGIES, InsightRow, action_event, candidates, choose
from agents.insights.signals import SignalConfig, SignalState, apply_signal, latest_refreshes
from schemas.registry import get_schema

NOW = 1_767_225_600_000
CFG = SignalConfig(scoring_stuck_s=3600, scoring_min_sample=50, scoring_min_confidence=0.7)
INSIGHTS = get_schema("insights")
ACTIONS = get_schema("actions")


def run(state: SignalState, event: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Apply a record after validating it, and validate every event it emits."""
    get_schema(state.source).validate(event)
    outputs = apply_signal(state, event, NOW, CFG)
    for out in outputs or []:
        if out.get("emit"):
            INSIGHTS.validate(out["event"])
    return outputs


def emitted(outputs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [o["insight"] for o in outputs or [] if o.get("emit")]


def resolved(outputs: list[dict[str, Any]] | None) -> list[str]:
    return [o["insight_id"] for o in outputs or [] if o["type"] == "resolve"]


# --------------------------------------------------------------------------- algorithms


def algo(name: str, a: float, b: float, prob_best: float, disabled: bool = False,
         weight: float = 0.3) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "alpha": a, "beta": b, "mean": a / (a + b), "prob_best": prob_best,
            "disabled": disabled, "weight": weight}  # fmt: skip


def weights(version: int, *algos: dict[str, Any], segment: str = "regular") -> dict[str, Any]:
    return {"event_id": f"w-{segment}-{version}", "schema_version": 1, "ts": NOW,
            "segment": segment, "algorithms": list(algos), "exploration_rate": 0.1, "seed": 1,
            "mode": "stationary", "version": version}  # fmt: skip


def test_a_disabled_algorithm_is_one_insight_until_it_is_enabled_again() -> None:
    st = SignalState("weights.algorithms", "regular")
    healthy = [algo("collab", 400, 9600, 0.7), algo("content", 380, 9620, 0.3)]
    out = run(st, weights(1, *healthy, algo("popular", 3, 1997, 0.0, disabled=True)))
    (ins,) = emitted(out)
    assert ins["kind"] == "underperformance" and ins["action_kind"] == "disable_algorithm"
    assert ins["subject"] == "bandits/segment=regular/algorithm=popular"
    assert ins["action_params"] == {"target": "recommendation-orchestrator", "segment": "regular",
                                    "algorithm": "popular", "permanent": True}  # fmt: skip
    ev = ins["evidence"]
    assert ev["best_algorithm"] == "collab" and ev["mean"] == pytest.approx(0.0015)
    assert ev["relative_change"] == pytest.approx(0.0015 / 0.04 - 1, abs=1e-6)
    assert ev["prob_below_disable_ctr"] > 0.99  # Beta(3, 1997) is far below 0.5 %
    assert ins["confidence"] == 1.0 and ins["priority"] == "medium"
    # Published again and again (new versions, drifting numbers): no new event.
    for v in range(2, 6):
        out = run(st, weights(v, *healthy, algo("popular", 3 + v, 1997 + 50 * v, 0.0, True)))
        assert emitted(out) == [] and resolved(out) == []
        assert [o["revision"] for o in out or []] == [1]  # its numbers refreshed
    # An offset replay or the same record produced twice changes nothing.
    assert run(st, weights(5, *healthy, algo("popular", 3, 1997, 0.0, True))) is None
    out = run(st, weights(6, *healthy, algo("popular", 40, 1960, 0.0)))
    assert resolved(out) == [ins["insight_id"]] and emitted(out) == []
    assert st.active == {}


def test_a_dominant_algorithm_is_an_opportunity_with_hysteresis() -> None:
    st = SignalState("weights.algorithms", "power")
    seg = {"segment": "power"}
    out = run(st, weights(1, algo("a", 500, 9500, 0.94), algo("b", 420, 9580, 0.06), **seg))
    assert emitted(out) == []
    out = run(st, weights(2, algo("a", 600, 9400, 0.97, weight=0.9),
                          algo("b", 420, 9580, 0.03), **seg))  # fmt: skip
    (ins,) = emitted(out)
    assert ins["kind"] == "opportunity" and ins["action_kind"] == "reallocate_traffic"
    assert ins["confidence"] == pytest.approx(0.97) and ins["priority"] == "low"
    assert ins["action_params"]["direction"] == "increase"
    assert ins["evidence"]["runner_up"] == "b"
    assert ins["evidence"]["relative_change"] == pytest.approx(0.06 / 0.042 - 1, abs=1e-6)
    # 0.92 is below the threshold but within the hysteresis: still the same insight.
    out = run(st, weights(3, algo("a", 600, 9400, 0.92), algo("b", 420, 9580, 0.08), **seg))
    assert emitted(out) == [] and resolved(out) == []
    out = run(st, weights(4, algo("a", 600, 9400, 0.89), algo("b", 420, 9580, 0.11), **seg))
    assert resolved(out) == [ins["insight_id"]]


def test_one_enabled_algorithm_is_not_dominant() -> None:
    st = SignalState("weights.algorithms", "new")
    out = run(st, weights(1, algo("a", 600, 9400, 1.0), algo("b", 2, 1998, 0.0, disabled=True),
                          segment="new"))  # fmt: skip
    assert [i["direction"] for i in emitted(out)] == ["disabled"]


# --------------------------------------------------------------------------- experiments

DEFINITION: dict[str, Any] = {
    "experiment_id": "exp-s",
    "name": "exp-s",
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
POLICY = Policy(min_sample=100, min_runtime_s=0)


def experiment(**changes: Any) -> ExperimentState:
    d = copy.deepcopy(DEFINITION)
    d.update(changes)
    return ExperimentState.new(d, "running")


def feed(state: ExperimentState, rates: list[float], n_per_arm: int, seed: int,
         latency: list[float], start: int = 0) -> None:  # fmt: skip
    """Expose units round-robin, convert them at ``rates``, record their latency."""
    rng = np.random.default_rng(seed)
    k = len(rates)
    for u in range(start, start + n_per_arm * k):
        arm = u % k
        unit = Unit.new(len(state.defn.metrics))
        state.apply_exposure(unit, arm, None)
        state.observe_ts(NOW - 3_600_000 + u * 100, exposure=True)
        if rng.random() < rates[arm]:
            state.apply_conversion(unit, 0, 1.0, event_id_hash(f"c{u}"), 10_000)
        value = float(rng.normal(latency[arm], 20.0))
        state.apply_conversion(unit, 1, value, event_id_hash(f"l{u}"), 10_000)


def result(state: ExperimentState) -> dict[str, Any]:
    return evaluate(state, NOW, POLICY).result


def test_a_concluded_winner_is_one_insight_however_often_reported() -> None:
    exp = experiment()
    st = SignalState("experiments.results", "exp-s")
    feed(exp, [0.10, 0.11], 150, seed=1, latency=[100, 100])
    out = run(st, result(exp))  # running, nothing decided
    assert emitted(out) == []
    feed(exp, [0.10, 0.16], 1500, seed=2, latency=[100, 100], start=1000)
    first = result(exp)
    assert first["status"] == "concluded"
    (ins,) = emitted(run(st, first))
    assert ins["kind"] == "experiment" and ins["action_kind"] == "promote_winner"
    assert ins["priority"] == "high" and ins["subject"] == "experiments/experiment=exp-s"
    assert ins["action_params"] == {"target": "exp-s", "experiment_id": "exp-s",
                                    "variant": "treatment", "control": "control",
                                    "metric": "conversion"}  # fmt: skip
    comp = next(c for c in first["comparisons"]
                if c["variant"] == "treatment" and c["metric"] == "conversion")  # fmt: skip
    ev = ins["evidence"]
    assert ev["winner"] == "treatment" and ev["control"] == "control"
    assert ev["difference"] == pytest.approx(comp["difference"], rel=1e-5)
    assert ev["lift"] == pytest.approx(comp["lift"], rel=1e-5) == ev["relative_change"]
    assert ev["sequential_p_value"] == pytest.approx(comp["sequential_p_value_holm"], rel=1e-5)
    assert ins["confidence"] == pytest.approx(1 - comp["sequential_p_value_holm"], abs=1e-6)
    assert ev["n_variant"] == next(v["n"] for v in first["variants"] if v["name"] == "treatment")
    # Every later result (more conversions arriving) refreshes it; none is a new insight.
    for k in range(5):
        feed(exp, [0.10, 0.16], 50, seed=10 + k, latency=[100, 100], start=10_000 + 100 * k)
        out = run(st, result(exp))
        assert emitted(out) == [] and resolved(out) == []
        assert out is not None and out[0]["insight"]["evidence"]["result_version"] > 2
    assert run(st, first) is None  # the first one re-sent


def test_the_winner_is_kept_once_decided() -> None:
    st = SignalState("experiments.results", "exp-k")
    base = {"event_id": "r1", "schema_version": 1, "ts": NOW, "experiment_id": "exp-k",
            "computed_at": NOW, "status": "concluded", "primary_metric": "conversion",
            "variants": [{"name": "c", "n": 1000}, {"name": "a", "n": 1000},
                         {"name": "b", "n": 1000}],
            "srm": {"p_value": 0.5, "sequential_p": 1.0, "tier": "ok"},
            "power": {"achieved_power": 0.9, "required_sample_size": 800}}  # fmt: skip

    def comps(diff_a: float, diff_b: float) -> list[dict[str, Any]]:
        return [{"variant": v, "metric": "conversion", "difference": d, "lift": d / 0.1,
                 "sequential_decision": "reject_null", "sequential_p_value_holm": 0.01}
                for v, d in (("a", diff_a), ("b", diff_b))]  # fmt: skip

    (ins,) = emitted(run(st, {**base, "version": 1, "comparisons": comps(0.03, 0.02)}))
    assert ins["evidence"]["winner"] == "a"
    out = run(st, {**base, "version": 2, "comparisons": comps(0.02, 0.03)})
    assert emitted(out) == [] and out is not None
    assert out[0]["insight"]["evidence"]["winner"] == "a"  # decided by the conclusion


def test_a_conclusion_without_a_better_treatment_recommends_the_control() -> None:
    st = SignalState("experiments.results", "exp-n")
    res = {"event_id": "r1", "schema_version": 1, "ts": NOW, "experiment_id": "exp-n",
           "version": 1, "computed_at": NOW, "status": "concluded", "primary_metric": "ctr",
           "variants": [{"name": "c", "n": 5000}, {"name": "t", "n": 5000}],
           "comparisons": [{"variant": "t", "metric": "ctr", "difference": -0.001,
                            "chance_to_beat_control": 0.2, "significant": False,
                            "sequential_decision": "continue"}],
           "srm": {"p_value": 0.5, "sequential_p": 1.0, "tier": "ok"},
           "power": {"achieved_power": 0.8, "required_sample_size": 5000}}  # fmt: skip
    (ins,) = emitted(run(st, res))
    assert ins["direction"] == "no_winner" and ins["action_kind"] is None
    assert ins["priority"] == "low" and ins["confidence"] == pytest.approx(0.8)


def test_a_guardrail_breach_recommends_rollback_and_leaves_the_action_to_its_owner() -> None:
    three = [{"name": "control", "weight": 1}, {"name": "a", "weight": 1},
             {"name": "b", "weight": 1}]  # fmt: skip
    st = SignalState("experiments.results", "exp-s")
    # Below its minimum sample the experiments agent does not roll back by itself yet.
    waiting = experiment(variants=three, min_sample_size=5000)
    feed(waiting, [0.1, 0.1, 0.1], 600, seed=4, latency=[100.0, 100.0, 115.0])
    (ins,) = emitted(run(st, result(waiting)))
    assert waiting.rolled_back == []
    # While the experiment runs the experiments agent owns the rollback: no second action.
    assert ins["action_kind"] is None and ins["priority"] == "high"
    assert ins["recommended_action"].startswith("Roll back variant b of experiment exp-s")
    assert ins["subject"] == "experiments/experiment=exp-s/variant=b"
    assert ins["metric"] == "latency_ms" and ins["evidence"]["difference"] > 0
    assert ins["evidence"]["guardrail_direction"] == "increase_is_bad"
    assert ins["confidence"] > 0.95
    # The same traffic with the minimum reached: the agent rolls b back itself.
    acting = experiment(variants=three)
    feed(acting, [0.1, 0.1, 0.1], 600, seed=4, latency=[100.0, 100.0, 115.0])
    rolled = {**result(acting), "version": 2}
    assert acting.rolled_back == ["b"]
    (again,) = emitted(run(st, rolled))  # what is left to do
    assert again["insight_id"] == ins["insight_id"] and again["action_kind"] == "investigate"
    assert again["evidence"]["rolled_back"] is True


def concluded(version: int, guardrail_violated: bool, srm_tier: str = "ok") -> dict[str, Any]:
    """A concluded experiment whose winner t may harm a guardrail after the conclusion."""
    return {"event_id": f"r{version}", "schema_version": 1, "ts": NOW, "experiment_id": "exp-g",
            "version": version, "computed_at": NOW, "status": "concluded",
            "primary_metric": "conversion",
            "variants": [{"name": "c", "n": 4000}, {"name": "t", "n": 4000}],
            "comparisons": [
                {"variant": "t", "metric": "conversion", "role": "primary", "difference": 0.02,
                 "lift": 0.2, "sequential_decision": "reject_null",
                 "sequential_p_value_holm": 0.002},
                {"variant": "t", "metric": "latency_ms", "role": "guardrail",
                 "difference": 30.0, "lift": 0.3, "sequential_decision": "reject_null",
                 "sequential_p_value_holm": 0.001, "direction": "increase_is_bad",
                 "guardrail_violated": guardrail_violated}],
            "srm": {"p_value": 0.5 if srm_tier == "ok" else 1e-20,
                    "sequential_p": 1.0 if srm_tier == "ok" else 1e-8, "tier": srm_tier},
            "power": {"achieved_power": 0.9, "required_sample_size": 3000}}  # fmt: skip


def test_a_winner_that_harms_a_guardrail_is_rolled_back_not_promoted() -> None:
    st = SignalState("experiments.results", "exp-g")
    (promote,) = emitted(run(st, concluded(1, guardrail_violated=False)))
    assert promote["action_kind"] == "promote_winner"
    out = run(st, concluded(2, guardrail_violated=True))
    (rollback,) = emitted(out)
    assert resolved(out) == [promote["insight_id"]]
    assert rollback["action_kind"] == "rollback_variant"  # nothing else will act now
    assert rollback["action_params"]["variant"] == "t"
    assert rollback["confidence"] == pytest.approx(0.999)


def test_a_red_sample_ratio_mismatch_asks_for_investigation() -> None:
    st = SignalState("experiments.results", "exp-m")
    res = {"event_id": "r1", "schema_version": 1, "ts": NOW, "experiment_id": "exp-m",
           "version": 4, "computed_at": NOW, "status": "running", "primary_metric": "ctr",
           "variants": [{"name": "c", "n": 5600}, {"name": "t", "n": 4400}],
           "comparisons": [],
           "srm": {"p_value": 1e-30, "sequential_p": 1e-9, "tier": "red"},
           "power": {"achieved_power": None, "required_sample_size": None}}  # fmt: skip
    (ins,) = emitted(run(st, res))
    # Running: the experiments agent has asked for the investigation itself.
    assert ins["kind"] == "anomaly" and ins["action_kind"] is None
    assert ins["evidence"]["units"] == [5600, 4400] and ins["priority"] == "high"
    assert ins["confidence"] == pytest.approx(1 - 1e-9)
    ok = {**res, "version": 5, "srm": {"p_value": 0.4, "sequential_p": 1.0, "tier": "ok"}}
    assert resolved(run(st, ok)) == [ins["insight_id"]]
    # Ended: its conclusion is in doubt and nothing else says so.
    ended = SignalState("experiments.results", "exp-g")
    srm = [i for i in emitted(run(ended, concluded(1, False, srm_tier="red")))
           if i["kind"] == "anomaly"]  # fmt: skip
    assert [i["action_kind"] for i in srm] == ["investigate"]


# --------------------------------------------------------------------------- scoring


def scoring(version: int, ts: int, *, default: bool, confidence: float, n: int,
            segment: str = "balanced") -> dict[str, Any]:  # fmt: skip
    w = {"price": 0.25, "quality": 0.25, "speed": 0.25, "proximity": 0.25}
    return {"event_id": f"s-{version}", "schema_version": 1, "ts": ts, "segment": segment,
            "weights": w, "confidence": confidence, "sample_size": n, "applied": True,
            "is_default": default, "version": version}  # fmt: skip


def test_scoring_weights_stuck_on_the_defaults_ask_for_more_data() -> None:
    st = SignalState("weights.scoring", "balanced")
    h = 3_600_000
    assert emitted(run(st, scoring(1, NOW, default=True, confidence=0.1, n=5))) == []
    assert emitted(run(st, scoring(2, NOW + h // 2, default=True, confidence=0.2, n=20))) == []
    (ins,) = emitted(run(st, scoring(3, NOW + h, default=True, confidence=0.3, n=30)))
    assert ins["kind"] == "threshold_breach" and ins["action_kind"] is None
    assert ins["subject"] == "choices/segment=balanced" and ins["priority"] == "medium"
    assert ins["evidence"]["hours"] == 1.0 and ins["evidence"]["sample_size"] == 30
    assert ins["confidence"] == pytest.approx(0.7)
    assert "30 of the 50 needed" in ins["recommended_action"]
    out = run(st, scoring(4, NOW + 2 * h, default=True, confidence=0.4, n=45))
    assert emitted(out) == [] and resolved(out) == []
    out = run(st, scoring(5, NOW + 3 * h, default=False, confidence=0.8, n=60))
    assert resolved(out) == [ins["insight_id"]] and st.memory == {}
    # Enough sessions but confidence too low: a new episode, timed from its own start.
    assert emitted(run(st, scoring(6, NOW + 4 * h, default=False, confidence=0.5, n=80))) == []
    (again,) = emitted(run(st, scoring(7, NOW + 5 * h, default=False, confidence=0.5, n=90)))
    assert again["insight_id"] == ins["insight_id"]
    assert "consistent" in again["recommended_action"]


def test_a_backlog_batch_keeps_every_revision_and_only_the_last_refresh() -> None:
    st = SignalState("weights.algorithms", "regular")
    healthy = [algo("collab", 400, 9600, 0.7), algo("content", 380, 9620, 0.3)]
    outputs: list[dict[str, Any]] = []
    for v in range(1, 6):  # disabled in versions 1-3, enabled in 4, disabled again in 5
        off = algo("popular", 3 + v, 1997, 0.0, disabled=v != 4)
        outputs += apply_signal(st, weights(v, *healthy, off), NOW, CFG) or []
    kept = latest_refreshes(outputs)
    summary = [(o["type"], o.get("emit"), o["revision"]) for o in kept]
    assert summary == [("insight", True, 1), ("resolve", None, 2), ("insight", True, 3)]
    assert [(o["type"], o["revision"]) for o in outputs].count(("insight", 1)) == 3
    # The last refresh of an unchanged insight stays, with the newest numbers.
    more = outputs + (apply_signal(st, weights(6, *healthy, algo("popular", 9, 1997, 0.0, True)),
                                   NOW, CFG) or [])  # fmt: skip
    last = latest_refreshes(more)[-1]
    assert last["emit"] is False and last["insight"]["evidence"]["version"] == 6


def test_state_round_trips_through_the_table_value() -> None:
    st = SignalState("weights.scoring", "balanced", partition=3)
    run(st, scoring(1, NOW, default=True, confidence=0.1, n=5))
    st.pending = [{"type": "resolve", "insight_id": "x", "revision": 2}]
    assert SignalState.unpack(st.pack()) == st


def test_every_valid_schema_example_is_handled() -> None:
    from pathlib import Path

    import orjson

    root = Path(__file__).resolve().parents[3] / "schemas" / "examples"
    for name in ("weights.algorithms", "experiments.results", "weights.scoring"):
        for path in sorted((root / name / "valid").glob("*.json")):
            event = orjson.loads(path.read_bytes())
            assert run(SignalState(name, "k"), event) is not None, path


# --------------------------------------------------------------------------- optimizer


def rows_of(*states_and_events: tuple[SignalState, dict[str, Any]]) -> list[InsightRow]:
    rows = []
    for st, event in states_and_events:
        for out in apply_signal(st, event, NOW, CFG) or []:
            if out["type"] != "insight":
                continue
            i = out["insight"]
            rows.append(InsightRow(
                insight_id=i["insight_id"], revision=out["revision"], component=i["component"],
                kind=i["kind"], metric=i["metric"], group=i["group"], priority=i["priority"],
                confidence=i["confidence"], recommended_action=i["recommended_action"],
                action_kind=i["action_kind"], action_params=i["action_params"],
                evidence=i["evidence"],
            ))  # fmt: skip
    return rows


def situation() -> list[InsightRow]:
    exp = experiment()
    feed(exp, [0.10, 0.16], 1500, seed=2, latency=[100, 100])
    winner = result(exp)
    disabled = weights(1, algo("collab", 400, 9600, 0.6), algo("content", 390, 9610, 0.4),
                       algo("popular", 3, 1997, 0.0, disabled=True))  # fmt: skip
    stuck = scoring(1, NOW, default=True, confidence=0.1, n=5)
    return rows_of(
        (SignalState("experiments.results", "exp-s"), winner),
        (SignalState("weights.algorithms", "regular"), disabled),
        (SignalState("weights.scoring", "balanced", memory={"since": NOW - 7_200_000}), stuck),
    )


def test_the_optimizer_promotes_the_winner_and_disables_the_algorithm() -> None:
    rows = situation()
    assert [r.action_kind for r in rows] == ["promote_winner", "disable_algorithm", None]
    cands = candidates(rows)
    by_kind = {c.kind: c for c in cands}
    assert set(by_kind) == {"promote_winner", "disable_algorithm"}  # scoring: no action
    assert by_kind["promote_winner"].target == "exp-s"
    assert by_kind["disable_algorithm"].target == "recommendation-orchestrator"
    assert by_kind["disable_algorithm"].parameters == {"segment": "regular",
                                                       "algorithm": "popular",
                                                       "permanent": True}  # fmt: skip

    greedy = [c for c in choose(cands, STRATEGIES["greedy"]) if c.chosen]
    assert {c.candidate.kind for c in greedy} == {"promote_winner", "disable_algorithm"}
    balanced = {c.candidate.kind: c for c in choose(cands, STRATEGIES["balanced"])}
    assert balanced["promote_winner"].chosen
    assert balanced["disable_algorithm"].why == "risk high above medium"
    conservative = choose(cands, STRATEGIES["conservative"])
    assert not any(c.chosen for c in conservative)  # neither is low risk
    for c in greedy:
        ev = action_event(c, STRATEGIES["greedy"], NOW)
        ACTIONS.validate(ev)
        assert ev["target"] == c.candidate.target and "target" not in ev["parameters"]
    promote = action_event(balanced["promote_winner"], STRATEGIES["balanced"], NOW)
    assert promote["parameters"]["variant"] == "treatment"
    assert promote["parameters"]["expected_impact"] > 0.3  # the winner's lift, 10 % → 16 %

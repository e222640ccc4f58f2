"""Evaluation passes: window closing, health escalation and de-duplication, trend insights,
comparisons, heartbeats, and the idempotency of a repeated pass."""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.insights.evaluation import (
    EvalConfig,
    EvalState,
    WindowView,
    evaluate_component,
    is_closed,
)
from agents.insights.rules import benjamini_hochberg
from agents.insights.windows import WindowState, apply_decisions
from schemas.registry import get_schema

W = 60_000  # one-minute windows
T0 = 1_700_000_040_000 // W * W


def config(**over: Any) -> EvalConfig:
    base: dict[str, Any] = {
        "window_ms": W,
        "grace_ms": 5_000,
        "retention_ms": 7 * 24 * 3_600_000,
        "min_samples": 20,
        "trend_windows": 12,
        "trend_min_windows": 6,
        "alpha": 0.05,
        "min_change": 0.05,
        "high_change": 0.2,
        "thresholds": (("*", "success_rate", "<", 0.8, "warning"),),
        "escalate_after": 3,
    }
    base.update(over)
    return EvalConfig(**base)


def window(k: int, rates: dict[str, float], n: int = 100, component: str = "c") -> WindowView:
    """Window k with ``n`` decisions per method, successes exactly rate * n."""
    st = WindowState(component, T0 + k * W, T0 + (k + 1) * W)
    events = []
    for method, rate in rates.items():
        wins = round(rate * n)
        for i in range(n):
            events.append(
                {
                    "method": method,
                    "success": i < wins,
                    "confidence": 0.9,
                    "processing_time_ms": 100.0 + (i % 7),
                    "quality_score": 0.8,
                }
            )
    apply_decisions([st], [0] * len(events), events, 32)
    return WindowView(st.start, st.end, st.end - 1, st.end, st.stats())


def outputs(state: EvalState, kind: str) -> list[dict[str, Any]]:
    return [p for p in state.pending if p["type"] == kind]


DROP = [0.95, 0.94, 0.93, 0.92, 0.90, 0.88, 0.85, 0.82, 0.78, 0.74, 0.70, 0.66]


def test_success_rate_drop_gives_declining_trend_and_escalating_alerts() -> None:
    wins = [window(k, {"a": r, "b": r}) for k, r in enumerate(DROP)]
    now = T0 + 20 * W
    state, expired, changed = evaluate_component("c", wins, EvalState("c"), now, config())
    assert changed and not expired
    assert state.evaluated_through == wins[-1].start

    alerts = [o["event"] for o in outputs(state, "alert")]
    # Failing windows: 0.78, 0.74, 0.70, 0.66 → fire (level 0), -, escalate (level 1), -.
    assert [(a["severity"], a["escalation_level"]) for a in alerts] == [
        ("warning", 0),
        ("warning", 1),
    ]
    assert [int(a["dimensions"]["window_start"]) for a in alerts] == [wins[8].start, wins[10].start]
    for a in alerts:
        get_schema("alerts").validate(a)

    insights = {o["insight"]["metric"] + "/" + o["insight"]["group"]: o for o in
                outputs(state, "insight")}  # fmt: skip
    trend = insights["success_rate/all"]
    assert trend["insight"]["kind"] == "trend"
    assert trend["insight"]["direction"] == "declining"
    assert trend["insight"]["priority"] == "high"  # 0.95 → 0.66 is a ~30 % decline
    ev = trend["event"]
    get_schema("insights").validate(ev)
    assert ev["evidence"]["slope_per_hour"] < 0 and ev["evidence"]["p_value"] < 0.001
    assert ev["confidence"] > 0.95
    assert trend["insight"]["action_kind"] == "investigate"
    # Per-method series decline too and recommend moving traffic.
    assert insights["success_rate/method=a"]["insight"]["action_kind"] == "reallocate_traffic"
    # The escalated alert opened a health insight.
    health = [o for o in outputs(state, "insight") if o["insight"]["kind"] == "health"]
    assert len(health) == 1 and health[0]["insight"]["priority"] == "high"


def test_a_repeated_pass_emits_nothing_new() -> None:
    wins = [window(k, {"a": r}) for k, r in enumerate(DROP)]
    now = T0 + 20 * W
    state, _, _ = evaluate_component("c", wins, EvalState("c"), now, config())
    state.pending.clear()
    again = EvalState.unpack(state.pack())
    again, _, changed = evaluate_component("c", wins, again, now + 1000, config())
    assert again.pending == [] and not changed


def test_windows_evaluated_one_at_a_time_give_the_same_alerts() -> None:
    wins = [window(k, {"a": r}) for k, r in enumerate(DROP)]
    state = EvalState("c")
    alerts = []
    for k in range(len(wins)):
        now = wins[k].end + 6_000
        # Window k is closed by the wall clock once it is idle; k + 1 does not exist yet.
        state, _, _ = evaluate_component("c", wins[: k + 1], state, now, config())
        alerts += [o["event"] for o in outputs(state, "alert")]
        state.pending.clear()
    assert [a["escalation_level"] for a in alerts] == [0, 1]


def test_insights_are_deduplicated_and_resolved() -> None:
    wins = [window(k, {"a": r}) for k, r in enumerate(DROP)]
    state, _, _ = evaluate_component("c", wins, EvalState("c"), T0 + 13 * W, config())
    first = [o for o in outputs(state, "insight") if o["emit"]]
    state.pending.clear()
    # One more window continuing the decline: the same insights, not re-emitted.
    wins.append(window(12, {"a": 0.62}))
    state, _, _ = evaluate_component("c", wins, state, T0 + 14 * W, config())
    assert first and not [o for o in outputs(state, "insight") if o["emit"]]
    refreshed = outputs(state, "insight")
    assert {o["revision"] for o in refreshed} == {1}
    state.pending.clear()
    # Recovery: flat, healthy windows push the decline out of the trend span.
    for k in range(13, 26):
        wins.append(window(k, {"a": 0.95}))
    state, _, _ = evaluate_component("c", wins, state, T0 + 27 * W, config())
    resolved = outputs(state, "resolve")
    assert {r["insight_id"] for r in resolved} >= {o["insight"]["insight_id"] for o in first}
    assert all(r["revision"] == 2 for r in resolved)
    alerts = [o["event"] for o in outputs(state, "alert")]
    assert alerts[-1]["dimensions"]["status"] == "resolved"
    assert not state.active


def test_noise_alone_gives_no_insights() -> None:
    rng = np.random.default_rng(11)
    wins = [window(k, {"a": 0.9 + rng.normal(0, 0.01), "b": 0.9 + rng.normal(0, 0.01)})
            for k in range(12)]  # fmt: skip
    state, _, _ = evaluate_component("c", wins, EvalState("c"), T0 + 20 * W, config())
    assert outputs(state, "insight") == [] and outputs(state, "alert") == []


def test_underperforming_method_is_found() -> None:
    wins = [window(k, {"good": 0.92, "bad": 0.70}) for k in range(4)]
    state, _, _ = evaluate_component("c", wins, EvalState("c"), T0 + 10 * W,
                                     config(thresholds=()))  # fmt: skip
    found = [o["insight"] for o in outputs(state, "insight")]
    assert [(i["kind"], i["group"], i["action_kind"]) for i in found] == [
        ("underperformance", "method=bad", "reallocate_traffic")
    ]
    assert found[0]["action_params"]["direction"] == "decrease"
    assert found[0]["priority"] == "high"  # 22 points below the rest


def test_closing_rules() -> None:
    w = WindowView(0, 60_000, 59_000, 10_000_000, {})
    assert is_closed(w, watermark=65_000, now_ms=0, grace_ms=5_000)  # watermark passed
    assert not is_closed(w, watermark=64_000, now_ms=10_003_000, grace_ms=5_000)  # just written
    assert is_closed(w, watermark=64_000, now_ms=10_005_000, grace_ms=5_000)  # idle long enough


def test_open_windows_wait_for_the_watermark() -> None:
    wins = [window(k, {"a": 0.9}) for k in range(3)]
    # The last window was written "now": only the first two are closed (watermark).
    last = wins[-1]
    wins[-1] = WindowView(last.start, last.end, last.start + 100, T0 + 10 * W, last.stats)
    state, _, _ = evaluate_component("c", wins, EvalState("c"), T0 + 10 * W + 1, config())
    assert state.evaluated_through == wins[1].start


def test_expired_windows_are_reported_for_deletion() -> None:
    wins = [window(k, {"a": 0.9}) for k in range(3)]
    _, expired, _ = evaluate_component(
        "c", wins, EvalState("c"), T0 + 10 * W, config(retention_ms=8 * W)
    )
    assert expired == [wins[0].start]


def test_missed_heartbeats_alert_escalate_and_resolve() -> None:
    cfg = config(heartbeats={"c": 60.0}, heartbeat_grace_s=10.0, thresholds=())
    wins = [window(0, {"a": 0.9})]
    last = wins[0].last_ts
    state, _, _ = evaluate_component("c", wins, EvalState("c"), last + 30_000, cfg)
    assert outputs(state, "alert") == []
    state.pending.clear()
    state, _, _ = evaluate_component("c", wins, state, last + 75_000, cfg)  # 1 missed run
    (a1,) = [o["event"] for o in outputs(state, "alert")]
    assert (a1["metric"], a1["escalation_level"]) == ("heartbeat", 0)
    state.pending.clear()
    state, _, changed = evaluate_component("c", wins, state, last + 100_000, cfg)  # still 1
    assert outputs(state, "alert") == [] and not changed
    state, _, _ = evaluate_component("c", wins, state, last + 200_000, cfg)  # 3 missed
    (a3,) = [o["event"] for o in outputs(state, "alert")]
    assert a3["escalation_level"] == 1
    state.pending.clear()
    wins.append(window(5, {"a": 0.9}))  # the job runs again
    state, _, _ = evaluate_component("c", wins, state, wins[-1].last_ts + 1_000, cfg)
    statuses = [o["event"]["dimensions"]["status"] for o in outputs(state, "alert")]
    assert statuses == ["resolved"]
    assert outputs(state, "resolve")


def test_benjamini_hochberg_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(2).uniform(size=40) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])

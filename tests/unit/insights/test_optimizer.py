"""The optimization strategies choose the documented actions on scripted situations; goals;
the scheduler's retries, back-off and missed-run alerts."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from agents.insights.jobs import JobState, Scheduler, after_failure, after_success, job_due
from agents.insights.optimizer import (
    STRATEGIES,
    Goal,
    InsightRow,
    action_event,
    candidates,
    choose,
    goal_status,
)
from agents.learning.health import RetryPolicy
from schemas.registry import get_schema
from streams.config import Settings


def row(iid: str, component: str, kind: str, action: str, conf: float, priority: str,
        change: float, metric: str = "success_rate", **ev: Any) -> InsightRow:  # fmt: skip
    return InsightRow(
        insight_id=iid, revision=1, component=component, kind=kind, metric=metric, group="all",
        priority=priority, confidence=conf, recommended_action=f"do {action} on {component}",
        action_kind=action, action_params={"component": component, "metric": metric},
        evidence={"relative_change": change, **ev},
    )  # fmt: skip


SITUATION = [
    row("ins-api-health", "api", "health", "investigate", 1.0, "high", None,  # type: ignore[arg-type]
        escalation_level=1),
    row("ins-gen-llm", "gen", "trend", "reallocate_traffic", 0.85, "high", -0.30),
    row("ins-gen-all", "gen", "trend", "investigate", 0.50, "medium", -0.10),
    row("ins-gen-rules", "gen", "opportunity", "reallocate_traffic", 0.95, "low", 0.15),
    row("ins-rec-algo", "rec", "underperformance", "disable_algorithm", 0.99, "high", -0.50),
    row("ins-note", "gen", "trend", None, 0.99, "low", 0.2),  # type: ignore[arg-type]
]  # fmt: skip


def chosen(strategy: str, cands: Any = None, **kw: Any) -> list[str]:
    cands = candidates(SITUATION) if cands is None else cands
    return [c.candidate.insight_id for c in sorted(
        (c for c in choose(cands, STRATEGIES[strategy], **kw) if c.chosen),
        key=lambda c: int(c.why.split()[1]))]  # fmt: skip


def test_candidates_come_from_insights_with_an_action() -> None:
    cands = candidates(SITUATION)
    assert [c.insight_id for c in cands] == [r.insight_id for r in SITUATION[:-1]]
    risks = {c.insight_id: c.risk for c in cands}
    assert risks == {"ins-api-health": "low", "ins-gen-llm": "medium", "ins-gen-all": "low",
                     "ins-gen-rules": "medium", "ins-rec-algo": "high"}  # fmt: skip
    assert len({c.action_id for c in cands}) == len(cands)


def test_greedy_takes_everything_by_expected_impact() -> None:
    assert chosen("greedy") == [
        "ins-rec-algo", "ins-gen-llm", "ins-api-health", "ins-gen-all", "ins-gen-rules",
    ]  # fmt: skip


def test_balanced_needs_confidence_and_at_most_medium_risk() -> None:
    assert chosen("balanced") == ["ins-gen-llm", "ins-api-health", "ins-gen-rules"]
    verdicts = {c.candidate.insight_id: c.why for c in
                choose(candidates(SITUATION), STRATEGIES["balanced"])}  # fmt: skip
    assert verdicts["ins-gen-all"] == "confidence 0.50 below 0.70"
    assert verdicts["ins-rec-algo"] == "risk high above medium"


def test_conservative_takes_one_confident_low_risk_action() -> None:
    assert chosen("conservative") == ["ins-api-health"]


def test_limits_and_already_taken_actions() -> None:
    cands = candidates(SITUATION)
    taken = {c.action_id for c in cands if c.insight_id == "ins-rec-algo"}
    assert chosen("greedy", cands, taken=taken, max_actions=2) == ["ins-gen-llm", "ins-api-health"]
    verdicts = {c.candidate.insight_id: c.why for c in
                choose(cands, STRATEGIES["greedy"], taken=taken, max_actions=2)}  # fmt: skip
    assert verdicts["ins-rec-algo"] == "already taken"
    assert verdicts["ins-gen-all"] == "rank 3: over 2 per cycle"


def test_a_goal_behind_schedule_moves_its_actions_first() -> None:
    goal = Goal("g-gen", "gen", "success_rate", 0.95, "at_least", deadline_ms=1_000,
                created_ms=0, baseline=0.7)  # fmt: skip
    status = goal_status(goal, 0.72, now_ms=800)  # 8 % of the way at 80 % of the time
    assert status.behind and status.status == "active"
    cands = candidates(SITUATION, [(goal, status)])
    boosted = {c.insight_id for c in cands if c.goal_id == "g-gen"}
    assert boosted == {"ins-gen-llm", "ins-gen-all", "ins-gen-rules"}
    assert chosen("balanced", cands)[0] == "ins-gen-llm"
    top = next(c for c in choose(cands, STRATEGIES["balanced"])
               if c.candidate.insight_id == "ins-gen-llm")  # fmt: skip
    assert top.chosen
    ev = action_event(top, STRATEGIES["balanced"], 1_700_000_000_000)
    get_schema("actions").validate(ev)
    assert ev["parameters"]["goal_id"] == "g-gen" and "behind schedule" in ev["reason"]


def test_goal_status() -> None:
    g = Goal("g", "c", "latency_p95", 300.0, "at_most", 10_000, 0, baseline=500.0)
    assert goal_status(g, 400.0, 1_000).progress == pytest.approx(0.5)
    assert not goal_status(g, 400.0, 1_000).behind
    assert goal_status(g, 290.0, 20_000).status == "achieved"
    assert goal_status(g, 350.0, 20_000).status == "missed"
    assert goal_status(g, None, 0).progress is None


def test_every_chosen_action_is_a_valid_event() -> None:
    for name, strategy in STRATEGIES.items():
        for c in choose(candidates(SITUATION), strategy):
            if c.chosen:
                ev = action_event(c, strategy, 1_700_000_000_000)
                get_schema("actions").validate(ev)
                assert ev["strategy"] == name and ev["source"] == "insights"


# --------------------------------------------------------------------------- scheduling


def test_backoff_doubles_then_gives_up_until_the_next_period() -> None:
    policy = RetryPolicy(base_delay=10.0, factor=2.0, max_delay=25.0, max_attempts=3,
                         jitter="none")  # fmt: skip
    rng = np.random.default_rng(0)
    s, delays, now = JobState("report"), [], 0
    for _ in range(3):
        s, gave_up = after_failure(s, now, "err", policy, rng, 3_600_000)
        assert not gave_up
        delays.append(s.next_attempt_ms - now)
        now = s.next_attempt_ms
    assert delays == [10_000, 20_000, 25_000]
    s, gave_up = after_failure(s, now, "err", policy, rng, 3_600_000)
    assert gave_up and s.attempts == 0 and s.next_attempt_ms == now + 3_600_000
    assert after_success(s, now).next_attempt_ms is None


def test_job_due_and_missed_runs() -> None:
    s = JobState("r", last_success_ms=0)
    assert job_due(s, 60_000, 59_000, 5_000) == (False, 0)
    assert job_due(s, 60_000, 62_000, 5_000) == (True, 0)  # on time
    assert job_due(s, 60_000, 200_000, 5_000) == (True, 3)  # runs at 60, 120, 180 s missed


class FakeDb:
    def __init__(self) -> None:
        self.states: dict[str, JobState] = {}
        self.alerts: list[dict[str, Any]] = []

    async def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = fn.__name__
        if name == "load_job_states":
            return dict(self.states)
        if name == "save_job_state":
            self.states[args[0].job] = args[0]
            return None
        if name == "insert_alerts":
            self.alerts += args[0]
            return None
        raise AssertionError(name)


def test_scheduler_retries_a_failing_job_and_alerts_when_it_gives_up() -> None:
    settings = Settings.from_env({"LOOPWISE_JOB_RETRY_BASE_S": "10", "LOOPWISE_JOB_RETRY_MAX_S":
                                  "40", "LOOPWISE_JOB_MAX_ATTEMPTS": "2"})  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def send(ev: dict[str, Any]) -> None:
        sent.append(ev)

    sched = Scheduler(settings, send, send)
    db = FakeDb()
    sched._db = db  # type: ignore[method-assign]
    runs: list[int] = []

    async def boom(now_ms: int) -> None:
        runs.append(now_ms)
        raise RuntimeError("disk full")

    sched.jobs = [type(sched.jobs[0])("report", 3_600_000, boom)]

    async def scenario() -> None:
        t = 1_000_000
        await sched.run_due(t)  # first run fails: retry 1 after 5-10 s (equal jitter)
        first_retry = db.states["report"].next_attempt_ms
        assert 5_000 <= first_retry - t <= 10_000
        await sched.run_due(t + 1_000)  # not yet
        assert len(runs) == 1
        await sched.run_due(first_retry)  # retry 1 fails: retry 2 after 10-20 s
        second = db.states["report"].next_attempt_ms
        assert 10_000 <= second - first_retry <= 20_000
        await sched.run_due(second)  # retry 2 fails: retries exhausted → alert
        assert len(runs) == 3
        assert db.states["report"].next_attempt_ms == second + 3_600_000

    asyncio.run(scenario())
    assert [a["metric"] for a in sent] == ["job.report"]
    assert sent[0]["severity"] == "critical" and "disk full" in sent[0]["message"]
    assert db.alerts == sent
    get_schema("alerts").validate(sent[0])


def test_scheduler_alerts_a_missed_run_and_catches_up() -> None:
    settings = Settings.from_env({"LOOPWISE_INSIGHTS_HEARTBEAT_GRACE_S": "10",
                                  "LOOPWISE_OPTIMIZATION_INTERVAL_S": "5"})  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def send(ev: dict[str, Any]) -> None:
        sent.append(ev)

    sched = Scheduler(settings, send, send)
    db = FakeDb()
    sched._db = db  # type: ignore[method-assign]
    runs: list[int] = []

    async def ok(now_ms: int) -> None:
        runs.append(now_ms)

    sched.jobs = [type(sched.jobs[0])("report", 60_000, ok, False)]

    async def scenario() -> None:
        await sched.run_due(0)  # schedule starts: the first run is a period away
        assert runs == []
        await sched.run_due(61_000)  # on time
        assert runs == [61_000] and sent == []
        await sched.run_due(61_000 + 5 * 60_000)  # the leader was down for five periods
        assert len(runs) == 2

    asyncio.run(scenario())
    assert [(a["metric"], a["dimensions"]["kind"]) for a in sent] == [("job.report", "missed")]
    assert db.states["report"].missed_runs >= 4

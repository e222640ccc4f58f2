"""Optimization engine: goals with progress, candidate actions from insights, strategies (pure).

Every active insight that recommends an action kind (see
:data:`agents.insights.rules.ACTION_RISK`) is a *candidate*: its target is the ``target`` of
the insight's action parameters when it names one (the recommendation orchestrator for an
algorithm, the experiment for its winner), else the component; its parameters come from the
insight, its risk from the action kind, its expected impact from the insight's evidence (the
relative decline to recover, the gap to the rest of the component or to the best algorithm,
a winner's lift), weighted by priority (high 3, medium 2, low 1). A candidate serving an
active goal that is behind schedule on the same (component, metric) is boosted 1.5×.

A strategy filters and ranks the candidates:

============  ==============  ========  ===========  ======================================
strategy      min confidence  max risk  max actions  ranking
============  ==============  ========  ===========  ======================================
greedy        0.4             high      5            expected impact × priority (× goal)
balanced      0.7             medium    3            confidence × impact × priority (× goal)
conservative  0.9             low       1            confidence, then lower risk
============  ==============  ========  ===========  ======================================

An action already taken for the same insight revision is never chosen again (its id is a
hash of insight, revision and kind), so repeated cycles and the CLI do not duplicate it.

Goals: ``progress = (current - baseline) / (target - baseline)`` clipped to [0, 1];
*achieved* once the current value meets the target, *missed* after the deadline otherwise,
*behind* while progress is below the elapsed fraction of the time to the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.insights.rules import ACTION_RISK, stable_id

__all__ = [
    "STRATEGIES",
    "Candidate",
    "Choice",
    "Goal",
    "GoalStatus",
    "InsightRow",
    "Strategy",
    "action_event",
    "candidates",
    "choose",
    "goal_status",
]

RISK_LEVEL = {"low": 0, "medium": 1, "high": 2}
PRIORITY_WEIGHT = {"high": 3.0, "medium": 2.0, "low": 1.0}
GOAL_BOOST = 1.5


@dataclass(frozen=True)
class Strategy:
    name: str
    min_confidence: float
    max_risk: str
    max_actions: int


STRATEGIES = {
    "greedy": Strategy("greedy", 0.4, "high", 5),
    "balanced": Strategy("balanced", 0.7, "medium", 3),
    "conservative": Strategy("conservative", 0.9, "low", 1),
}


@dataclass(frozen=True)
class InsightRow:
    """An active insight as recorded in PostgreSQL."""

    insight_id: str
    revision: int
    component: str
    kind: str
    metric: str
    group: str
    priority: str
    confidence: float
    recommended_action: str
    action_kind: str | None
    action_params: Mapping[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    goal_id: str
    component: str
    metric: str
    target: float
    direction: str  # "at_least" or "at_most"
    deadline_ms: int
    created_ms: int
    baseline: float | None = None


@dataclass(frozen=True)
class GoalStatus:
    goal_id: str
    current: float | None
    baseline: float | None
    progress: float | None
    status: str  # active | achieved | missed
    behind: bool


def goal_status(goal: Goal, current: float | None, now_ms: int) -> GoalStatus:
    """Progress of a goal given the metric's current value.

    >>> g = Goal("g", "c", "success_rate", 0.9, "at_least", 1_000, 0, baseline=0.7)
    >>> s = goal_status(g, 0.8, 700)
    >>> round(s.progress, 6), s.status, s.behind
    (0.5, 'active', True)
    >>> goal_status(g, 0.91, 700).status, goal_status(g, 0.8, 1_001).status
    ('achieved', 'missed')
    """
    baseline = goal.baseline if goal.baseline is not None else current
    if current is None or not math.isfinite(current):
        return GoalStatus(goal.goal_id, None, baseline, None, "active", False)
    met = current >= goal.target if goal.direction == "at_least" else current <= goal.target
    span = goal.target - (baseline if baseline is not None else current)
    if met:
        progress = 1.0
    elif span == 0:
        progress = 0.0
    else:
        progress = min(1.0, max(0.0, (current - (baseline or 0.0)) / span))
    if met:
        status = "achieved"
    elif now_ms > goal.deadline_ms:
        status = "missed"
    else:
        status = "active"
    total = goal.deadline_ms - goal.created_ms
    elapsed = 1.0 if total <= 0 else min(1.0, max(0.0, (now_ms - goal.created_ms) / total))
    return GoalStatus(goal.goal_id, current, baseline, progress, status, progress < elapsed)


@dataclass(frozen=True)
class Candidate:
    action_id: str
    insight_id: str
    revision: int
    target: str
    kind: str
    parameters: dict[str, Any]
    recommended: str
    confidence: float
    risk: str
    priority: str
    expected_impact: float
    goal_id: str | None = None


def _impact(row: InsightRow) -> float:
    ev = row.evidence
    for key in ("relative_change", "difference"):
        value = ev.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return abs(float(value))
    if row.kind == "health":
        return 0.1 * (1 + int(ev.get("escalation_level", 0) or 0))
    return 0.05


def candidates(
    insights: Iterable[InsightRow], goals: Sequence[tuple[Goal, GoalStatus]] = ()
) -> list[Candidate]:
    """One candidate action per active insight that recommends an action kind."""
    behind = {
        (g.component, g.metric): g.goal_id for g, s in goals if s.status == "active" and s.behind
    }
    out = []
    for row in insights:
        if not row.action_kind or row.action_kind not in ACTION_RISK:
            continue
        params = dict(row.action_params)
        target = params.pop("target", None) or row.component
        out.append(
            Candidate(
                action_id=stable_id(
                    row.insight_id, str(row.revision), row.action_kind, prefix="act"
                ),
                insight_id=row.insight_id,
                revision=row.revision,
                target=str(target),
                kind=row.action_kind,
                parameters=params,
                recommended=row.recommended_action,
                confidence=row.confidence,
                risk=ACTION_RISK[row.action_kind],
                priority=row.priority,
                expected_impact=_impact(row),
                goal_id=behind.get((row.component, row.metric)),
            )
        )
    return out


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    chosen: bool
    why: str


def _score(c: Candidate, strategy: Strategy) -> tuple[float, ...]:
    boost = GOAL_BOOST if c.goal_id else 1.0
    weight = PRIORITY_WEIGHT.get(c.priority, 1.0)
    if strategy.name == "greedy":
        return (c.expected_impact * weight * boost, c.confidence)
    if strategy.name == "balanced":
        return (c.confidence * c.expected_impact * weight * boost, c.confidence)
    return (c.confidence * boost, -RISK_LEVEL[c.risk], c.expected_impact)


def choose(
    cands: Sequence[Candidate],
    strategy: Strategy,
    taken: Iterable[str] = (),
    max_actions: int | None = None,
) -> list[Choice]:
    """Filter and rank the candidates; every candidate comes back with its verdict.

    >>> c = Candidate("a1", "i1", 1, "svc", "reallocate_traffic", {}, "move", 0.8, "medium",
    ...               "high", 0.3)
    >>> [(x.chosen, x.why) for x in choose([c], STRATEGIES["conservative"])]
    [(False, 'confidence 0.80 below 0.90')]
    >>> [(x.chosen, x.why) for x in choose([c], STRATEGIES["greedy"])]
    [(True, 'rank 1 of 1 eligible')]
    """
    taken = set(taken)
    limit = max_actions if max_actions else strategy.max_actions
    eligible: list[Candidate] = []
    verdicts: dict[str, Choice] = {}
    for c in cands:
        if c.action_id in taken:
            verdicts[c.action_id] = Choice(c, False, "already taken")
        elif c.confidence < strategy.min_confidence:
            verdicts[c.action_id] = Choice(
                c, False, f"confidence {c.confidence:.2f} below {strategy.min_confidence:.2f}"
            )
        elif RISK_LEVEL[c.risk] > RISK_LEVEL[strategy.max_risk]:
            verdicts[c.action_id] = Choice(c, False, f"risk {c.risk} above {strategy.max_risk}")
        else:
            eligible.append(c)
    eligible.sort(key=lambda c: (_score(c, strategy), c.action_id), reverse=True)
    for rank, c in enumerate(eligible, start=1):
        if rank <= limit:
            verdicts[c.action_id] = Choice(c, True, f"rank {rank} of {len(eligible)} eligible")
        else:
            verdicts[c.action_id] = Choice(c, False, f"rank {rank}: over {limit} per cycle")
    return [verdicts[c.action_id] for c in cands]


def action_event(choice: Choice, strategy: Strategy, ts_ms: int) -> dict[str, Any]:
    """The ``actions`` event of a chosen candidate (event id = action id)."""
    c = choice.candidate
    params = {
        k: v
        for k, v in c.parameters.items()
        if v is None or isinstance(v, str | int | float | bool)
    }
    params["expected_impact"] = round(c.expected_impact, 6)
    if c.goal_id:
        params["goal_id"] = c.goal_id
    goal = f"; serves goal {c.goal_id} (behind schedule)" if c.goal_id else ""
    reason = (
        f"{c.recommended} [{strategy.name}: confidence {c.confidence:.2f} >= "
        f"{strategy.min_confidence:.2f}, risk {c.risk} <= {strategy.max_risk}, "
        f"priority {c.priority}, {choice.why}{goal}; insight {c.insight_id} rev {c.revision}]"
    )
    return {
        "event_id": c.action_id,
        "schema_version": 1,
        "ts": ts_ms,
        "action_id": c.action_id,
        "target": c.target,
        "kind": c.kind,
        "parameters": dict(list(params.items())[:32]),
        "reason": reason[:1024],
        "source": "insights",
        "insight_id": c.insight_id,
        "confidence": max(0.0, min(1.0, c.confidence)),
        "strategy": strategy.name,
    }

"""Scheduled jobs of the insights leader: optimization cycles, tickets, reports, clean-up.

The leader's timer calls :func:`run_due`; every job has a period and a state in PostgreSQL
(``insight_jobs``), so a new leader continues the schedule:

==========  ==================================  ================================================
job         period                              does
==========  ==================================  ================================================
optimize    ``LOOPWISE_OPTIMIZATION_INTERVAL_S`` goal progress, actions by the strategy, tickets
                                                 for high-priority insights, ticket measurement
report      ``LOOPWISE_REPORT_INTERVAL_H``       the technical report and executive summary
            (0: off; first one a period after    (Markdown, HTML with PNG plots, JSON), archived
            the schedule starts)                 with ``LOOPWISE_REPORT_RETENTION_DAYS``
cleanup     daily                                PostgreSQL rows older than the history
==========  ==================================  ================================================

A failed run is retried with capped exponential back-off and jitter
(``LOOPWISE_JOB_RETRY_BASE_S`` doubling up to ``..._MAX_S``, :mod:`agents.learning.health`);
after ``LOOPWISE_JOB_MAX_ATTEMPTS`` retries it raises a critical alert and waits for its next
period. A run found late by more than its period plus ``LOOPWISE_INSIGHTS_HEARTBEAT_GRACE_S``
(no leader, the worker was down) raises a missed-run alert and runs at once (catch-up).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg

from agents.insights.optimizer import (
    STRATEGIES,
    Choice,
    Goal,
    GoalStatus,
    Strategy,
    action_event,
    candidates,
    choose,
    goal_status,
)
from agents.insights.store import (
    cleanup,
    connect,
    current_value,
    dt_to_ms,
    insert_alerts,
    load_active_insights,
    load_goals,
    ms_to_dt,
    record_actions,
    taken_action_ids,
    update_goals,
)
from agents.insights.tickets import auto_measure, ensure_tickets
from agents.learning.health import RetryPolicy, detect_missed_runs, next_retry_delay
from streams.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "CyclePlan",
    "JobState",
    "after_failure",
    "after_success",
    "commit_cycle",
    "job_due",
    "plan_cycle",
    "run_due",
]


# --------------------------------------------------------------------------- optimization


@dataclass
class CyclePlan:
    strategy: Strategy
    choices: list[Choice]
    events: list[dict[str, Any]]
    goals: list[tuple[Goal, GoalStatus]] = field(default_factory=list)


def plan_cycle(
    conn: psycopg.Connection[Any],
    dep: str,
    strategy_name: str,
    now_ms: int,
    *,
    component: str | None = None,
    max_actions: int = 0,
) -> CyclePlan:
    """Goal progress, candidates from the active insights and the strategy's choice."""
    goals = [
        (g, goal_status(g, current_value(conn, dep, g.component, g.metric), now_ms))
        for g in load_goals(conn, dep)
        if component is None or g.component == component
    ]
    cands = candidates(load_active_insights(conn, dep, component), goals)
    taken = taken_action_ids(conn, dep, [c.action_id for c in cands])
    strategy = STRATEGIES[strategy_name]
    choices = choose(cands, strategy, taken, max_actions or None)
    events = [action_event(ch, strategy, now_ms) for ch in choices if ch.chosen]
    return CyclePlan(strategy, choices, events, goals)


def commit_cycle(conn: psycopg.Connection[Any], dep: str, plan: CyclePlan) -> None:
    """Record the emitted actions and the goals' progress."""
    by_id = {ch.candidate.action_id: ch.candidate for ch in plan.choices}
    record_actions(
        conn,
        dep,
        [(e, by_id[e["action_id"]].revision, by_id[e["action_id"]].risk) for e in plan.events],
    )
    update_goals(conn, dep, [s for _, s in plan.goals])


def format_plan(plan: CyclePlan) -> list[str]:
    lines = [f"strategy {plan.strategy.name}: {len(plan.events)} action(s)"]
    for ch in plan.choices:
        c = ch.candidate
        mark = "ACT " if ch.chosen else "skip"
        lines.append(
            f"  {mark} {c.kind:<20} {c.target:<24} conf {c.confidence:.2f} risk {c.risk:<6} "
            f"{c.insight_id}  ({ch.why})"
        )
    for g, s in plan.goals:
        progress = "n/a" if s.progress is None else f"{s.progress:.0%}"
        lines.append(
            f"  goal {g.goal_id}: {g.metric} of {g.component} {g.direction} {g.target:g}, "
            f"current {s.current}, progress {progress}, {s.status}"
            + (" (behind schedule)" if s.behind and s.status == "active" else "")
        )
    return lines


# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class JobState:
    job: str
    last_success_ms: int | None = None
    last_attempt_ms: int | None = None
    attempts: int = 0
    next_attempt_ms: int | None = None
    missed_runs: int = 0
    last_error: str | None = None


def job_due(state: JobState, interval_ms: int, now_ms: int, grace_ms: int) -> tuple[bool, int]:
    """Whether a job should run now, and how many runs it missed (0 for a retry).

    >>> job_due(JobState("r", last_success_ms=0), 100, 99, 10)
    (False, 0)
    >>> job_due(JobState("r", last_success_ms=0), 100, 350, 10)  # runs due at 100, 200, 300
    (True, 3)
    >>> job_due(JobState("r", last_success_ms=0, next_attempt_ms=500), 100, 450, 10)
    (False, 0)
    """
    if state.next_attempt_ms is not None:
        return now_ms >= state.next_attempt_ms, 0
    if state.last_success_ms is None:
        return True, 0
    due = now_ms >= state.last_success_ms + interval_ms
    r = detect_missed_runs(
        np.array([state.last_success_ms / 1000.0]), now_ms / 1000.0, interval_ms / 1000.0,
        grace_ms / 1000.0,
    )  # fmt: skip
    return due, int(r.missed_runs[0])


def after_success(state: JobState, now_ms: int) -> JobState:
    return replace(
        state, last_success_ms=now_ms, last_attempt_ms=now_ms, attempts=0,
        next_attempt_ms=None, missed_runs=0, last_error=None,
    )  # fmt: skip


def after_failure(
    state: JobState,
    now_ms: int,
    error: str,
    policy: RetryPolicy,
    rng: np.random.Generator,
    interval_ms: int,
) -> tuple[JobState, bool]:
    """The state after a failed run and whether the retries are exhausted.

    >>> p = RetryPolicy(base_delay=60, max_delay=600, max_attempts=2, jitter="none")
    >>> s, gave_up = after_failure(JobState("r"), 0, "boom", p, np.random.default_rng(0), 10**6)
    >>> s.attempts, s.next_attempt_ms, gave_up
    (1, 60000, False)
    >>> s, _ = after_failure(s, 60_000, "boom", p, np.random.default_rng(0), 10**6)
    >>> s.next_attempt_ms
    180000
    >>> s, gave_up = after_failure(s, 180_000, "boom", p, np.random.default_rng(0), 10**6)
    >>> s.attempts, s.next_attempt_ms, gave_up
    (0, 1180000, True)
    """
    delay = next_retry_delay(policy, state.attempts, rng)
    if delay is None:
        return replace(
            state, last_attempt_ms=now_ms, attempts=0, next_attempt_ms=now_ms + interval_ms,
            last_error=error[:2000],
        ), True  # fmt: skip
    return replace(
        state, last_attempt_ms=now_ms, attempts=state.attempts + 1,
        next_attempt_ms=now_ms + int(delay * 1000), last_error=error[:2000],
    ), False  # fmt: skip


def load_job_states(conn: psycopg.Connection[Any], dep: str) -> dict[str, JobState]:
    rows = conn.execute(
        "SELECT job, last_success, last_attempt, attempts, next_attempt, missed_runs,"
        " last_error FROM insight_jobs WHERE deployment = %s",
        (dep,),
    ).fetchall()
    return {
        r[0]: JobState(r[0], dt_to_ms(r[1]), dt_to_ms(r[2]), r[3], dt_to_ms(r[4]), r[5], r[6])
        for r in rows
    }


def save_job_state(conn: psycopg.Connection[Any], dep: str, s: JobState) -> None:
    def dt(ms: int | None) -> Any:
        return None if ms is None else ms_to_dt(ms)

    conn.execute(
        "INSERT INTO insight_jobs (deployment, job, last_success, last_attempt, attempts,"
        " next_attempt, missed_runs, last_error, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
        " ON CONFLICT (deployment, job) DO UPDATE SET last_success = EXCLUDED.last_success,"
        " last_attempt = EXCLUDED.last_attempt, attempts = EXCLUDED.attempts,"
        " next_attempt = EXCLUDED.next_attempt, missed_runs = EXCLUDED.missed_runs,"
        " last_error = EXCLUDED.last_error, updated_at = now()",
        (dep, s.job, dt(s.last_success_ms), dt(s.last_attempt_ms), s.attempts,
         dt(s.next_attempt_ms), s.missed_runs, s.last_error),
    )  # fmt: skip


def job_alert(job: str, kind: str, now_ms: int, value: float, threshold: float, text: str) -> dict:
    """An ``alerts`` event about one of the leader's own jobs (component ``insights``)."""
    digest = hashlib.blake2b(f"{job}|{kind}|{now_ms}".encode(), digest_size=6).hexdigest()
    return {
        "event_id": f"alert-{now_ms}-{digest}",
        "schema_version": 1,
        "ts": now_ms,
        "component": "insights",
        "metric": f"job.{job}",
        "severity": "critical" if kind == "failed" else "warning",
        "escalation_level": 0,
        "message": text[:1024],
        "value": float(value),
        "threshold": float(threshold),
        "dimensions": {"status": "firing", "job": job, "kind": kind},
    }


# --------------------------------------------------------------------------- the leader


@dataclass
class Job:
    name: str
    interval_ms: int
    run: Callable[[int], Any]  # async (now_ms) -> None
    start_with_run: bool = True


class Scheduler:
    """The leader's job runner (one per worker; only the leader's timer calls it)."""

    def __init__(self, settings: Settings, send_action: Any, send_alert: Any) -> None:
        self.settings = settings
        self.send_action = send_action
        self.send_alert = send_alert
        self.policy = RetryPolicy(
            base_delay=settings.job_retry_base_s,
            factor=2.0,
            max_delay=max(settings.job_retry_max_s, settings.job_retry_base_s),
            max_attempts=settings.job_max_attempts,
            jitter="equal",
        )
        self.rng = np.random.default_rng()
        self.jobs = [
            Job("optimize", int(settings.optimization_interval_s * 1000), self.optimize),
            Job("cleanup", 86_400_000, self.cleanup),
        ]
        if settings.report_interval_h > 0:
            self.jobs.append(
                Job("report", int(settings.report_interval_h * 3_600_000), self.report, False)
            )

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            with connect(self.settings) as conn:
                return fn(conn, self.settings.topic_prefix, *args, **kwargs)

        return await asyncio.to_thread(call)

    async def optimize(self, now_ms: int) -> None:
        s = self.settings
        plan = await self._db(
            plan_cycle, s.optimization_strategy, now_ms, max_actions=s.optimization_max_actions
        )
        for event in plan.events:  # send first: a crash before the record re-sends the id
            await self.send_action(event)
        await self._db(commit_cycle, plan)
        window_ms = int(s.insights_window_s * 1000)
        created = await self._db(ensure_tickets)
        measured = await self._db(
            auto_measure, now_ms, window_ms=window_ms, length_ms=int(s.ticket_measure_h * 3.6e6),
            value_per_conversion=s.value_per_conversion,
        )  # fmt: skip
        if plan.events or created or measured:
            log.info(
                "insights: optimization cycle (%s): %d action(s), %d ticket(s) opened,"
                " %d measured",
                plan.strategy.name, len(plan.events), len(created), len(measured),
            )  # fmt: skip

    async def cleanup(self, now_ms: int) -> None:
        counts = await self._db(cleanup, now_ms, self.settings.insights_history_days)
        log.info("insights: clean-up removed %s", counts)

    async def report(self, now_ms: int) -> None:
        from agents.insights.reports import generate_report

        days = self.settings.report_interval_h / 24.0
        paths = await asyncio.to_thread(
            generate_report, self.settings, now_ms, days=days, kind="scheduled"
        )
        log.info("insights: scheduled report written to %s", paths.get("markdown"))

    async def run_due(self, now_ms: int) -> None:
        states = await self._db(load_job_states)
        # Late by more than the grace plus two timer ticks counts as missed.
        grace_ms = int(self.settings.insights_heartbeat_grace_s * 1000) + 2 * tick_ms(self.settings)
        for job in self.jobs:
            state = states.get(job.name, JobState(job.name))
            if state.last_success_ms is None and not job.start_with_run:
                # The schedule starts now: the first scheduled run is one period away.
                await self._db(save_job_state, after_success(state, now_ms))
                continue
            due, missed = job_due(state, job.interval_ms, now_ms, grace_ms)
            if not due:
                continue
            if missed:
                alert = job_alert(
                    job.name, "missed", now_ms, missed, 0,
                    f"scheduled job {job.name} missed {missed} run(s) (last success "
                    f"{ms_to_dt(state.last_success_ms or 0):%Y-%m-%d %H:%M:%S}); running now",
                )  # fmt: skip
                await self.send_alert(alert)
                await self._db(insert_alerts, [alert])
            try:
                await job.run(now_ms)
            except Exception as exc:
                new, gave_up = after_failure(
                    state, now_ms, repr(exc), self.policy, self.rng, job.interval_ms
                )
                log.exception(
                    "insights: job %s failed (attempt %d)%s", job.name, new.attempts,
                    "; giving up until its next period" if gave_up else "",
                )  # fmt: skip
                if gave_up:
                    alert = job_alert(
                        job.name, "failed", now_ms, self.policy.max_attempts, 0,
                        f"scheduled job {job.name} failed after {self.policy.max_attempts} "
                        f"retries: {exc!r}",
                    )  # fmt: skip
                    await self.send_alert(alert)
                    await self._db(insert_alerts, [alert])
                await self._db(save_job_state, new)
                continue
            await self._db(save_job_state, replace(after_success(state, now_ms),
                                                   missed_runs=missed))  # fmt: skip


def tick_ms(settings: Settings) -> int:
    """Period of the leader's timer: the shortest job period, at most a minute."""
    return int(min(settings.optimization_interval_s, 60.0) * 1000)


_scheduler: Scheduler | None = None


async def run_due(now_ms: int) -> None:
    """Entry point of the leader timer (:mod:`agents.insights.agent`)."""
    global _scheduler
    if _scheduler is None:
        from streams.app import actions_topic, alerts_topic, settings
        from streams.codecs import encode

        async def send_action(event: dict[str, Any]) -> None:
            await actions_topic.send(key=event["target"].encode(), value=encode(event))

        async def send_alert(event: dict[str, Any]) -> None:
            await alerts_topic.send(key=event["component"].encode(), value=encode(event))

        _scheduler = Scheduler(settings, send_action, send_alert)
    try:
        await _scheduler.run_due(now_ms)
    except Exception:
        log.exception("insights: scheduled jobs could not run (PostgreSQL?); next tick retries")

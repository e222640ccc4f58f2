"""Implicit feedback through the relay under SIGKILLs: two workers, each with its relay
thread, killed at random moments while a mixed explicit/implicit stream flows. Every view
counts once and every explicit event once: nothing lost, nothing doubled, in the table,
Redis, PostgreSQL and the output topic.

The relay commits its input offsets only after the broker took its records, and the agent
drops re-relayed events by their source offset, so a kill between the two stages at any
point leaves the same state. ``LOOPWISE_FAULT_EVENTS`` / ``LOOPWISE_FAULT_KILLS`` size it as
for the crash-recovery test.
"""

from __future__ import annotations

import os
import random

import pytest

from streams.harness import Deployment
from tests.reliability.workload import (
    OPEN_WINDOWS,
    PacedProducer,
    Workload,
    assert_exact,
    item_events,
    sigkill_cycles,
)

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("LOOPWISE_FAULT_EVENTS", "3000"))
KILLS = int(os.environ.get("LOOPWISE_FAULT_KILLS", "3"))
RATE = float(os.environ.get("LOOPWISE_FAULT_RATE", "800"))
USERS = 200


def test_sigkills_during_implicit_feedback_lose_and_double_nothing(
    wide_deployment: Deployment,
) -> None:
    dep = wide_deployment
    dep.produce("items", item_events(), key_field="item_id")
    workers = [dep.start_worker(**OPEN_WINDOWS), dep.start_worker(**OPEN_WINDOWS)]
    per_user = max(1, EVENTS // USERS // 2)  # about half the events are views
    workload = Workload.generate(dep.run_id, USERS, per_user, seed=34, implicit_share=1.0)
    stream = PacedProducer(dep, workload.events, RATE)
    stream.start()

    rng = random.Random(17)
    recoveries = sigkill_cycles(dep, workers, rng, KILLS, **OPEN_WINDOWS)
    stream.join()
    assert stream.error is None, stream.error
    assert all(w.alive() for w in workers)

    views = sum(1 for e in workload.events if e["kind"] == "view")
    assert views > len(workload.events) // 3
    assert_exact(
        dep,
        workload,
        timeout_s=180,
        test=f"implicit relay: 2 workers, {dep.settings.partitions} partitions, views + explicit",
        faults=f"{KILLS} × SIGKILL",
        recovery_s=max(recoveries),
    )
    assert dep.read("deadletter") == []

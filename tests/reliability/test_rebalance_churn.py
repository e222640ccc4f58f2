"""A second worker joins and leaves every few seconds while a stream flows, so partitions
and their table state move back and forth: the final state equals the truth."""

from __future__ import annotations

import os
import time

import pytest

from streams.harness import Deployment
from tests.reliability.workload import (
    PacedProducer,
    Workload,
    assert_exact,
    group_positions,
    item_events,
    wait_committed_past,
)

# make test-reliability only: scale-out (in make test) covers one join and leave.
pytestmark = [pytest.mark.integration, pytest.mark.long]

CYCLES = int(os.environ.get("LOOPWISE_FAULT_CHURN_CYCLES", "3"))


def test_worker_joining_and_leaving_repeatedly_loses_and_doubles_nothing(
    wide_deployment: Deployment,
) -> None:
    dep = wide_deployment
    dep.produce("items", item_events(), key_field="item_id")
    steady = dep.start_worker()
    workload = Workload.generate(dep.run_id, n_users=100, per_user=40 * CYCLES, seed=23)
    stream = PacedProducer(dep, workload.events, rate=600)
    stream.start()
    for _ in range(CYCLES):
        time.sleep(2)
        joiner = dep.start_worker()
        time.sleep(3)
        joiner.stop()  # SIGTERM: a graceful leave, the group rebalances at once
    stream.join()
    assert stream.error is None, stream.error
    targets = {p: end for p, (_, end) in group_positions(dep, "feedback.explicit").items()}
    recovery = wait_committed_past(dep, "feedback.explicit", targets, timeout_s=120)
    assert steady.alive(), steady.log_tail()
    assert_exact(
        dep,
        workload,
        timeout_s=120,
        test="rebalance churn (4 partitions)",
        faults=f"{CYCLES} × worker join + leave",
        recovery_s=recovery,
    )
    assert dep.read("deadletter") == []

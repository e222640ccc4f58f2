"""Two workers, one of them SIGKILLed at random moments while a steady stream flows, and
restarted each time: the final state equals the ground truth, nothing lost or doubled.

`make test-reliability` runs it at the issue's size (100k events, at least 5 kills) through
``LOOPWISE_FAULT_EVENTS`` and ``LOOPWISE_FAULT_KILLS``. A recovery is the time from a kill
until the group has committed everything produced before it.
"""

from __future__ import annotations

import os
import random

import pytest

from streams.harness import Deployment
from tests.reliability.workload import (
    PacedProducer,
    Workload,
    assert_exact,
    item_events,
    sigkill_cycles,
)

# make test runs the mixed explicit/implicit form of this test (test_relay_recovery.py);
# this explicit-only one runs at full size in make test-reliability.
pytestmark = [pytest.mark.integration, pytest.mark.long]

EVENTS = int(os.environ.get("LOOPWISE_FAULT_EVENTS", "5000"))
KILLS = int(os.environ.get("LOOPWISE_FAULT_KILLS", "3"))
RATE = float(os.environ.get("LOOPWISE_FAULT_RATE", "800"))  # events/s, below the capacity
USERS = 200


def test_random_sigkills_of_two_workers_lose_and_double_nothing(
    wide_deployment: Deployment,
) -> None:
    dep = wide_deployment
    dep.produce("items", item_events(), key_field="item_id")
    workers = [dep.start_worker(), dep.start_worker()]
    workload = Workload.generate(dep.run_id, n_users=USERS, per_user=EVENTS // USERS, seed=21)
    stream = PacedProducer(dep, workload.events, RATE)
    stream.start()

    rng = random.Random(13)
    recoveries = sigkill_cycles(dep, workers, rng, KILLS)
    stream.join()
    assert stream.error is None, stream.error
    assert all(w.alive() for w in workers)

    assert_exact(
        dep,
        workload,
        timeout_s=180,
        test=f"crash-recovery (2 workers, {dep.settings.partitions} partitions)",
        faults=f"{KILLS} × SIGKILL",
        recovery_s=max(recoveries),
    )
    assert dep.read("deadletter") == []

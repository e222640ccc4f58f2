"""Two workers, one of them SIGKILLed at random moments while a steady stream flows, and
restarted each time: the final state equals the ground truth, nothing lost or doubled.

`make test-reliability` runs it at the issue's size (100k events, at least 5 kills) through
``LOOPWISE_FAULT_EVENTS`` and ``LOOPWISE_FAULT_KILLS``. A recovery is the time from a kill
until the group has committed everything produced before it.
"""

from __future__ import annotations

import os
import random
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
    recoveries: list[float] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(1.0, 4.0))
        victim = rng.choice(workers)
        targets = {p: end for p, (_, end) in group_positions(dep, "feedback.explicit").items()}
        killed_at = time.monotonic()
        victim.kill()
        workers.remove(victim)
        workers.append(dep.start_worker())
        wait_committed_past(dep, "feedback.explicit", targets, timeout_s=120)
        recoveries.append(time.monotonic() - killed_at)
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

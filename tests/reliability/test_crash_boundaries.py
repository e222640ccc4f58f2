"""The worker exits (like kill -9) right after each processing boundary; after a restart
the table, Redis, PostgreSQL and the output topic equal the ground truth exactly."""

from __future__ import annotations

import time

import pytest

from streams.harness import Deployment
from tests.reliability.workload import Workload, assert_exact, item_events, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "boundary",
    [
        "after_table",
        pytest.param("after_redis", marks=pytest.mark.long),
        pytest.param("after_postgres", marks=pytest.mark.long),
        "after_output",
    ],
)
def test_exit_at_boundary_then_restart_gives_exact_state(
    deployment: Deployment, boundary: str
) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    crashing = deployment.start_worker(LOOPWISE_CRASH_AT=boundary)
    workload = Workload.generate(deployment.run_id, n_users=10, per_user=20, seed=3)
    deployment.produce("feedback.explicit", workload.events)
    wait_for(lambda: not crashing.alive(), 60, f"the worker to exit at {boundary}")
    assert crashing.process.returncode == 70

    restarted_at = time.monotonic()
    deployment.start_worker()
    assert_exact(
        deployment,
        workload,
        test=f"crash at boundary: {boundary}",
        faults="exit(70) + restart",
        recovery_s=time.monotonic() - restarted_at,
    )
    assert deployment.read("deadletter") == []

"""The worker exits (like kill -9) right after each processing boundary, the implicit
relay's included; after a restart the table, Redis, PostgreSQL and the output topic equal
the ground truth exactly (explicit feedback and implicit views, see Workload.generate)."""

from __future__ import annotations

import time

import pytest

from streams.harness import Deployment
from tests.reliability.workload import (
    OPEN_WINDOWS,
    Workload,
    assert_exact,
    item_events,
    produce_workload,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "boundary",
    [
        "after_table",
        pytest.param("after_redis", marks=pytest.mark.long),
        pytest.param("after_postgres", marks=pytest.mark.long),
        pytest.param("after_output", marks=pytest.mark.long),
        "relay_after_produce",  # the implicit relay sent its records, did not commit
    ],
)
def test_exit_at_boundary_then_restart_gives_exact_state(
    deployment: Deployment, boundary: str
) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    crashing = deployment.start_worker(LOOPWISE_CRASH_AT=boundary, **OPEN_WINDOWS)
    workload = Workload.generate(
        deployment.run_id, n_users=10, per_user=20, seed=3, implicit_share=0.5
    )
    produce_workload(deployment, workload.events)
    wait_for(lambda: not crashing.alive(), 60, f"the worker to exit at {boundary}")
    assert crashing.process.returncode == 70

    restarted_at = time.monotonic()
    deployment.start_worker(**OPEN_WINDOWS)
    assert_exact(
        deployment,
        workload,
        test=f"crash at boundary: {boundary}",
        faults="exit(70) + restart",
        recovery_s=time.monotonic() - restarted_at,
    )
    assert deployment.read("deadletter") == []

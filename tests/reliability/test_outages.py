"""Redis and PostgreSQL go away for 15 s during processing: nothing is dead-lettered, the
sinks catch up, and the rows and values afterwards equal the truth."""

from __future__ import annotations

import subprocess
import time

import pytest

from streams.config import REPO_ROOT
from streams.harness import Deployment
from tests.reliability.workload import Workload, assert_exact, item_events

pytestmark = [pytest.mark.integration, pytest.mark.long]
OUTAGE_S = 15


def services(action: str, service: str) -> None:
    subprocess.run(["bash", str(REPO_ROOT / "deploy/local/services.sh"), action, service],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("service", ["redis", "postgres"])
def test_sink_outage_delays_but_loses_nothing(deployment: Deployment, service: str) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    worker = deployment.start_worker()
    workload = Workload.generate(deployment.run_id, n_users=10, per_user=30, seed=11)
    half = len(workload.events) // 2
    deployment.produce("feedback.explicit", workload.events[:half])
    time.sleep(2)
    services("down", service)
    try:
        deployment.produce("feedback.explicit", workload.events[half:])
        time.sleep(OUTAGE_S)
        assert worker.alive()
    finally:
        services("up", service)
    back_at = time.monotonic()
    assert_exact(
        deployment,
        workload,
        timeout_s=120,
        test=f"{service} outage",
        faults=f"{service} down {OUTAGE_S} s",
        recovery_s=time.monotonic() - back_at,
    )
    assert deployment.read("deadletter") == []
    assert worker.alive()

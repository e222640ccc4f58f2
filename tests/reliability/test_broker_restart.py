"""The broker goes away during processing (a clean stop, then a SIGKILL) and comes back:
the worker rides it out (no crash loop), the group's lag returns to zero and every store
equals the truth."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from streams.config import REPO_ROOT
from streams.harness import Deployment
from tests.reliability.test_outages import services
from tests.reliability.workload import (
    PacedProducer,
    Workload,
    assert_exact,
    group_positions,
    item_events,
    wait_committed_past,
)

pytestmark = [pytest.mark.integration, pytest.mark.long]
DOWN_S = 8


def kafka_pid_file() -> Path:
    run_dir = Path(os.environ.get("LOOPWISE_RUN_DIR") or REPO_ROOT / ".run")
    return run_dir / "kafka" / "kafka.pid"


@pytest.mark.parametrize("how", ["clean", "sigkill"])
def test_broker_restart_loses_and_doubles_nothing(deployment: Deployment, how: str) -> None:
    if not kafka_pid_file().exists():
        pytest.skip("the broker was not started by deploy/local (external Kafka)")
    deployment.produce("items", item_events(), key_field="item_id")
    worker = deployment.start_worker()
    workload = Workload.generate(deployment.run_id, n_users=50, per_user=60, seed=17)
    stream = PacedProducer(deployment, workload.events, rate=300)
    stream.start()
    time.sleep(3)
    if how == "clean":
        services("down", "kafka")
    else:
        os.kill(int(kafka_pid_file().read_text().strip()), signal.SIGKILL)
    stopped_at = time.monotonic()
    time.sleep(DOWN_S)
    services("up", "kafka")
    stream.join()
    assert stream.error is None, stream.error
    targets = {p: end for p, (_, end) in group_positions(deployment, "feedback.explicit").items()}
    wait_committed_past(deployment, "feedback.explicit", targets, timeout_s=180)
    recovery = time.monotonic() - stopped_at
    assert worker.alive(), worker.log_tail()
    assert_exact(
        deployment,
        workload,
        timeout_s=120,
        test=f"broker restart ({how})",
        faults=f"broker {'stop' if how == 'clean' else 'SIGKILL'} for {DOWN_S} s",
        recovery_s=recovery,
    )
    assert deployment.read("deadletter") == []
    assert worker.alive()

"""kill -9 during a stream: the final state equals the ground truth, nothing lost or doubled.

The worker is SIGKILLed at random moments while events flow and restarted each time. The
events it had applied but not committed are replayed by Kafka; the offsets and event ids
kept inside each table value make the replay a no-op, so every user's interaction count
and vector equal a single, event-by-event pass over its events.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from streams.harness import Deployment
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    expected_vector,
    item_event,
    make_stream,
    redis_value,
    wait_for,
)

# Known failure, kept in `make test-reliability` (marker `long`) until fixed: after the second
# SIGKILL the restarted worker is assigned every partition, seeks to the committed offsets and
# then fetches nothing from one of them (py-spy: event loop idle, consumer thread idle); Redis
# holds what the killed workers applied, the committed offset stays behind. Fails about 2 runs
# in 3 since the session that added the guard and three agents; single crashes
# (tests/reliability/test_crash_boundaries.py) recover.
pytestmark = [pytest.mark.integration, pytest.mark.long]


def test_sigkill_and_restart_loses_and_doubles_nothing(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker()
    users = [f"{deployment.run_id}-c{i}" for i in range(20)]
    events = make_stream(users, 150, seed=7)  # 3000 events

    def produce_slowly() -> None:
        for start in range(0, len(events), 100):
            deployment.produce("feedback.explicit", events[start : start + 100])
            time.sleep(0.1)

    producer = threading.Thread(target=produce_slowly)
    producer.start()
    rng = random.Random(5)
    kills = 0
    while producer.is_alive() or kills < 2:
        time.sleep(rng.uniform(0.8, 2.0))
        deployment.workers[-1].kill()
        kills += 1
        deployment.start_worker()
        if kills >= 4:
            break
    producer.join()

    per_user = {u: [e for e in events if e["user_id"] == u] for u in users}
    for user in users:
        wait_for(
            lambda user=user: (
                (redis_value(deployment, user) or {}).get("interactions") == len(per_user[user])
            ),
            timeout_s=90,
            what=f"{user} complete after {kills} kills",
        )
    worker = deployment.workers[-1]
    for user in users:
        want = expected_vector(per_user[user])
        cached = redis_value(deployment, user)
        assert cached is not None
        assert cached["interactions"] == len(per_user[user])  # none lost, none doubled
        np.testing.assert_allclose(cached["vector"], want, rtol=1e-4, atol=1e-5)
        status, state = worker.get_json(f"/state/preferences/{user}")
        assert status == 200
        assert state["interactions"] == len(per_user[user])
        np.testing.assert_allclose(state["vector"], want, rtol=1e-4, atol=1e-5)
    assert kills >= 2

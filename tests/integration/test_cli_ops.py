"""``loopwise state show`` and ``loopwise lag`` as subprocesses against a running worker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.harness import Deployment
from tests.integration.test_cli import loopwise
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    feedback,
    item_event,
    redis_value,
    wait_for,
)

pytestmark = pytest.mark.integration
EVENTS = 5


def test_state_show_and_lag_against_a_running_worker(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    worker = deployment.start_worker()
    user = f"{deployment.run_id}-ops"
    events = [feedback(n, user, f"item-{n % 4}", "like") for n in range(1, EVENTS + 1)]
    deployment.produce("feedback.explicit", events)
    wait_for(
        lambda: (redis_value(deployment, user) or {}).get("interactions") == EVENTS,
        what=f"{user} in Redis",
    )

    # From Redis, as any worker would serve it.
    shown = loopwise(deployment, "state", "show", user)
    assert shown.returncode == 0, shown.stderr
    doc = orjson.loads(shown.stdout)
    assert (doc["kind"], doc["key"], doc["source"]) == ("user", user, "redis")
    assert doc["interactions"] == EVENTS and doc["segment"] == "regular"  # 5: not new
    cached = redis_value(deployment, user)
    assert cached is not None
    assert doc["preferences"]["vector"] == cached["vector"]
    assert doc["version"] == cached["version"]

    # From the worker holding the user's table partition (the only worker here).
    direct = loopwise(deployment, "state", "show", user, "--worker", worker.url(""))
    assert direct.returncode == 0, direct.stderr
    doc = orjson.loads(direct.stdout)
    assert doc["source"] == "worker" and doc["state"]["interactions"] == EVENTS
    assert doc["strategy"]["segment"] == "regular" and doc["strategy"]["known_user"]

    missing = loopwise(deployment, "state", "show", f"{deployment.run_id}-nobody")
    assert missing.returncode == 1
    assert b"no preference state for user" in missing.stderr and not missing.stdout

    explicit = deployment.topic("feedback.explicit")
    last: dict[str, Any] = {}

    def caught_up() -> bool:
        result = loopwise(deployment, "lag", "--json")
        assert result.returncode == 0, result.stderr
        last.update(orjson.loads(result.stdout))
        # An empty partition is never committed; its lag is 0 all the same.
        return last["topics"].get(explicit) == 0

    wait_for(caught_up, what=f"lag 0 on {explicit}")
    assert last["group"] == deployment.settings.app_id and last["members"] == 1
    rows = [p for p in last["partitions"] if p["topic"] == explicit]
    assert sum(p["end"] for p in rows) == EVENTS  # a fresh topic: its end offsets are our events
    assert all(p["committed"] == p["end"] for p in rows if p["end"] > 0)
    assert all(p["lag"] == 0 for p in rows)

    # The implicit relay's own group, one member (the worker's relay thread) on the input.
    relay = loopwise(deployment, "lag", "--relay", "--json")
    assert relay.returncode == 0, relay.stderr
    doc = orjson.loads(relay.stdout)
    assert doc["group"] == f"{deployment.settings.app_id}.implicit-relay"
    assert doc["members"] == 1 and doc["total_lag"] == 0
    assert {p["topic"] for p in doc["partitions"]} <= {deployment.topic("feedback.implicit")}

    watched = loopwise(deployment, "lag", "--watch", "0.5", "--count", "2")
    assert watched.returncode == 0, watched.stderr
    out = watched.stdout.decode()
    assert out.count(f"consumer group {deployment.settings.app_id}") == 2
    assert " in 0." in out or " in 1." in out  # the second sample's change since the first
    assert explicit in out

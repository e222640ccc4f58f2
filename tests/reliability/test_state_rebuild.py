"""The table is only a cache of its changelog: with the worker's local state deleted, a
restarted worker's table equals a rebuild read straight from the changelog topic (and the
truth); a deployment whose changelog is empty starts and learns normally."""

from __future__ import annotations

import shutil
import time

import orjson
import pytest

from agents.preferences.guard import KEY_PREFIX as GUARD_PREFIX
from agents.preferences.state import PreferenceState
from streams.harness import Deployment
from streams.kafka_admin import read_topic
from tests.reliability.workload import Workload, assert_exact, item_events, wait_for

pytestmark = pytest.mark.integration


def rebuild_from_changelog(dep: Deployment) -> dict[str, PreferenceState]:
    """Last record per user of the preferences changelog; a tombstone removes the key. (The
    table also holds each user's spam-guard state under a prefixed key; skipped here.)"""
    table: dict[str, PreferenceState] = {}
    topic = f"{dep.settings.app_id}-preferences-changelog"
    for key, value in read_topic(dep.settings, topic, timeout_s=5.0):
        assert key is not None
        user = orjson.loads(key)  # faust writes str keys of tables as JSON strings
        if user.startswith(GUARD_PREFIX):
            continue
        if value is None:
            table.pop(user, None)
        else:
            table[user] = PreferenceState.unpack(value)
    return table


def test_deleted_local_state_is_rebuilt_from_the_changelog(deployment: Deployment) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    first = deployment.start_worker()
    workload = Workload.generate(deployment.run_id, n_users=30, per_user=20, seed=29)
    deployment.produce("feedback.explicit", workload.events)
    assert_exact(deployment, workload)
    first.stop()
    data_dir = deployment.log_dir / f"{deployment.run_id}-{first.name}-data"
    shutil.rmtree(data_dir, ignore_errors=True)

    started = time.monotonic()
    second = deployment.start_worker()
    rebuilt = rebuild_from_changelog(deployment)
    assert set(rebuilt) == set(workload.users)
    for user, state in rebuilt.items():
        status, body = second.get_json(f"/state/preferences/{user}")
        assert status == 200, user
        assert body["interactions"] == state.interactions
        assert body["version"] == state.version
        assert body["vector"] == pytest.approx(state.vector.tolist(), rel=1e-6, abs=1e-7)
    assert_exact(
        deployment,
        workload,
        test="state rebuild (local state deleted)",
        faults="data dir deleted + restart",
        recovery_s=time.monotonic() - started,
    )


def test_an_empty_changelog_starts_and_learns(deployment: Deployment) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    worker = deployment.start_worker()
    assert rebuild_from_changelog(deployment) == {}
    status, body = worker.get_json(f"/state/preferences/{deployment.run_id}-nobody")
    assert status == 404 and body["found"] is False
    workload = Workload.generate(deployment.run_id, n_users=5, per_user=4, seed=31)
    deployment.produce("feedback.explicit", workload.events)
    wait_for(lambda: len(rebuild_from_changelog(deployment)) == 5, 60, "5 changelog keys")
    assert_exact(deployment, workload, test="state rebuild (empty changelog)", faults="none")

"""The first agent end to end on real Kafka, Redis and PostgreSQL.

Valid feedback updates the table, Redis, PostgreSQL and ``weights.preferences`` with the
vector the reference EMA predicts; invalid input lands in the dead-letter topic with its
reason and coordinates while the worker keeps going; a duplicated event changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest
import redis

from agents.learning.preference import (
    KIND_INDEX,
    EmaParams,
    ema_sequential,
    learning_rates,
    signal_strength,
    window_contributions,
    window_rates,
)
from streams.config import Settings
from streams.harness import Deployment

pytestmark = pytest.mark.integration

DIM = 4
ITEMS = {f"item-{i}": np.eye(DIM)[i % DIM] * (1 + i // DIM) * 0.5 for i in range(8)}


def item_event(item_id: str, features: np.ndarray) -> dict[str, Any]:
    return {
        "event_id": f"item-{item_id}",
        "schema_version": 1,
        "ts": 1_700_000_000_000,
        "item_id": item_id,
        "features": [float(x) for x in features],
    }


def human_ts(n: int) -> int:
    """When a person's n-th action happened: 10 to 50 s apart, irregular (the guard flags
    machine-like streams)."""
    return 1_700_000_000_000 + n * 30_000 + (n * 7_919) % 20_000


def feedback(n: int, user: str, item: str, kind: str, value: float | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"{user}-e{n}",
        "schema_version": 1,
        "ts": human_ts(n),
        "user_id": user,
        "item_id": item,
        "kind": kind,
    }
    if value is not None:
        event["value"] = value
    return event


def expected_vector(events: list[dict[str, Any]]) -> np.ndarray:
    defaults = Settings.from_env({})
    params = EmaParams(defaults.base_alpha, defaults.max_alpha, defaults.type_multipliers)
    kinds = np.array([KIND_INDEX[e["kind"]] for e in events])
    values = np.array([float(e.get("value", np.nan)) for e in events])
    s = signal_strength(kinds, values, params)
    a = learning_rates(kinds, s, params)
    feats = np.stack([ITEMS[e["item_id"]] for e in events])
    return ema_sequential(np.zeros(DIM), a, s, feats)


def wait_for(check: Callable[[], bool], timeout_s: float = 45.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def redis_value(dep: Deployment, user: str) -> dict[str, Any] | None:
    client = redis.Redis.from_url(dep.settings.redis_url)
    raw = client.hget(f"{dep.settings.topic_prefix}pref:{user}", "value")
    return orjson.loads(raw) if raw else None


def make_stream(users: list[str], n_per_user: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    kinds = ["rating", "like", "dislike", "save", "share"]
    events = []
    for n in range(n_per_user):
        for user in users:
            kind = kinds[rng.integers(len(kinds))]
            value = float(rng.integers(1, 6)) if kind == "rating" else None
            events.append(feedback(n, user, f"item-{rng.integers(len(ITEMS))}", kind, value))
    return events


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker()
    return deployment


def test_valid_feedback_updates_table_redis_postgres_and_output(running: Deployment) -> None:
    users = [f"{running.run_id}-u{i}" for i in range(3)]
    events = make_stream(users, 12, seed=1)
    running.produce("feedback.explicit", events)

    per_user = {u: [e for e in events if e["user_id"] == u] for u in users}
    for user in users:
        wait_for(
            lambda user=user: (redis_value(running, user) or {}).get("interactions") == 12,
            what=f"{user} in Redis",
        )
        want = expected_vector(per_user[user])
        cached = redis_value(running, user)
        assert cached is not None
        np.testing.assert_allclose(cached["vector"], want, rtol=1e-4, atol=2e-4)

        status, state = running.workers[0].get_json(f"/state/preferences/{user}")
        assert status == 200
        np.testing.assert_allclose(state["vector"], want, rtol=1e-4, atol=2e-4)
        assert state["interactions"] == 12
        assert state["version"] == cached["version"]

    with psycopg.connect(running.settings.database_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT user_id, vector FROM user_preferences WHERE user_id = ANY(%s)", (users,)
            ).fetchall()
        )
    for user in users:
        np.testing.assert_allclose(
            rows[user], expected_vector(per_user[user]), rtol=1e-4, atol=2e-4
        )

    outputs = running.read("weights.preferences")
    latest: dict[str, dict[str, Any]] = {}
    for out in outputs:
        if out["version"] >= latest.get(out["user_id"], {"version": -1})["version"]:
            latest[out["user_id"]] = out
    for user in users:
        assert latest[user]["interactions"] == 12
        assert latest[user]["event_id"] == f"pref:{user}:{latest[user]['version']}"
        np.testing.assert_allclose(
            latest[user]["vector"], expected_vector(per_user[user]), rtol=1e-4, atol=2e-4
        )


def test_invalid_input_is_dead_lettered_and_worker_keeps_going(running: Deployment) -> None:
    user = f"{running.run_id}-bad"
    good = feedback(0, user, "item-1", "like")
    rating_out_of_range = feedback(1, user, "item-1", "rating", 9)
    missing_id = feedback(2, user, "item-1", "like")
    del missing_id["event_id"]
    unknown_kind = feedback(3, user, "item-1", "teleport")
    unknown_item = feedback(4, user, "no-such-item", "like")
    invalid = [
        b"{not json",
        orjson.dumps(rating_out_of_range),
        orjson.dumps(missing_id),
        orjson.dumps(unknown_kind),
        orjson.dumps(unknown_item),
        b'{"event_id": "x", "value": NaN}',
        b"[" + b"1," * 54_000 + b"1]",  # over the 100 kB input limit, under the topic limit
    ]
    running.produce("feedback.explicit", invalid)
    running.produce("feedback.explicit", [good])

    wait_for(
        lambda: (redis_value(running, user) or {}).get("interactions") == 1, what="valid event"
    )
    assert running.workers[0].alive()

    wait_for(lambda: len(running.read("deadletter")) >= len(invalid), what="dead letters")
    letters = running.read("deadletter")
    reasons = sorted(dl["error_kind"] for dl in letters)
    assert reasons == sorted(
        [
            "not_json",
            "schema_violation",
            "schema_violation",
            "unknown_event_kind",
            "unknown_item",
            "not_json",
            "oversize",
        ]
    )
    topic = running.topic("feedback.explicit")
    for dl in letters:
        assert dl["source"]["topic"] == topic
        assert dl["source"]["offset"] >= 0
        assert dl["error_message"]
    originals = {dl["original"] for dl in letters}
    import base64

    assert base64.b64encode(b"{not json").decode() in originals


def test_duplicated_event_changes_nothing(running: Deployment) -> None:
    user = f"{running.run_id}-dup"
    events = [feedback(n, user, f"item-{n % 8}", "rating", float(1 + n % 5)) for n in range(6)]
    running.produce("feedback.explicit", events)
    wait_for(lambda: (redis_value(running, user) or {}).get("interactions") == 6, what="first pass")
    before = redis_value(running, user)

    running.produce("feedback.explicit", [events[2], events[5]])  # same event ids, new offsets
    marker = feedback(99, user, "item-0", "like")
    running.produce("feedback.explicit", [marker])
    wait_for(lambda: (redis_value(running, user) or {}).get("interactions") == 7, what="marker")

    after = redis_value(running, user)
    assert after is not None and before is not None
    want = expected_vector([*events, marker])
    np.testing.assert_allclose(after["vector"], want, rtol=1e-4, atol=2e-4)
    assert after["version"] > before["version"]


def implicit(n: int, user: str, item: str, kind: str, value: float | None = None) -> dict[str, Any]:
    event = feedback(n, user, item, kind, value)
    event["impression_id"] = f"imp-{user}-{n}"
    if kind == "impression":
        event["algorithm"] = "collaborative"
    return event


def test_implicit_feedback_is_applied_once_per_window(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker(LOOPWISE_IMPLICIT_WINDOW_S="2")
    user = f"{deployment.run_id}-imp"
    events = [
        implicit(0, user, "item-0", "click"),
        implicit(1, user, "item-1", "dwell", 60.0),
        implicit(2, user, "item-2", "view"),
        implicit(3, user, "item-3", "impression"),
        implicit(4, user, "item-1", "conversion", 25.0),
    ]
    deployment.produce("feedback.implicit", events)

    def applied() -> bool:
        cached = redis_value(deployment, user)
        return cached is not None and cached["vector"] != [0.0] * DIM

    wait_for(applied, what="window applied")

    defaults = Settings.from_env({})
    params = EmaParams(defaults.base_alpha, defaults.max_alpha, defaults.type_multipliers)
    kinds = np.array([KIND_INDEX[e["kind"]] for e in events])
    values = np.array([float(e.get("value", np.nan)) for e in events])
    s = signal_strength(kinds, values, params)
    feats = np.stack([ITEMS[e["item_id"]] for e in events])
    sums, weights = window_contributions(np.zeros(5, dtype=np.int64), kinds, s, feats, params, 1)
    alpha = window_rates(weights, params)
    want = alpha[0] * sums[0] / weights[0]  # one EMA step from the zero vector
    cached = redis_value(deployment, user)
    assert cached is not None and cached["interactions"] == 5
    np.testing.assert_allclose(cached["vector"], want, rtol=1e-4, atol=2e-4)


def test_segment_changes_are_emitted(running: Deployment) -> None:
    user = f"{running.run_id}-seg"
    first = [feedback(n, user, "item-1", "like") for n in range(2)]
    running.produce("feedback.explicit", first)
    wait_for(lambda: (redis_value(running, user) or {}).get("interactions") == 2, what="first")
    assert (redis_value(running, user) or {})["segment"] == "new"
    running.produce("feedback.explicit", [feedback(n, user, "item-2", "save") for n in range(2, 6)])
    wait_for(lambda: (redis_value(running, user) or {}).get("interactions") == 6, what="second")
    assert (redis_value(running, user) or {})["segment"] == "regular"
    changes = [c for c in running.read("segments.changes") if c["user_id"] == user]
    assert [(c["previous_segment"], c["segment"], c["reason"]) for c in changes] == [
        (None, "new", "first_seen"),
        ("new", "regular", "interaction_count"),
    ]

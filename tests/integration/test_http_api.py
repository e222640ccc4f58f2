"""The serving API on a real worker: token, size limit, validation, Redis reads, fallbacks."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from streams.harness import Deployment
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    feedback,
    item_event,
    redis_value,
    wait_for,
)

pytestmark = pytest.mark.integration
TOKEN = "test-token-123"


def test_feedback_endpoint_and_reads(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    worker = deployment.start_worker(LOOPWISE_API_TOKEN=TOKEN, LOOPWISE_API_MAX_BODY_BYTES="4096")
    user = f"{deployment.run_id}-api"
    good = orjson.dumps(feedback(1, user, "item-2", "rating", 5.0))

    assert worker.post("/feedback", good)[0] == 401
    assert worker.post("/feedback", good, token="wrong")[0] == 401
    status, body = worker.post("/feedback", b'{"kind": "rating"}', token=TOKEN)
    assert status == 400 and body["errors"]
    assert worker.post("/feedback", b"x" * 5000, token=TOKEN)[0] == 413
    status, body = worker.post("/feedback", good, token=TOKEN)
    assert status == 202 and body["event_id"] == f"{user}-e1"
    assert body["topic"] == deployment.topic("feedback.explicit")

    wait_for(lambda: redis_value(deployment, user) is not None, what="the posted feedback")
    status, weights = worker.get_json(f"/users/{user}/weights")
    assert status == 200 and weights["interactions"] == 1 and weights["source"] == "redis"

    status, strategy = worker.get_json(f"/users/{user}/strategy")
    assert status == 200 and strategy["segment"] == "new" and strategy["known_user"]
    assert strategy["exploration_rate"] == 0.30
    assert abs(sum(a["weight"] for a in strategy["algorithms"]) - 1) < 1e-9

    assert worker.get_json("/users/nobody-at-all/weights")[0] == 404
    status, unknown = worker.get_json("/users/nobody-at-all/strategy")
    assert status == 200 and unknown["segment"] == "new" and not unknown["known_user"]

    status, scoring = worker.get_json("/segments/balanced/scoring-weights")
    assert (
        status == 200 and scoring["is_default"] and abs(sum(scoring["weights"].values()) - 1) < 1e-9
    )

    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    assert 'loopwise_events_in_total{agent="preferences"' in text
    assert "loopwise_batch_processing_seconds_bucket" in text
    status, health = worker.get_json("/health")
    assert status == 200 and health["status"] == "ok"
    relay = health["implicit_relay"]
    assert relay["enabled"] and relay["running"] and relay["last_error"] is None
    every = list(range(deployment.settings.partitions))  # the only worker: all partitions
    wait_for(
        lambda: worker.get_json("/health")[1]["implicit_relay"]["assigned"] == every,
        what="the relay's assignment",
    )
    status, ready = worker.get_json("/ready")
    assert status == 200 and ready["ready"] and ready["tables_recovered"]
    assert ready["implicit_relay"]

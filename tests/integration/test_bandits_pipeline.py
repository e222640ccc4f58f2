"""Bandits end to end: impressions and clicks with a known truth → exact posteriors.

Every impression's first click is one success, later clicks nothing, an unanswered
impression one failure once its attribution window closes; the published posteriors,
summed over segments, equal the simulated counts exactly, and the best algorithm has the
highest probability of being best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import redis

from agents.learning.segments import SEGMENTS
from schemas.registry import get_schema
from streams.harness import Deployment
from tests.integration.test_preferences_pipeline import ITEMS, implicit, item_event, wait_for

pytestmark = pytest.mark.integration

TRUE_CTR = {"collaborative": 0.30, "content": 0.10, "popular": 0.05, "trending": 0.20}


def published(dep: Deployment) -> dict[str, dict[str, Any]]:
    client = redis.Redis.from_url(dep.settings.redis_url)
    out = {}
    for segment in SEGMENTS:
        raw = client.hget(f"{dep.settings.topic_prefix}alg:{segment}", "value")
        if raw:
            out[segment] = orjson.loads(raw)
    return out


def totals(weights: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """algorithm → (successes, failures) summed over segments (posterior minus the prior)."""
    sums: dict[str, list[float]] = {a: [0.0, 0.0] for a in TRUE_CTR}
    for event in weights.values():
        for algo in event["algorithms"]:
            sums[algo["name"]][0] += algo["alpha"] - 1
            sums[algo["name"]][1] += algo["beta"] - 1
    return {a: (round(s), round(f)) for a, (s, f) in sums.items()}


def test_posteriors_equal_the_simulated_truth(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker(
        LOOPWISE_ATTRIBUTION_WINDOW_S="2",
        LOOPWISE_ATTRIBUTION_IDLE_GRACE_S="1",
        LOOPWISE_BANDIT_PUBLISH_S="1",
    )
    rng = np.random.default_rng(42)
    users = [f"{deployment.run_id}-b{i}" for i in range(12)]
    events, truth = [], {a: [0, 0] for a in TRUE_CTR}
    n = 0
    for i in range(600):
        algo = list(TRUE_CTR)[i % 4]
        user = users[rng.integers(len(users))]
        impression = implicit(n, user, f"item-{i % 8}", "impression")
        impression["algorithm"] = algo
        impression["impression_id"] = f"{deployment.run_id}-imp-{i}"
        events.append(impression)
        n += 1
        clicked = rng.random() < TRUE_CTR[algo]
        truth[algo][0 if clicked else 1] += 1
        for _ in range(1 + (i % 3 == 0) if clicked else 0):  # some impressions clicked twice
            c = implicit(n, user, f"item-{i % 8}", "click")
            c["impression_id"] = impression["impression_id"]
            events.append(c)
            n += 1
    bad = implicit(n, users[0], "item-0", "impression")
    bad["algorithm"] = "astrology"
    deployment.produce("feedback.implicit", [*events, bad])

    expected = {a: (s, f) for a, (s, f) in truth.items()}
    wait_for(lambda: totals(published(deployment)) == expected, timeout_s=60,
             what=f"posteriors {expected}")  # fmt: skip

    weights = published(deployment)
    validate = get_schema("weights.algorithms").validate
    for event in weights.values():
        validate(event)
        assert abs(sum(a["weight"] for a in event["algorithms"]) - 1) < 1e-9
    # Where the data is plentiful, the truly best algorithm is the most probably best.
    busiest = max(
        weights.values(), key=lambda e: sum(a["alpha"] + a["beta"] for a in e["algorithms"])
    )
    best = max(busiest["algorithms"], key=lambda a: a["prob_best"])
    assert best["name"] == "collaborative"

    letters = deployment.read("deadletter")
    assert [dl["error_kind"] for dl in letters] == ["unknown_arm"]
    assert "astrology" in letters[0]["error_message"]

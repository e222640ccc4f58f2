"""Bandits end to end: impressions and clicks with a known truth → exact posteriors.

Every impression's first click is one success, later clicks nothing, an unanswered
impression one failure once its attribution window closes; the published posteriors,
summed over segments, equal the simulated counts exactly, and the best algorithm has the
highest probability of being best.

Contextual mode: two groups of users whose preference vectors point different ways, each
group clicking a different algorithm; the segment bandit sees two equally good algorithms,
the per-user strategy served by ``GET /users/{id}/strategy`` gives each user its group's.

Discounted mode: a stream whose best algorithm changes halfway (in Kafka event time) ends
with the new best most probably best and the published posteriors equal to the closed-form
discounted counts; the same stream without the setting still prefers the old best.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from agents.learning.activity_segments import SEGMENTS
from schemas.registry import get_schema
from streams.harness import Deployment
from streams.kafka_admin import producer
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    feedback,
    implicit,
    item_event,
    redis_value,
    wait_for,
)

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


def produce_timed(dep: Deployment, events: list[tuple[int, dict[str, Any]]]) -> None:
    """Produce (Kafka timestamp ms, event) pairs: attribution and discounting use the
    message timestamps, so the test controls event time."""
    prod = producer(dep.settings)
    for ts, ev in events:
        prod.produce(dep.topic("feedback.implicit"), key=ev["user_id"].encode(),
                     value=orjson.dumps(ev), timestamp=ts)  # fmt: skip
    assert prod.flush(30) == 0


@pytest.mark.parametrize("half_life_s", ["60", "0"])
def test_discounted_posteriors_follow_a_change_of_the_best_algorithm(
    deployment: Deployment, half_life_s: str
) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker(
        LOOPWISE_ALGORITHMS="collaborative,content",
        LOOPWISE_BANDIT_HALF_LIFE_S=half_life_s,
        LOOPWISE_ATTRIBUTION_WINDOW_S="2",
        # windows close by event time only: the stream's timestamps are in the past
        LOOPWISE_ATTRIBUTION_IDLE_GRACE_S="100000000",
        LOOPWISE_BANDIT_PUBLISH_S="1",
        LOOPWISE_GUARD="off",
    )
    ctr = [{"collaborative": 0.4, "content": 0.1}, {"collaborative": 0.1, "content": 0.4}]
    phase_1, phase_2 = 600, 300  # impressions, one per second of event time
    t0 = int(time.time() * 1000) - 3 * 3_600_000
    rng = np.random.default_rng(7)
    users = [f"{deployment.run_id}-d{i}" for i in range(16)]
    timed, truth = [], []  # truth: (impression ms, algorithm, clicked)
    for i in range(phase_1 + phase_2):
        algo = ("collaborative", "content")[i % 2]
        user = users[i % len(users)]
        ts = t0 + i * 1_000
        imp = implicit(2 * i, user, f"item-{i % 8}", "impression")
        imp["algorithm"] = algo
        imp["impression_id"] = f"{deployment.run_id}-dimp-{i}"
        timed.append((ts, imp))
        clicked = bool(rng.random() < ctr[i >= phase_1][algo])
        truth.append((ts, algo, clicked))
        if clicked:
            c = implicit(2 * i + 1, user, f"item-{i % 8}", "click")
            c["impression_id"] = imp["impression_id"]
            timed.append((ts + 100, c))
    # One late unmatched click per user moves every partition's event time past the last
    # deadline, so every window closes by event time (and counts nothing itself).
    end = t0 + (phase_1 + phase_2) * 1_000 + 10_000
    for u, user in enumerate(users):
        tick = implicit(10_000 + u, user, "item-0", "click")
        tick["impression_id"] = f"{deployment.run_id}-tick-{u}"
        timed.append((end, tick))
    produce_timed(deployment, timed)

    h_ms = float(half_life_s) * 1000
    ref = max(t for t, _, _ in truth)
    expected = {a: [0.0, 0.0] for a in ("collaborative", "content")}
    for t, algo, clicked in truth:
        w = 2.0 ** (-(ref - t) / h_ms) if h_ms else 1.0
        expected[algo][0 if clicked else 1] += w

    def sums() -> dict[str, list[float]]:
        out = {a: [0.0, 0.0] for a in expected}
        for event in published(deployment).values():
            for algo in event["algorithms"]:
                out[algo["name"]][0] += algo["alpha"] - 1
                out[algo["name"]][1] += algo["beta"] - 1
        return out

    def settled() -> bool:
        got = sums()
        return all(
            abs(got[a][j] - expected[a][j]) <= 1e-6 * max(1.0, expected[a][j])
            for a in expected for j in (0, 1)
        )  # fmt: skip

    wait_for(settled, timeout_s=90, what=f"posteriors {expected}")
    weights = published(deployment)
    validate = get_schema("weights.algorithms").validate
    for event in weights.values():
        validate(event)
        if h_ms:
            assert event["mode"] == "discounted" and event["half_life_s"] == 60.0
            assert event["reference_ts"] == ref
        else:
            assert event["mode"] == "stationary" and "half_life_s" not in event
    busiest = max(
        weights.values(), key=lambda e: sum(a["alpha"] + a["beta"] for a in e["algorithms"])
    )
    best = {a["name"]: a["prob_best"] for a in busiest["algorithms"]}
    if h_ms:  # the new best, confidently
        assert best["content"] > 0.95, best
    else:  # 600 old events outweigh 300 new ones: still the old best
        assert best["collaborative"] > 0.95, best


def test_contextual_strategy_is_per_user(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    worker = deployment.start_worker(
        LOOPWISE_ALGORITHMS="collaborative,content",
        LOOPWISE_BANDIT_CONTEXTUAL="on",
        LOOPWISE_ATTRIBUTION_WINDOW_S="2",
        LOOPWISE_ATTRIBUTION_IDLE_GRACE_S="100000000",
        LOOPWISE_BANDIT_PUBLISH_S="1",
        LOOPWISE_GUARD="off",
    )
    # Group "a" likes items along the first feature, group "b" along the second.
    groups = {g: [f"{deployment.run_id}-{g}{i}" for i in range(8)] for g in "ab"}
    liked = {"a": ("item-0", "item-4"), "b": ("item-1", "item-5")}
    deployment.produce("feedback.explicit", [
        feedback(n, user, liked[g][n], "like") for g in "ab" for user in groups[g] for n in (0, 1)
    ])  # fmt: skip
    every_user = groups["a"] + groups["b"]
    wait_for(lambda: all((redis_value(deployment, u) or {}).get("version") for u in every_user),
             what="preference vectors")  # fmt: skip

    best = {"a": "collaborative", "b": "content"}
    rng = np.random.default_rng(5)
    t0 = int(time.time() * 1000) - 3 * 3_600_000
    timed = []
    n_impressions = 640
    for i in range(n_impressions):
        g = "ab"[i % 2]
        user = groups[g][(i // 2) % 8]
        algo = ("collaborative", "content")[(i // 2) % 2]
        ts = t0 + i * 1_000
        item = liked[g][i % 2]
        imp = implicit(100 + 2 * i, user, item, "impression")
        imp["algorithm"] = algo
        imp["impression_id"] = f"{deployment.run_id}-cimp-{i}"
        timed.append((ts, imp))
        if rng.random() < (0.5 if algo == best[g] else 0.05):
            c = implicit(101 + 2 * i, user, item, "click")
            c["impression_id"] = imp["impression_id"]
            timed.append((ts + 100, c))
    end = t0 + n_impressions * 1_000 + 10_000
    for u, user in enumerate(every_user):
        tick = implicit(10_000 + u, user, "item-0", "click")
        tick["impression_id"] = f"{deployment.run_id}-ctick-{u}"
        timed.append((end, tick))
    produce_timed(deployment, timed)

    def learned() -> int:
        return sum(
            a["linear"]["n"] for e in published(deployment).values() for a in e["algorithms"]
        )

    wait_for(lambda: learned() == n_impressions, timeout_s=90, what="linear statistics")
    for event in published(deployment).values():
        get_schema("weights.algorithms").validate(event)
        assert event["mode"] == "contextual" and event["contextual"]["dim"] == 5
    # Per-user strategy: each user's own best algorithm, confidently.
    for g in "ab":
        for user in groups[g][:3]:
            status, strategy = worker.get_json(f"/users/{user}/strategy")
            assert status == 200 and strategy["strategy"] == "contextual", strategy
            by_name = {a["name"]: a for a in strategy["algorithms"]}
            assert by_name[best[g]]["prob_best"] > 0.9, (g, strategy)
            assert by_name[best[g]]["weight"] > 0.8
            assert abs(sum(a["weight"] for a in strategy["algorithms"]) - 1) < 1e-9
    # The segment bandit cannot tell them apart: the two algorithms are about equally good
    # over all users, so neither is confidently best.
    busiest = max(
        published(deployment).values(),
        key=lambda e: sum(a["linear"]["n"] for a in e["algorithms"]),
    )
    assert max(a["prob_best"] for a in busiest["algorithms"]) < 0.95

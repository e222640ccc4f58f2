"""``make demo``: a worker learns hidden user preferences from simulated feedback, live.

A handful of users have hidden preference vectors (the ground truth). They rate, like,
dislike, click and dwell on catalog items according to how well each item matches their
taste, with noise. About 1 % of the traffic is malformed and must end in the dead-letter
topic. Every few seconds the demo reads each user's learned vector from Redis (as a
consumer service would) and prints its cosine similarity to the hidden truth.

Environment: LOOPWISE_DEMO_SECONDS (default 60), LOOPWISE_DEMO_RATE (events/s, default 60),
LOOPWISE_DEMO_USERS (default 6).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import orjson
import redis

from agents.learning.preference import cosine_similarity
from streams.config import REPO_ROOT
from streams.harness import Deployment
from streams.kafka_admin import producer
from streams.security import confluent_config, current, redis_client_kwargs

DIM = 8
N_ITEMS = 400


def _event(n: int, user: str, item: str, kind: str, value: float | None, ts: int) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"demo-{user}-{n}",
        "schema_version": 1,
        "ts": ts,
        "user_id": user,
        "item_id": item,
        "kind": kind,
    }
    if value is not None:
        ev["value"] = value
    if kind in {"click", "conversion", "impression"}:
        ev["impression_id"] = f"imp-{user}-{n}"
    return ev


def simulate_feedback(
    rng: np.random.Generator, n: int, user: str, truth: np.ndarray, items: np.ndarray, ts: int
) -> tuple[str, dict[str, Any]]:
    """One feedback event whose sign and size follow the user's hidden taste.

    ``ts`` is the user's simulated clock: the demo compresses hours of a person's activity
    into a minute, with human-like irregular gaps, which is what the guard expects of people.
    """
    j = int(rng.integers(len(items)))
    affinity = float(truth @ items[j])  # in [-1, 1]
    roll = rng.random()
    item = f"item-{j}"
    if roll < 0.55:
        rating = float(np.clip(np.rint(3 + 2.5 * affinity + rng.normal(0, 0.6)), 1, 5))
        return "feedback.explicit", _event(n, user, item, "rating", rating, ts)
    if roll < 0.8:
        kind = "like" if affinity + rng.normal(0, 0.2) > 0 else "dislike"
        return "feedback.explicit", _event(n, user, item, kind, None, ts)
    if affinity + rng.normal(0, 0.2) > 0.2:
        dwell = float(np.clip(rng.normal(60 + 100 * affinity, 10), 1, 600))
        return "feedback.implicit", _event(n, user, item, "dwell", round(dwell, 1), ts)
    return "feedback.implicit", _event(n, user, item, "view", None, ts)


MALFORMED = [
    b"{this is not json",
    b'{"event_id": "demo-bad", "schema_version": 1, "ts": 1, "user_id": "u", '
    b'"item_id": "item-1", "kind": "rating", "value": 11}',
    b'{"event_id": "demo-bad2", "schema_version": 1, "ts": 1, "user_id": "u", '
    b'"item_id": "no-such-item", "kind": "like"}',
]


def learned_vectors(client: redis.Redis, prefix: str, users: list[str]) -> np.ndarray:
    out = np.zeros((len(users), DIM))
    for i, user in enumerate(users):
        raw = client.hget(f"{prefix}pref:{user}", "value")
        if raw:
            out[i] = orjson.loads(raw)["vector"]
    return out


def main() -> int:
    seconds = float(os.environ.get("LOOPWISE_DEMO_SECONDS", "60"))
    rate = float(os.environ.get("LOOPWISE_DEMO_RATE", "60"))
    n_users = int(os.environ.get("LOOPWISE_DEMO_USERS", "6"))
    rng = np.random.default_rng(2026)

    dep = Deployment.create(
        REPO_ROOT / ".run" / "demo-logs",
        name="demo",
        LOOPWISE_ITEM_DIM=str(DIM),
        LOOPWISE_BASE_ALPHA="0.02",
    )
    print(f"demo: topics with prefix {dep.settings.topic_prefix!r}")
    dep.create_topics()

    items = rng.normal(size=(N_ITEMS, DIM))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    truth = rng.normal(size=(n_users, DIM))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    users = [f"user-{i}" for i in range(n_users)]
    dep.produce(
        "items",
        [
            {
                "event_id": f"item-{j}-v1",
                "schema_version": 1,
                "ts": int(time.time() * 1000),
                "item_id": f"item-{j}",
                "features": items[j].round(6).tolist(),
            }
            for j in range(N_ITEMS)
        ],
        key_field="item_id",
    )
    print(f"demo: {N_ITEMS} items of dimension {DIM}; {n_users} users with hidden preferences")
    print("demo: starting a worker (logs in .run/demo-logs/) ...")
    worker = dep.start_worker()
    print(f"demo: worker ready; HTTP on {worker.url('/ready')} and {worker.url('/metrics')}")

    client = redis.Redis.from_url(dep.settings.redis_url, **redis_client_kwargs(current().redis))
    prod = producer(dep.settings)
    header = "   t   events  " + " ".join(f"{u:>7}" for u in users) + "   mean  dead-letters"
    print(
        f"\ncosine similarity of each learned vector to its hidden truth "
        f"(1.0 = learned exactly), read from Redis:\n{header}"
    )
    started = time.monotonic()
    clocks = [int(time.time() * 1000) - 24 * 3_600_000] * n_users  # simulated activity time
    sent = malformed = 0
    next_report = started
    try:
        while (now := time.monotonic()) - started < seconds:
            target = int((now - started) * rate)
            while sent < target:
                u = int(rng.integers(n_users))
                clocks[u] += int(rng.exponential(20_000)) + 1_000  # 1 s + Exp(20 s) apart
                topic, event = simulate_feedback(rng, sent, users[u], truth[u], items, clocks[u])
                prod.produce(dep.topic(topic), key=users[u].encode(), value=orjson.dumps(event))
                sent += 1
                if rng.random() < 0.01:
                    prod.produce(
                        dep.topic("feedback.explicit"),
                        key=b"u",
                        value=MALFORMED[malformed % len(MALFORMED)],
                    )
                    malformed += 1
            prod.poll(0)
            if now >= next_report:
                prod.flush(5)
                _report(client, dep, users, truth, sent, now - started)
                next_report += 5
            if not worker.alive():
                print(f"demo: the worker died:\n{worker.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.02)
        prod.flush(10)
        time.sleep(2)  # let the last batches land
        final = _report(client, dep, users, truth, sent, time.monotonic() - started)
        dead = len(dep.read("deadletter"))
        print(
            f"\ndemo: {sent} valid events and {malformed} malformed ones sent; "
            f"{dead} dead letters recorded with reason and source offset "
            f"(see `loopwise dlq show`)."
        )
        print(
            f"demo: final mean cosine similarity {final:.3f} "
            f"({'learned' if final > 0.8 else 'NOT yet learned'})."
        )
        return 0 if final > 0.8 and worker.alive() else 1
    finally:
        dep.stop()
        dep.delete_topics()
        print("demo: worker stopped, demo topics deleted")


def _report(
    client: redis.Redis,
    dep: Deployment,
    users: list[str],
    truth: np.ndarray,
    sent: int,
    elapsed: float,
) -> float:
    learned = learned_vectors(client, dep.settings.topic_prefix, users)
    cos = cosine_similarity(learned, truth)
    dead = _dead_letter_count(dep)
    print(
        f"{elapsed:5.0f}s {sent:7d}  "
        + " ".join(f"{c:7.3f}" for c in cos)
        + f"  {cos.mean():6.3f}  {dead:6d}",
        flush=True,
    )
    return float(cos.mean())


def _dead_letter_count(dep: Deployment) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        confluent_config(dep.settings.kafka_bootstrap_servers, **{"group.id": "demo-dlq-count"})
    )
    try:
        topic = dep.topic("deadletter")
        parts = consumer.list_topics(topic, timeout=5).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts
        )
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())

"""A keyed workload with a known ground truth, and the checks every fault test ends with.

Events are explicit feedback for a set of users; the truth per user is the interaction count
and the vector of one event-by-event EMA pass (:func:`ema_sequential`). After a fault, the
checks read Redis, PostgreSQL, the output topic and the worker's table and count losses
(fewer interactions than the truth) and duplicates (more) separately.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import psycopg
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from agents.learning.preference import (
    IMPLICIT_KINDS,
    KIND_INDEX,
    EmaParams,
    ema_sequential,
    learning_rates,
    signal_strength,
)
from streams.config import Settings
from streams.harness import Deployment
from streams.kafka_admin import producer
from tests.integration.test_preferences_pipeline import human_ts
from tests.reliability import summary

DIM = 4
ITEMS = {f"item-{i}": np.eye(DIM)[i % DIM] * (1 + i // DIM) * 0.5 for i in range(8)}
KINDS = ("rating", "like", "dislike", "save", "share")


def item_events() -> list[dict[str, Any]]:
    return [
        {"event_id": f"item-{k}", "schema_version": 1, "ts": 1_700_000_000_000, "item_id": k,
         "features": [float(x) for x in v]}
        for k, v in ITEMS.items()
    ]  # fmt: skip


@dataclass
class Workload:
    users: list[str]
    events: list[dict[str, Any]]

    @classmethod
    def generate(
        cls, prefix: str, n_users: int, per_user: int, seed: int, implicit_share: float = 0.0
    ) -> Workload:
        """Explicit feedback; with ``implicit_share`` also that share of implicit views,
        which go through the implicit relay. Their windows must stay open for the whole
        test (:data:`OPEN_WINDOWS`): the truth's vectors are then the explicit EMA alone,
        whatever the batching, while every view still counts as an interaction."""
        rng = np.random.default_rng(seed)
        views = np.random.default_rng(seed + 1)
        users = [f"{prefix}-u{i}" for i in range(n_users)]
        events = []
        for n in range(per_user):
            for user in users:
                kind = KINDS[rng.integers(len(KINDS))]
                event: dict[str, Any] = {
                    "event_id": f"{user}-e{n}", "schema_version": 1, "ts": human_ts(n),
                    "user_id": user, "item_id": f"item-{rng.integers(len(ITEMS))}", "kind": kind,
                }  # fmt: skip
                if kind == "rating":
                    event["value"] = float(rng.integers(1, 6))
                events.append(event)
                if implicit_share and views.random() < implicit_share:
                    events.append(
                        {"event_id": f"{user}-v{n}", "schema_version": 1,
                         "ts": human_ts(n) + 12_345, "user_id": user,
                         "item_id": f"item-{views.integers(len(ITEMS))}", "kind": "view"}
                    )  # fmt: skip
        return cls(users, events)

    def by_topic(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"feedback.explicit": [], "feedback.implicit": []}
        for e in self.events:
            out[topic_of(e)].append(e)
        return out

    def per_user(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {u: [] for u in self.users}
        for e in self.events:
            out[e["user_id"]].append(e)
        return out

    def truth(self) -> dict[str, tuple[int, np.ndarray]]:
        defaults = Settings.from_env({})
        params = EmaParams(defaults.base_alpha, defaults.max_alpha, defaults.type_multipliers)
        result = {}
        for user, all_events in self.per_user().items():
            events = [e for e in all_events if topic_of(e) == "feedback.explicit"]
            if not events:
                result[user] = (len(all_events), np.zeros(DIM))
                continue
            kinds = np.array([KIND_INDEX[e["kind"]] for e in events])
            values = np.array([float(e.get("value", np.nan)) for e in events])
            s = signal_strength(kinds, values, params)
            a = learning_rates(kinds, s, params)
            feats = np.stack([ITEMS[e["item_id"]] for e in events])
            result[user] = (len(all_events), ema_sequential(np.zeros(DIM), a, s, feats))
        return result


def topic_of(event: dict[str, Any]) -> str:
    return "feedback.implicit" if event["kind"] in IMPLICIT_KINDS else "feedback.explicit"


# Worker settings for workloads with implicit views: their windows never close in a test.
OPEN_WINDOWS = {"LOOPWISE_IMPLICIT_WINDOW_S": "86400"}


def produce_workload(dep: Deployment, events: list[dict[str, Any]]) -> None:
    """Each event to its topic (explicit or implicit), keyed by user."""
    for topic, part in Workload(users=[], events=events).by_topic().items():
        if part:
            dep.produce(topic, part)


def redis_state(dep: Deployment, users: list[str]) -> dict[str, dict[str, Any] | None]:
    client = redis.Redis.from_url(dep.settings.redis_url)
    pipe = client.pipeline()
    for user in users:
        pipe.hget(f"{dep.settings.topic_prefix}pref:{user}", "value")
    return {u: (orjson.loads(v) if v else None) for u, v in zip(users, pipe.execute(), strict=True)}


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Discrepancies:
    lost: dict[str, int]
    doubled: dict[str, int]
    wrong_vector: list[str]

    def __bool__(self) -> bool:
        return bool(self.lost or self.doubled or self.wrong_vector)


def compare(
    observed: dict[str, tuple[int, list[float]] | None], workload: Workload
) -> Discrepancies:
    lost, doubled, wrong = {}, {}, []
    for user, (count, vector) in workload.truth().items():
        got = observed.get(user)
        n = 0 if got is None else got[0]
        if n < count:
            lost[user] = count - n
        elif n > count:
            doubled[user] = n - count
        elif got is not None and not np.allclose(got[1], vector, rtol=1e-4, atol=2e-4):
            wrong.append(user)
    return Discrepancies(lost, doubled, wrong)


def from_redis(dep: Deployment, workload: Workload) -> Discrepancies:
    state = redis_state(dep, workload.users)
    return compare({u: (v["interactions"], v["vector"]) if v else None for u, v in state.items()},
                   workload)  # fmt: skip


def from_postgres(dep: Deployment, workload: Workload) -> Discrepancies:
    with psycopg.connect(dep.settings.database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, interactions, vector FROM user_preferences WHERE user_id = ANY(%s)",
            (workload.users,),
        ).fetchall()
    return compare({u: (n, v) for u, n, v in rows}, workload)


def from_outputs(dep: Deployment, workload: Workload) -> tuple[Discrepancies, int]:
    """The newest output per user against the truth, and how many distinct event ids were
    sent more than once (re-sent after a crash; consumers dedupe by event id)."""
    latest: dict[str, dict[str, Any]] = {}
    ids: dict[str, dict[str, Any]] = {}
    resent = 0
    for out in dep.read("weights.preferences"):
        previous = ids.get(out["event_id"])
        if previous is not None:
            resent += 1
            # The same id must always carry the same content.
            assert previous["vector"] == out["vector"], out["event_id"]
            assert previous["interactions"] == out["interactions"], out["event_id"]
        ids[out["event_id"]] = out
        if out["version"] >= latest.get(out["user_id"], {"version": -1})["version"]:
            latest[out["user_id"]] = out
    observed = {u: (e["interactions"], e["vector"]) for u, e in latest.items()}
    return compare(observed, workload), resent


def from_table(dep: Deployment, workload: Workload) -> Discrepancies:
    """The table as the live workers hold it. With several workers each user is asked of
    every live one and the first that holds it answers (partitions are disjoint)."""
    observed: dict[str, tuple[int, list[float]] | None] = {}
    live = [w for w in dep.workers if w.alive()]
    for user in workload.users:
        observed[user] = None
        for worker in live:
            status, body = worker.get_json(f"/state/preferences/{user}")
            if status == 200:
                observed[user] = (body["interactions"], body["vector"])
                break
    return compare(observed, workload)


def assert_exact(
    dep: Deployment,
    workload: Workload,
    timeout_s: float = 90.0,
    *,
    test: str | None = None,
    faults: str = "none",
    recovery_s: float | None = None,
) -> int:
    """Wait until every store holds the truth (Redis may be exact before the table after a
    crash past the Redis write), then check each; returns the number of re-sent outputs.

    With ``test`` the result (losses and duplicates counted before asserting) becomes a row
    of the suite's summary table."""

    def all_exact() -> bool:
        return not (
            from_redis(dep, workload)
            or from_postgres(dep, workload)
            or from_table(dep, workload)
            or from_outputs(dep, workload)[0]
        )

    with contextlib.suppress(AssertionError):  # the asserts below name the store that differs
        wait_for(all_exact, timeout_s, "every store to equal the truth")
    stores = {
        "redis": from_redis(dep, workload),
        "postgres": from_postgres(dep, workload),
        "table": from_table(dep, workload),
    }
    outputs, resent = from_outputs(dep, workload)
    stores["outputs"] = outputs
    if test is not None:
        summary.record(
            summary.Row(
                test=test,
                events=len(workload.events),
                faults=faults,
                lost=max(sum(d.lost.values()) for d in stores.values()),
                duplicated=max(sum(d.doubled.values()) for d in stores.values()),
                resent_outputs=resent,
                recovery_s=recovery_s,
                notes=[
                    f"{name}: {len(d.wrong_vector)} wrong vectors"
                    for name, d in stores.items()
                    if d.wrong_vector
                ],
            )
        )
    for name, found in stores.items():
        # Events the guard quarantined never train: name them next to the shortfall.
        assert not found, (name, found, quarantine_summary(dep))
    return resent


def quarantine_summary(dep: Deployment) -> str:
    reasons = Counter(r["error_message"].split(": ", 1)[-1] for r in dep.read("quarantine"))
    return f"{sum(reasons.values())} quarantined: {dict(reasons)}"


def group_positions(
    dep: Deployment, topic_name: str, group: str | None = None
) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic_name``: (the committed offset of ``group``, by default the
    app's, and the end offset).

    Read with a consumer that carries the app's group id but never subscribes, so it does
    not join the group (the admin call may block while the group rebalances)."""
    topic = dep.topic(topic_name)
    parts = [TopicPartition(topic, p) for p in range(dep.settings.partitions)]
    consumer = Consumer(
        {
            "bootstrap.servers": dep.settings.kafka_bootstrap_servers,
            "group.id": group or dep.settings.app_id,
            "enable.auto.commit": False,
        }
    )
    try:
        for attempt in range(30):
            try:
                committed = {
                    tp.partition: max(tp.offset, 0) for tp in consumer.committed(parts, 10)
                }
                ends = {
                    p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts
                }
                return {p: (committed.get(p, 0), ends[p]) for p in ends}
            except KafkaException:  # e.g. NOT_COORDINATOR while a restarted broker loads
                if attempt == 29:
                    raise
                time.sleep(1.0)
    finally:
        consumer.close()
    raise AssertionError("unreachable")


def wait_committed_past(
    dep: Deployment, topic_name: str, targets: dict[int, int], timeout_s: float
) -> float:
    """Seconds until the group's committed offsets reach ``targets``; raises on timeout."""
    started = time.monotonic()
    wait_for(
        lambda: all(group_positions(dep, topic_name)[p][0] >= end for p, end in targets.items()),
        timeout_s,
        f"committed offsets of {topic_name} to reach {targets}",
    )
    return time.monotonic() - started


def sigkill_cycles(
    dep: Deployment, workers: list[Any], rng: random.Random, kills: int, **env: str
) -> list[float]:
    """SIGKILL a random worker at random moments ``kills`` times, starting a replacement
    (with ``env``) each time; the recovery of each is the time from the kill until the
    group has committed everything produced before it."""
    recoveries: list[float] = []
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 4.0))
        victim = rng.choice(workers)
        targets = {p: end for p, (_, end) in group_positions(dep, "feedback.explicit").items()}
        killed_at = time.monotonic()
        victim.kill()
        workers.remove(victim)
        workers.append(dep.start_worker(**env))
        wait_committed_past(dep, "feedback.explicit", targets, timeout_s=120)
        recoveries.append(time.monotonic() - killed_at)
    return recoveries


class PacedProducer(threading.Thread):
    """Produces the workload at ``rate`` events/s in the background (a steady stream)."""

    def __init__(self, dep: Deployment, events: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.dep, self.events, self.rate = dep, events, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        topics = {t: self.dep.topic(t) for t in ("feedback.explicit", "feedback.implicit")}
        out = producer(self.dep.settings)
        started = time.monotonic()
        try:
            for n, event in enumerate(self.events, start=1):
                out.produce(
                    topics[topic_of(event)],
                    key=event["user_id"].encode(),
                    value=orjson.dumps(event),
                )
                self.sent = n
                if n % 50 == 0:
                    out.poll(0)
                    ahead = n / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            # A broker restart may hold messages back for a while; they are retried.
            if out.flush(120):
                raise RuntimeError("messages left undelivered after 120 s")
        except BaseException as exc:  # surfaced by the test via .error
            self.error = exc

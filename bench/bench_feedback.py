"""Implicit feedback end to end through the real broker: throughput and latency.

Run with ``python -m bench.bench_feedback [--events N] [--json]`` (the services must be up:
``bash deploy/local/services.sh up`` and ``set -a; source .run/services.env; set +a``).

One fresh :class:`streams.harness.Deployment` (own topic prefix, app id and consumer
groups) on the shared broker. Items (``LOOPWISE_ITEM_DIM`` features) are published first,
then N valid ``feedback.implicit`` events (views, clicks with an impression id, dwell; about
250 bytes each; human-paced event times per user, which the guard lets through) over many
users. Measured in the same run, over the same events:

(a) the ceiling -- a raw confluent-kafka consumer, ``consume(num_messages=...)`` in batches
    plus ``orjson.loads`` per message, in this process; median of 3 passes after a warm-up
    pass. The same loop with the worker's decoder (orjson + compiled JSON Schema) is printed
    beside it for reference;
(b) the naive baseline -- :mod:`bench.naive_agent`, a per-event faust agent (decode,
    validate, EMA step, table write, output send) started as a subprocess over the backlog;
    timed from its first output to its last (Kafka CreateTime of the output records), and
    stopped after ``--naive-events`` of them. ``--machinery`` also times the same app doing
    no work at all, per event and with ``take_events`` (faust's own cost);
(c) Loopwise -- a real worker (``LOOPWISE_IMPLICIT_WINDOW_S=0`` by default: each batch's
    implicit events are applied at once, so every batch learns and emits) started first on
    an empty topic and waited ready; then the N events are produced; timed from the first
    produce call to the last ``weights.preferences`` output (CreateTime), after the
    group's committed offsets reached the end (lag 0). Producing takes a fraction of that
    time and happens while the worker consumes; the figure is printed.

The ratios (c)/(a) and (c)/(b) are printed with their targets (>= 0.5x the ceiling,
>= 3x the naive agent). Then the worker is restarted (its group is at the end of the
topic) and event -> weight-event latency is measured at fixed offered rates: each event
carries its produce time in ``ts`` (ms); a consumer in this process records when each
``weights.preferences`` record arrives; an event's latency is the arrival of the first
output of its user whose ``source_ts`` covers it. A rate above the measured throughput is
reported as not sustainable instead of being offered; if no requested rate is sustainable,
one phase runs at a quarter of the measured throughput.

This is a benchmark, not a test: nothing asserts on wall-clock figures. On a shared
2-core machine the absolute rates move from run to run; the ratios are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from streams.codecs import EventDecoder
from streams.config import REPO_ROOT, Settings
from streams.harness import Deployment, Worker, free_port
from streams.kafka_admin import admin
from streams.kafka_admin import producer as make_producer
from streams.security import confluent_config
from streams.topics import TOPICS

TARGET_CEILING_RATIO = 0.5
TARGET_NAIVE_RATIO = 3.0
TARGET_P99_MS = 50.0
KINDS = ("view", "click", "dwell")
KIND_P = (0.5, 0.3, 0.2)
DEVICES = ("desktop", "mobile", "tablet")
PAGES = ("home", "search", "detail", "category")
LOG_DIR = REPO_ROOT / ".run" / "bench"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --------------------------------------------------------------------------- events


def item_events(n_items: int, dim: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    feats = rng.normal(0.0, 1.0, (n_items, dim)) / np.sqrt(dim)
    return [
        {
            "event_id": f"item-{i:05d}",
            "schema_version": 1,
            "ts": 1_700_000_000_000,
            "item_id": f"item-{i:05d}",
            "features": [round(float(x), 5) for x in feats[i]],
        }
        for i in range(n_items)
    ]


def feedback_event(
    run: str, n: int, user: str, item: int, kind: str, ts: int, rng_vals: tuple[int, float]
) -> dict[str, Any]:
    """One valid ``feedback.implicit`` event of about 250 bytes."""
    pos, dwell = rng_vals
    event: dict[str, Any] = {
        "event_id": f"{run}-fb-{n:010d}",
        "schema_version": 1,
        "ts": ts,
        "user_id": user,
        "item_id": f"item-{item:05d}",
        "kind": kind,
        "context": {
            "device": DEVICES[pos % 3],
            "page": PAGES[pos % 4],
            "position": pos,
            "session": f"{user}-s{n // 50}",
        },
    }
    if kind == "click":
        event["impression_id"] = f"{run}-imp-{n:010d}"
        event["propensity"] = 0.25
    elif kind == "dwell":
        event["value"] = dwell
    return event


def backlog(
    run: str, n: int, n_users: int, n_items: int, rng: np.random.Generator
) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value) records; users and items uniformly at random.

    Event times are human-like per user (gaps of 1 s plus an exponential of mean 29 s,
    starting an hour ago), as the guard quarantines machine-like streams."""
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    kinds = rng.choice(len(KINDS), size=n, p=KIND_P)
    pos = rng.integers(0, 40, n)
    dwell = np.round(rng.uniform(1.0, 300.0, n), 1)
    gaps = 1000 + rng.exponential(29_000.0, n).astype(np.int64)
    start = int(time.time() * 1000) - 3_600_000
    last_ts: dict[int, int] = {}
    out = []
    for i in range(n):
        u = int(users[i])
        ts = last_ts[u] = last_ts.get(u, start) + int(gaps[i])
        user = f"{run}-u{u:06d}"
        ev = feedback_event(
            run, i, user, int(items[i]), KINDS[kinds[i]], ts, (int(pos[i]), float(dwell[i]))
        )
        out.append((user.encode(), orjson.dumps(ev)))
    return out


def produce_records(prod: Producer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    for key, value in records:
        while True:
            try:
                prod.produce(topic, key=key, value=value)
                break
            except BufferError:
                prod.poll(0.05)
        prod.poll(0)
    if prod.flush(60):
        raise RuntimeError("produce: messages left undelivered after 60 s")


# --------------------------------------------------------------------------- broker reads


def consumer(settings: Settings, **extra: Any) -> Consumer:
    return Consumer(
        confluent_config(
            settings.kafka_bootstrap_servers,
            **{
                "group.id": f"bench-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **extra,
            },
        )
    )


def watermarks(c: Consumer, topic: str, partition: int, attempts: int = 20) -> tuple[int, int]:
    """(low, high) offsets; retried while the broker settles a new topic's leaders."""
    for attempt in range(attempts):
        try:
            return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    c = consumer(settings)
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return {p: watermarks(c, topic, p)[1] for p in meta.partitions}
    finally:
        c.close()


def edge_timestamps(settings: Settings, topic: str) -> tuple[float, float, int]:
    """(earliest first-record time, latest last-record time, record count), seconds."""
    c = consumer(settings)
    first, last, count = float("inf"), 0.0, 0
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        for p in meta.partitions:
            low, high = watermarks(c, topic, p)
            if high <= low:
                continue
            count += high - low
            for offset in (low, high - 1):
                c.assign([TopicPartition(topic, p, offset)])
                msgs = c.consume(num_messages=1, timeout=10)
                if msgs and not msgs[0].error():
                    ts = msgs[0].timestamp()[1] / 1000.0
                    first, last = min(first, ts), max(last, ts)
                c.unassign()
    finally:
        c.close()
    return first, last, count


def committed(settings: Settings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    c = Consumer(confluent_config(settings.kafka_bootstrap_servers, **{"group.id": group}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def wait_lag_zero(
    settings: Settings, group: str, topic: str, ends: dict[int, int], timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = committed(settings, group, topic, list(ends))
        if all(done.get(p, -1) >= end for p, end in ends.items()):
            return True
        time.sleep(0.25)
    return False


def wait_processed(settings: Settings, ends: dict[int, int], timeout_s: float) -> bool:
    """Every event up to ``ends`` of ``feedback.implicit`` went through the worker: through
    the relay (its group's commits) and then the agent's commits on the relay topic, or the
    agent's own commits on the input when the relay is off."""
    topic = settings.topic("feedback.implicit")
    if not settings.implicit_relay:
        return wait_lag_zero(settings, settings.app_id, topic, ends, timeout_s)
    started = time.monotonic()
    if not wait_lag_zero(settings, f"{settings.app_id}.implicit-relay", topic, ends, timeout_s):
        return False
    relay = settings.topic("feedback.implicit.relay")
    left = timeout_s - (time.monotonic() - started)
    return wait_lag_zero(settings, settings.app_id, relay, end_offsets(settings, relay), left)


# --------------------------------------------------------------------------- (a) ceiling


def ceiling(
    settings: Settings, topic: str, ends: dict[int, int], decode: Any, batch: int, repeats: int
) -> float:
    """Events/s of a raw batch consume + ``decode`` over offsets [0, end) of every partition;
    median of ``repeats`` passes after one warm-up pass (same consumer, re-assigned).

    ``fetch.wait.max.ms`` is lowered from librdkafka's 500 ms: otherwise the fetch left
    waiting at the end of the log by one pass delays the next pass by up to 500 ms."""
    c = consumer(settings, **{"fetch.wait.max.ms": 10})
    total = sum(ends.values())
    rates = []
    try:
        for _ in range(repeats + 1):
            c.assign([TopicPartition(topic, p, 0) for p in ends])
            count = 0
            start = time.perf_counter()
            while count < total:
                for m in c.consume(num_messages=batch, timeout=1.0):
                    if m.error() or m.offset() >= ends[m.partition()]:
                        continue
                    decode(m.value())
                    count += 1
            rates.append(total / (time.perf_counter() - start))
            c.unassign()
    finally:
        c.close()
    return float(np.median(rates[1:]))


def in_process(records: list[tuple[bytes, bytes]], decode: Any) -> float:
    """Events/s of ``decode`` alone over the records (one core, no broker)."""
    values = [v for _, v in records]
    start = time.perf_counter()
    for v in values:
        decode(v)
    return len(values) / (time.perf_counter() - start)


# --------------------------------------------------------------------------- (b) naive


def run_naive(
    dep: Deployment,
    ends: dict[int, int],
    timeout_s: float,
    mode: str = "naive",
    limit: int | None = None,
) -> dict[str, Any]:
    """Run :mod:`bench.naive_agent` in ``mode`` over the backlog (offsets [0, end)) with
    its own app id, consumer group and output topic; time it by its output records. In
    ``naive`` mode it is stopped after ``limit`` outputs (its steady rate is what counts;
    this keeps the run short)."""
    settings = dep.settings
    events = sum(ends.values())
    output = settings.topic(f"naive-{mode}.out")
    client = admin(settings)
    for fut in client.create_topics(
        [
            NewTopic(
                output,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
            )
        ]
    ).values():
        fut.result()
    expected = (
        min(events, limit or events) if mode == "naive" else 2 * sum(e > 0 for e in ends.values())
    )
    log_path = dep.log_dir / f"{dep.run_id}-naive-{mode}.log"
    env = {
        **dep.base_env,
        "NAIVE_MODE": mode,
        "NAIVE_APP_ID": f"{settings.app_id}-naive-{mode}",
        "NAIVE_OUTPUT_TOPIC": output,
        "NAIVE_ENDS": ",".join(f"{p}:{e}" for p, e in ends.items()),
        "NAIVE_DATA_DIR": str(dep.log_dir / f"{dep.run_id}-naive-{mode}-data"),
    }
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.naive_agent", "worker", "--loglevel=info"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(end_offsets(settings, output).values()) >= expected:
                break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    first, last, count = edge_timestamps(settings, output)
    if count == 0:
        raise RuntimeError(f"naive agent ({mode}) produced nothing; see {log_path}")
    seconds = last - first
    done = count if mode == "naive" else events
    return {
        "mode": mode,
        "events": done,
        "of": events,
        "complete": count >= expected,
        "seconds": seconds,
        "rate": (done - 1) / seconds if seconds > 0 else float("nan"),
        "log": str(log_path),
    }


# --------------------------------------------------------------------------- (c) Loopwise


PROFILE_ON = signal.SIGRTMIN
PROFILE_OFF = signal.SIGRTMIN + 1


def profiled_worker(path: str) -> None:
    """Run a worker in this process; cProfile its main thread (the event loop) between
    the PROFILE_ON and PROFILE_OFF signals and dump the stats to ``path``."""
    import cProfile

    profiler = cProfile.Profile()

    def on(signum: int, frame: Any) -> None:
        profiler.enable()

    def off(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(path)

    signal.signal(PROFILE_ON, on)
    signal.signal(PROFILE_OFF, off)
    from loopwise.worker import run_worker

    sys.argv = [sys.argv[0]]
    run_worker()


def start_worker(dep: Deployment, profile: Path | None = None, **env: str) -> Worker:
    """``dep.start_worker()``, or the same worker able to profile itself (see
    :func:`profiled_worker`)."""
    if profile is None:
        return dep.start_worker(**env)
    port = free_port()
    name = f"w{len(dep.workers)}"
    log_path = dep.log_dir / f"{dep.run_id}-{name}.log"
    worker_env = {
        **dep.base_env,
        **dep.extra_env,
        **env,
        "LOOPWISE_WEB_PORT": str(port),
        "LOOPWISE_DATA_DIR": str(dep.log_dir / f"{dep.run_id}-{name}-data"),
    }
    cmd = [sys.executable, "-m", "bench.bench_feedback", "--profiled-worker", str(profile)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(name, proc, port, log_path)
    dep.workers.append(worker)
    worker.wait_ready()
    return worker


def scrape(worker: Worker) -> dict[str, float] | None:
    """Sums of the worker's Prometheus series that matter here (agent preferences), or
    None when ``/metrics`` does not answer."""
    try:
        with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as resp:
            text = resp.read().decode()
    except OSError:  # urllib's HTTPError included
        return None
    wanted = {
        "loopwise_events_valid_total": 'agent="preferences"',
        "loopwise_batch_size_count": 'agent="preferences"',
        "loopwise_batch_size_sum": 'agent="preferences"',
        "loopwise_batch_processing_seconds_sum": 'agent="preferences"',
    }
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted and wanted[name] in line:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loopwise(
    dep: Deployment, records: list[tuple[bytes, bytes]], timeout_s: float, profile: Path | None
) -> dict[str, Any]:
    settings = dep.settings
    topic = settings.topic("feedback.implicit")
    output = settings.topic("weights.preferences")
    worker = start_worker(dep, profile)
    before = scrape(worker)
    cpu_before = cpu_seconds(worker.process.pid)
    prod = make_producer(settings)
    if profile is not None:
        profile.unlink(missing_ok=True)
        worker.process.send_signal(PROFILE_ON)
    start = time.time()
    produce_records(prod, topic, records)
    produced = time.time() - start
    ends = end_offsets(settings, topic)
    caught_up = wait_processed(settings, ends, timeout_s)
    time.sleep(0.5)  # the last batch's outputs are sent before its offsets are committed
    after = scrape(worker)
    cpu = cpu_seconds(worker.process.pid) - cpu_before
    if profile is not None:
        worker.process.send_signal(PROFILE_OFF)
        for _ in range(100):
            if profile.exists():
                break
            time.sleep(0.1)
    _, last, outputs = edge_timestamps(settings, output)
    worker.stop()
    seconds = last - start
    n = len(records)
    result: dict[str, Any] = {
        "events": n,
        "caught_up": caught_up,
        "seconds": seconds,
        "produce_seconds": produced,
        "rate": n / seconds if seconds > 0 else float("nan"),
        "outputs": outputs,
        "dead_letters": edge_timestamps(settings, settings.topic("deadletter"))[2],
        "quarantined": (
            edge_timestamps(settings, settings.topic("quarantine"))[2]
            if "quarantine" in {t.name for t in TOPICS}
            else 0
        ),
        "cpu_us_per_event": 1e6 * cpu / n,
        "ends": ends,
        "log": str(worker.log_path),
    }
    if before is not None and after is not None:
        delta = {k: after[k] - before[k] for k in after}
        batches = max(delta["loopwise_batch_size_count"], 1.0)
        result.update(
            valid=delta["loopwise_events_valid_total"],
            batches=delta["loopwise_batch_size_count"],
            mean_batch=delta["loopwise_batch_size_sum"] / batches,
            agent_us_per_event=1e6 * delta["loopwise_batch_processing_seconds_sum"] / n,
        )
    return result


# --------------------------------------------------------------------------- latency


class OutputWatcher(threading.Thread):
    """Records (user, source_ts ms, arrival s) of every new ``weights.preferences`` record."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(daemon=True)
        self.c = consumer(settings, **{"fetch.wait.max.ms": 10})
        ends = end_offsets(settings, topic)
        self.c.assign([TopicPartition(topic, p, off) for p, off in ends.items()])
        self.seen: list[tuple[str, int, float]] = []  # arrival here
        self.sent_at: list[tuple[str, int, float]] = []  # the record's CreateTime
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for m in self.c.consume(num_messages=1000, timeout=0.05):
                    if m.error():
                        continue
                    now = time.time()
                    ev = orjson.loads(m.value())
                    self.seen.append((ev["user_id"], ev["source_ts"], now))
                    self.sent_at.append((ev["user_id"], ev["source_ts"], m.timestamp()[1] / 1e3))
        finally:
            self.c.close()


def offer(
    prod: Producer,
    topic: str,
    run: str,
    tag: str,
    rate: int,
    seconds: float,
    n_users: int,
    n_items: int,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int]], float]:
    """Produce at ``rate`` events/s for ``seconds``; returns (user, ts) sent and the rate
    actually offered. At least ``rate * seconds / 4`` users, so that no user sends faster
    than a person (the guard would quarantine them)."""
    n = int(rate * seconds)
    users = rng.integers(0, max(n_users, n // 4), n)
    items = rng.integers(0, n_items, n)
    kinds = rng.choice(len(KINDS), size=n, p=KIND_P)
    pos = rng.integers(0, 40, n)
    sent: list[tuple[str, int]] = []
    start = time.perf_counter()
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - start) * rate) + 1)
        while i < due:
            user = f"{run}-{tag}-u{users[i]:06d}"
            ts = int(time.time() * 1000)
            ev = feedback_event(
                run, i, user, int(items[i]), KINDS[kinds[i]], ts, (int(pos[i]), 42.0)
            )
            ev["event_id"] = f"{run}-{tag}-{i:010d}"
            while True:
                try:
                    prod.produce(topic, key=user.encode(), value=orjson.dumps(ev))
                    break
                except BufferError:
                    prod.poll(0.01)
            sent.append((user, ts))
            i += 1
        prod.poll(0)
        time.sleep(0.001)
    offered = n / (time.perf_counter() - start)
    prod.flush(30)
    return sent, offered


def match_latencies(
    sent: list[tuple[str, int]], seen: list[tuple[str, int, float]]
) -> tuple[np.ndarray, int]:
    """Latency (ms) of each event covered by an output, and how many were not covered."""
    by_user: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for user, source_ts, arrival in seen:
        by_user[user].append((source_ts, arrival))
    prepared = {}
    for user, rows in by_user.items():
        cover = np.maximum.accumulate(np.array([r[0] for r in rows], dtype=np.int64))
        prepared[user] = (cover, np.array([r[1] for r in rows]))
    lat, missing = [], 0
    for user, ts in sent:
        rows = prepared.get(user)
        if rows is None:
            missing += 1
            continue
        cover, arrival = rows
        k = int(np.searchsorted(cover, ts, side="left"))
        if k >= cover.shape[0]:
            missing += 1
            continue
        lat.append(1000.0 * arrival[k] - ts)
    return np.array(lat), missing


def run_latency(
    dep: Deployment,
    rates: list[int],
    seconds: float,
    n_users: int,
    n_items: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    settings = dep.settings
    topic = settings.topic("feedback.implicit")
    worker = dep.start_worker()
    prod = make_producer(settings, **{"linger.ms": 1})
    results = []
    try:
        # Warm-up, offered and not measured: the first seconds after a start include the
        # relay's group join, table recovery of the earlier run's users and the first fetches.
        offer(prod, topic, dep.run_id, "warm", min(rates), 3.0, n_users, n_items, rng)
        time.sleep(2.0)
        for rate in rates:
            watcher = OutputWatcher(settings, settings.topic("weights.preferences"))
            watcher.start()
            sent, offered = offer(
                prod, topic, dep.run_id, f"l{rate}", rate, seconds, n_users, n_items, rng
            )
            # Drain: until every event is covered, or outputs stop for 3 s (30 s at most).
            deadline, last_len, last_change = time.monotonic() + 30, -1, time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.25)
                lat, missing = match_latencies(sent, list(watcher.seen))
                if missing == 0:
                    break
                if len(watcher.seen) != last_len:
                    last_len, last_change = len(watcher.seen), time.monotonic()
                elif time.monotonic() - last_change > 3:
                    break
            watcher.stopping.set()
            watcher.join(timeout=5)
            lat, missing = match_latencies(sent, watcher.seen)
            at_send, _ = match_latencies(sent, watcher.sent_at)
            results.append(
                {
                    "rate": rate,
                    "offered": offered,
                    "events": len(sent),
                    "covered": int(lat.size),
                    "missing": missing,
                    "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                    "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
                    "max_ms": float(lat.max()) if lat.size else float("nan"),
                    "p50_at_send_ms": (
                        float(np.percentile(at_send, 50)) if at_send.size else float("nan")
                    ),
                    "p99_at_send_ms": (
                        float(np.percentile(at_send, 99)) if at_send.size else float("nan")
                    ),
                }
            )
    finally:
        worker.stop()
    return results


# --------------------------------------------------------------------------- profile


PROFILE_BUCKETS = (
    ("fastjsonschema", "validation (fastjsonschema)"),
    ("<string>", "validation (fastjsonschema)"),
    ("orjson", "JSON decode/encode (orjson)"),
    ("/faust/", "faust streams/tables/topics"),
    ("/mode/", "faust streams/tables/topics"),
    ("/aiokafka/", "aiokafka client (fetch, produce)"),
    ("/kafka/", "aiokafka client (fetch, produce)"),
    ("/numpy/", "numpy"),
    ("agents/learning/", "learning math (agents/learning)"),
    ("agents/", "agent code (agents/*.py)"),
    ("streams/", "streams/ (boundary, sinks, state, metrics)"),
    ("/redis/", "redis client"),
    ("/psycopg", "postgres client"),
    ("prometheus_client", "prometheus metrics"),
    ("/asyncio/", "asyncio event loop"),
    ("/selectors.py", "asyncio event loop"),
    ("/logging/", "logging"),
)
IDLE = {"poll", "select", "sleep"}


def _bucket(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    if filename == "~":
        if "orjson" in name:
            return "JSON decode/encode (orjson)"
        if any(f"method '{w}'" in name or f".{w}>" in name for w in IDLE):
            return "idle (waiting in select/poll)"
        return ""
    for needle, label in PROFILE_BUCKETS:
        if needle in filename:
            return label
    return "other"


def profile_summary(path: Path, events: int) -> list[tuple[str, float, float]]:
    """(bucket, share of busy time, µs per event) from a cProfile dump; a builtin's own
    time goes to the bucket of its callers (pro rata)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    buckets: dict[str, float] = defaultdict(float)
    for func, (_, _, tottime, _, callers) in stats.items():
        label = _bucket(func)
        if label:
            buckets[label] += tottime
            continue
        spread = sum(c[2] for c in callers.values()) or 0.0
        for caller, c in callers.items():
            share = tottime * (c[2] / spread) if spread else tottime / max(len(callers), 1)
            buckets[_bucket(caller) or "other"] += share
    busy = sum(v for k, v in buckets.items() if not k.startswith("idle"))
    rows = sorted(buckets.items(), key=lambda kv: -kv[1])
    return [
        (k, (v / busy if not k.startswith("idle") else float("nan")), 1e6 * v / events)
        for k, v in rows
    ]


# --------------------------------------------------------------------------- main


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run_stream_path(
    env: dict[str, str], args: argparse.Namespace, rng: np.random.Generator, timeout_s: float
) -> dict[str, Any]:
    """(c) again without the relay (``LOOPWISE_IMPLICIT_RELAY=0``: faust's per-event stream
    reads ``feedback.implicit``), over ``--stream-path`` fresh events in a deployment of its
    own, so the relay's effect is measured in the same run."""
    dep = Deployment.create(LOG_DIR, name="bench-stream", LOOPWISE_IMPLICIT_RELAY="0", **env)
    try:
        dep.create_topics()
        dep.produce(
            "items", item_events(args.items, dep.settings.item_dim, rng), key_field="item_id"
        )
        users = max(1, args.users * args.stream_path // max(args.events, 1))
        records = backlog(dep.run_id, args.stream_path, users, args.items, rng)
        result = run_loopwise(dep, records, timeout_s, None)
        result.pop("ends")
        result["users"] = users
        return result
    finally:
        dep.stop()
        if not args.keep:
            cleanup(dep, dep.run_id)


def cleanup(dep: Deployment, run: str) -> None:
    with contextlib.suppress(Exception):
        dep.delete_topics()
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(dep.settings.database_url, connect_timeout=5) as conn:
            conn.execute("DELETE FROM user_preferences WHERE user_id LIKE %s", (f"{run}-%",))
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(dep.settings.redis_url)
        keys = list(client.scan_iter(f"{dep.settings.topic_prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or JSON), return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--events", type=int, default=env_int("BENCH_FEEDBACK_EVENTS", 100_000))
    parser.add_argument("--users", type=int, default=env_int("BENCH_FEEDBACK_USERS", 10_000))
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--window", default="0", help="LOOPWISE_IMPLICIT_WINDOW_S of the worker")
    parser.add_argument("--batch-within", default=None, help="LOOPWISE_BATCH_WITHIN_S")
    parser.add_argument("--batch-size", default=None, help="LOOPWISE_BATCH_SIZE")
    parser.add_argument(
        "--consume-batch", type=int, default=1000, help="num_messages of the ceiling's consume()"
    )
    parser.add_argument("--rates", default="2000,10000", help="offered rates (events/s), or ''")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--naive-events",
        type=int,
        default=env_int("BENCH_FEEDBACK_NAIVE_EVENTS", 40_000),
        help="stop the naive agent after this many of the events (0: all)",
    )
    parser.add_argument(
        "--machinery",
        action="store_true",
        help="also time faust alone: per-event iteration and take_events "
        "with no work (bench.naive_agent modes stream and take)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the worker's event loop during the throughput run, "
        "dump here and summarize (its rate is then not comparable)",
    )
    parser.add_argument(
        "--stream-path",
        type=int,
        default=env_int("BENCH_FEEDBACK_STREAM_EVENTS", 20_000),
        help="also run the worker without the implicit relay over this many events, as many "
        "per user (0: skip)",
    )
    parser.add_argument("--keep", action="store_true", help="keep topics and sink rows")
    parser.add_argument("--profiled-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profiled_worker:
        profiled_worker(args.profiled_worker)
        return {}
    quiet = args.json

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    # The default log level (info): at warning or above faust's worker turns its terminal
    # spinner on, which sets the root logger to DEBUG and makes every debug call in
    # faust/aiokafka build a log record (about 10 % of the worker's time).
    env = {"LOOPWISE_IMPLICIT_WINDOW_S": args.window}
    if args.batch_within:
        env["LOOPWISE_BATCH_WITHIN_S"] = args.batch_within
    if args.batch_size:
        env["LOOPWISE_BATCH_SIZE"] = args.batch_size
    dep = Deployment.create(LOG_DIR, name="bench", **env)
    settings = dep.settings
    run = dep.run_id
    rng = np.random.default_rng(2024)
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "events": args.events,
        "users": args.users,
        "item_dim": settings.item_dim,
        "partitions": settings.partitions,
        "implicit_window_s": float(args.window),
        "batch_size": settings.batch_size,
        "batch_within_s": settings.batch_within_s,
        "consume_batch": args.consume_batch,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0],
    }
    try:
        dep.create_topics()
        say(f"[bench_feedback] deployment {run}: {args.items} items, {args.events} events")
        dep.produce("items", item_events(args.items, settings.item_dim, rng), key_field="item_id")
        records = backlog(run, args.events, args.users, args.items, rng)
        figures["mean_event_bytes"] = float(np.mean([len(v) for _, v in records]))

        # (c) Loopwise first: a live worker on an empty topic, then the events.
        say("[bench_feedback] (c) Loopwise worker: start, wait ready, produce, catch up ...")
        timeout = max(120.0, args.events / 500)
        lw = run_loopwise(dep, records, timeout, args.profile)
        ends = lw.pop("ends")
        figures["loopwise"] = lw

        if args.stream_path:
            say(f"[bench_feedback] (c) without the relay, {args.stream_path} events ...")
            figures["stream_path"] = run_stream_path(env, args, rng, timeout)

        # (a) the ceiling over exactly the same offsets.
        say("[bench_feedback] (a) ceiling: raw confluent-kafka consume + orjson.loads ...")
        topic = settings.topic("feedback.implicit")
        validator = EventDecoder("feedback.implicit", settings.max_message_bytes)
        figures["ceiling_rate"] = ceiling(
            settings, topic, ends, orjson.loads, args.consume_batch, 3
        )
        figures["ceiling_validated_rate"] = ceiling(
            settings, topic, ends, validator, args.consume_batch, 1
        )
        sample = records[:20_000]
        figures["in_process_orjson_rate"] = in_process(sample, orjson.loads)
        figures["in_process_validate_rate"] = in_process(sample, validator)

        # (b) the naive per-event agent over the same backlog.
        if not args.skip_naive:
            say("[bench_feedback] (b) naive per-event faust agent over the backlog ...")
            figures["naive"] = run_naive(dep, ends, max(180.0, timeout), limit=args.naive_events)
        if args.machinery:
            for mode in ("stream", "take"):
                say(f"[bench_feedback] faust machinery alone ({mode}) over the backlog ...")
                figures[f"faust_{mode}"] = run_naive(dep, ends, 120.0, mode)

        # Latency at fixed offered rates, on a restarted worker. A rate above the measured
        # throughput cannot be sustained (the backlog, hence the latency, grows for as long
        # as it is offered), so it is reported as such; when no requested rate can be
        # sustained, one phase runs at a quarter of the measured throughput instead.
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
        if rates:
            limit = 0.9 * lw["rate"]
            figures["latency_unsustainable"] = [r for r in rates if r > limit]
            runnable = [r for r in rates if r <= limit]
            if not runnable:
                runnable = [max(100, int(round(0.25 * lw["rate"], -2)))]
            say(f"[bench_feedback] latency at {runnable} events/s, {args.latency_seconds:g} s each")
            figures["latency"] = run_latency(
                dep, runnable, args.latency_seconds, args.users, args.items, rng
            )
    finally:
        dep.stop()
        if not args.keep:
            cleanup(dep, run)

    figures["ratio_vs_ceiling"] = lw["rate"] / figures["ceiling_rate"]
    figures["target_vs_ceiling"] = TARGET_CEILING_RATIO
    figures["met_vs_ceiling"] = figures["ratio_vs_ceiling"] >= TARGET_CEILING_RATIO
    if "naive" in figures:
        figures["ratio_vs_naive"] = lw["rate"] / figures["naive"]["rate"]
        figures["target_vs_naive"] = TARGET_NAIVE_RATIO
        figures["met_vs_naive"] = figures["ratio_vs_naive"] >= TARGET_NAIVE_RATIO
    if args.profile:
        figures["profile"] = profile_summary(args.profile, args.events)
        figures["profiled"] = True
    if args.json:
        print(json.dumps(figures, indent=2, default=float))
        return figures
    print_table(figures)
    return figures


def print_table(f: dict[str, Any]) -> None:
    lw = f["loopwise"]
    print(
        f"Implicit feedback end to end: {f['events']} events (~{f['mean_event_bytes']:.0f} B), "
        f"{f['users']} users, dim {f['item_dim']}, {f['partitions']} partitions, 1 worker\n"
        f"{f['date']}, {f['cpus']} CPUs shared with other work (1-min load at start "
        f"{f['load_avg_1m_at_start']:.1f}): absolute rates move from run to run"
    )
    if f.get("profiled"):
        print("NOTE: the worker was profiled (cProfile); its rate is not comparable.")
    width = 52

    def row(label: str, value: str, ratio: str = "", target: str = "", ok: str = "") -> None:
        print(f"  {label:{width}s}{value:>12s}{ratio:>9s}{target:>9s}  {ok}")

    row("", "events/s", "ratio", "target")
    row(f"(a) ceiling: consume({f['consume_batch']}) + orjson.loads", f"{f['ceiling_rate']:.0f}")
    row("    same + the worker's JSON Schema validation", f"{f['ceiling_validated_rate']:.0f}")
    if "naive" in f:
        nv = f["naive"]
        row(f"(b) naive per-event faust agent (first {nv['events']} events)", f"{nv['rate']:.0f}")
        if not nv["complete"]:
            print("      (stopped by the timeout)")
    for mode, label in (("stream", "per-event iteration"), ("take", "take_events()")):
        if f"faust_{mode}" in f:
            row(f"    faust alone: {label}, no work", f"{f[f'faust_{mode}']['rate']:.0f}")
    row(
        f"(c) Loopwise worker (window {f['implicit_window_s']:g} s, batch {f['batch_size']}, "
        f"within {f['batch_within_s']:g} s)",
        f"{lw['rate']:.0f}",
    )
    if not lw["caught_up"]:
        print("      (consumer lag not 0 at the timeout)")
    if "stream_path" in f:
        sp = f["stream_path"]
        row(
            f"    same without the relay (faust's stream; {sp['events']} events)",
            f"{sp['rate']:.0f}",
            f"{lw['rate'] / sp['rate']:.2f}x",
        )
    row(
        "    (c) / (a)",
        "",
        f"{f['ratio_vs_ceiling']:.3f}x",
        f">= {TARGET_CEILING_RATIO:g}x",
        verdict(f["met_vs_ceiling"]),
    )
    if "naive" in f:
        row(
            "    (c) / (b)",
            "",
            f"{f['ratio_vs_naive']:.2f}x",
            f">= {TARGET_NAIVE_RATIO:g}x",
            verdict(f["met_vs_naive"]),
        )
    print(
        f"  Loopwise: {lw['seconds']:.1f} s from the first produce call to the last output "
        f"(producing took {lw['produce_seconds']:.1f} s of it); {lw['outputs']} outputs, "
        f"{lw['dead_letters']} dead letters, {lw['quarantined']} quarantined;"
    )
    if "agent_us_per_event" in lw:
        inside = (
            f"{lw['agent_us_per_event']:.0f} us in the agent's batch code "
            f"({lw['batches']:.0f} batches of {lw['mean_batch']:.0f})"
        )
    else:
        inside = "no split by batch code (the worker's /metrics did not answer)"
    print(
        f"  per event: {1e6 / lw['rate']:.0f} us wall, {lw['cpu_us_per_event']:.0f} us worker "
        f"CPU (all threads), {inside}"
    )
    print(
        f"  one core, no broker, same events: orjson.loads {1e6 / f['in_process_orjson_rate']:.1f}"
        f" us, + JSON Schema validation {1e6 / f['in_process_validate_rate']:.1f} us per event"
    )
    print(f"  event -> weights.preferences latency (target p99 <= {TARGET_P99_MS:g} ms at 10k/s):")
    for rate in f.get("latency_unsustainable", []):
        print(
            f"    {rate}/s: not offered, above the worker's measured throughput "
            f"({lw['rate']:.0f}/s): the backlog, hence the latency, would grow without bound"
            + ("  [NOT met]" if rate >= 10_000 else "")
        )
    for r in f.get("latency", []):
        ok = r["missing"] == 0 and r["p99_ms"] <= TARGET_P99_MS
        print(
            f"    {r['rate']}/s (offered {r['offered']:.0f}/s, {r['events']} events): "
            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms"
            + f" (sent by the worker: p50 {r['p50_at_send_ms']:.0f}, p99 {r['p99_at_send_ms']:.0f})"
            + (f", {r['missing']} events without an output (backlog)" if r["missing"] else "")
            + (f"  [{verdict(ok)}]" if r["rate"] >= 10_000 else "")
        )
    if f.get("profile"):
        print("  worker event loop, profiled during the run (own time, builtins to callers):")
        for label, share, us in f["profile"]:
            pct = "" if share != share else f"{100 * share:.1f} %"
            print(f"    {label:44s}{pct:>8s}  {us:8.1f} us/event (profiled)")


if __name__ == "__main__":
    main()

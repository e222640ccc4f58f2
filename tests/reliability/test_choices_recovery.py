"""kill -9 during a stream of choice sessions: nothing lost, nothing counted twice.

The worker is SIGKILLed twice while sessions, interactions and choices flow and restarted
each time. Kafka replays what it had applied but not committed; the guards in the three
tables (offsets and event ids per session, source offsets per customer, source offsets per
segment) make the replays no-ops, so every session is fitted exactly once, in exactly one
segment, and the analytics count each exactly once.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agents.choices.simulation import simulate_events
from streams.harness import Deployment
from tests.integration.test_choices_pipeline import (
    STATED,
    direct_summary,
    produce,
    sql,
    total_sample,
    wait_for,
)
from tests.reliability import summary

# make test-reliability only (about a minute); make test runs the preferences kill test.
pytestmark = [pytest.mark.integration, pytest.mark.long]
N = 2000  # sessions


def test_sigkill_and_restart_loses_and_doubles_nothing(deployment: Deployment) -> None:
    deployment.extra_env["LOOPWISE_SESSION_TIMEOUT_S"] = "6"  # partitions move sooner
    deployment.start_worker()
    run = deployment.run_id
    segments = ("price_sensitive", "quality_focused", "local_preference")
    customers = [(f"{run}-c{i}", segments[i % 3]) for i in range(30)]
    events = simulate_events(np.random.default_rng(42), customers, N, prefix=f"{run}-",
                             stated=STATED)  # fmt: skip
    per_session: dict[str, list] = {}
    for item in events:
        per_session.setdefault(item[1]["session_id"], []).append(item)
    sessions = list(per_session.values())
    killed_twice = threading.Event()

    def produce_slowly() -> None:
        for start in range(0, N, 100):
            if start == 1200:  # the rest only after the second kill: it lands mid-stream
                killed_twice.wait(120)
            produce(deployment, [e for s in sessions[start : start + 100] for e in s])
            time.sleep(0.4)

    producer = threading.Thread(target=produce_slowly)
    producer.start()
    progress = []
    try:
        for threshold in (400, 1000):
            # Kill once the worker is visibly applying the stream, so that the kill lands in
            # the middle of it (tables written, offsets not all committed, outputs pending).
            wait_for(deployment, lambda t=threshold: total_sample(deployment) >= t,
                     "progress before the kill", 60)  # fmt: skip
            progress.append(total_sample(deployment))
            deployment.workers[-1].kill()
            deployment.start_worker()
    finally:
        killed_twice.set()
        producer.join()
    assert progress[0] < progress[1] < N, progress

    wait_for(deployment, lambda: total_sample(deployment) >= N, "every session fitted", 90)
    time.sleep(1.0)  # a double count would show up now
    fitted = total_sample(deployment)
    summary.record(summary.Row("choices agent: SIGKILL mid-stream", N, "2 × SIGKILL",
                               max(0, N - fitted), max(0, fitted - N)))  # fmt: skip
    assert fitted == N
    want = direct_summary(events)
    [(n, conversions, rank_sum, interactions)] = sql(
        deployment,
        "SELECT sum(sessions), sum(conversions), sum(rank_sum), sum(interactions) "
        "FROM choice_analytics_buckets WHERE deployment = %s",
        deployment.settings.topic_prefix,
    )
    assert n == N
    assert conversions / n == pytest.approx(want["conversion_rate"])
    assert rank_sum / conversions == pytest.approx(want["avg_chosen_rank"])
    assert interactions / n == pytest.approx(want["interaction_depth"])
    assert deployment.read("deadletter") == []  # no session missed its wait, nothing failed

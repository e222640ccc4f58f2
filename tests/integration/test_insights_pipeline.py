"""The insights agent end to end on real Kafka, Redis and PostgreSQL (one worker).

Decision logs with a planted success-rate drop give a declining-trend insight and a health
alert that escalates at the 3rd consecutive failing window, each emitted once; replayed
metrics (same event ids) change nothing; under the conservative strategy a low-confidence
insight gets no action, under the greedy one it does.

The leader opens improvement tickets for the high-priority insights; ``loopwise tickets``
moves one through its lifecycle and measures it over matched windows; ``loopwise report``
writes the report.

Windows are one minute of event time and the events are stamped hours in the past, so the
windows close as soon as the worker has read past them (no waiting for the wall clock).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from streams.config import REPO_ROOT
from streams.harness import Deployment
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

W = 60_000
DROP = [0.95, 0.94, 0.93, 0.92, 0.90, 0.88, 0.85, 0.82, 0.78, 0.74, 0.70, 0.66]
MILD = [0.99, 0.97, 0.95, 0.93, 0.91, 0.89]  # six windows: a low-confidence decline


@pytest.fixture(scope="module")
def dep(log_dir: Path) -> Iterator[Deployment]:
    d = Deployment.create(
        log_dir,
        name="ins",
        LOOPWISE_INSIGHTS_WINDOW_S="60",
        LOOPWISE_INSIGHTS_GRACE_S="2",
        LOOPWISE_INSIGHTS_EVAL_INTERVAL_S="1",
        LOOPWISE_INSIGHTS_MIN_SAMPLES="20",
        LOOPWISE_INSIGHTS_TREND_WINDOWS="12",
        LOOPWISE_INSIGHTS_TREND_MIN_WINDOWS="6",
        LOOPWISE_INSIGHTS_THRESHOLDS="*/success_rate<0.8:warning",
        LOOPWISE_OPTIMIZATION_STRATEGY="conservative",
        LOOPWISE_OPTIMIZATION_INTERVAL_S="2",
        LOOPWISE_REPORT_INTERVAL_H="0",
        LOOPWISE_TICKET_MEASURE_H="0.05",  # three one-minute windows either side
        LOOPWISE_VALUE_PER_CONVERSION="2",
        LOOPWISE_REPORT_DIR=str(log_dir / "reports"),
    )
    d.create_topics()
    d.start_worker()
    yield d
    d.stop()
    d.delete_topics()


def base_ts() -> int:
    return (int(time.time() * 1000) - 3 * 3_600_000) // W * W


def decision_logs(component: str, rates: list[float], method: str = "m1") -> list[dict[str, Any]]:
    """100 decisions per one-minute window; exactly ``rate * 100`` succeed."""
    t0 = base_ts()
    events = []
    for k, rate in enumerate(rates):
        wins = round(rate * 100)
        for i in range(100):
            events.append(
                {
                    "event_id": f"{component}-{k}-{i}",
                    "schema_version": 1,
                    "ts": t0 + k * W + i * 500,
                    "log_type": "enrichment_decision",
                    "component": component,
                    "session_id": f"s-{k}-{i}",
                    "method": method,
                    "confidence": 0.8,
                    "processing_time_ms": 120.0,
                    "success": i < wins,
                    "quality_score": 0.7,
                }
            )
    return events


def of(dep: Deployment, topic: str, component: str, field: str = "component") -> list[dict]:
    return [e for e in dep.read(topic) if component in str(e.get(field, e.get("subject")))]


def test_success_rate_drop_gives_trend_insight_and_escalating_alert(dep: Deployment) -> None:
    comp = f"enricher-{dep.run_id}"
    dep.produce("decisions", decision_logs(comp, DROP), key_field="component")

    def escalated() -> list[dict]:
        alerts = of(dep, "alerts", comp)
        return [a for a in alerts if a["escalation_level"] == 1] and alerts

    alerts = wait_for(escalated, what="escalated alert")
    insights = wait_for(
        lambda: [i for i in of(dep, "insights", comp, "subject") if i["kind"] == "trend"],
        what="trend insight",
    )
    time.sleep(3)  # further evaluation passes must not repeat anything
    alerts = of(dep, "alerts", comp)
    assert [(a["severity"], a["escalation_level"]) for a in alerts] == [
        ("warning", 0),
        ("warning", 1),
    ]
    assert alerts[0]["value"] == pytest.approx(0.78) and alerts[0]["threshold"] == 0.8
    assert alerts[1]["dimensions"]["consecutive_failures"] == "3"

    insights = of(dep, "insights", comp, "subject")
    assert len({i["event_id"] for i in insights}) == len(insights)  # each revision once
    overall = [i for i in insights if i["subject"] == comp and i["kind"] == "trend"]
    assert len(overall) == 1
    trend = overall[0]
    assert trend["priority"] == "high" and trend["evidence"]["direction"] == "declining"
    assert trend["evidence"]["metric"] == "success_rate"
    assert trend["evidence"]["slope_per_hour"] < 0 and trend["evidence"]["p_value"] < 0.001
    assert any(i["kind"] == "health" for i in insights)

    status, body = dep.workers[0].get_json(f"/insights/windows/{comp}")
    assert status == 200 and len(body["windows"]) == 12
    newest = body["windows"][0]["groups"]["all"]
    assert newest["success_rate"]["value"] == pytest.approx(0.66)
    assert newest["latency_p95"]["value"] == pytest.approx(120.0, rel=0.04)
    assert body["evaluated_through"] == body["windows"][0]["start"]
    status, body = dep.workers[0].get_json("/insights")
    assert trend["insight_id"] in {i["insight_id"] for i in body["insights"]}

    with psycopg.connect(dep.settings.database_url) as conn:
        rows = conn.execute(
            "SELECT kind, priority, status FROM insights WHERE insight_id = %s",
            (trend["insight_id"],),
        ).fetchall()
        assert rows == [("trend", "high", "active")]
        n_alerts = conn.execute(
            "SELECT count(*) FROM insight_alerts WHERE component = %s", (comp,)
        ).fetchone()
        assert n_alerts == (2,)
        n_windows = conn.execute(
            "SELECT count(*), sum((stats->'decisions'->'all'->>0)::float) FROM insight_windows"
            " WHERE component = %s",
            (comp,),
        ).fetchone()
        assert n_windows == (12, 1200.0)


def metric_event(component: str, n: int, value: float, ts: int) -> dict[str, Any]:
    return {
        "event_id": f"{component}-m{n}",
        "schema_version": 1,
        "ts": ts,
        "component": component,
        "metric": "engagement",
        "value": value,
        "unit": "score",
        "dimensions": {"device": "mobile"},
    }


def redis_window(dep: Deployment, component: str, start: int) -> dict[str, Any] | None:
    client = redis.Redis.from_url(dep.settings.redis_url)
    raw = client.hget(f"{dep.settings.topic_prefix}insight-window:{component}|{start}", "value")
    return orjson.loads(raw) if raw else None


def test_replayed_metrics_change_nothing(dep: Deployment) -> None:
    comp = f"app-{dep.run_id}"
    t0 = base_ts()
    events = [metric_event(comp, n, float(n), t0 + n) for n in range(10)]
    dep.produce("metrics", events, key_field="component")

    def counted(n: int) -> Callable[[], bool]:
        def check() -> bool:
            win = redis_window(dep, comp, t0)
            return bool(win) and win["metrics"]["engagement"]["all"][0] == n

        return check

    wait_for(counted(10), what="first pass")
    before = redis_window(dep, comp, t0)
    dep.produce("metrics", events[3:8], key_field="component")  # same ids, new offsets
    dep.produce("metrics", [metric_event(comp, 99, 100.0, t0 + 99)], key_field="component")
    wait_for(counted(11), what="marker")
    after = redis_window(dep, comp, t0)
    assert before is not None and after is not None
    assert after["metrics"]["engagement"]["all"] == [11, 145.0, 285.0 + 10_000.0, 0.0, 100.0]
    assert after["metrics"]["engagement"]["device=mobile"][0] == 11
    assert after["version"] == before["version"] + 1


def actions_for(dep: Deployment, insight_ids: set[str]) -> list[dict[str, Any]]:
    return [a for a in dep.read("actions") if a.get("insight_id") in insight_ids]


def test_low_confidence_insight_acted_on_by_greedy_not_conservative(dep: Deployment) -> None:
    comp = f"scorer-{dep.run_id}"
    dep.produce("decisions", decision_logs(comp, MILD), key_field="component")
    found = wait_for(
        lambda: [i for i in of(dep, "insights", comp, "subject") if i["kind"] == "trend"],
        what="mild trend insight",
    )
    ids = {i["insight_id"] for i in found}
    assert all(0.3 < i["confidence"] < 0.6 for i in found), found
    time.sleep(5)  # more than two conservative optimization cycles
    assert actions_for(dep, ids) == []

    env = {**dep.base_env, **dep.extra_env}
    run = subprocess.run(
        [sys.executable, "-m", "loopwise.cli.main", "optimize", "--strategy", "greedy",
         "--component", comp],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    acted = wait_for(lambda: actions_for(dep, ids), what="greedy action")
    assert {a["strategy"] for a in acted} == {"greedy"}
    for a in acted:
        assert a["reason"] and a["source"] == "insights"
    with psycopg.connect(dep.settings.database_url) as conn:
        recorded = conn.execute(
            "SELECT action_id, strategy FROM optimization_actions WHERE insight_id = ANY(%s)",
            (list(ids),),
        ).fetchall()
    assert {a for a, _ in recorded} == {a["action_id"] for a in acted}


def cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**dep.base_env, **dep.extra_env}
    return subprocess.run(
        [sys.executable, "-m", "loopwise.cli.main", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_tickets_lifecycle_and_report(dep: Deployment, tmp_path: Path) -> None:
    comp = f"ranker-{dep.run_id}"
    events = decision_logs(comp, DROP)
    dep.produce("decisions", events, key_field="component")

    def ticket_ids() -> list[str]:
        run = cli(dep, "tickets", "list")
        assert run.returncode == 0, run.stderr
        return [line.split()[0] for line in run.stdout.splitlines() if comp in line]

    wait_for(ticket_ids, what="tickets for the high-priority insights")
    with psycopg.connect(dep.settings.database_url) as conn:
        (ticket,) = conn.execute(
            "SELECT t.ticket_id FROM improvement_tickets t JOIN insights i"
            " USING (deployment, insight_id) WHERE t.deployment = %s AND i.subject = %s"
            " AND i.kind = 'trend'",
            (dep.settings.topic_prefix, comp),
        ).fetchone()
    refused = cli(dep, "tickets", "update", ticket, "--status", "measured")
    assert refused.returncode == 1 and "open -> measured is not allowed" in refused.stderr
    assert cli(dep, "tickets", "update", ticket, "--status", "in_progress").returncode == 0
    change_at = str(events[0]["ts"] - events[0]["ts"] % W + 6 * W)  # start of window 6
    done = cli(dep, "tickets", "update", ticket, "--status", "implemented", "--at", change_at,
               "--cost", "10")  # fmt: skip
    assert done.returncode == 0, done.stderr
    measured = cli(dep, "tickets", "update", ticket, "--status", "measured")
    assert measured.returncode == 0, measured.stderr
    with psycopg.connect(dep.settings.database_url) as conn:
        status, impact = conn.execute(
            "SELECT status, impact FROM improvement_tickets WHERE deployment = %s"
            " AND ticket_id = %s",
            (dep.settings.topic_prefix, ticket),
        ).fetchone()
    # Windows 2-4 (0.93, 0.92, 0.90) before, 7-9 (0.82, 0.78, 0.74) after the change.
    assert status == "measured"
    assert (impact["n_before"], impact["n_after"]) == (300, 300)
    assert impact["before"] == pytest.approx(0.9167, abs=1e-4)
    assert impact["after"] == pytest.approx(0.78)
    assert impact["ci_low"] < impact["difference"] < impact["ci_high"] < 0
    assert impact["roi"] == pytest.approx((impact["difference"] * 300 * 2 - 10) / 10)
    show = cli(dep, "tickets", "show", ticket)
    assert "impact on success_rate" in show.stdout and "implemented" in show.stdout

    report = cli(dep, "report", "--days", "1", "--out", str(tmp_path))
    assert report.returncode == 0, report.stderr
    paths = dict(line.split(maxsplit=1) for line in report.stdout.splitlines())
    doc = orjson.loads(Path(paths["json"]).read_bytes())
    assert comp in doc["performance"] and doc["tickets"]["by_status"].get("measured") == 1
    page = Path(paths["html"]).read_text()
    assert "<h2>Executive summary</h2>" in page and ".png" in page

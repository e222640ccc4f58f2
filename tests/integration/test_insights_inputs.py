"""The insights agent on the other agents' outputs, end to end on real Kafka, Redis and
PostgreSQL (one worker).

A ``weights.algorithms`` record with a disabled algorithm and an ``experiments.results``
record of a concluded experiment with a significant winner each give one insight on
``insights`` and one row in PostgreSQL — although every record is produced twice and a newer
version repeats the finding; a record that breaks its schema is dead-lettered and the agent
goes on. An optimization cycle turns the two insights into ``promote_winner`` and
``disable_algorithm`` actions for their targets. The report lists only its own
deployment's experiments.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.experiments import store
from agents.insights.reports import build_report, collect
from streams.config import REPO_ROOT
from streams.harness import Deployment

pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def dep(log_dir: Path) -> Iterator[Deployment]:
    d = Deployment.create(
        log_dir,
        name="insin",
        # The leader's own cycles must not act before the test asks for a strategy.
        LOOPWISE_OPTIMIZATION_STRATEGY="conservative",
        LOOPWISE_REPORT_INTERVAL_H="0",
    )
    d.create_topics()
    d.start_worker()
    yield d
    d.stop()
    d.delete_topics()


def algorithm_weights(version: int) -> dict[str, Any]:
    def algo(name: str, a: float, b: float, prob_best: float, disabled: bool) -> dict[str, Any]:
        return {"name": name, "alpha": a, "beta": b, "mean": a / (a + b),
                "prob_best": prob_best, "disabled": disabled, "weight": 0.3}  # fmt: skip

    return {
        "event_id": f"alg:regular:{version}",
        "schema_version": 1,
        "ts": int(time.time() * 1000),
        "segment": "regular",
        "algorithms": [
            algo("collab", 400.0 + version, 9600.0, 0.62, False),
            algo("content", 380.0, 9620.0, 0.38, False),
            algo("popular", 3.0, 1997.0 + version, 0.0, True),
        ],
        "exploration_rate": 0.1,
        "seed": 7,
        "mode": "stationary",
        "version": version,
    }


def experiment_result(experiment_id: str, version: int) -> dict[str, Any]:
    n = 3000 + 10 * version
    return {
        "event_id": f"res:{experiment_id}:{version}",
        "schema_version": 1,
        "ts": int(time.time() * 1000),
        "experiment_id": experiment_id,
        "version": version,
        "computed_at": int(time.time() * 1000),
        "status": "concluded",
        "primary_metric": "conversion",
        "total_units": 2 * n,
        "variants": [
            {"name": "control", "n": n, "conversions": n // 10},
            {"name": "treatment", "n": n, "conversions": n * 13 // 100},
        ],
        "comparisons": [
            {
                "variant": "treatment",
                "metric": "conversion",
                "role": "primary",
                "difference": 0.03,
                "ci": [0.014, 0.046],
                "lift": 0.3,
                "lift_ci": [0.14, 0.46],
                "p_value": 0.0002,
                "p_value_holm": 0.0002,
                "chance_to_beat_control": 0.9999,
                "sequential_p_value": 0.004,
                "sequential_p_value_holm": 0.004,
                "sequential_decision": "reject_null",
            },
        ],
        "srm": {"p_value": 0.8, "sequential_p": 1.0, "tier": "ok"},
        "power": {"achieved_power": 0.97, "required_sample_size": 1800},
    }


def insights_about(dep: Deployment, subject: str) -> list[dict[str, Any]]:
    return [i for i in dep.read("insights") if i["subject"] == subject]


def cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**dep.base_env, **dep.extra_env}
    return subprocess.run(
        [sys.executable, "-m", "loopwise.cli.main", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_disabled_algorithm_and_experiment_winner_are_one_insight_each(dep: Deployment) -> None:
    exp = f"exp-{dep.run_id}"
    first_weights, first_result = algorithm_weights(1), experiment_result(exp, 5)
    dep.produce("weights.algorithms", [first_weights, first_weights], key_field="segment")
    dep.produce("experiments.results", [first_result, first_result], key_field="experiment_id")
    dep.produce("experiments.results", [b'{"experiment_id": "x", "version": 1}'])
    # Newer versions that report the same findings again.
    dep.produce("weights.algorithms", [algorithm_weights(2)], key_field="segment")
    dep.produce("experiments.results", [experiment_result(exp, 6)], key_field="experiment_id")

    algo_subject = "bandits/segment=regular/algorithm=popular"
    exp_subject = f"experiments/experiment={exp}"
    wait_for(lambda: insights_about(dep, algo_subject), what="disabled-algorithm insight")
    wait_for(lambda: insights_about(dep, exp_subject), what="winner insight")

    def refreshed() -> bool:  # the newest versions were applied (their numbers in PostgreSQL)
        with psycopg.connect(dep.settings.database_url) as conn:
            rows = conn.execute(
                "SELECT (evidence->>'version')::int, (evidence->>'result_version')::int"
                " FROM insights WHERE deployment = %s ORDER BY subject",
                (dep.settings.topic_prefix,),
            ).fetchall()
        return rows == [(2, None), (None, 6)]

    wait_for(refreshed, what="the newer versions applied")
    time.sleep(2)  # nothing more may come
    (algo_event,) = insights_about(dep, algo_subject)
    (exp_event,) = insights_about(dep, exp_subject)
    assert algo_event["kind"] == "underperformance" and algo_event["priority"] == "medium"
    assert algo_event["evidence"]["action_kind"] == "disable_algorithm"
    assert algo_event["evidence"]["best_algorithm"] == "collab"
    assert algo_event["evidence"]["version"] == 1 and algo_event["confidence"] == 1.0
    assert exp_event["kind"] == "experiment" and exp_event["priority"] == "high"
    assert exp_event["evidence"]["winner"] == "treatment"
    assert exp_event["evidence"]["action_kind"] == "promote_winner"
    assert exp_event["evidence"]["lift"] == 0.3
    assert exp_event["confidence"] == pytest.approx(0.996)
    assert exp_event["event_id"] == f"{exp_event['insight_id']}:1"

    with psycopg.connect(dep.settings.database_url) as conn:
        rows = conn.execute(
            "SELECT subject, revision, status, action_kind, action_params->>'target'"
            " FROM insights WHERE deployment = %s ORDER BY subject",
            (dep.settings.topic_prefix,),
        ).fetchall()
    assert rows == [
        (algo_subject, 1, "active", "disable_algorithm", "recommendation-orchestrator"),
        (exp_subject, 1, "active", "promote_winner", exp),
    ]

    dead = [d for d in dep.read("deadletter") if d["source"]["topic"].endswith("results")]
    assert [d["error_kind"] for d in dead] == ["schema_violation"]

    run = cli(dep, "optimize", "--strategy", "greedy")
    assert run.returncode == 0, run.stderr
    ids = {algo_event["insight_id"], exp_event["insight_id"]}
    actions = wait_for(
        lambda: [a for a in dep.read("actions") if a.get("insight_id") in ids], what="actions"
    )
    by_kind = {a["kind"]: a for a in actions}
    assert len(actions) == 2 and set(by_kind) == {"promote_winner", "disable_algorithm"}
    assert by_kind["promote_winner"]["target"] == exp
    assert by_kind["promote_winner"]["parameters"]["variant"] == "treatment"
    assert by_kind["disable_algorithm"]["target"] == "recommendation-orchestrator"
    assert by_kind["disable_algorithm"]["parameters"]["algorithm"] == "popular"


def test_report_lists_only_its_own_deployments_experiments(dep: Deployment) -> None:
    definition = store.validate_definition(
        {
            "experiment_id": f"own-{dep.run_id}",
            "name": "own",
            "control": "control",
            "mde": 0.02,
            "variants": [{"name": "control", "weight": 1}, {"name": "b", "weight": 1}],
            "primary_metric": {"name": "conversion", "type": "binary"},
        }
    )
    other = {**definition, "experiment_id": f"other-{dep.run_id}"}
    mine = dep.settings.topic_prefix
    ids = [definition["experiment_id"], other["experiment_id"]]
    with psycopg.connect(dep.settings.database_url, autocommit=True) as conn:
        try:
            store.create(conn, definition, mine)
            store.create(conn, other, f"elsewhere-{dep.run_id}.")
            now = int(time.time() * 1000)
            raw = collect(conn, mine, now - 86_400_000, now)
        finally:
            conn.execute("DELETE FROM experiments WHERE experiment_id = ANY(%s)", (ids,))
    report = build_report(raw, deployment=mine, kind="on_demand", generated_ms=now)
    listed = {e["experiment_id"] for e in report["experiments"]["items"]}
    assert report["experiments"]["available"]
    assert f"own-{dep.run_id}" in listed and f"other-{dep.run_id}" not in listed
    own = next(e for e in report["experiments"]["items"] if e["experiment_id"].startswith("own"))
    assert own["primary_metric"] == "conversion"

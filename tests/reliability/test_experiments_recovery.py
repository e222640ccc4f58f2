"""Crashes of the experiments agent change no count.

A worker killed between the unit records and the aggregate (the unit records reach the
changelog, the aggregate does not), then one killed after the table write (before any sink
or output), then a clean worker: the final result equals the truth exactly, and every sink
agrees.
"""

from __future__ import annotations

import pytest

from agents.experiments import store
from streams.harness import Deployment
from tests.integration.test_experiments_pipeline import (
    definition,
    final_result,
    forget,
    make_truth,
    of,
    pg,
    redis_result,
    wait_for,
)
from tests.reliability import summary

# make test-reliability only (about 40 s); make test runs the preferences kill test.
pytestmark = [pytest.mark.integration, pytest.mark.long]


def test_crashes_between_units_aggregate_and_sinks_change_no_count(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.extra_env["LOOPWISE_EXPERIMENT_RESULTS_INTERVAL_S"] = "0.2"
    exp = f"crash-{dep.run_id}"
    d = store.validate_definition(definition(exp, min_sample_size=100_000))
    experiment = store.with_connection(dep.settings, lambda conn: store.create(conn, d))
    store.announce_sync(dep.settings, experiment)

    truth = make_truth(exp, {"control": 0.10, "treatment": 0.13}, 3000, seed=3)
    half = len(truth.exposures) // 2
    first_units = {e["unit_id"] for e in truth.exposures[:half]}
    exposures_1 = truth.exposures[:half]
    conversions_1 = [c for c in truth.conversions if c["unit_id"] in first_units]
    exposures_2 = truth.exposures[half:]
    conversions_2 = [c for c in truth.conversions if c["unit_id"] not in first_units]

    w0 = dep.start_worker()
    dep.produce("experiments.exposures", exposures_1, key_field="experiment_id")
    dep.produce("experiments.conversions", conversions_1, key_field="experiment_id")
    wait_for(
        lambda: (redis_result(dep, exp) or {}).get("total_units") == len(first_units),
        what="first half counted",
    )
    w0.stop()

    # It may crash while replaying the end of the first half: no need to wait for ready.
    w1 = dep.start_worker(wait=False, LOOPWISE_CRASH_AT="experiments_after_units")
    dep.produce("experiments.conversions", truth.early, key_field="experiment_id")
    dep.produce("experiments.exposures", exposures_2, key_field="experiment_id")
    dep.produce("experiments.conversions", conversions_2, key_field="experiment_id")
    assert w1.process.wait(timeout=60) == 70, w1.log_tail()

    w2 = dep.start_worker(wait=False, LOOPWISE_CRASH_AT="after_table")
    assert w2.process.wait(timeout=90) == 70, w2.log_tail()

    w3 = dep.start_worker()
    r = final_result(dep, truth)
    counts = {v["name"]: (v["n"], v["conversions"]) for v in r["variants"]}
    got_n = sum(n + c for n, c in counts.values())
    want_n = sum(truth.n[v] + truth.conv[v] for v in truth.variants)
    events = len(truth.exposures) + len(truth.conversions)
    summary.record(summary.Row("experiments agent: exits after units / after table", events,
                               "2 × exit(70) + restarts", max(0, want_n - got_n),
                               max(0, got_n - want_n)))  # fmt: skip
    assert counts == {v: (truth.n[v], truth.conv[v]) for v in truth.variants}
    assert r["srm"]["held_units"] == truth.held_units

    status, state = w3.get_json(f"/state/experiments/{exp}")
    assert status == 200
    assert state["units"] == {v: truth.n[v] for v in truth.variants}

    def sinks_agree() -> bool:
        latest = redis_result(dep, exp)
        rows = pg(dep, "SELECT result FROM experiment_results_latest WHERE experiment_id = %s", exp)
        outputs = of(dep, "experiments.results", exp)
        return bool(
            latest
            and rows
            and rows[0][0] == latest
            and max(o["version"] for o in outputs) == latest["version"]
        )

    wait_for(sinks_agree, what="Redis, PostgreSQL and the results topic to agree")
    forget(dep, exp)

"""Tests for agents.learning.health (thresholds, escalation, missed runs, retries)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.learning.health import (
    Alert,
    CheckResult,
    CheckState,
    EscalationPolicy,
    HealthState,
    RetryPolicy,
    Threshold,
    backoff_delays,
    detect_missed_runs,
    evaluate_thresholds,
    missed_runs_between,
    next_retry_delay,
    process_results,
    step_check,
)

CONVERSION = Threshold("choices", "conversion", "below", (("warning", 0.6), ("critical", 0.4)))
RANK = Threshold("choices", "avg_rank", "above", (("warning", 2.0), ("critical", 3.0)))
POLICY = EscalationPolicy()


def fail(severity: str = "warning", value: float = 0.5, t: float = 0.0) -> CheckResult:
    return CheckResult("choices", "conversion", value, t, severity, 0.6)


def ok(value: float = 0.7, t: float = 0.0) -> CheckResult:
    return CheckResult("choices", "conversion", value, t, None, None)


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("threshold", "value", "expected"),
    [
        (CONVERSION, 0.7, None),
        (CONVERSION, 0.6, None),  # limits are strict: "conversion < 60 %"
        (CONVERSION, 0.59, "warning"),
        (CONVERSION, 0.4, "warning"),
        (CONVERSION, 0.39, "critical"),
        (RANK, 2.0, None),
        (RANK, 2.01, "warning"),
        (RANK, 3.5, "critical"),
        (CONVERSION, float("nan"), None),
    ],
)
def test_threshold_direction_and_severity(threshold, value, expected):
    assert threshold.severity_of(value) == expected


def test_level_order_in_the_config_does_not_matter():
    flipped = Threshold("choices", "conversion", "below", (("critical", 0.4), ("warning", 0.6)))
    for v in (0.7, 0.5, 0.3):
        assert flipped.severity_of(v) == CONVERSION.severity_of(v)


@pytest.mark.parametrize("levels", [(), (("warning", 0.6), ("warning", 0.5)), (("urgent", 0.1),)])
def test_invalid_thresholds(levels):
    with pytest.raises(ValueError):
        Threshold("c", "m", "below", levels)


def test_evaluate_batch_keeps_time_order_and_skips_unknown_and_nan():
    results = evaluate_thresholds(
        [CONVERSION, RANK],
        ["choices", "choices", "choices", "api", "choices"],
        ["avg_rank", "conversion", "conversion", "conversion", "satisfaction"],
        [3.2, np.nan, 0.3, 0.1, 2.0],
        [30.0, 10.0, 20.0, 5.0, 1.0],
    )
    assert [(r.metric, r.timestamp, r.severity, r.limit) for r in results] == [
        ("conversion", 20.0, "critical", 0.4),
        ("avg_rank", 30.0, "critical", 3.0),
    ]
    assert all(r.failing for r in results)


def test_duplicate_thresholds_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_thresholds([CONVERSION, CONVERSION], ["choices"], ["conversion"], [0.5])


# --------------------------------------------------------------------------- escalation


def test_pass_on_a_passing_check_emits_nothing():
    state, alert = step_check(CheckState(), ok(), POLICY)
    assert state == CheckState() and alert is None


def test_first_failure_fires_at_level_zero():
    state, alert = step_check(CheckState(), fail(t=5.0), POLICY)
    assert alert is not None
    assert (alert.status, alert.severity, alert.level, alert.consecutive_failures) == (
        "firing",
        "warning",
        0,
        1,
    )
    assert alert.dedup_key == "choices|conversion|warning|0"
    assert state == CheckState(1, 0, "warning", "choices|conversion|warning|0", 5.0)


def test_unchanged_failure_is_not_re_emitted():
    state, _ = step_check(CheckState(), fail(), POLICY)
    state, alert = step_check(state, fail(), POLICY)
    assert alert is None and state.consecutive_failures == 2


def test_third_consecutive_failure_escalates():
    state = CheckState()
    emitted = []
    for _ in range(3):
        state, alert = step_check(state, fail(), POLICY)
        emitted.append(alert)
    assert emitted[1] is None
    assert emitted[2] is not None and emitted[2].level == 1
    assert emitted[2].dedup_key == "choices|conversion|warning|1"
    assert state.level == 1


def test_escalation_continues_and_is_capped():
    policy = EscalationPolicy(escalate_after=2, max_level=2)
    state, levels = CheckState(), []
    for _ in range(9):
        state, alert = step_check(state, fail(), policy)
        levels.append(None if alert is None else alert.level)
    assert levels == [0, 1, None, 2, None, None, None, None, None]
    assert state.consecutive_failures == 9 and state.level == 2


def test_severity_change_re_emits_without_resetting_the_streak():
    state, _ = step_check(CheckState(), fail("warning", t=1.0), POLICY)
    state, alert = step_check(state, fail("critical", 0.3, t=2.0), POLICY)
    assert alert is not None and alert.severity == "critical" and alert.level == 0
    assert state.consecutive_failures == 2 and state.failing_since == 1.0
    state, alert = step_check(state, fail("warning", t=3.0), POLICY)  # back down, escalates
    assert alert is not None and (alert.severity, alert.level) == ("warning", 1)


def test_recovery_resolves_once_and_resets():
    state = CheckState()
    for _ in range(4):
        state, _ = step_check(state, fail(), POLICY)
    state, alert = step_check(state, ok(t=9.0), POLICY)
    assert alert is not None
    assert (alert.status, alert.level, alert.consecutive_failures, alert.dedup_key) == (
        "resolved",
        0,
        4,
        "choices|conversion|resolved",
    )
    assert state == CheckState()
    state, alert = step_check(state, ok(), POLICY)
    assert alert is None


def test_failure_after_recovery_starts_again_at_level_zero():
    state = CheckState()
    for _ in range(3):
        state, _ = step_check(state, fail(), POLICY)
    state, _ = step_check(state, ok(), POLICY)
    state, alert = step_check(state, fail(), POLICY)
    assert alert is not None and alert.level == 0 and state.consecutive_failures == 1


def test_process_results_tracks_checks_independently():
    results = evaluate_thresholds(
        [CONVERSION, RANK],
        ["choices"] * 8,
        ["conversion", "avg_rank"] * 4,
        [0.5, 1.0, 0.5, 2.5, 0.5, 1.0, 0.7, 1.0],
        np.arange(8.0),
    )
    state, alerts = process_results(HealthState(), results, POLICY)
    assert [(a.metric, a.status, a.level) for a in alerts] == [
        ("conversion", "firing", 0),
        ("avg_rank", "firing", 0),
        ("conversion", "firing", 1),
        ("avg_rank", "resolved", 0),
        ("conversion", "resolved", 0),
    ]
    assert state.checks == {}


def test_process_results_continues_from_previous_state_across_batches():
    state, first = process_results(HealthState(), [fail(), fail()], POLICY)
    assert state.get("choices", "conversion").consecutive_failures == 2
    state, second = process_results(state, [fail()], POLICY)
    assert [a.level for a in first] == [0] and [a.level for a in second] == [1]


def test_health_state_round_trips_through_json():
    state, _ = process_results(
        HealthState(), [fail(t=1.0), fail(t=2.0), fail("critical", 0.2, t=3.0)], POLICY
    )
    again = HealthState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    _, alerts = process_results(again, [fail("critical", 0.2)], POLICY)
    assert alerts == []  # de-duplication survives the round trip


def test_alert_to_dict_is_json_safe():
    alert = Alert("c", "m", "firing", "warning", 0, 1.0, 0.5, 1, "c|m|warning|0", float("nan"))
    assert json.loads(json.dumps(alert.to_dict()))["timestamp"] is None


# --------------------------------------------------------------------------- missed runs


def test_missed_runs_boundaries():
    r = detect_missed_runs(np.zeros(5), 100.0, 30.0, grace=10.0)
    assert r.missed.all() and r.overdue.tolist() == [60.0] * 5
    # deadline at 40 s; runs due at 30, 60, 90 with deadlines 40, 70, 100 (strict).
    assert r.missed_runs.tolist() == [2] * 5
    edges = detect_missed_runs(np.array([60.0, 59.0, 0.0]), 100.0, 30.0, grace=10.0)
    assert edges.missed.tolist() == [False, True, True]
    assert edges.overdue.tolist() == [0.0, 1.0, 60.0]
    assert edges.next_due.tolist() == [90.0, 89.0, 30.0]


def test_missed_runs_per_job_intervals():
    r = detect_missed_runs(
        np.array([0.0, 500.0, 900.0]), 1000.0, np.array([100.0, 600.0, 60.0]), np.array([0, 50, 5])
    )
    assert r.missed.tolist() == [True, False, True]
    assert r.missed_runs.tolist() == [9, 0, 1]  # job 3: the run due at 960 is missed
    assert r.overdue.tolist() == [900.0, 0.0, 35.0]


def test_missed_runs_between_heartbeats():
    beats = np.array([0.0, 60.0, 130.0, 190.0, 500.0])
    assert missed_runs_between(beats, 60.0, grace=5.0).tolist() == [0, 1, 0, 5]
    assert missed_runs_between(beats[::-1], 60.0, grace=5.0).tolist() == [0, 1, 0, 5]
    assert missed_runs_between(np.array([1.0]), 60.0).tolist() == []


@pytest.mark.parametrize(("interval", "grace"), [(0.0, 0.0), (10.0, -1.0)])
def test_missed_runs_rejects_bad_schedule(interval, grace):
    with pytest.raises(ValueError):
        detect_missed_runs(np.zeros(1), 1.0, interval, grace)


# --------------------------------------------------------------------------- retries


def test_backoff_without_jitter_doubles_and_caps():
    policy = RetryPolicy(base_delay=0.5, factor=3.0, max_delay=20.0, jitter="none")
    rng = np.random.default_rng(0)
    assert backoff_delays(policy, np.arange(6), rng).tolist() == [0.5, 1.5, 4.5, 13.5, 20.0, 20.0]
    assert backoff_delays(policy, 5000, rng).tolist() == 20.0  # no overflow


def test_full_jitter_is_uniform_below_the_capped_delay():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    attempts = np.repeat(np.arange(5), 4000)
    d = backoff_delays(policy, attempts, np.random.default_rng(31))
    caps = np.array([1.0, 2.0, 4.0, 8.0, 8.0])
    for a, cap in enumerate(caps):
        got = d[attempts == a]
        assert got.min() >= 0 and got.max() <= cap
        # uniform on [0, cap]: mean cap/2, SE cap/sqrt(12 * 4000) ~ 0.0046 cap
        assert got.mean() == pytest.approx(cap / 2, rel=0.03)


def test_equal_jitter_keeps_half_the_delay():
    policy = RetryPolicy(base_delay=2.0, max_delay=16.0, jitter="equal")
    attempts = np.repeat(np.arange(4), 2000)
    d = backoff_delays(policy, attempts, np.random.default_rng(32))
    caps = policy.capped_delay(attempts)
    assert np.all(d >= caps / 2) and np.all(d <= caps)
    assert d.mean() == pytest.approx(0.75 * caps.mean(), rel=0.03)


def test_jitter_is_reproducible_from_the_seed():
    policy = RetryPolicy()
    a = backoff_delays(policy, np.arange(5), np.random.default_rng(7))
    b = backoff_delays(policy, np.arange(5), np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_next_retry_delay_stops_after_max_attempts():
    policy = RetryPolicy(max_attempts=3, jitter="none", base_delay=1.0)
    rng = np.random.default_rng(0)
    assert [next_retry_delay(policy, a, rng) for a in range(5)] == [1.0, 2.0, 4.0, None, None]
    assert next_retry_delay(RetryPolicy(max_attempts=0), 0, rng) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": 0.5},
        {"base_delay": 10.0, "max_delay": 1.0},
        {"jitter": "random"},
        {"max_attempts": -1},
    ],
)
def test_invalid_retry_policies(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)

"""Ticket impact over matched windows recovers a simulated lift within its interval."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agents.insights.tickets import TRANSITIONS, measure_impact, measured_metric
from agents.insights.windows import WindowState, apply_decisions
from agents.learning.impact import matched_windows

H = 3_600_000
CHANGE = 100 * H


def simulate(rng: np.random.Generator, p_before: float, p_after: float,
             latency_shift: float = 0.0) -> list[tuple[int, int, dict]]:  # fmt: skip
    """Hourly windows 24 h either side of CHANGE, 200 decisions each."""
    rows = []
    for k in range(-24, 24):
        start = CHANGE + k * H
        after = start >= CHANGE
        p = p_after if after else p_before
        st = WindowState("c", start, start + H)
        events = [
            {"success": bool(rng.uniform() < p), "confidence": 0.5, "quality_score": 0.7,
             "processing_time_ms": float(rng.normal(200 - (latency_shift if after else 0), 20))}
            for _ in range(200)
        ]  # fmt: skip
        apply_decisions([st], [0] * len(events), events, 32)
        rows.append((st.start, st.end, st.stats()))
    return rows


def test_rate_impact_recovers_the_true_lift() -> None:
    rng = np.random.default_rng(42)
    rows = simulate(rng, 0.70, 0.75)
    mw = matched_windows(CHANGE, 20 * H, washout=H)
    result, bounds = measure_impact(rows, "success_rate", "all", mw,
                                    value_per_conversion=2.0, cost=500.0)  # fmt: skip
    assert result.kind == "rate" and result.n_before == result.n_after == 20 * 200
    assert result.ci_low < 0.05 < result.ci_high
    assert result.significant
    assert result.relative_lift == pytest.approx(result.after / result.before - 1)
    # ROI = (difference * n_after * value - cost) / cost, its interval from the difference's.
    want = (result.difference * result.n_after * 2.0 - 500.0) / 500.0
    assert result.roi == pytest.approx(want)
    assert result.roi_ci_low < result.roi < result.roi_ci_high
    assert bounds["before_end"] == CHANGE - H and bounds["after_start"] == CHANGE + H


def test_the_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    mw = matched_windows(CHANGE, 10 * H, washout=H)
    covered = 0
    runs = 60
    for _ in range(runs):
        rows = simulate(rng, 0.60, 0.64)
        result, _ = measure_impact(rows, "success_rate", "all", mw)
        covered += result.ci_low <= 0.04 <= result.ci_high
    assert covered / runs >= 0.85


def test_mean_metrics_and_quantiles_use_welch() -> None:
    rng = np.random.default_rng(3)
    rows = simulate(rng, 0.7, 0.7, latency_shift=15.0)
    mw = matched_windows(CHANGE, 20 * H, washout=H)
    result, bounds = measure_impact(rows, "latency_p95", "all", mw)
    assert bounds["metric"] == "latency_mean" == measured_metric("latency_p95")
    assert result.kind == "mean" and result.df is not None
    assert result.ci_low < -15.0 < result.ci_high


def test_partial_after_window_shrinks_both_sides() -> None:
    rows = simulate(np.random.default_rng(1), 0.7, 0.8)
    mw = matched_windows(CHANGE, 20 * H, washout=H, now=CHANGE + 6 * H)
    result, _ = measure_impact(rows, "success_rate", "all", mw)
    assert result.n_before == result.n_after == 5 * 200


def test_lifecycle_is_linear_with_closing_from_anywhere() -> None:
    order = ["open", "in_progress", "implemented", "measured", "closed"]
    for a, b in itertools.pairwise(order):
        assert b in TRANSITIONS[a]
    assert all("closed" in TRANSITIONS[s] for s in order[:-1])
    assert TRANSITIONS["closed"] == set()
    assert "measured" not in TRANSITIONS["open"]

"""Window summaries of the insights agent: aggregation, merging, quantiles, idempotency."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agents.insights.windows import (
    DECISION_FIELDS,
    WindowState,
    apply_decisions,
    apply_metrics,
    build_series,
    event_id_hash,
    histogram_quantiles,
    merge_stats,
    metric_summary,
    window_start,
    window_values,
)

METHODS = ["rules", "llm", "hybrid"]


def decisions(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ev: dict[str, Any] = {
            "event_id": f"d{seed}-{i}",
            "ts": 1_000 + i,
            "component": "c",
            "method": METHODS[rng.integers(3)],
            "confidence": float(rng.uniform()),
            "processing_time_ms": float(rng.lognormal(5, 1)),
            "success": bool(rng.uniform() < 0.7),
        }
        if rng.uniform() < 0.8:
            ev["quality_score"] = float(rng.uniform())
        if rng.uniform() < 0.5:
            ev["success_indicator"] = bool(rng.uniform() < 0.3)
        if rng.uniform() < 0.6:
            ev["persona"] = ["a", "b"][rng.integers(2)]
        out.append(ev)
    return out


def fresh() -> WindowState:
    return WindowState(component="c", start=0, end=1_800_000)


def test_decision_sums_match_a_direct_computation() -> None:
    events = decisions(400)
    st = fresh()
    apply_decisions([st], [0] * len(events), events, max_groups=32)
    for group, members in {
        "all": events,
        "method=llm": [e for e in events if e["method"] == "llm"],
        "persona=b": [e for e in events if e.get("persona") == "b"],
    }.items():
        row = dict(zip(DECISION_FIELDS, st.decisions[group], strict=True))
        assert row["n"] == len(members)
        assert row["success"] == sum(e["success"] for e in members)
        q = [e["quality_score"] for e in members if "quality_score" in e]
        assert row["q_n"] == len(q)
        assert row["q_sum"] == pytest.approx(sum(q))
        si = [e["success_indicator"] for e in members if "success_indicator" in e]
        assert (row["si_n"], row["si"]) == (len(si), sum(si))
        lat = np.array([e["processing_time_ms"] for e in members])
        assert row["lat_sum"] == pytest.approx(lat.sum())
        assert sum(st.hist[group].values()) == len(members)
    assert "device=mobile" not in st.decisions


def test_batches_are_mergeable() -> None:
    events = decisions(300, seed=3)
    one = fresh()
    apply_decisions([one], [0] * 300, events, 32)
    parts = [fresh(), fresh(), fresh()]
    for k, st in enumerate(parts):
        chunk = events[k * 100 : (k + 1) * 100]
        apply_decisions([st], [0] * 100, chunk, 32)
    merged = merge_stats(p.stats() for p in parts)
    for group, row in one.decisions.items():
        np.testing.assert_allclose(merged["decisions"][group], row)
    assert window_values(merged)["latency_p95"] == pytest.approx(
        window_values(one.stats())["latency_p95"]
    )
    # Incremental batches into one value equal one batch.
    inc = fresh()
    for k in range(3):
        apply_decisions([inc], [0] * 100, events[k * 100 : (k + 1) * 100], 32)
    for group, row in one.decisions.items():
        np.testing.assert_allclose(inc.decisions[group], row)
    assert inc.hist == one.hist


def test_latency_percentiles_from_the_histogram_are_within_bin_error() -> None:
    rng = np.random.default_rng(7)
    lat = rng.lognormal(6, 1.2, size=20_000)
    events = [
        {"processing_time_ms": float(x), "success": True, "confidence": 0.5, "method": "m"}
        for x in lat
    ]
    st = fresh()
    apply_decisions([st], [0] * len(events), events, 32)
    got = histogram_quantiles(st.hist["all"], [0.5, 0.95, 0.99])
    want = np.quantile(lat, [0.5, 0.95, 0.99])
    np.testing.assert_allclose(got, want, rtol=0.04)
    values = window_values(st.stats())
    assert values["latency_p99"][0] == pytest.approx(got[2])


def test_several_windows_in_one_batch() -> None:
    events = decisions(60)
    states = [fresh(), WindowState("c", 1_800_000, 3_600_000), WindowState("d", 0, 1_800_000)]
    owner = [i % 3 for i in range(60)]
    apply_decisions(states, owner, events, 32)
    for k, st in enumerate(states):
        assert st.decisions["all"][0] == 20
        assert st.decisions["all"][1] == sum(e["success"] for e in events[k::3])


def test_group_cap_folds_extra_labels_into_other() -> None:
    events = [
        {"method": f"m{i}", "success": True, "confidence": 1.0, "processing_time_ms": 5.0}
        for i in range(10)
    ]
    st = fresh()
    apply_decisions([st], [0] * 10, events, max_groups=4)
    methods = sorted(g for g in st.decisions if g.startswith("method="))
    assert methods == ["method=(other)", "method=m0", "method=m1", "method=m2", "method=m3"]
    assert st.decisions["method=(other)"][0] == 6
    assert st.overflow == 6
    # A later batch still counts known labels in their own group.
    apply_decisions([st], [0], [events[1]], max_groups=4)
    assert st.decisions["method=m1"][0] == 2


def test_metric_samples_by_name_and_dimension() -> None:
    events = [
        {"metric": "conversion", "value": v, "dimensions": {"device": d}}
        for v, d in [(0.1, "mobile"), (0.3, "mobile"), (0.5, "desktop")]
    ] + [{"metric": "engagement", "value": 4.0}]
    st = fresh()
    apply_metrics([st], [0] * 4, events, 32)
    assert st.metrics["conversion"]["all"] == pytest.approx([3, 0.9, 0.35, 0.1, 0.5])
    assert st.metrics["conversion"]["device=mobile"] == pytest.approx([2, 0.4, 0.1, 0.1, 0.3])
    assert st.metrics["engagement"]["all"] == [1, 4.0, 16.0, 4.0, 4.0]
    values = window_values(st.stats(), "device=mobile")
    assert values["conversion"] == (pytest.approx(0.2), 2)
    assert metric_summary(st.stats(), "all", "conversion") == (3, pytest.approx(0.9), 0.35)
    merged = merge_stats([st.stats(), st.stats()])
    assert merged["metrics"]["conversion"]["all"] == pytest.approx([6, 1.8, 0.7, 0.1, 0.5])


def test_pack_round_trip_and_idempotency_guards() -> None:
    st = fresh()
    apply_decisions([st], [0] * 50, decisions(50), 32)
    for i in range(5):
        st.remember(0, 100 + i, event_id_hash(f"e{i}"), max_ids=3)
    back = WindowState.unpack(st.pack())
    assert back.decisions == st.decisions and back.hist == st.hist
    assert back.offsets == [104, -1] and len(back.ids) == 3
    assert back.seen(0, 104, 1)  # replayed offset
    assert back.seen(1, 7, event_id_hash("e4"))  # same id at a new offset (any topic)
    assert not back.seen(1, 7, event_id_hash("e0"))  # evicted from the bounded id list
    assert not back.seen(0, 105, event_id_hash("new"))


def test_window_alignment() -> None:
    assert window_start(1_800_000 * 5 + 3, 1_800_000) == 1_800_000 * 5


def test_series_leave_gaps_for_missing_or_small_windows() -> None:
    wins = []
    for k, n in enumerate([30, 30, 5, 30]):
        st = WindowState("c", k * 10, (k + 1) * 10)
        ev = [
            {"success": i % 2 == 0, "confidence": 0.5, "processing_time_ms": 10.0} for i in range(n)
        ]
        apply_decisions([st], [0] * n, ev, 32)
        wins.append((st.start, st.stats()))
    series = build_series(wins[:2] + wins[2:], [0, 10, 20, 30, 40], min_samples=20)
    sr = series[("all", "success_rate")]
    assert np.isnan(sr[2]) and np.isnan(sr[4])
    np.testing.assert_allclose(sr[[0, 1, 3]], 0.5)
    assert ("all", "decisions") not in series

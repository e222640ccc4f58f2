"""Tests of agents.learning.activity_segments against the segment rules, element by element."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.learning.activity_segments import (
    SEGMENTS,
    SegmentThresholds,
    changed_segments,
    classify,
)

DAY = 86_400.0
NOW = 1_700_000_000.0


def reference_label(count: int, last: float, now: float, th: SegmentThresholds) -> str:
    """The documented precedence, one user at a time: new > inactive > power > regular."""
    if count < th.new_below:
        return "new"
    if np.isnan(last) or now - last >= th.inactive_after_s:
        return "inactive"
    if count > th.power_above:
        return "power"
    return "regular"


@pytest.mark.parametrize(
    ("count", "idle_days", "expected"),
    [
        (0, 0.0, "new"),
        (4, 0.0, "new"),
        (5, 0.0, "regular"),  # 5 interactions is no longer new
        (100, 0.0, "regular"),  # power means more than 100
        (101, 0.0, "power"),
        (50, 29.99, "regular"),
        (50, 30.0, "inactive"),  # no activity for 30 days or more
        (500, 45.0, "inactive"),  # inactivity wins over power
        (3, 400.0, "new"),  # ... but not over new
        (20, float("nan"), "inactive"),  # never active and not new
        (2, float("nan"), "new"),
    ],
)
def test_spec_boundaries_and_precedence(count: int, idle_days: float, expected: str) -> None:
    label = classify(np.array([count]), np.array([NOW - idle_days * DAY]), NOW)
    assert label.tolist() == [expected]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 300),
            st.one_of(st.floats(-10.0, 100.0), st.just(float("nan"))),
        ),
        max_size=50,
    )
)
def test_vectorised_classification_equals_the_scalar_rules(users: list[tuple[int, float]]) -> None:
    th = SegmentThresholds(new_below=3, power_above=40, inactive_after_s=7 * DAY)
    counts = np.array([c for c, _ in users], dtype=np.int64)
    last = np.array([NOW - d * DAY for _, d in users], dtype=float)
    got = classify(counts, last, NOW, th)
    assert got.tolist() == [
        reference_label(c, t, NOW, th) for c, t in zip(counts, last, strict=True)
    ]
    assert set(got.tolist()) <= set(SEGMENTS)


def test_now_may_be_given_per_user() -> None:
    counts = np.array([50, 50])
    last = np.array([0.0, 0.0])
    labels = classify(counts, last, np.array([10 * DAY, 31 * DAY]))
    assert labels.tolist() == ["regular", "inactive"]


def test_thresholds_validate() -> None:
    with pytest.raises(ValueError, match="new_below"):
        SegmentThresholds(new_below=10, power_above=5)
    with pytest.raises(ValueError, match="inactive_after_s"):
        SegmentThresholds(inactive_after_s=0)
    with pytest.raises(ValueError, match="same shape"):
        classify(np.array([1, 2]), np.array([0.0]), NOW)
    with pytest.raises(ValueError, match=">= 0"):
        classify(np.array([-1]), np.array([0.0]), NOW)


def test_changed_segments_returns_indices_of_users_whose_label_moved() -> None:
    counts = np.array([4, 5, 100, 101, 60])
    last = np.full(5, NOW - DAY)
    before = classify(counts, last, NOW)
    after = classify(counts + 1, last, NOW)  # one more interaction each
    later = classify(counts + 1, last, NOW + 30 * DAY)  # then a month of silence
    assert before.tolist() == ["new", "regular", "regular", "power", "regular"]
    assert after.tolist() == ["regular", "regular", "power", "power", "regular"]
    assert later.tolist() == ["inactive"] * 5
    assert changed_segments(before, after).tolist() == [0, 2]
    assert changed_segments(after, later).tolist() == [0, 1, 2, 3, 4]
    assert changed_segments(before, before).tolist() == []
    with pytest.raises(ValueError, match="same shape"):
        changed_segments(before, after[:2])


def test_empty_input() -> None:
    assert classify(np.array([], np.int64), np.array([]), NOW).tolist() == []

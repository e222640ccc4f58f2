"""Tests for agents.learning.customer_segments (rule-based customer segments)."""

from __future__ import annotations

import numpy as np
import pytest

from agents.learning.customer_segments import (
    SEGMENTS,
    BehaviourSummary,
    SegmentRules,
    classify_segments,
    summarise_behaviour,
)

FACTORS = ("price", "quality", "speed", "proximity", "rating")


def behaviour(lift_rows, n_choices=10, level=np.nan) -> BehaviourSummary:
    lift = np.asarray(lift_rows, dtype=float)
    shown = np.full_like(lift, 0.5)
    m = lift.shape[0]
    return BehaviourSummary(
        chosen_mean=shown + lift,
        shown_mean=shown,
        n_choices=np.broadcast_to(np.asarray(n_choices), (m,)).copy(),
        chosen_price_level=np.broadcast_to(np.asarray(level, dtype=float), (m,)).copy(),
    )


def one(stated=None, lift=None, rules=None, **kw):
    out = classify_segments(
        FACTORS,
        None if stated is None else np.array([stated], dtype=float),
        None if lift is None else behaviour([lift], **kw),
        rules,
    )
    return out.segments[0], out.rules[0]


@pytest.mark.parametrize(
    ("stated", "segment", "rule"),
    [
        ([0.5, 0.1, 0.2, 0.1, 0.1], "price_sensitive", "price_emphasis"),
        ([0.1, 0.5, 0.2, 0.1, 0.1], "quality_focused", "quality_emphasis"),
        ([0.1, 0.1, 0.5, 0.2, 0.1], "speed_priority", "speed_emphasis"),
        ([0.1, 0.1, 0.2, 0.5, 0.1], "local_preference", "proximity_emphasis"),
        ([0.2, 0.2, 0.2, 0.2, 0.2], "balanced", "no_strong_preference"),
        # The non-role factor dominates: no role factor reaches its threshold.
        ([0.1, 0.1, 0.1, 0.1, 0.6], "balanced", "no_strong_preference"),
    ],
)
def test_stated_preferences_alone(stated, segment, rule):
    assert one(stated=stated) == (segment, rule)


def test_stated_weights_are_normalised():
    assert one(stated=[5, 1, 2, 1, 1]) == ("price_sensitive", "price_emphasis")


def test_stated_threshold_is_inclusive():
    # share 3/10 exactly reaches the default threshold of 0.3.
    assert one(stated=[3, 2, 2, 2, 1]) == ("price_sensitive", "price_emphasis")
    assert one(stated=[29, 21, 20, 20, 10])[1] == "no_strong_preference"


@pytest.mark.parametrize(
    ("lift", "segment", "rule"),
    [
        ([0.2, 0.0, 0.0, 0.0, 0.0], "price_sensitive", "price_emphasis"),
        ([0.0, 0.2, 0.05, 0.0, 0.0], "quality_focused", "quality_emphasis"),
        ([0.0, 0.0, 0.15, 0.0, 0.0], "speed_priority", "speed_emphasis"),
        ([0.0, 0.05, 0.0, 0.12, 0.0], "local_preference", "proximity_emphasis"),
        ([0.05, 0.05, 0.05, 0.05, 0.3], "balanced", "no_strong_preference"),
    ],
)
def test_behaviour_alone(lift, segment, rule):
    assert one(lift=lift) == (segment, rule)


def test_too_few_choices_means_no_behaviour_evidence():
    assert one(lift=[0.3, 0, 0, 0, 0], n_choices=4) == ("balanced", "no_data")
    assert one(lift=[0.3, 0, 0, 0, 0], n_choices=5) == ("price_sensitive", "price_emphasis")


def test_no_stated_preference_and_no_behaviour_is_no_data():
    assert one(stated=[0, 0, 0, 0, 0]) == ("balanced", "no_data")
    assert one(stated=[np.nan] * 5) == ("balanced", "no_data")


def test_tie_between_emphasised_factors_is_balanced():
    assert one(stated=[0.4, 0.4, 0.1, 0.1, 0.0]) == ("balanced", "tie")
    # strengths 1.333 vs 1.3: within the default margin of 0.05.
    assert one(stated=[0.4, 0.39, 0.11, 0.1, 0.0]) == ("balanced", "tie")
    # ... but not with a smaller margin.
    assert one(stated=[0.4, 0.39, 0.11, 0.1, 0.0], rules=SegmentRules(tie_margin=0.01)) == (
        "price_sensitive",
        "price_emphasis",
    )


def test_close_runner_up_below_threshold_is_not_a_tie():
    # quality strength 1.0, price 0.967 (< 1): only quality is emphasised.
    assert one(stated=[29, 30, 21, 20, 0]) == ("quality_focused", "quality_emphasis")


def test_stated_and_behaviour_are_averaged():
    # price: stated 7/3, behaviour 0 -> 7/6; quality: stated 1/3, behaviour 1.5 -> 11/12.
    stated = [0.7, 0.1, 0.1, 0.1, 0.0]
    lift = [0.0, 0.15, 0.0, 0.0, 0.0]
    out = classify_segments(FACTORS, np.array([stated]), behaviour([lift]))
    np.testing.assert_allclose(out.strengths[0], [7 / 6, 11 / 12, 1 / 6, 1 / 6])
    assert (out.segments[0], out.rules[0], out.evidence[0]) == (
        "price_sensitive",
        "price_emphasis",
        "both",
    )
    behaviour_first = SegmentRules(stated_weight=0.2)
    assert one(stated=stated, lift=lift, rules=behaviour_first)[0] == "quality_focused"


@pytest.mark.parametrize(
    ("level", "lift", "expected"),
    [
        (0.8, [0.0, 0.2, 0.0, 0.0, 0.0], ("premium_buyer", "premium_quality_high_price")),
        (0.6, [0.0, 0.2, 0.0, 0.0, 0.0], ("premium_buyer", "premium_quality_high_price")),
        (0.4, [0.0, 0.2, 0.0, 0.0, 0.0], ("quality_focused", "quality_emphasis")),
        # Level unknown: the price lift decides (chose pricier = lower price scores).
        (np.nan, [-0.08, 0.2, 0.0, 0.0, 0.0], ("premium_buyer", "premium_quality_high_price")),
        (np.nan, [-0.02, 0.2, 0.0, 0.0, 0.0], ("quality_focused", "quality_emphasis")),
    ],
)
def test_premium_buyer_needs_quality_first_and_expensive_choices(level, lift, expected):
    assert one(lift=lift, level=level) == expected


def test_premium_is_blocked_when_price_is_emphasised():
    # quality 2.0 leads, but price (1.2) is emphasised too -> quality_focused, not premium.
    out = one(lift=[0.12, 0.2, 0.0, 0.0, 0.0], level=0.9)
    assert out == ("quality_focused", "quality_emphasis")


def test_premium_needs_price_evidence():
    assert one(stated=[0.0, 0.6, 0.2, 0.2, 0.0]) == ("quality_focused", "quality_emphasis")


def test_missing_role_factor_never_fires():
    factors = ("price", "quality", "rating")
    out = classify_segments(factors, np.array([[0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]), None)
    assert out.segments.tolist() == ["balanced", "quality_focused"]
    assert np.all(np.isneginf(out.strengths[:, 2:]))


def test_custom_factor_names():
    rules = SegmentRules(price_factor="cost", proximity_factor="distance")
    out = classify_segments(
        ("cost", "quality", "speed", "distance"), np.array([[0.1, 0.1, 0.1, 0.7]]), None, rules
    )
    assert out.segments[0] == "local_preference"


def test_vectorised_equals_one_customer_at_a_time():
    rng = np.random.default_rng(11)
    m = 300
    stated = rng.dirichlet(np.full(5, 0.7), size=m)
    stated[rng.uniform(size=m) < 0.2] = 0.0
    lift = rng.normal(scale=0.1, size=(m, 5))
    n_choices = rng.integers(0, 12, size=m)
    level = np.where(rng.uniform(size=m) < 0.5, rng.uniform(size=m), np.nan)
    beh = BehaviourSummary(0.5 + lift, np.full((m, 5), 0.5), n_choices, level)
    together = classify_segments(FACTORS, stated, beh)
    for i in range(0, m, 7):
        alone = classify_segments(
            FACTORS,
            stated[i : i + 1],
            BehaviourSummary(
                0.5 + lift[i : i + 1], np.full((1, 5), 0.5), n_choices[i : i + 1], level[i : i + 1]
            ),
        )
        assert alone.segments[0] == together.segments[i]
        assert alone.rules[0] == together.rules[i]
    assert set(together.segments) <= set(SEGMENTS)
    assert len(set(together.segments)) >= 5


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="need"):
        classify_segments(FACTORS, None, None)
    with pytest.raises(ValueError, match="non-negative"):
        classify_segments(FACTORS, np.array([[-0.1, 0.5, 0.2, 0.2, 0.2]]), None)
    with pytest.raises(ValueError, match="shape"):
        classify_segments(FACTORS, np.ones((1, 3)), None)


def reference_behaviour(X, mask, chosen, customer, m, price_index):
    """Loop over sessions: the straightforward definition of each statistic."""
    F = X.shape[2]
    out_chosen, out_shown = np.full((m, F), np.nan), np.full((m, F), np.nan)
    levels, counts = np.full(m, np.nan), np.zeros(m, dtype=int)
    for c in range(m):
        ch, sh, lv = [], [], []
        for x, mk, k, who in zip(X, mask, chosen, customer, strict=True):
            if who != c or k < 0:
                continue
            shown = x[mk]
            ch.append(x[k])
            sh.append(shown.mean(axis=0))
            others = [j for j in np.flatnonzero(mk) if j != k]
            if others:
                p = x[k, price_index]
                lv.append(
                    np.mean(
                        [
                            1.0 if x[j, price_index] > p else 0.5 if x[j, price_index] == p else 0.0
                            for j in others
                        ]
                    )
                )
        counts[c] = len(ch)
        if ch:
            out_chosen[c], out_shown[c] = np.mean(ch, axis=0), np.mean(sh, axis=0)
        if lv:
            levels[c] = np.mean(lv)
    return out_chosen, out_shown, counts, levels


def test_summarise_behaviour_matches_session_loop():
    rng = np.random.default_rng(12)
    n, J, F, m = 200, 4, 3, 15
    sizes = rng.integers(1, J + 1, size=n)
    mask = np.arange(J)[None, :] < sizes[:, None]
    X = np.where(mask[:, :, None], np.round(rng.uniform(size=(n, J, F)), 1), np.nan)
    chosen = np.array([rng.integers(-1, k) for k in sizes])
    customer = rng.integers(0, m - 1, size=n)  # the last customer has no sessions
    got = summarise_behaviour(X, mask, chosen, customer, m, price_index=0)
    ref = reference_behaviour(X, mask, chosen, customer, m, 0)
    np.testing.assert_allclose(got.chosen_mean, ref[0])
    np.testing.assert_allclose(got.shown_mean, ref[1])
    np.testing.assert_array_equal(got.n_choices, ref[2])
    np.testing.assert_allclose(got.chosen_price_level, ref[3])
    assert np.all(np.isnan(got.chosen_mean[-1]))


def test_summarise_then_classify_finds_price_hunters():
    rng = np.random.default_rng(13)
    n, J = 400, 4
    X = rng.uniform(size=(n, J, 5))
    customer = np.repeat(np.arange(4), n // 4)
    mask = np.ones((n, J), dtype=bool)
    # customer 0 takes the cheapest (highest price score), 1 the best quality,
    # 2 the most expensive high-quality one, 3 picks at random.
    chosen = np.empty(n, dtype=int)
    for i in range(n):
        c = customer[i]
        if c == 0:
            chosen[i] = X[i, :, 0].argmax()
        elif c == 1:
            chosen[i] = X[i, :, 1].argmax()
        elif c == 2:
            chosen[i] = (X[i, :, 1] - X[i, :, 0]).argmax()
        else:
            chosen[i] = rng.integers(J)
    beh = summarise_behaviour(X, mask, chosen, customer, 4, price_index=0)
    out = classify_segments(FACTORS, None, beh)
    assert out.segments.tolist() == [
        "price_sensitive",
        "quality_focused",
        "premium_buyer",
        "balanced",
    ]

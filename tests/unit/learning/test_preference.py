from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.learning.preference import (
    KIND_INDEX,
    KINDS,
    EmaParams,
    cosine_similarity,
    ema_batch,
    ema_sequential,
    learning_rates,
    signal_strength,
)


def test_batch_equals_event_by_event_reference() -> None:
    rng = np.random.default_rng(3)
    n_users, n, d = 7, 300, 5
    v0 = rng.normal(size=(n_users, d))
    owner = rng.integers(n_users, size=n)
    alpha = rng.uniform(0, 0.5, size=n)
    s = rng.uniform(-1, 1, size=n)
    x = rng.normal(size=(n, d))
    got = ema_batch(v0, owner, alpha, s, x)
    for u in range(n_users):
        mask = owner == u
        want = ema_sequential(v0[u], alpha[mask], s[mask], x[mask])
        np.testing.assert_allclose(got[u], want, rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 0.5), st.floats(-1, 1)), min_size=0, max_size=40
    )
)
def test_batch_split_anywhere_gives_the_same_result(events: list[tuple[int, float, float]]) -> None:
    rng = np.random.default_rng(len(events))
    owner = np.array([e[0] for e in events], dtype=np.int64)
    alpha = np.array([e[1] for e in events])
    s = np.array([e[2] for e in events])
    x = rng.normal(size=(len(events), 3))
    v0 = np.zeros((4, 3))
    whole = ema_batch(v0, owner, alpha, s, x)
    cut = len(events) // 2
    first = ema_batch(v0, owner[:cut], alpha[:cut], s[:cut], x[:cut])
    both = ema_batch(first, owner[cut:], alpha[cut:], s[cut:], x[cut:])
    np.testing.assert_allclose(whole, both, atol=1e-10)


def test_users_without_events_are_untouched() -> None:
    v0 = np.ones((3, 2))
    out = ema_batch(v0, np.array([1]), np.array([0.5]), np.array([1.0]), np.array([[3.0, 3.0]]))
    np.testing.assert_array_equal(out[[0, 2]], v0[[0, 2]])
    np.testing.assert_allclose(out[1], [2.0, 2.0])


def test_signal_strength_per_kind() -> None:
    p = EmaParams()
    kinds = np.array([KIND_INDEX[k] for k in KINDS])
    values = np.array([1.0, 0, 0, 0, 0, 0, 0, 0, 120.0, 100.0])
    s = dict(zip(KINDS, signal_strength(kinds, values, p), strict=True))
    assert s["rating"] == -1.0 and s["like"] == 1.0 and s["dislike"] == -1.0
    assert s["impression"] == 0.0 and s["click"] == 1.0
    assert s["dwell"] == 1.0  # the reference dwell counts fully
    assert s["conversion"] == 1.0


def test_rates_are_clipped_and_scaled_by_kind() -> None:
    p = EmaParams(base_alpha=0.4, max_alpha=0.5, type_multipliers={"share": 2.0, "view": 0.1})
    k = np.array([KIND_INDEX["share"], KIND_INDEX["view"], KIND_INDEX["rating"]])
    rates = learning_rates(k, np.array([1.0, 1.0, 0.0]), p)
    np.testing.assert_allclose(rates, [0.5, 0.04, 0.0])


def test_learning_recovers_a_hidden_preference() -> None:
    rng = np.random.default_rng(11)
    d = 8
    truth = rng.normal(size=d)
    truth /= np.linalg.norm(truth)
    items = rng.normal(size=(2000, d))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    ratings = np.clip(np.rint(3 + 2.5 * items @ truth + rng.normal(0, 0.6, 2000)), 1, 5)
    p = EmaParams(base_alpha=0.05)
    kinds = np.full(2000, KIND_INDEX["rating"])
    s = signal_strength(kinds, ratings, p)
    a = learning_rates(kinds, s, p)
    v = ema_batch(np.zeros((1, d)), np.zeros(2000, dtype=np.int64), a, s, items)
    assert cosine_similarity(v, truth[None, :])[0] > 0.9

"""Simulated customers of the choice loop, with known true weights per segment (pure, seeded).

Used by the tests (recovery of the true weights, the pipeline end to end) and meant for the
demo. A customer of segment ``s`` is shown ``n_candidates`` candidates with independent
uniform factor scores, ranked by the recommender's score under the *default* (uniform)
weights, and chooses by a conditional logit with an outside option::

    P(j)    ∝ exp(scale · w_s · x_j)
    P(none) ∝ exp(outside)

where ``w_s`` are the segment's true weights (non-negative, sum 1). The learned weights of
the segment should converge to ``w_s`` (the model normalises the coefficients
``beta = scale · w_s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FACTORS = ("price", "quality", "speed", "proximity", "capacity", "reliability")


@dataclass(frozen=True)
class SimulatedSegment:
    """True scoring weights of a segment and what its customers say they care about."""

    weights: dict[str, float]
    stated: dict[str, float]


TRUTH: dict[str, SimulatedSegment] = {
    "price_sensitive": SimulatedSegment(
        {"price": 0.45, "quality": 0.15, "speed": 0.12, "proximity": 0.1, "capacity": 0.08,
         "reliability": 0.1},
        {"price": 0.9, "quality": 0.3, "speed": 0.2, "proximity": 0.2, "capacity": 0.1,
         "reliability": 0.2},
    ),
    "quality_focused": SimulatedSegment(
        {"price": 0.1, "quality": 0.42, "speed": 0.1, "proximity": 0.08, "capacity": 0.1,
         "reliability": 0.2},
        {"price": 0.3, "quality": 0.9, "speed": 0.2, "proximity": 0.1, "capacity": 0.2,
         "reliability": 0.3},
    ),
    "speed_priority": SimulatedSegment(
        {"price": 0.12, "quality": 0.12, "speed": 0.46, "proximity": 0.1, "capacity": 0.12,
         "reliability": 0.08},
        {"price": 0.2, "quality": 0.2, "speed": 0.9, "proximity": 0.2, "capacity": 0.2,
         "reliability": 0.2},
    ),
    "local_preference": SimulatedSegment(
        {"price": 0.1, "quality": 0.12, "speed": 0.1, "proximity": 0.48, "capacity": 0.1,
         "reliability": 0.1},
        {"price": 0.2, "quality": 0.2, "speed": 0.2, "proximity": 0.9, "capacity": 0.1,
         "reliability": 0.2},
    ),
    "premium_buyer": SimulatedSegment(
        {"price": 0.04, "quality": 0.44, "speed": 0.1, "proximity": 0.08, "capacity": 0.1,
         "reliability": 0.24},
        {"price": 0.05, "quality": 0.9, "speed": 0.2, "proximity": 0.1, "capacity": 0.2,
         "reliability": 0.4},
    ),
    "balanced": SimulatedSegment(
        {"price": 0.18, "quality": 0.2, "speed": 0.16, "proximity": 0.14, "capacity": 0.14,
         "reliability": 0.18},
        {"price": 0.5, "quality": 0.5, "speed": 0.5, "proximity": 0.5, "capacity": 0.5,
         "reliability": 0.5},
    ),
}  # fmt: skip

#: Utility scale of the true model and the outside-option utility (about 20 % no choice
#: with five candidates at this scale).
SCALE = 8.0
OUTSIDE = 4.6


def true_weights(segment: str, factors: Sequence[str] = FACTORS) -> np.ndarray:
    return np.array([TRUTH[segment].weights[f] for f in factors])


def simulate_arrays(
    rng: np.random.Generator,
    weights: np.ndarray,
    n: int,
    n_candidates: int = 5,
    scale: float = SCALE,
    outside: float = OUTSIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, mask, chosen)`` of ``n`` sessions drawn from the true model (Gumbel-max)."""
    F = weights.size
    X = rng.uniform(size=(n, n_candidates, F))
    util = np.concatenate([scale * X @ weights, np.full((n, 1), outside)], axis=1)
    pick = (util + rng.gumbel(size=util.shape)).argmax(axis=1)
    chosen = np.where(pick == n_candidates, -1, pick)
    return X, np.ones((n, n_candidates), dtype=bool), chosen


def simulate_events(
    rng: np.random.Generator,
    customers: Sequence[tuple[str, str]],
    n_sessions: int,
    *,
    prefix: str,
    ts0: int = 1_767_225_600_000,
    step_ms: int = 100,
    factors: Sequence[str] = FACTORS,
    n_candidates: int = 5,
    outside: float = OUTSIDE,
    interactions_per_session: float = 1.0,
    no_choice_share: float = 0.0,
    stated: dict[str, dict[str, float]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(topic, event)`` pairs of ``n_sessions`` sessions, round-robin over ``customers``.

    ``customers`` are ``(customer_id, segment)``. Each session is followed by its
    interactions (Poisson, viewed/expanded/compared) and its choice (``null`` for none),
    with a satisfaction rating for most choices. ``no_choice_share`` of the sessions end
    without a choice regardless of the model (a conversion drop); ``stated`` replaces the
    stated preferences of some segments.
    """
    default = np.full(len(factors), 1.0 / len(factors))
    events: list[tuple[str, dict[str, Any]]] = []
    kinds = ("viewed", "expanded", "compared")
    for i in range(n_sessions):
        customer, segment = customers[i % len(customers)]
        w = true_weights(segment, factors)
        X, _, chosen = simulate_arrays(rng, w, 1, n_candidates, outside=outside)
        x, pick = X[0], int(chosen[0])
        if no_choice_share and rng.random() < no_choice_share:
            pick = -1
        predicted = x @ default
        order = np.argsort(-predicted, kind="stable")
        rank = np.empty(n_candidates, dtype=int)
        rank[order] = np.arange(1, n_candidates + 1)
        sid = f"{prefix}s{i}"
        ts = ts0 + i * step_ms
        said = (stated or {}).get(segment, TRUTH[segment].stated)
        events.append(
            (
                "recs.sessions",
                {
                    "event_id": f"{sid}-session",
                    "schema_version": 1,
                    "ts": ts,
                    "session_id": sid,
                    "customer_id": customer,
                    "algorithm_version": "sim-v1",
                    "complexity": ("simple", "moderate", "complex")[i % 3],
                    "stated_preferences": {f: said[f] for f in factors if f in said},
                    "candidates": [
                        {
                            "candidate_id": f"{sid}-c{j}",
                            "rank": int(rank[j]),
                            "factor_scores": {f: round(float(x[j, k]), 6)
                                              for k, f in enumerate(factors)},
                            "predicted_score": round(float(predicted[j]), 6),
                        }
                        for j in range(n_candidates)
                    ],
                },
            )
        )  # fmt: skip
        for k in range(int(rng.poisson(interactions_per_session))):
            events.append(
                (
                    "recs.interactions",
                    {
                        "event_id": f"{sid}-i{k}",
                        "schema_version": 1,
                        "ts": ts + 10 + k,
                        "session_id": sid,
                        "customer_id": customer,
                        "candidate_id": f"{sid}-c{int(rng.integers(n_candidates))}",
                        "kind": kinds[int(rng.integers(len(kinds)))],
                        "time_spent_seconds": round(float(rng.exponential(20.0)), 3),
                        "helpful_rating": int(rng.integers(2, 6)),
                    },
                )
            )
        choice: dict[str, Any] = {
            "event_id": f"{sid}-choice",
            "schema_version": 1,
            "ts": ts + 50,
            "session_id": sid,
            "customer_id": customer,
            "chosen_candidate_id": None if pick < 0 else f"{sid}-c{pick}",
            "decision_time_seconds": round(float(rng.exponential(60.0)), 3),
        }
        if pick >= 0 and rng.random() < 0.8:
            choice["satisfaction"] = int(rng.integers(3, 6))
        events.append(("recs.choices", choice))
    return events


def reference_observations(
    events: Sequence[tuple[str, dict[str, Any]]], factors: Sequence[str]
) -> list[dict[str, Any]]:
    """Stage 1 of the loop in-process: the observations ``events`` produce, in order.

    Each session must come before its choice and interactions (no waiting, no timers).
    """
    from agents.choices import state as cs

    sessions: dict[str, cs.SessionState] = {}
    observations: list[dict[str, Any]] = []
    for n, (topic_name, event) in enumerate(events):
        sid = event["session_id"]
        st = sessions.setdefault(sid, cs.SessionState())
        slot = cs.TOPIC_SLOTS[topic_name]
        src = [slot, 0, n]
        if slot == cs.SESSION:
            session = cs.parse_session(event, factors)
            obs, _ = cs.apply_session(st, sid, session, factors, 0, src)
        elif st.session is None:
            raise ValueError("reference_observations needs each session before its events")
        elif slot == cs.CHOICE:
            obs = cs.apply_choice(st, sid, event, factors, 1, src)
        else:
            obs = cs.apply_interaction(st, sid, event, src)
        observations.extend(obs)
    return observations


def reference_segments(
    observations: Sequence[dict[str, Any]], config: Any, rules: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stages 2 and 3 in-process on observations in the order given.

    Returns ``(customers, segments)``: the :class:`~agents.choices.state.CustomerState` and
    :class:`~agents.choices.state.SegmentState` each key ends with. Both stages are functions
    of the order of the observations only (segments per observation, model per fixed-size
    block), so one call with everything equals the worker fed the same order in any batches.
    """
    from agents.choices import state as cs

    factors = config.factors
    customers: dict[str, cs.CustomerState] = {}
    for o in observations:
        customers.setdefault(o["customer_id"], cs.CustomerState(len(factors)))
    tags, _ = cs.observe_customers(
        customers, [(o["customer_id"], o) for o in observations], factors, rules, 0
    )
    by_segment: dict[str, list[dict[str, Any]]] = {}
    for o, segment in zip(observations, tags, strict=True):
        by_segment.setdefault(segment, []).append(o)
    segments: dict[str, cs.SegmentState] = {}
    for segment, obs in by_segment.items():
        st = segments.setdefault(segment, cs.SegmentState())
        for o in obs:
            cs.add_to_window(st, o, window_s=10**9, bucket_s=3600)
        cs.fit_segment(st, obs, config)
    return customers, segments


def reference_pipeline(
    events: Sequence[tuple[str, dict[str, Any]]], config: Any, rules: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three stages of the loop run in-process on ``events`` (no Kafka, no timers).

    Returns ``(customers, segments)`` as :func:`reference_segments` when every session is
    joined in event order. The worker sees the observations of different partitions
    interleaved in arrival order; fed that order (:func:`reference_segments`), these
    functions give its numbers exactly (see tests/integration/test_choices_pipeline.py).
    """
    return reference_segments(reference_observations(events, config.factors), config, rules)

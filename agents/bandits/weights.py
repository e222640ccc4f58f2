"""The ``weights.algorithms`` event of a segment from its posteriors: pure functions.

Exact probability of being best, the segment's exploration share, the auto-disable rule
(an arm with at least ``disable_min_impressions`` resolved impressions in the window whose
Clopper–Pearson upper bound of CTR is below ``disable_ctr`` gets weight 0), and per-user
weights from contextual statistics. No App, no I/O: the agent (:mod:`agents.bandits.agent`)
and the HTTP API call these with the deployment's :class:`WeightsConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.bandits.attribution import Partial, sum_discounted, sum_partials
from agents.learning.autodisable import clopper_pearson
from agents.learning.thompson import (
    ExplorationConfig,
    LinearThompson,
    linear_context,
    prob_best_exact,
    serving_weights,
)
from streams.config import Settings


@dataclass(frozen=True)
class WeightsConfig:
    """What the weights depend on besides the counts (from the settings)."""

    exploration: ExplorationConfig
    disable_min_impressions: int
    disable_ctr: float
    mode: str
    half_life_ms: float
    linear_lambda: float
    linear_v: float

    @classmethod
    def from_settings(cls, settings: Settings, mode: str) -> WeightsConfig:
        return cls(
            exploration=ExplorationConfig(**settings.exploration_rates),
            disable_min_impressions=settings.disable_min_impressions,
            disable_ctr=settings.disable_ctr,
            mode=mode,
            half_life_ms=settings.bandit_half_life_s * 1000.0,
            linear_lambda=settings.bandit_linear_lambda,
            linear_v=settings.bandit_linear_v,
        )


def posteriors(
    partials: list[Partial], half_life_ms: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(S, K) Beta alpha and beta of every (segment, algorithm), and the discount reference.

    Stationary (``half_life_ms`` 0): Beta(1 + successes, 1 + failures) of the summed counts.
    Discounted: the same over the discounted counts, every partial decayed to the latest
    reference time first (:func:`agents.bandits.attribution.sum_discounted`); before any
    partial kept discounted counts, the prior of ``shape`` (segments, arms) and reference
    None.
    """
    if half_life_ms > 0:
        try:
            successes, failures, ref = sum_discounted(partials, half_life_ms)
        except ValueError:
            return np.ones(shape), np.ones(shape), None
        # ref 0: no trial counted yet, nothing to refer to
        return 1.0 + successes, 1.0 + failures, ref or None
    trials, successes = sum_partials(partials)
    return 1.0 + successes, 1.0 + (trials - successes), None


def segment_weights(
    segment: str, alpha: np.ndarray, beta: np.ndarray, window_trials: np.ndarray,
    window_successes: np.ndarray, version: int, *, reference_ts: int | None = None,
    linear: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    names: tuple[str, ...], config: WeightsConfig,
) -> dict[str, Any]:  # fmt: skip
    """The ``weights.algorithms`` event of one segment from its (K,) posteriors and window
    counts; ``linear`` is the segment's (K, D, D) Σ x xᵀ, (K, D) Σ r x, (K,) trials;
    ``names`` the K algorithms (the configured ones)."""
    if len(names) != len(alpha):
        raise ValueError(f"{len(alpha)} posteriors for {len(names)} algorithms")
    best = prob_best_exact(alpha, beta)
    _, upper = clopper_pearson(window_successes, window_trials)
    disabled = (window_trials >= config.disable_min_impressions) & (upper < config.disable_ctr)
    eps = float(getattr(config.exploration, segment))
    weights = serving_weights(best, eps, enabled=~disabled)
    algorithms = [
        {
            "name": name,
            "alpha": float(alpha[k]),
            "beta": float(beta[k]),
            "mean": float(alpha[k] / (alpha[k] + beta[k])),
            "prob_best": float(best[k]),
            "weight": float(weights[k]),
            "disabled": bool(disabled[k]),
        }
        for k, name in enumerate(names)
    ]
    event: dict[str, Any] = {
        "event_id": f"alg:{segment}:{version}",
        "schema_version": 1,
        "ts": int(time.time() * 1000),
        "segment": segment,
        "algorithms": algorithms,
        "exploration_rate": eps,
        "seed": 0,  # prob_best is exact: no sampler
        "mode": config.mode,
        "version": version,
    }
    if config.half_life_ms > 0:
        event["half_life_s"] = config.half_life_ms / 1000.0
        if reference_ts is not None:
            event["reference_ts"] = int(reference_ts)
    if linear is not None:
        xx, xr, n = linear
        for k, algo in enumerate(algorithms):
            algo["linear"] = {"n": int(n[k]), "xx": xx[k].tolist(), "xr": xr[k].tolist()}
        event["contextual"] = {"dim": int(xr.shape[-1]), "lam": config.linear_lambda,
                               "v": config.linear_v}  # fmt: skip
    return event


def contextual_strategy(
    event: dict[str, Any], vector: np.ndarray | None, seed: int, n_draws: int = 4000
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-user (choice probabilities, serving weights) from a contextual event, or None.

    The choice probability of an algorithm is how often linear Thompson sampling would pick
    it for this user's context ``[1, vector]`` (Monte Carlo with ``seed``); the weights mix
    it with the segment's ε and drop disabled algorithms exactly like the segment weights.
    None when the event carries no linear statistics or their dimension does not fit the
    vector (the caller serves the segment weights).
    """
    ctx = event.get("contextual")
    algos = event["algorithms"]
    if not ctx or not all("linear" in a for a in algos):
        return None
    dim = int(ctx["dim"])
    v = np.zeros(dim - 1) if vector is None else np.asarray(vector, dtype=float)
    if v.shape != (dim - 1,):
        return None
    model = LinearThompson.from_dict({
        "n_arms": len(algos), "dim": dim, "lam": ctx["lam"], "v": ctx["v"],
        "xx": [a["linear"]["xx"] for a in algos], "xr": [a["linear"]["xr"] for a in algos],
        "counts": [a["linear"]["n"] for a in algos],
    })  # fmt: skip
    probs = model.choice_probabilities(linear_context(v), n_draws=n_draws, rng=seed).probs
    enabled = ~np.array([bool(a.get("disabled")) for a in algos])
    return probs, serving_weights(probs, float(event["exploration_rate"]), enabled=enabled)

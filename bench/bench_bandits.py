"""Bandit math speed: posterior refresh for all segments and the per-event update cost.

Run with ``python -m bench.bench_bandits [--json]``.

Absolute figures on a shared machine move from run to run, so each is printed beside a
comparison measured in the same run:

* refresh of 16 segments x 10 algorithms (one batch update per segment, then the probability
  of being best for every segment): exact Gauss-Legendre integration against Monte Carlo with
  10 000 draws, with the Monte Carlo error against the exact values;
* per-event cost of a vectorised batch update of 10 000 events against a plain Python loop doing
  the same arithmetic per event (stationary and discounted posteriors);
* contextual mode (d = 32, 10 algorithms): batch update and one Thompson decision per context,
  per event, for scale.

Figures are the median of several repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from agents.learning.thompson import (
    BetaPosteriors,
    LinearThompson,
    prob_best_exact,
    prob_best_mc,
)

N_SEGMENTS = 16
N_ARMS = 10
N_EVENTS = 10_000
MC_DRAWS = 10_000
HALF_LIFE_S = 7 * 86_400.0
REPEATS = 7


def _median_seconds(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _segments(rng: np.random.Generator) -> list[BetaPosteriors]:
    """Posteriors with 10^4 to 10^6 impressions per algorithm at CTRs of 0.5 % to 5 %."""
    out = []
    for _ in range(N_SEGMENTS):
        post = BetaPosteriors(N_ARMS)
        trials = rng.integers(10_000, 1_000_000, N_ARMS).astype(float)
        ctr = rng.uniform(0.005, 0.05, N_ARMS)
        post.successes = np.round(trials * ctr)
        post.failures = trials - post.successes
        out.append(post)
    return out


def _events(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arms = rng.integers(0, N_ARMS, n)
    rewards = (rng.random(n) < 0.02).astype(float)
    ts = 1_700_000_000.0 + np.sort(rng.uniform(0, 60, n))
    return arms, rewards, ts


def bench_refresh() -> dict[str, float]:
    rng = np.random.default_rng(2024)
    segments = _segments(rng)
    batches = [_events(rng, N_EVENTS // N_SEGMENTS) for _ in range(N_SEGMENTS)]

    def update_all() -> None:
        for post, (arms, rewards, _) in zip(segments, batches, strict=True):
            post.update(arms, rewards)

    def params() -> tuple[np.ndarray, np.ndarray]:
        return np.stack([p.alpha for p in segments]), np.stack([p.beta for p in segments])

    def refresh_exact() -> np.ndarray:
        update_all()
        return prob_best_exact(*params())

    def refresh_mc() -> np.ndarray:
        update_all()
        return prob_best_mc(*params(), n_draws=MC_DRAWS, rng=7).probs

    update_s = _median_seconds(update_all)
    exact_s = _median_seconds(refresh_exact)
    mc_s = _median_seconds(refresh_mc)
    alpha, beta = params()
    exact = prob_best_exact(alpha, beta)
    mc = prob_best_mc(alpha, beta, n_draws=MC_DRAWS, rng=7).probs
    return {
        "update_16_segments_ms": 1e3 * update_s,
        "refresh_exact_ms": 1e3 * exact_s,
        "refresh_mc_ms": 1e3 * mc_s,
        "mc_max_abs_error": float(np.abs(mc - exact).max()),
        "exact_row_sum_max_error": float(np.abs(exact.sum(axis=1) - 1).max()),
    }


def bench_per_event() -> dict[str, float]:
    rng = np.random.default_rng(7)
    arms, rewards, ts = _events(rng, N_EVENTS)
    arm_list, reward_list, ts_list = arms.tolist(), rewards.tolist(), ts.tolist()

    def vectorised(half_life: float | None) -> Callable[[], None]:
        def run() -> None:
            BetaPosteriors(N_ARMS, half_life_s=half_life).update(arms, rewards, ts)

        return run

    def python_loop() -> None:
        alpha, beta = [1.0] * N_ARMS, [1.0] * N_ARMS
        for arm, reward in zip(arm_list, reward_list, strict=True):
            alpha[arm] += reward
            beta[arm] += 1.0 - reward

    def python_loop_discounted() -> None:
        succ, fail = [0.0] * N_ARMS, [0.0] * N_ARMS
        ref = ts_list[0]
        for arm, reward, t in zip(arm_list, reward_list, ts_list, strict=True):
            if t > ref:
                factor = 2.0 ** (-(t - ref) / HALF_LIFE_S)
                succ = [s * factor for s in succ]
                fail = [f * factor for f in fail]
                ref = t
            succ[arm] += reward
            fail[arm] += 1.0 - reward

    per_event = {
        "vectorised_us": vectorised(None),
        "python_loop_us": python_loop,
        "vectorised_discounted_us": vectorised(HALF_LIFE_S),
        "python_loop_discounted_us": python_loop_discounted,
    }
    return {name: 1e6 * _median_seconds(fn) / N_EVENTS for name, fn in per_event.items()}


def bench_contextual() -> dict[str, float]:
    rng = np.random.default_rng(11)
    d = 32
    x = rng.normal(size=(N_EVENTS, d)) / np.sqrt(d)
    arms = rng.integers(0, N_ARMS, N_EVENTS)
    rewards = rng.random(N_EVENTS)
    model = LinearThompson(N_ARMS, d, lam=1.0, v=0.2)
    model.update(arms, x, rewards)
    return {
        "linear_update_us": 1e6
        * _median_seconds(lambda: LinearThompson(N_ARMS, d).update(arms, x, rewards))
        / N_EVENTS,
        "linear_choose_us": 1e6 * _median_seconds(lambda: model.choose(x, rng)) / N_EVENTS,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table (or JSON), return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    r = bench_refresh()
    e = bench_per_event()
    c = bench_contextual()
    figures = {**r, **e, **c}
    figures["exact_over_mc_ratio"] = r["refresh_exact_ms"] / r["refresh_mc_ms"]
    figures["speedup_stationary"] = e["python_loop_us"] / e["vectorised_us"]
    figures["speedup_discounted"] = e["python_loop_discounted_us"] / e["vectorised_discounted_us"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return figures
    print(
        f"Refresh, {N_SEGMENTS} segments x {N_ARMS} algorithms, "
        f"{N_EVENTS // N_SEGMENTS} events per segment, median of {REPEATS}"
    )
    print(f"  batch update only                       {r['update_16_segments_ms']:8.3f} ms")
    print(f"  update + prob. best, exact (GL 128)     {r['refresh_exact_ms']:8.3f} ms")
    print(
        f"  update + prob. best, Monte Carlo {MC_DRAWS // 1000}k    {r['refresh_mc_ms']:8.3f} ms"
        f"  exact/MC {figures['exact_over_mc_ratio']:5.2f}x"
    )
    print(
        f"  Monte Carlo max |error| vs exact        {r['mc_max_abs_error']:8.4f}"
        f"    exact rows sum to 1 within {r['exact_row_sum_max_error']:.1e}"
    )
    print(f"Per-event update cost, {N_EVENTS} events, {N_ARMS} algorithms")
    for label, fast, slow, ratio in (
        ("stationary", "vectorised_us", "python_loop_us", "speedup_stationary"),
        (
            "discounted",
            "vectorised_discounted_us",
            "python_loop_discounted_us",
            "speedup_discounted",
        ),
    ):
        print(
            f"  {label:10s} vectorised {e[fast]:7.3f} us   Python loop {e[slow]:7.3f} us"
            f"   {figures[ratio]:6.1f}x faster"
        )
    print("Contextual (linear TS, d = 32), per event")
    print(
        f"  batch update {c['linear_update_us']:7.3f} us   choose {c['linear_choose_us']:7.3f} us"
    )
    return figures


if __name__ == "__main__":
    main()

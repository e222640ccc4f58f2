"""Discounted and contextual modes of the bandits agent, through its pure update path.

The path is the agent's own: signals → :func:`apply_signals` / :func:`close_attribution_windows` on
per-partition partials → :func:`agents.bandits.agent.posteriors` (summing the partials, as the
publisher does) → :func:`agents.bandits.agent.segment_weights` → serving weights. Only the broker,
the tables and the timers are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from agents.bandits import agent as bandits
from agents.bandits.attribution import (
    Partial,
    Signal,
    apply_signals,
    close_attribution_windows,
    encode_context,
    sum_context,
    sum_discounted,
)
from agents.learning.thompson import LinearThompson, linear_context, prob_best_exact
from schemas.registry import get_schema

WINDOW_MS = 500
NAMES = ("a", "b", "c")


class Partition:
    """One input partition: its partial, its impression records, its next offset."""

    def __init__(self, n_algorithms: int, half_life_ms: float = 0.0, ctx_dim: int = 0) -> None:
        self.partial = Partial(1, n_algorithms, half_life_ms=half_life_ms, ctx_dim=ctx_dim)
        self.records: dict[str, dict] = {}
        self.offset = 0

    def feed(self, kinds: list[tuple[str, int, str, int, str | None]]) -> None:
        """(kind, ts_ms, impression id, algorithm, context) in offset order."""
        signals = []
        for kind, ts, iid, algo, ctx in kinds:
            signals.append(Signal(self.offset, ts, kind, iid, algo, 0 if algo >= 0 else -1, ctx))
            self.offset += 1
        self.records.update(apply_signals(self.partial, signals, self.records.get, WINDOW_MS, 8))

    def close(self, until_ms: int) -> None:
        for key in close_attribution_windows(self.partial, list(self.records.items()), until_ms, 8):
            del self.records[key]


def impression(ts: int, iid: str, algo: int, ctx: str | None = None) -> tuple:
    return ("impression", ts, iid, algo, ctx)


def click(ts: int, iid: str) -> tuple:
    return ("click", ts, iid, -1, None)


# ------------------------------------------------------------------------------ discounting


def test_discounted_sum_over_partitions_equals_one_pass_and_the_closed_form() -> None:
    """Decaying each partial to the common reference before summing commutes with the merge."""
    rng = np.random.default_rng(3)
    half_life_ms = 20_000.0
    n = 400
    ts = np.sort(rng.integers(0, 200_000, n))
    algo = rng.integers(0, 3, n)
    clicked = rng.random(n) < 0.3
    one = Partition(3, half_life_ms)
    parts = [Partition(3, half_life_ms) for _ in range(3)]
    home = rng.integers(0, 3, n)  # the partition (user) of each impression
    for i in range(n):
        events = [impression(int(ts[i]), f"i{i}", int(algo[i]))]
        if clicked[i]:
            events.append(click(int(ts[i]) + 50, f"i{i}"))
        one.feed(events)
        parts[home[i]].feed(events)
    end = int(ts[-1]) + 2 * WINDOW_MS
    for p in (one, *parts):
        p.close(end)

    s_one, f_one, ref_one = sum_discounted([one.partial], half_life_ms)
    s_sum, f_sum, ref_sum = sum_discounted([p.partial for p in parts], half_life_ms)
    assert ref_one == ref_sum == int(ts[-1])  # the latest impression time
    np.testing.assert_allclose(s_sum, s_one, rtol=1e-9)
    np.testing.assert_allclose(f_sum, f_one, rtol=1e-9)
    # Closed form: every impression weighs 0.5**((T − t)/h) by its own (impression) time.
    w = np.exp2(-(ref_one - ts) / half_life_ms)
    expect_s = np.bincount(algo, weights=w * clicked, minlength=3)
    expect_f = np.bincount(algo, weights=w * ~clicked, minlength=3)
    np.testing.assert_allclose(s_one[0], expect_s, rtol=1e-9)
    np.testing.assert_allclose(f_one[0], expect_f, rtol=1e-9)
    # The agent's publisher path gives Beta(1 + discounted successes, 1 + discounted failures).
    alpha, beta, ref = bandits.posteriors([p.partial for p in parts], half_life_ms)
    assert ref == ref_one
    np.testing.assert_allclose(alpha[0, :3], 1 + expect_s, rtol=1e-9)
    np.testing.assert_allclose(beta[0, :3], 1 + expect_f, rtol=1e-9)


def test_discounted_counts_survive_the_wire_and_replays_change_nothing() -> None:
    part = Partition(2, half_life_ms=10_000.0)
    batch = [impression(1_000, "a", 0), impression(2_000, "b", 1), click(2_100, "b")]
    part.feed(batch)
    part.close(5_000)
    restored = Partial.from_bytes(part.partial.to_bytes())
    assert restored.half_life_ms == 10_000.0 and restored.discount_ref == 2_000
    np.testing.assert_array_equal(restored.d_successes, part.partial.d_successes)
    # The replay of the same offsets (a crash before the commit) adds nothing.
    before = (restored.d_successes.copy(), restored.d_failures.copy())
    replay = [Signal(o, ts, k, i, a, 0 if a >= 0 else -1) for o, (k, ts, i, a, _) in
              enumerate(batch)]  # fmt: skip
    apply_signals(restored, replay, part.records.get, WINDOW_MS, 8)
    close_attribution_windows(restored, list(part.records.items()), 5_000, 8)
    np.testing.assert_array_equal(restored.d_successes, before[0])
    np.testing.assert_array_equal(restored.d_failures, before[1])
    # a's failure weighs by its impression time (1 s before the reference): 2**(−0.1)
    assert restored.d_failures[0, 0] == pytest.approx(2**-0.1)


def test_a_changed_half_life_restarts_only_the_discounted_counts() -> None:
    part = Partition(2, half_life_ms=10_000.0)
    part.feed([impression(1_000, "a", 0), click(1_100, "a")])
    p = Partial.from_bytes(part.partial.to_bytes())
    assert p.configure(20_000.0, 0) is True
    assert p.d_successes.sum() == 0 and p.successes.sum() == 1
    assert p.configure(20_000.0, 0) is False


def serve_and_learn(
    half_life_ms: float, ctr_before: list[float], ctr_after: list[float], swap_at: int,
    n_events: int, seed: int,
) -> list[float]:  # fmt: skip
    """Thompson serving from the agent's published weights on two partitions; returns, after
    every publish cycle, the probability that the post-swap best arm is best."""
    rng = np.random.default_rng(seed)
    k = len(ctr_before)
    parts = [Partition(k, half_life_ms) for _ in range(2)]
    new_best = int(np.argmax(ctr_after))
    weights = np.full(k, 1 / k)
    history = []
    cycle = 50  # events between two publishes
    for i in range(n_events):
        ts = i * 1_000  # one impression a second
        algo = int(rng.choice(k, p=weights))
        ctr = ctr_before if i < swap_at else ctr_after
        events = [impression(ts, f"i{i}", algo)]
        if rng.random() < ctr[algo]:
            events.append(click(ts + 100, f"i{i}"))
        parts[i % 2].feed(events)
        if (i + 1) % cycle == 0:
            for p in parts:
                p.close(ts)
            alpha, beta, _ = bandits.posteriors([p.partial for p in parts], half_life_ms)
            a, b = alpha[0], beta[0]
            event = bandits.segment_weights(
                "regular", a, b, np.zeros(k), np.zeros(k), 1, names=NAMES
            )
            weights = np.array([x["weight"] for x in event["algorithms"]])
            history.append(prob_best_exact(a, b)[new_best])
    return history


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_discounted_bandit_follows_a_swap_of_the_best_arm_within_a_bounded_delay(
    seed: int,
) -> None:
    """Issue 4 §7: the best arm swaps after 3000 events; with a half-life of 300 s (300
    events) the discounted bandit puts P(best) > 0.95 on the new best within 1500 events,
    while the stationary one, still weighed down by 3000 old events, has not noticed."""
    before, after = [0.30, 0.10, 0.05], [0.10, 0.30, 0.05]
    swap, bound = 3000, 1500
    disc = serve_and_learn(300_000.0, before, after, swap, swap + bound, seed)
    stat = serve_and_learn(0.0, before, after, swap, swap + bound, seed)
    cycles_before = swap // 50
    assert max(disc[cycles_before - 5 : cycles_before]) < 0.05  # it knew the old best
    followed = [j for j, p in enumerate(disc[cycles_before:]) if p > 0.95]
    assert followed, f"never followed the swap: {disc[cycles_before:]}"
    delay_events = (followed[0] + 1) * 50
    assert delay_events <= bound
    # ...and stays there (a 300-event half-life keeps ~430 effective events: P(best)
    # fluctuates, but never back towards the old best)
    after_follow = disc[cycles_before + followed[0] :]
    assert np.mean(after_follow) > 0.9 and min(after_follow) > 0.5
    assert stat[-1] < 0.5


# ------------------------------------------------------------------------------ contextual

DIRECTIONS = np.array([[np.cos(a), np.sin(a)] for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)])


def true_ctr(x: np.ndarray) -> np.ndarray:
    """(n, 3) click rates: algorithm a is best for users whose vector points along its
    direction; averaged over users on the circle, all three are equal (0.25)."""
    return 0.25 + 0.2 * x @ DIRECTIONS.T


def users(rng: np.random.Generator, n: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def run_contextual(
    choose: Callable[[np.ndarray, dict, np.random.Generator], int], n: int, seed: int
) -> tuple[np.ndarray, dict]:
    """Serve ``n`` impressions with ``choose(vector, last event, rng)``, learning through
    the agent's path with contexts; returns whether each pick was the user's best, and the
    last published event."""
    rng = np.random.default_rng(seed)
    k, dim = 3, 3
    parts = [Partition(k, ctx_dim=dim) for _ in range(2)]
    event = bandits.segment_weights("regular", np.ones(k), np.ones(k), np.zeros(k),
                                    np.zeros(k), 1, linear=(np.zeros((k, dim, dim)),
                                    np.zeros((k, dim)), np.zeros(k)), names=NAMES)  # fmt: skip
    xs = users(rng, n)
    right = np.zeros(n, bool)
    for i in range(n):
        x = xs[i]
        algo = choose(x, event, rng)
        p = true_ctr(x[None])[0]
        right[i] = algo == int(np.argmax(p))
        ctx = encode_context(linear_context(x))
        events = [impression(i * 1_000, f"i{i}", algo, ctx)]
        if rng.random() < p[algo]:
            events.append(click(i * 1_000 + 100, f"i{i}"))
        parts[i % 2].feed(events)
        if (i + 1) % 100 == 0:
            for part in parts:
                part.close(i * 1_000)
            partials = [part.partial for part in parts]
            alpha, beta, _ = bandits.posteriors(partials, 0.0)
            xx, xr, cnt = sum_context(partials, dim)  # type: ignore[misc]
            event = bandits.segment_weights("regular", alpha[0], beta[0], np.zeros(k),
                                            np.zeros(k), i + 1,
                                            linear=(xx[0], xr[0], cnt[0]), names=NAMES)  # fmt: skip
    return right, event


def contextual_choice(x: np.ndarray, event: dict, rng: np.random.Generator) -> int:
    result = bandits.contextual_strategy(event, x, seed=int(rng.integers(2**31)), n_draws=1)
    assert result is not None
    return int(rng.choice(3, p=result[1]))


def segment_choice(x: np.ndarray, event: dict, rng: np.random.Generator) -> int:
    return int(rng.choice(3, p=[a["weight"] for a in event["algorithms"]]))


def test_contextual_strategy_picks_each_users_best_algorithm_far_more_often() -> None:
    """Known linear reward, per-user best algorithm depends on the vector: the segment
    bandit can at best pick one algorithm for everybody (right for ~1/3 of users); the
    contextual strategy learned by the agent is right for most users."""
    n = 3000
    ctx_right, event = run_contextual(contextual_choice, n, seed=11)
    seg_right, _ = run_contextual(segment_choice, n, seed=11)
    late = slice(n // 2, None)
    assert ctx_right[late].mean() > 0.75
    assert seg_right[late].mean() < 0.5
    assert ctx_right[late].mean() > seg_right[late].mean() + 0.3

    # The published event validates and carries the statistics; the strategy of fresh users
    # (exact choice probabilities, many draws) puts most weight on each user's true best.
    get_schema("weights.algorithms").validate(event)
    assert event["contextual"]["dim"] == 3
    assert sum(a["linear"]["n"] for a in event["algorithms"]) == n - 100 + 100  # all closed
    fresh = users(np.random.default_rng(99), 200)
    best = true_ctr(fresh).argmax(axis=1)
    picked = [
        int(np.argmax(bandits.contextual_strategy(event, x, seed=5)[0]))  # type: ignore[index]
        for x in fresh
    ]
    assert np.mean(np.array(picked) == best) > 0.85


def test_contextual_statistics_sum_over_partitions_and_match_a_direct_fit() -> None:
    rng = np.random.default_rng(4)
    parts = [Partition(2, ctx_dim=3) for _ in range(2)]
    direct = LinearThompson(2, 3)
    for i in range(300):
        x = users(rng, 1)[0]
        algo = int(rng.integers(2))
        clicked = rng.random() < 0.4
        ctx = encode_context(linear_context(x))
        events = [impression(i * 10, f"i{i}", algo, ctx)]
        if clicked:
            events.append(click(i * 10 + 1, f"i{i}"))
        parts[i % 2].feed(events)
        # float32 on the wire: the direct fit sees the same rounded context
        ctx_used = np.frombuffer(np.asarray(linear_context(x), np.float32).tobytes(), np.float32)
        direct.update(np.array([algo]), ctx_used[None].astype(float), np.array([float(clicked)]))
    for p in parts:
        p.close(10_000)
    wire = [Partial.from_bytes(p.partial.to_bytes()) for p in parts]
    # Replaying the first partition's whole history (offsets from 0 again, as after a lost
    # commit) adds nothing to its statistics.
    again = Partition(2, ctx_dim=3)
    again.partial = Partial.from_bytes(wire[0].to_bytes())
    again.records = dict(parts[0].records)
    rng_again = np.random.default_rng(4)
    for i in range(300):
        x = users(rng_again, 1)[0]
        algo = int(rng_again.integers(2))
        clicked = rng_again.random() < 0.4
        if i % 2 == 0:
            events = [impression(i * 10, f"i{i}", algo, encode_context(linear_context(x)))]
            again.feed(events + ([click(i * 10 + 1, f"i{i}")] if clicked else []))
    again.close(10_000)
    np.testing.assert_array_equal(again.partial.xx, wire[0].xx)
    np.testing.assert_array_equal(again.partial.ctx_trials, wire[0].ctx_trials)
    xx, xr, n = sum_context(wire, 3)  # type: ignore[misc]
    np.testing.assert_allclose(xx[0], direct.xx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(xr[0], direct.xr, rtol=1e-9, atol=1e-9)
    assert n[0].tolist() == direct.counts.tolist()


def test_contextual_strategy_falls_back_without_statistics_or_on_a_dimension_mismatch() -> None:
    k = 2
    plain = bandits.segment_weights("new", np.ones(k), np.ones(k), np.zeros(k), np.zeros(k), 1,
                                    names=NAMES[:k])  # fmt: skip
    assert bandits.contextual_strategy(plain, np.zeros(2), seed=0) is None
    ctx = bandits.segment_weights("new", np.ones(k), np.ones(k), np.zeros(k), np.zeros(k), 1,
                                  linear=(np.zeros((k, 3, 3)), np.zeros((k, 3)),
                                          np.zeros(k)), names=NAMES[:k])  # fmt: skip
    assert bandits.contextual_strategy(ctx, np.zeros(5), seed=0) is None
    probs, weights = bandits.contextual_strategy(ctx, None, seed=0)  # type: ignore[misc]
    assert probs.sum() == pytest.approx(1) and weights.sum() == pytest.approx(1)


def test_contextual_mode_refuses_large_vectors_and_documents_its_settings() -> None:
    from streams.config import ConfigError, Settings, settings_table

    with pytest.raises(ConfigError, match="LOOPWISE_ITEM_DIM <= 64"):
        Settings.from_env({"LOOPWISE_BANDIT_CONTEXTUAL": "on", "LOOPWISE_ITEM_DIM": "65"})
    many = ",".join(f"a{i}" for i in range(20))  # 4 segments × 20 × 33² float64 ≈ 930 kB
    with pytest.raises(ConfigError, match="a partial would be"):
        Settings.from_env({"LOOPWISE_BANDIT_CONTEXTUAL": "on", "LOOPWISE_ALGORITHMS": many})
    ok = Settings.from_env({"LOOPWISE_BANDIT_CONTEXTUAL": "on", "LOOPWISE_ITEM_DIM": "48",
                            "LOOPWISE_BANDIT_HALF_LIFE_S": "3600"})  # fmt: skip
    assert ok.bandit_contextual and ok.bandit_half_life_s == 3600.0
    with pytest.raises(ConfigError, match="LOOPWISE_BANDIT_HALF_LIFE_S"):
        Settings.from_env({"LOOPWISE_BANDIT_HALF_LIFE_S": "-1"})
    envs = {row[0] for row in settings_table()}
    assert {"LOOPWISE_BANDIT_HALF_LIFE_S", "LOOPWISE_BANDIT_CONTEXTUAL"} <= envs


@pytest.mark.parametrize("persisted", ["records only", "partial only", "neither", "both"])
def test_a_crash_between_writes_leaves_discounted_and_linear_state_as_without(
    persisted: str,
) -> None:
    """Whatever subset of a batch's writes survived, the replay ends in the state of a run
    without the crash — the discounted counts and linear statistics included."""
    ctx = [encode_context(linear_context(np.array(v))) for v in ([0.5, 1.0], [-1.0, 0.25])]
    first = [impression(0, "a", 0, ctx[0]), impression(10, "b", 1, ctx[1])]
    batch = [click(20, "a"), impression(30, "c", 0, ctx[1]), click(40, "c")]

    def fresh() -> Partition:
        return Partition(2, half_life_ms=100.0, ctx_dim=3)

    clean = fresh()
    clean.feed(first)
    clean.feed(batch)
    clean.close(5_000)

    crashed = fresh()
    crashed.feed(first)
    saved = Partial.from_bytes(crashed.partial.to_bytes())
    records_before = dict(crashed.records)
    changed = apply_signals(crashed.partial, [Signal(2 + o, ts, k, i, a, 0 if a >= 0 else -1, x)
                            for o, (k, ts, i, a, x) in enumerate(batch)],
                            crashed.records.get, WINDOW_MS, 8)  # fmt: skip
    crashed.records = {**records_before, **changed} if persisted in ("records only", "both") \
        else records_before  # fmt: skip
    if persisted not in ("partial only", "both"):
        crashed.partial = saved
    crashed.partial = Partial.from_bytes(crashed.partial.to_bytes())
    crashed.offset = 2
    crashed.feed(batch)  # the replay
    crashed.close(5_000)

    for name in ("trials", "successes", "d_successes", "d_failures", "xx", "xr", "ctx_trials"):
        np.testing.assert_allclose(getattr(crashed.partial, name), getattr(clean.partial, name),
                                   rtol=1e-12, err_msg=name)  # fmt: skip
    assert crashed.partial.ctx_trials.sum() == 3 and crashed.partial.d_successes.sum() > 0


def test_discounted_linear_statistics_sum_over_partitions_to_the_closed_form() -> None:
    """With a half-life the linear statistics are discounted like the counts: Σ w x xᵀ with
    w = 0.5**((T − t)/h) by impression time, whatever partition counted each trial."""
    rng = np.random.default_rng(8)
    h = 5_000.0
    parts = [Partition(2, half_life_ms=h, ctx_dim=3) for _ in range(3)]
    rows = []
    for i in range(200):
        x = np.asarray(linear_context(users(rng, 1)[0]), np.float32).astype(float)
        algo, clicked, ts = int(rng.integers(2)), bool(rng.random() < 0.3), i * 100
        events = [impression(ts, f"i{i}", algo, encode_context(x))]
        if clicked:
            events.append(click(ts + 10, f"i{i}"))
        parts[int(rng.integers(3))].feed(events)
        rows.append((ts, algo, clicked, x))
    for p in parts:
        p.close(100_000)
    xx, xr, n = sum_context([p.partial for p in parts], 3, h)  # type: ignore[misc]
    ref = max(t for t, *_ in rows)
    want_xx, want_xr = np.zeros((2, 3, 3)), np.zeros((2, 3))
    for t, a, c, x in rows:
        w = 2.0 ** (-(ref - t) / h)
        want_xx[a] += w * np.outer(x, x)
        want_xr[a] += w * c * x
    np.testing.assert_allclose(xx[0], want_xx, rtol=1e-9)
    np.testing.assert_allclose(xr[0], want_xr, rtol=1e-9, atol=1e-12)
    assert n[0].sum() == 200
    # Old evidence weighs little: the total weight is far below the trial count.
    assert want_xx[:, 0, 0].sum() < 0.5 * 200

"""Demo scenario 1: a worker learns hidden user preference vectors from feedback.

A handful of users have hidden preference vectors (the ground truth). They rate, like,
dislike, view and dwell on catalog items according to how well each item matches their
taste, with noise. About 1 % of the traffic is malformed and must end in the dead-letter
topic. The demo reads each user's learned vector from Redis (as a consumer service would)
and compares it with the hidden truth by cosine similarity.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.learning.preference import cosine_similarity
from loopwise.demo import plot as demo_plot
from loopwise.demo.common import Context, HumanClocks, Outcome, Scenario, due, feedback_event
from streams.clock import now_ms

DIM = 8
N_ITEMS = 400
LEARNED = 0.8  # mean cosine similarity that counts as learned

# One of each way feedback goes wrong: not JSON, a rating out of range, an unknown item and
# a clock at zero (ts 1 ms after 1970: timestamp_out_of_range).
MALFORMED = [
    b"{this is not json",
    b'{"event_id": "demo-bad", "schema_version": 1, "ts": %d, "user_id": "u", '
    b'"item_id": "item-1", "kind": "rating", "value": 11}',
    b'{"event_id": "demo-bad2", "schema_version": 1, "ts": %d, "user_id": "u", '
    b'"item_id": "no-such-item", "kind": "like"}',
    b'{"event_id": "demo-bad3", "schema_version": 1, "ts": 1, "user_id": "u", '
    b'"item_id": "item-1", "kind": "like"}',
]


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def simulate_feedback(
    rng: np.random.Generator, n: int, user: str, truth: np.ndarray, items: np.ndarray, ts: int
) -> tuple[str, dict[str, Any]]:
    """One feedback event whose sign and size follow the user's hidden taste.

    ``ts`` is the user's simulated clock (:class:`~loopwise.demo.common.HumanClocks`).
    """
    j = int(rng.integers(len(items)))
    affinity = float(truth @ items[j])  # in [-1, 1]
    roll = rng.random()
    item = f"item-{j}"
    if roll < 0.55:
        rating = float(np.clip(np.rint(3 + 2.5 * affinity + rng.normal(0, 0.6)), 1, 5))
        return "feedback.explicit", feedback_event(user, n, item, "rating", ts, rating)
    if roll < 0.8:
        kind = "like" if affinity + rng.normal(0, 0.2) > 0 else "dislike"
        return "feedback.explicit", feedback_event(user, n, item, kind, ts)
    if affinity + rng.normal(0, 0.2) > 0.2:
        dwell = float(np.clip(rng.normal(60 + 100 * affinity, 10), 1, 600))
        return "feedback.implicit", feedback_event(user, n, item, "dwell", ts, round(dwell, 1))
    return "feedback.implicit", feedback_event(user, n, item, "view", ts)


class Preferences(Scenario):
    name = "preferences"
    env = {"LOOPWISE_ITEM_DIM": str(DIM), "LOOPWISE_BASE_ALPHA": "0.02"}
    header = "prefs cos"

    def __init__(self, rng: np.random.Generator, clocks: HumanClocks, run_id: str) -> None:
        self.rng = rng
        self.clocks = clocks
        self.rate = float(os.environ.get("LOOPWISE_DEMO_RATE", "60"))
        n_users = int(os.environ.get("LOOPWISE_DEMO_USERS", "6"))
        self.items = unit_rows(rng, N_ITEMS)
        self.truth = unit_rows(rng, n_users)
        self.users = [f"user-{i}-{run_id}" for i in range(n_users)]
        self.count = self.malformed = 0
        self.history: list[tuple[float, np.ndarray]] = []
        self.cos = np.zeros(n_users)

    def prepare(self, ctx: Context) -> None:
        now = int(time.time() * 1000)
        for j in range(N_ITEMS):
            item = {
                "event_id": f"item-{j}-v1",
                "schema_version": 1,
                "ts": now,
                "item_id": f"item-{j}",
                "features": self.items[j].round(6).tolist(),
            }
            ctx.produce("items", f"item-{j}", item)
        print(
            f"demo: {N_ITEMS} items of dimension {DIM}; {len(self.users)} users with hidden "
            f"preferences send {self.rate:.0f} feedback events/s (1 % malformed)"
        )

    def tick(self, ctx: Context, elapsed: float) -> None:
        for _ in range(due(self.count, elapsed, self.rate)):
            u = int(self.rng.integers(len(self.users)))
            user = self.users[u]
            ts = self.clocks.next(user)
            topic, event = simulate_feedback(
                self.rng, self.count, user, self.truth[u], self.items, ts
            )
            ctx.produce(topic, user, event)
            self.count += 1
            if self.rng.random() < 0.01:
                bad = MALFORMED[self.malformed % len(MALFORMED)]
                ctx.produce("feedback.explicit", "u", bad.replace(b"%d", str(now_ms()).encode()))
                self.malformed += 1

    def observe(self, ctx: Context, elapsed: float) -> None:
        learned = np.zeros_like(self.truth)
        for i, user in enumerate(self.users):
            value = ctx.redis_value(f"pref:{user}")
            if value:
                learned[i] = value["vector"]
        self.cos = cosine_similarity(learned, self.truth)
        self.history.append((elapsed, self.cos.copy()))

    def cell(self) -> str:
        return f"{self.cos.mean():9.3f}"

    def finish(self, ctx: Context) -> Outcome:
        mean = float(self.cos.mean())
        ok = mean > LEARNED
        lines = [
            f"{self.count} feedback events from {len(self.users)} users "
            f"(+ {self.malformed} malformed); cosine similarity of each learned vector to its "
            f"hidden truth: " + " ".join(f"{c:.3f}" for c in self.cos),
            f"mean {mean:.3f} ({'learned' if ok else 'NOT learned'}: > {LEARNED} wanted)",
        ]
        return Outcome(ok, lines, "" if ok else f"mean cosine similarity {mean:.3f} ≤ {LEARNED}")

    def plot(self, ctx: Context) -> list[Path]:
        made = demo_plot.figure(1, 1, "Preferences: learned vs hidden vectors", (9, 4.5))
        if made is None or not self.history:
            return []
        fig, (ax,) = made
        t = [h[0] for h in self.history]
        cos = np.array([h[1] for h in self.history])
        for i, user in enumerate(self.users):
            ax.plot(t, cos[:, i], lw=1, label=user.split("-")[0] + f"-{i}")
        ax.plot(t, cos.mean(axis=1), color="black", lw=2.5, label="mean")
        ax.axhline(LEARNED, color="grey", ls="--", lw=1)
        ax.set(xlabel="seconds", ylabel="cosine similarity to the truth", ylim=(-0.2, 1.02))
        ax.legend(fontsize=8, ncol=4, loc="lower right")
        return [demo_plot.save(fig, ctx.out_dir / "preferences.png")]

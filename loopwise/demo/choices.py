"""Demo scenario 4: per-segment scoring weights learned from customers' choices.

Customers of three segments (price sensitive, quality focused, speed priority) are shown
five ranked candidates each session and choose one — or none — by a conditional logit
with their segment's true weights (:mod:`agents.choices.simulation`, the simulation the
tests use). The worker joins sessions with their choices, classifies the customers and
fits each segment's model; the demo reads the published weights from Redis
(``scoring:<segment>``) and compares them with the truth (L1 distance).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.choices.simulation import FACTORS, simulate_events, true_weights
from loopwise.demo import plot as demo_plot
from loopwise.demo.common import Context, Outcome, Scenario, due

SEGMENTS = ("price_sensitive", "quality_focused", "speed_priority")
SHORT = {"price_sensitive": "price", "quality_focused": "qual", "speed_priority": "speed"}
# Stated preferences that put each customer in its segment from the first session on.
STATED = {
    "price_sensitive": {"price": 1.0, "quality": 0.1, "speed": 0.1},
    "quality_focused": {"quality": 1.0, "price": 0.1, "reliability": 0.2},
    "speed_priority": {"speed": 1.0, "price": 0.1},
}
CUSTOMERS_PER_SEGMENT = 10
SESSIONS_PER_S = 50.0
MAX_L1 = 0.2  # learned when within this L1 distance of the truth (and the top factor right)


class Choices(Scenario):
    name = "choices"
    env = {"LOOPWISE_CHOICE_ALERT_REPEAT_S": "1000000"}
    header = "L1 price  qual speed"

    def __init__(self, rng: np.random.Generator, run_id: str) -> None:
        self.rng = rng
        self.run = run_id
        self.customers = [
            (f"cust-{SHORT[s]}-{i}-{run_id}", s)
            for i in range(CUSTOMERS_PER_SEGMENT)
            for s in SEGMENTS
        ]
        self.sessions = 0
        self.chosen = 0
        self.published: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[float, dict[str, dict[str, Any]]]] = []

    def prepare(self, ctx: Context) -> None:
        print(
            f"demo: choices — {len(self.customers)} customers of {len(SEGMENTS)} segments, "
            f"{SESSIONS_PER_S:.0f} ranked sessions/s over factors {', '.join(FACTORS)}"
        )

    def tick(self, ctx: Context, elapsed: float) -> None:
        for _ in range(due(self.sessions, elapsed, SESSIONS_PER_S)):
            customer = self.customers[int(self.rng.integers(len(self.customers)))]
            events = simulate_events(
                self.rng,
                [customer],
                1,
                prefix=f"ses-{self.sessions}-{self.run}-",
                ts0=int(time.time() * 1000),
                stated=STATED,
                interactions_per_session=0.5,
            )
            for topic, event in events:
                ctx.produce(topic, event["session_id"], event)
                if topic == "recs.choices" and event["chosen_candidate_id"] is not None:
                    self.chosen += 1
            self.sessions += 1

    def observe(self, ctx: Context, elapsed: float) -> None:
        found = {k.partition(":")[2]: v for k, v in ctx.redis_values("scoring:*").items()}
        if found:
            self.published = found
            self.history.append((elapsed, found))

    def l1(self, segment: str) -> float | None:
        value = self.published.get(segment)
        if not value or value.get("is_default"):
            return None
        learned = np.array([value["weights"][f] for f in FACTORS])
        return float(np.abs(learned - true_weights(segment)).sum())

    def cell(self) -> str:
        cells = []
        for s in SEGMENTS:
            d = self.l1(s)
            cells.append("  dflt" if d is None else f"{d:6.3f}")
        return f"{'':2}" + "".join(cells)

    def settled(self, ctx: Context) -> bool:
        return sum(v.get("sample_size", 0) for v in self.published.values()) >= self.sessions

    def finish(self, ctx: Context) -> Outcome:
        lines = [
            f"{self.sessions} sessions ({self.chosen} with a choice, the rest chose none); "
            f"published segments: {', '.join(sorted(self.published)) or 'none'}"
        ]
        header = " " * 16 + "".join(f"{f[:8]:>9}" for f in FACTORS)
        lines.append(header + "      L1   n  conf")
        failures = []
        for s in SEGMENTS:
            truth = true_weights(s)
            value = self.published.get(s)
            lines.append(f"{s:<16}" + "".join(f"{x:9.2f}" for x in truth) + "  (true)")
            if not value:
                failures.append(f"{s}: nothing published")
                continue
            learned = np.array([value["weights"][f] for f in FACTORS])
            d = float(np.abs(learned - truth).sum())
            ok = (
                not value.get("is_default")
                and value.get("applied")
                and d < MAX_L1
                and int(np.argmax(learned)) == int(np.argmax(truth))
            )
            lines.append(
                f"{'':16}"
                + "".join(f"{x:9.2f}" for x in learned)
                + f"  {d:6.3f} {value['sample_size']:4d} {value['confidence']:.2f}"
                + f"  learned{' (DEFAULTS)' if value.get('is_default') else ''}"
                + ("" if ok else "  ← NOT converged")
            )
            if not ok:
                failures.append(
                    f"{s}: L1 {d:.3f}{' (defaults)' if value.get('is_default') else ''}"
                )
        return Outcome(not failures, lines, "; ".join(failures))

    def plot(self, ctx: Context) -> list[Path]:
        made = demo_plot.figure(1, len(SEGMENTS) + 1, "Choices: learned vs true scoring weights",
                                (17, 4.2))  # fmt: skip
        if made is None or not self.history:
            return []
        fig, axes = made
        t = [h[0] for h in self.history]
        for a, s in enumerate(SEGMENTS):
            ax = axes[a]
            truth = true_weights(s)
            for k, f in enumerate(FACTORS):
                color = demo_plot.COLORS[k]
                ys = [h[1][s]["weights"][f] if s in h[1] else np.nan for h in self.history]
                ax.plot(t, ys, color=color, label=f)
                ax.axhline(truth[k], color=color, ls="--", lw=1)
            ax.set(title=f"{s} (dashed: truth)", xlabel="seconds", ylabel="weight",
                   ylim=(0, 0.6))  # fmt: skip
            ax.legend(fontsize=7, ncol=2)
        ax = axes[-1]
        for a, s in enumerate(SEGMENTS):
            ys = []
            for h in self.history:
                v = h[1].get(s)
                w = np.array([v["weights"][f] for f in FACTORS]) if v else None
                ys.append(np.nan if w is None else float(np.abs(w - true_weights(s)).sum()))
            ax.plot(t, ys, color=demo_plot.COLORS[a], label=s)
        ax.axhline(MAX_L1, color="grey", ls="--", lw=1)
        ax.set(title="L1 distance to the truth", xlabel="seconds", ylabel="L1")
        ax.legend(fontsize=8)
        return [demo_plot.save(fig, ctx.out_dir / "choices.png")]

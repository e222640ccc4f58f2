"""Demo scenario 3: an A/B experiment with a known true lift, monitored sequentially.

The experiment is created with ``loopwise experiments create`` (PostgreSQL record,
announced on ``experiments.definitions``): control converts at 10 %, treatment at 13 %.
Units are assigned by the documented hash (:func:`agents.learning.assignment.assign`, as a
serving service would) and streamed as exposures and conversions. The demo reads the
worker's result from Redis (``exp:<id>``) — the always-valid (mSPRT) p-value and the 95 %
confidence sequence of the difference, which may be read after every event — and stops
exposing units as soon as the agent concludes: the ``stop_experiment`` decision is read
from the ``actions`` topic.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg

from agents.learning.assignment import assign
from loopwise.demo import plot as demo_plot
from loopwise.demo.common import Context, Outcome, Scenario, due
from streams.config import REPO_ROOT

RATES = {"control": 0.10, "treatment": 0.13}
UNITS_PER_S = 180.0
MIN_SAMPLE = 200  # units per variant before an early stop
MIN_RUNTIME_S = 20  # event time (the events are stamped with the wall clock)


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


class Experiment(Scenario):
    name = "experiment"
    env = {"LOOPWISE_EXPERIMENT_RESULTS_INTERVAL_S": "0.5"}
    header = "A/B n  lift  seq-p  conf. sequence     "

    def __init__(self, rng: np.random.Generator, run_id: str) -> None:
        self.rng = rng
        self.exp = f"demo-ab-{run_id}"
        self.variants = list(RATES)
        self.units = 0
        self.exposed = dict.fromkeys(RATES, 0)
        self.converted = dict.fromkeys(RATES, 0)
        self.result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.stopped_at: float | None = None
        self.created = False

    def definition(self) -> dict[str, Any]:
        return {
            "experiment_id": self.exp,
            "name": "demo: new checkout button",
            "variants": [{"name": v, "weight": 1} for v in self.variants],
            "control": "control",
            "primary_metric": {"name": "conversion", "type": "binary"},
            "mde": 0.03,
            "alpha": 0.05,
            "monitoring": "sequential",
            "min_sample_size": MIN_SAMPLE,
            "min_runtime_seconds": MIN_RUNTIME_S,
            "status": "running",
        }

    def prepare(self, ctx: Context) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "loopwise.cli.main", "experiments", "create", "-"],
            cwd=REPO_ROOT,
            env=ctx.dep.base_env,
            input=orjson.dumps(self.definition()),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"loopwise experiments create failed: {run.stderr.decode()}")
        self.created = True
        print(
            f"demo: experiment {self.exp} created with `loopwise experiments create` — "
            f"true conversion control {RATES['control']:.0%}, treatment {RATES['treatment']:.0%}"
            f", sequential monitoring, {UNITS_PER_S:.0f} units/s"
        )

    @property
    def concluded(self) -> bool:
        return bool(self.result) and self.result.get("status") in ("concluded", "stopped")

    def tick(self, ctx: Context, elapsed: float) -> None:
        if self.concluded:  # the serving side stops assigning units to a finished test
            return
        for _ in range(due(self.units, elapsed, UNITS_PER_S)):
            unit = f"{self.exp}-u{self.units}"
            variant = assign(self.exp, unit, self.variants, [1.0, 1.0])
            now = int(time.time() * 1000)
            ctx.produce(
                "experiments.exposures",
                self.exp,
                {
                    "event_id": f"{unit}-x",
                    "schema_version": 1,
                    "ts": now,
                    "experiment_id": self.exp,
                    "unit_id": unit,
                    "variant": variant,
                },
            )
            self.units += 1
            self.exposed[variant] += 1
            if self.rng.random() < RATES[variant]:
                self.converted[variant] += 1
                ctx.produce(
                    "experiments.conversions",
                    self.exp,
                    {
                        "event_id": f"{unit}-c",
                        "schema_version": 1,
                        "ts": now + 1,
                        "experiment_id": self.exp,
                        "unit_id": unit,
                        "metric": "conversion",
                        "value": 1,
                    },
                )

    def _comparison(self) -> dict[str, Any] | None:
        if not self.result:
            return None
        for c in self.result.get("comparisons", []):
            if c["variant"] == "treatment" and c["metric"] == "conversion":
                return c
        return None

    def observe(self, ctx: Context, elapsed: float) -> None:
        self.result = ctx.redis_value(f"exp:{self.exp}") or self.result
        c = self._comparison()
        if c is None or self.result is None:
            return
        if self.concluded and self.stopped_at is None:
            self.stopped_at = elapsed
        self.history.append(
            {
                "t": elapsed,
                "units": self.result.get("total_units", 0),
                "diff": c.get("difference"),
                "ci": c.get("ci"),
                "cs": (c.get("sequential_ci_lower"), c.get("sequential_ci_upper")),
                "seq_p": c.get("sequential_p_value"),
                "p": c.get("p_value"),
            }
        )

    def cell(self) -> str:
        c = self._comparison()
        if c is None or self.result is None:
            return f"{self.units:5d}  (no result yet)" + " " * 17
        lo, hi = c.get("sequential_ci_lower"), c.get("sequential_ci_upper")
        cs = f"[{_f(lo, '+.3f')},{_f(hi, '+.3f')}]"
        flag = "STOP" if self.concluded else "run"
        return (
            f"{self.result.get('total_units', 0):5d} {_f(c.get('lift'), '+5.0%'):>5} "
            f"{_f(c.get('sequential_p_value'), '6.3f'):>6} {cs:<16} {flag:<4}"
        )

    def stop_action(self, ctx: Context) -> dict[str, Any] | None:
        for a in ctx.tail.events["actions"]:
            if a.get("target") == self.exp and a.get("kind") == "stop_experiment":
                return a
        return None

    def settled(self, ctx: Context) -> bool:
        if self.concluded:
            return self.stop_action(ctx) is not None
        return bool(self.result) and self.result.get("total_units") == self.units

    def finish(self, ctx: Context) -> Outcome:
        action = self.stop_action(ctx)
        c = self._comparison()
        lines = [
            f"{self.units} units exposed ("
            + ", ".join(
                f"{v} {self.converted[v]}/{self.exposed[v]} = "
                f"{self.converted[v] / max(1, self.exposed[v]):.1%}"
                for v in self.variants
            )
            + f"); true difference {RATES['treatment'] - RATES['control']:+.3f}"
        ]
        narrowing, seen_n = [], set()
        for h in self.history:
            if h["cs"][0] is not None and h["cs"][1] is not None and h["units"] not in seen_n:
                seen_n.add(h["units"])
                narrowing.append(h)
        if narrowing:
            marks = np.unique(np.linspace(0, len(narrowing) - 1, 6).round().astype(int))
            lines.append(
                "confidence sequence narrowing: "
                + "  ".join(
                    f"n={narrowing[i]['units']}: [{narrowing[i]['cs'][0]:+.3f}, "
                    f"{narrowing[i]['cs'][1]:+.3f}] p={_f(narrowing[i]['seq_p'], '.3f')}"
                    for i in marks
                )
            )
        if c is not None:
            lines.append(
                f"final: difference {_f(c.get('difference'), '+.4f')}, lift "
                f"{_f(c.get('lift'), '+.1%')}, always-valid p "
                f"{_f(c.get('sequential_p_value'), '.4f')}, fixed-horizon p "
                f"{_f(c.get('p_value'), '.4f')} (not valid under peeking), "
                f"decision {c.get('sequential_decision')}"
            )
        if action is not None:
            lines.append(
                f"stop decision (actions topic, {action['action_id']}): winner "
                f"{action['parameters'].get('winner')} — {action['reason']}"
            )
        truth = RATES["treatment"] - RATES["control"]
        if c is not None and c.get("sequential_ci_lower") is not None:
            covered = c["sequential_ci_lower"] <= truth <= c["sequential_ci_upper"]
            lines.append(
                f"the confidence sequence {'covers' if covered else 'misses (a 5 % event)'} "
                f"the true difference {truth:+.3f}"
            )
        ok = action is not None and action["parameters"].get("winner") == "treatment"
        if action is None:
            failure = "the sequential test did not stop the experiment"
        elif not ok:
            failure = f"stopped with winner {action['parameters'].get('winner')}, not treatment"
        else:
            failure = ""
        return Outcome(ok, lines, failure)

    def plot(self, ctx: Context) -> list[Path]:
        rows = [
            h
            for h in self.history
            if h["cs"][0] is not None and h["cs"][1] is not None and h["diff"] is not None
        ]
        made = demo_plot.figure(1, 2, f"Experiment {self.exp}: treatment − control", (13, 4.5))
        if made is None or not rows:
            return []
        fig, (ax, ax_p) = made
        n = [h["units"] for h in rows]
        ax.fill_between(n, [h["cs"][0] for h in rows], [h["cs"][1] for h in rows],
                        alpha=0.25, color=demo_plot.COLORS[0],
                        label="95 % confidence sequence (always valid)")  # fmt: skip
        fixed = [h for h in rows if h["ci"] and None not in h["ci"]]
        if fixed:
            ax.plot([h["units"] for h in fixed], [h["ci"][0] for h in fixed], ":", color="grey",
                    label="fixed-horizon 95 % CI (invalid under peeking)")  # fmt: skip
            ax.plot([h["units"] for h in fixed], [h["ci"][1] for h in fixed], ":", color="grey")
        ax.plot(n, [h["diff"] for h in rows], color=demo_plot.COLORS[0], label="estimate")
        truth = RATES["treatment"] - RATES["control"]
        ax.axhline(truth, color=demo_plot.COLORS[2], ls="--", label=f"true difference {truth}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="units exposed", ylabel="conversion difference", ylim=(-0.1, 0.15))
        ax_p.semilogy(n, [max(h["seq_p"], 1e-6) for h in rows], color=demo_plot.COLORS[1],
                      label="always-valid p-value (mSPRT)")  # fmt: skip
        ax_p.semilogy(n, [max(h["p"] or 1e-6, 1e-6) for h in rows], ":", color="grey",
                      label="fixed-horizon p-value")  # fmt: skip
        ax_p.axhline(0.05, color="black", ls="--", lw=1, label="α = 0.05")
        ax_p.set(xlabel="units exposed", ylabel="p-value", ylim=(1e-6, 1.5))
        if self.stopped_at is not None:
            stop_n = next((h["units"] for h in rows if h["t"] >= self.stopped_at), n[-1])
            for a in (ax, ax_p):
                a.axvline(stop_n, color=demo_plot.COLORS[3], lw=1.5, label="stopped")
        ax.legend(fontsize=8)
        ax_p.legend(fontsize=8)
        return [demo_plot.save(fig, ctx.out_dir / "experiment.png")]

    def cleanup(self, ctx: Context) -> None:
        """Remove the demo experiment's records from the shared database."""
        if not self.created:
            return
        try:
            with psycopg.connect(ctx.dep.settings.database_url) as conn:
                for table in (
                    "experiments",
                    "experiment_results_latest",
                    "experiment_results",
                    "experiment_decisions",
                ):
                    conn.execute(f"DELETE FROM {table} WHERE experiment_id = %s", (self.exp,))
        except psycopg.Error as exc:
            print(f"demo: could not remove experiment {self.exp} from PostgreSQL: {exc}")

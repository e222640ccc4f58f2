"""Demo scenario 5: decision logs and metrics with a planted degradation → insights.

A lead enricher logs every decision (``decisions``) with the method it used: ``rules_v1``
stays at 96 % success, ``llm_v2`` starts at 95 % and degrades from minute 8 on by 6 points
a minute. A checkout component reports an ``engagement`` metric (``metrics``) that starts
to slide at minute 10. Event time runs in one-minute windows of the past (one window every
few seconds of demo), so the insights agent closes windows as it reads past them.

Expected, read from the output topics: a declining trend (Mann–Kendall / Theil–Sen), a
health alert when the enricher's success rate falls below 80 % (escalating after three
failing windows), insights with a recommended action, and the optimization engine's action
(balanced strategy) on ``actions``. At the end ``loopwise report`` writes the report.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loopwise.demo import plot as demo_plot
from loopwise.demo.common import Context, Outcome, Scenario
from streams.config import REPO_ROOT

COMPONENT = "enricher"
METRIC_COMPONENT = "checkout"
METHODS = ("rules_v1", "llm_v2")
W_MS = 60_000
N_WINDOWS = 25
PER_METHOD = 40  # decisions per method and window
METRIC_SAMPLES = 20  # engagement samples per window
PER_WINDOW = PER_METHOD * len(METHODS) + METRIC_SAMPLES
DEGRADE_FROM = 8
SLIDE_FROM = 10


def method_rate(method: str, k: int) -> float:
    if method == "rules_v1":
        return 0.96
    return max(0.35, 0.95 - 0.06 * max(0, k - DEGRADE_FROM + 1))


def overall_rate(k: int) -> float:
    return float(np.mean([round(method_rate(m, k) * PER_METHOD) / PER_METHOD for m in METHODS]))


def engagement(k: int) -> float:
    return 0.62 - 0.015 * max(0, k - SLIDE_FROM + 1)


class Insights(Scenario):
    name = "insights"
    header = "min  SR  al  in  ac"

    def __init__(self, rng: np.random.Generator, out_dir: Path, seconds: float) -> None:
        self.rng = rng
        self.span = seconds / N_WINDOWS  # real seconds per one-minute window
        self.base = (int(time.time() * 1000) - 3 * 3_600_000) // W_MS * W_MS
        self.count = 0
        self.windows: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.measured: dict[int, dict[str, float]] = {}  # window → group → success rate
        self.engagement: dict[int, float] = {}
        self.first_seen: dict[str, float] = {}  # event id → demo window index when seen
        self.report: dict[str, str] = {}
        self.report_error = ""
        self.counts = (0, 0, 0)  # alerts, insights, actions seen
        self.env = {
            "LOOPWISE_INSIGHTS_WINDOW_S": "60",
            "LOOPWISE_INSIGHTS_GRACE_S": "2",
            "LOOPWISE_INSIGHTS_EVAL_INTERVAL_S": "1",
            "LOOPWISE_INSIGHTS_MIN_SAMPLES": "20",
            "LOOPWISE_INSIGHTS_TREND_WINDOWS": "12",
            "LOOPWISE_INSIGHTS_TREND_MIN_WINDOWS": "6",
            "LOOPWISE_INSIGHTS_THRESHOLDS": (
                "*/success_rate<0.8:warning,*/success_rate<0.6:critical,"
                f"{METRIC_COMPONENT}/engagement<0.5:warning"
            ),
            "LOOPWISE_OPTIMIZATION_STRATEGY": "balanced",
            "LOOPWISE_OPTIMIZATION_INTERVAL_S": "2",
            "LOOPWISE_REPORT_INTERVAL_H": "0",
            "LOOPWISE_REPORT_DIR": str(out_dir / "reports"),
        }

    # ----------------------------------------------------------------------------------
    def _window_events(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        start = self.base + k * W_MS
        outcomes = []
        for m in METHODS:
            wins = round(method_rate(m, k) * PER_METHOD)
            outcomes += [(m, i < wins) for i in range(PER_METHOD)]
        kinds: list[tuple[str, Any]] = [("decision", o) for o in outcomes]
        kinds += [("metric", None)] * METRIC_SAMPLES
        order = self.rng.permutation(len(kinds))
        events = []
        for pos, idx in enumerate(order):
            what, outcome = kinds[idx]
            ts = start + pos * (W_MS - 1_000) // PER_WINDOW
            if what == "decision":
                method, success = outcome
                slow = method == "llm_v2"
                events.append(
                    (
                        "decisions",
                        {
                            "event_id": f"dec-{k}-{pos}",
                            "schema_version": 1,
                            "ts": ts,
                            "log_type": "enrichment_decision",
                            "component": COMPONENT,
                            "session_id": f"lead-{k}-{pos}",
                            "method": method,
                            "confidence": round(float(self.rng.uniform(0.6, 0.95)), 3),
                            "processing_time_ms": round(
                                float(self.rng.lognormal(np.log(900 if slow else 150), 0.15)), 1
                            ),
                            "success": bool(success),
                            "quality_score": round(
                                float(np.clip(self.rng.normal(0.8 if success else 0.3, 0.1), 0, 1)),
                                3,
                            ),
                        },
                    )
                )
            else:
                value = float(np.clip(self.rng.normal(engagement(k), 0.03), 0, 1))
                events.append(
                    (
                        "metrics",
                        {
                            "event_id": f"met-{k}-{pos}",
                            "schema_version": 1,
                            "ts": ts,
                            "component": METRIC_COMPONENT,
                            "metric": "engagement",
                            "value": round(value, 4),
                            "unit": "score",
                            "dimensions": {"device": ("mobile", "desktop")[pos % 2]},
                        },
                    )
                )
        return events

    def prepare(self, ctx: Context) -> None:
        print(
            f"demo: insights — {COMPONENT} decisions ({' / '.join(METHODS)}), {METHODS[1]} "
            f"degrading from minute {DEGRADE_FROM}; {METRIC_COMPONENT} engagement sliding "
            f"from minute {SLIDE_FROM}; one event-time minute every {self.span:.1f} s"
        )

    def window_now(self, elapsed: float) -> int:
        return min(N_WINDOWS - 1, int(elapsed / self.span))

    def tick(self, ctx: Context, elapsed: float) -> None:
        target = min(N_WINDOWS * PER_WINDOW, int(elapsed / self.span * PER_WINDOW))
        while self.count < target:
            k, pos = divmod(self.count, PER_WINDOW)
            if k not in self.windows:
                self.windows = {k: self._window_events(k)}
            topic, event = self.windows[k][pos]
            ctx.produce(topic, event["component"], event)
            self.count += 1

    def _ours(self, ctx: Context, topic: str) -> list[dict[str, Any]]:
        out = []
        for e in ctx.tail.events[topic]:
            where = str(e.get("component") or e.get("subject") or e.get("target") or "")
            comp = str((e.get("evidence") or {}).get("component", ""))
            if where.startswith((COMPONENT, METRIC_COMPONENT)) or comp in (
                COMPONENT,
                METRIC_COMPONENT,
            ):
                out.append(e)
        return out

    def alerts(self, ctx: Context) -> list[dict[str, Any]]:
        return self._ours(ctx, "alerts")

    def insights(self, ctx: Context) -> list[dict[str, Any]]:
        return self._ours(ctx, "insights")

    def actions(self, ctx: Context) -> list[dict[str, Any]]:
        ids = {i["insight_id"] for i in self.insights(ctx)}
        return [a for a in ctx.tail.events["actions"] if a.get("insight_id") in ids]

    def observe(self, ctx: Context, elapsed: float) -> None:
        k_now = self.window_now(elapsed)
        self.counts = (len(self.alerts(ctx)), len(self.insights(ctx)), len(self.actions(ctx)))
        for kind in ("alerts", "insights"):
            for e in self._ours(ctx, kind):
                self.first_seen.setdefault(e["event_id"], k_now)
        for a in self.actions(ctx):
            self.first_seen.setdefault(a["event_id"], k_now)
        if ctx.worker is None:
            return
        for comp in (COMPONENT, METRIC_COMPONENT):
            try:
                status, body = ctx.worker.get_json(f"/insights/windows/{comp}", timeout=2)
            except (OSError, ValueError):
                continue
            if status != 200:
                continue
            for w in body.get("windows", []):
                k = (int(w["start"]) - self.base) // W_MS
                for group, values in (w.get("groups") or {}).items():
                    if comp == COMPONENT and "success_rate" in values:
                        v = values["success_rate"].get("value")
                        if v is not None:
                            self.measured.setdefault(k, {})[group] = float(v)
                    if comp == METRIC_COMPONENT and group == "all" and "engagement" in values:
                        v = values["engagement"].get("value")
                        if v is not None:
                            self.engagement[k] = float(v)

    def cell(self) -> str:
        k = max(self.measured, default=None)
        sr = "  — " if k is None else f"{self.measured[k].get('all', float('nan')):4.2f}"
        sent = self.count // PER_WINDOW
        return f"{'':9}{sent:3d} {sr} {self.counts[0]:2d} {self.counts[1]:2d} {self.counts[2]:2d}"

    def _trend(self, ctx: Context) -> list[dict[str, Any]]:
        return [
            i
            for i in self.insights(ctx)
            if i["kind"] == "trend"
            and i["subject"].startswith(COMPONENT)
            and (i.get("evidence") or {}).get("direction") == "declining"
        ]

    def settled(self, ctx: Context) -> bool:
        enricher_alerts = [a for a in self.alerts(ctx) if a["component"] == COMPONENT]
        return bool(self._trend(ctx) and enricher_alerts and self.actions(ctx))

    def run_report(self, ctx: Context) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "loopwise.cli.main", "report", "--days", "1",
             "--out", str(ctx.out_dir / "report")],
            cwd=REPO_ROOT, env=ctx.dep.base_env, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        if run.returncode != 0:
            self.report_error = (run.stderr or run.stdout).strip()[-800:]
            return
        for line in run.stdout.splitlines():
            name, _, path = line.strip().partition(" ")
            if path.strip():
                self.report[name] = path.strip()

    def latest(self, ctx: Context) -> list[dict[str, Any]]:
        """The latest revision of each insight about the demo's components, most urgent first."""
        by_id: dict[str, dict[str, Any]] = {}
        for i in self.insights(ctx):
            rev = (i.get("evidence") or {}).get("revision", 0)
            old = by_id.get(i["insight_id"])
            if old is None or rev >= (old.get("evidence") or {}).get("revision", 0):
                by_id[i["insight_id"]] = i
        rank = {"high": 0, "medium": 1, "low": 2}
        return sorted(by_id.values(), key=lambda i: (rank.get(i["priority"], 3), i["subject"]))

    def finish(self, ctx: Context) -> Outcome:
        latest = self.latest(ctx)
        alerts = self.alerts(ctx)
        actions = self.actions(ctx)
        trend = [i for i in latest if i in self._trend(ctx)]
        lines = [f"{len(latest)} insights (latest revision of each; evidence from the windows):"]
        for i in latest:
            ev = i.get("evidence") or {}
            stats = ""
            if i["kind"] in ("trend", "opportunity"):
                stats = (
                    f" — Theil–Sen slope {ev.get('slope_per_hour', 0):+.3g}/h, Mann–Kendall "
                    f"p {ev.get('p_value', 1):.2g}"
                )
            elif i["kind"] == "underperformance":
                stats = f" — p {ev.get('p_value', 1):.2g}"
            lines.append(
                f"  [{i['priority']:<6} {i['kind']:<16}] {i['title']}{stats}, "
                f"confidence {i['confidence']:.2f}"
            )
        lines.append(f"{len(alerts)} alerts (de-duplicated, escalating every 3 failing windows):")
        lines += [
            f"  [{a['severity']}, level {a['escalation_level']}] {a['message']}" for a in alerts
        ]
        lines.append(f"{len(actions)} actions chosen by the balanced strategy (topic actions):")
        seen: set[str] = set()
        for a in actions:
            what = a["reason"].split(" [", 1)[0]
            if what in seen:
                continue
            seen.add(what)
            if len(seen) <= 6:
                lines.append(f"  {a['kind']} → {a['target']}: {what}")
        if len(seen) > 6:
            lines.append(f"  … and {len(seen) - 6} more")
        self.run_report(ctx)
        if self.report:
            lines.append("report written by `loopwise report`:")
            lines += [f"  {k:<9} {v}" for k, v in self.report.items()]
        else:
            lines.append(f"report FAILED: {self.report_error}")
        missing = []
        if not trend:
            missing.append(f"no declining trend insight for {COMPONENT}")
        if not [a for a in alerts if a["component"] == COMPONENT]:
            missing.append(f"no alert for {COMPONENT}")
        if not actions:
            missing.append("no action")
        html = self.report.get("html")
        if not html or not Path(html).exists():
            missing.append("no HTML report")
        return Outcome(not missing, lines, "; ".join(missing))

    def plot(self, ctx: Context) -> list[Path]:
        made = demo_plot.figure(1, 2, "Insights: planted degradation", (13, 4.5))
        if made is None:
            return []
        fig, (ax, ax_m) = made
        ks = np.arange(N_WINDOWS)
        ax.plot(ks, [overall_rate(k) for k in ks], color="black", ls="--", lw=1,
                label="true success rate (all)")  # fmt: skip
        ax.plot(ks, [method_rate("llm_v2", k) for k in ks], color=demo_plot.COLORS[1], ls="--",
                lw=1, label="true llm_v2")  # fmt: skip
        for g, color in (("all", "black"), ("method=llm_v2", demo_plot.COLORS[1]),
                         ("method=rules_v1", demo_plot.COLORS[0])):  # fmt: skip
            pts = sorted((k, v[g]) for k, v in self.measured.items() if g in v)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=color, ms=4,
                        label=f"measured {g}")  # fmt: skip
        ax.axhline(0.8, color=demo_plot.COLORS[3], lw=1, label="health threshold 0.8")
        marks = (
            ("alerts", "^", demo_plot.COLORS[3]),
            ("insights", "s", demo_plot.COLORS[4]),
            ("actions", "*", demo_plot.COLORS[2]),
        )
        for topic, marker, color in marks:
            seen = sorted(
                {self.first_seen[e["event_id"]] for e in self._by_topic(ctx, topic)
                 if e["event_id"] in self.first_seen}
            )  # fmt: skip
            if seen:
                ax.plot(seen, [0.3] * len(seen), marker, color=color, ms=9,
                        ls="none", label=f"{topic} seen")  # fmt: skip
        ax.set(title=f"{COMPONENT} success rate per one-minute window", xlabel="window (minute)",
               ylabel="success rate", ylim=(0.25, 1.02))  # fmt: skip
        ax.legend(fontsize=7, loc="lower left")
        ax_m.plot(ks, [engagement(k) for k in ks], "--", color="black", lw=1, label="true mean")
        pts = sorted(self.engagement.items())
        if pts:
            ax_m.plot(*zip(*pts, strict=True), "o-", ms=4, label="measured (window mean)")
        ax_m.axhline(0.5, color=demo_plot.COLORS[3], lw=1, label="health threshold 0.5")
        ax_m.set(title=f"{METRIC_COMPONENT} engagement (metrics topic)", xlabel="window (minute)",
                 ylabel="engagement")  # fmt: skip
        ax_m.legend(fontsize=8)
        return [demo_plot.save(fig, ctx.out_dir / "insights.png")]

    def _by_topic(self, ctx: Context, topic: str) -> list[dict[str, Any]]:
        return {"alerts": self.alerts, "insights": self.insights, "actions": self.actions}[topic](
            ctx
        )

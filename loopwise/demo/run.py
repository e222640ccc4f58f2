"""``make demo``: one worker learns five things at once from simulated traffic, live.

One isolated deployment (topic prefix, app id) and one worker; the scenarios of
``loopwise/demo/*.py`` produce their traffic interleaved from one loop:

1. preferences — hidden user preference vectors learned from feedback (cosine similarity);
2. bandits — per-segment Thompson-sampling weights of three algorithms, and the regret of
   serving by them;
3. experiment — an A/B test with a known lift, stopped by the always-valid sequential test;
4. choices — per-segment scoring weights learned from choices among ranked candidates;
5. insights — a planted degradation in decision logs and metrics: trend, alert, insight,
   action, and the report.

A compact table is printed every five seconds; at the end each scenario's summary, the
PNG figures (``.run/demo/*.png``) and the report paths. The exit status is 0 only if every
scenario learned what it should.

Environment: LOOPWISE_DEMO_SECONDS (seconds of traffic, default 75), LOOPWISE_DEMO_RATE
(feedback events/s of scenario 1, default 60), LOOPWISE_DEMO_USERS (default 6),
LOOPWISE_DEMO_SETTLE_S (longest wait for the last results after the traffic, default 30).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import numpy as np
import redis

from loopwise.demo.bandits import Bandits
from loopwise.demo.choices import Choices
from loopwise.demo.common import Context, HumanClocks, Outcome, Scenario, TopicTail
from loopwise.demo.experiment import Experiment
from loopwise.demo.insights import Insights
from loopwise.demo.preferences import Preferences
from streams.config import REPO_ROOT
from streams.harness import Deployment
from streams.kafka_admin import producer
from streams.security import current, redis_client_kwargs

TABLE_EVERY_S = 5.0
OBSERVE_EVERY_S = 1.0
TAILED = ("actions", "alerts", "insights")


def build_scenarios(rng: np.random.Generator, run_id: str, seconds: float) -> list[Scenario]:
    clocks = HumanClocks(rng)
    prefs = Preferences(rng, clocks, run_id)
    out_dir = REPO_ROOT / ".run" / "demo"
    return [
        prefs,
        Bandits(rng, clocks, prefs.items, run_id),
        Experiment(rng, run_id),
        Choices(rng, run_id),
        Insights(rng, out_dir, seconds),
    ]


def row(ctx: Context, scenarios: list[Scenario], elapsed: float, dead: int, quar: int) -> str:
    sent = sum(ctx.sent.values())
    cells = " │ ".join(s.cell() for s in scenarios)
    return f"{elapsed:4.0f}s {sent:6d} │ {cells} │ {dead:4d} {quar:4d}"


def header(scenarios: list[Scenario]) -> str:
    titles = " │ ".join(f"{s.name:^{len(s.header)}}" for s in scenarios)
    return (
        f"{'':11}│ {titles} │\n"
        + "   t   sent │ "
        + " │ ".join(s.header for s in scenarios)
        + " │ dead quar"
    )


def legend() -> str:
    return (
        "\nlive table, every 5 s ('sent' counts what the demo produced; everything else is read "
        "back from Redis, the worker's HTTP API and its output topics):\n"
        "  preferences  mean cosine similarity of the learned preference vectors to the hidden "
        "ones (Redis pref:<user>)\n"
        "  bandits      serving weights of collaborative, content, popular per segment (Redis "
        "alg:<segment>); regret: expected clicks lost vs always serving the best / by uniform "
        "random serving\n"
        "  experiment   units, lift, always-valid p-value, 95 % confidence sequence of the "
        "difference (Redis exp:<id>); STOP once concluded\n"
        "  choices      L1 distance of each segment's learned scoring weights to the truth "
        "(Redis scoring:<segment>; dflt: defaults still published)\n"
        "  insights     event-time minute sent, measured success rate of its latest closed "
        "window, alerts / insights / actions seen on their topics\n"
        "  dead quar    dead letters (the 1 % malformed feedback) and events quarantined by the "
        "guard\n"
    )


def main() -> int:
    seconds = float(os.environ.get("LOOPWISE_DEMO_SECONDS", "75"))
    settle_s = float(os.environ.get("LOOPWISE_DEMO_SETTLE_S", "30"))
    rng = np.random.default_rng(2026)
    wall = time.monotonic()

    env: dict[str, str] = {"LOOPWISE_BATCH_WITHIN_S": "0.1"}
    dep = Deployment.create(REPO_ROOT / ".run" / "demo-logs", name="demo")
    scenarios = build_scenarios(rng, dep.run_id, seconds)
    for s in scenarios:
        env.update(s.env)
    dep.base_env.update(env)
    out_dir = REPO_ROOT / ".run" / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"demo: topics with prefix {dep.settings.topic_prefix!r}")
    dep.create_topics()
    tail = TopicTail(dep, TAILED)
    client = redis.Redis.from_url(dep.settings.redis_url, **redis_client_kwargs(current().redis))
    ctx = Context(dep, producer(dep.settings), client, out_dir, seconds, tail)
    outcomes: dict[str, Outcome] = {}
    try:
        for s in scenarios:
            s.prepare(ctx)
        ctx.producer.flush(30)
        print("demo: starting one worker (logs in .run/demo-logs/) ...")
        ctx.worker = dep.start_worker()
        print(
            f"demo: worker ready; HTTP on {ctx.worker.url('/ready')} and "
            f"{ctx.worker.url('/metrics')}"
        )
        print(legend())
        print(header(scenarios), flush=True)
        if not run_traffic(ctx, scenarios, seconds):
            return 1
        print(f"demo: traffic over; waiting (≤ {settle_s:.0f} s) for the last results ...")
        settle(ctx, scenarios, settle_s)
        dead, quar = counts(ctx)
        print(row(ctx, scenarios, time.monotonic() - ctx.started, dead, quar), flush=True)
        for s in scenarios:
            try:
                outcomes[s.name] = s.finish(ctx)
            except Exception as exc:  # one scenario's bug must not hide the others' results
                outcomes[s.name] = Outcome(False, [], f"summary failed: {exc!r}")
        summary(ctx, scenarios, outcomes, dead, quar)
        pngs = []
        for s in scenarios:
            try:
                pngs += s.plot(ctx)
            except Exception as exc:
                print(f"demo: the {s.name} figure failed: {exc!r}")
        if pngs:
            print("\ndemo: figures:\n" + "\n".join(f"  {p}" for p in pngs))
        alive = ctx.worker.alive()
        failed = [n for n, o in outcomes.items() if not o.ok]
        print(f"\ndemo: {time.monotonic() - wall:.0f} s in all")
        if not alive:
            print("demo: the worker died:\n" + ctx.worker.log_tail(), file=sys.stderr)
        if failed:
            for name in failed:
                print(f"demo: {name} did NOT learn what it should: {outcomes[name].failure}",
                      file=sys.stderr)  # fmt: skip
            return 1
        if not alive:
            return 1
        print("demo: every scenario learned what it should.")
        return 0
    finally:
        ctx.producer.flush(10)
        dep.stop()
        tail.close()
        dep.delete_topics()
        for s in scenarios:
            s.cleanup(ctx)
        print("demo: worker stopped, demo topics deleted")


def counts(ctx: Context) -> tuple[int, int]:
    return ctx.tail.count(ctx.dep.topic("deadletter")), ctx.tail.count(ctx.dep.topic("quarantine"))


def run_traffic(ctx: Context, scenarios: list[Scenario], seconds: float) -> bool:
    started = ctx.started = time.monotonic()
    next_observe = started + OBSERVE_EVERY_S
    next_row = started + TABLE_EVERY_S
    assert ctx.worker is not None
    while (now := time.monotonic()) - started < seconds:
        elapsed = now - started
        for s in scenarios:
            s.tick(ctx, elapsed)
        ctx.producer.poll(0)
        ctx.tail.poll()
        if now >= next_observe:
            for s in scenarios:
                s.observe(ctx, elapsed)
            next_observe += OBSERVE_EVERY_S
        if now >= next_row:
            dead, quar = counts(ctx)
            print(row(ctx, scenarios, elapsed, dead, quar), flush=True)
            next_row += TABLE_EVERY_S
        if not ctx.worker.alive():
            print(f"demo: the worker died:\n{ctx.worker.log_tail()}", file=sys.stderr)
            return False
        time.sleep(0.02)
    ctx.producer.flush(30)
    return True


def settle(ctx: Context, scenarios: list[Scenario], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    started = ctx.started
    waiting = [s.name for s in scenarios]
    while time.monotonic() < deadline:
        time.sleep(OBSERVE_EVERY_S)
        ctx.tail.poll()
        elapsed = time.monotonic() - started
        for s in scenarios:
            s.observe(ctx, elapsed)
        waiting = [s.name for s in scenarios if not s.settled(ctx)]
        if not waiting:
            return
    print(f"demo: still waiting for {', '.join(waiting)} after {limit_s:.0f} s; judging now")


def summary(
    ctx: Context, scenarios: list[Scenario], outcomes: dict[str, Outcome], dead: int, quar: int
) -> None:
    for i, s in enumerate(scenarios, 1):
        o = outcomes[s.name]
        print(f"\n{i}. {s.name}: {'LEARNED' if o.ok else 'NOT LEARNED — ' + o.failure}")
        for line in o.lines:
            print(f"   {line}")
    reasons = Counter(d.get("error_kind", "?") for d in ctx.dep.read("deadletter"))
    sent = ", ".join(f"{t} {n}" for t, n in sorted(ctx.sent.items()))
    print(f"\nevents sent: {sent}")
    print(
        f"dead letters: {dead} ({', '.join(f'{k} {v}' for k, v in reasons.items()) or 'none'}; "
        f"see `loopwise dlq show`); quarantined by the guard: {quar}"
    )


if __name__ == "__main__":
    sys.exit(main())

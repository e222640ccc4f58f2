"""Demo scenario 2: Thompson-sampling algorithm weights per user segment, and their regret.

Three recommendation algorithms have different true click-through rates per segment: for
*new* users (fewer than 5 interactions) the popularity ranker is best, for *regular* users
collaborative filtering. The demo plays the recommendation server: for every impression it
picks an algorithm by sampling from the serving weights the worker last published in Redis
(``alg:<segment>``, re-read every two seconds), logs that weight as the propensity, and the
simulated user clicks with the algorithm's true CTR. Cumulative (expected) regret is the
clicks lost against always serving the truly best algorithm; uniform random serving is the
baseline.

Segments come from interaction counts: *new* impressions come from a stream of fresh users
(at most two impressions and two clicks each), *regular* ones from 60 users who each rated
a few items first. The users have latent preference vectors like the users of scenario 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loopwise.demo import plot as demo_plot
from loopwise.demo.common import Context, HumanClocks, Outcome, Scenario, due, feedback_event
from loopwise.demo.preferences import N_ITEMS, simulate_feedback, unit_rows

ALGORITHMS = ("collaborative", "content", "popular")
TRUE_CTR = {
    "new": {"collaborative": 0.02, "content": 0.05, "popular": 0.14},
    "regular": {"collaborative": 0.20, "content": 0.08, "popular": 0.04},
}
SEGMENTS = tuple(TRUE_CTR)
BEST = {s: max(c, key=c.__getitem__) for s, c in TRUE_CTR.items()}
RATE = {"new": 15.0, "regular": 12.0}  # impressions per second
REGULARS = 60
WARM_UP = 6  # explicit events each regular user sends first (segment "regular" from 5)
REFRESH_S = 2.0  # how often the simulated server re-reads the weights
MIN_PROB_BEST = 0.9


class Bandits(Scenario):
    name = "bandits"
    env = {
        "LOOPWISE_ALGORITHMS": ",".join(ALGORITHMS),
        "LOOPWISE_ATTRIBUTION_WINDOW_S": "2",
        "LOOPWISE_ATTRIBUTION_IDLE_GRACE_S": "1",
        "LOOPWISE_BANDIT_PUBLISH_S": "1",
    }
    header = "new col con pop  reg col con pop  regret/unif"

    def __init__(
        self, rng: np.random.Generator, clocks: HumanClocks, items: np.ndarray, run_id: str
    ) -> None:
        self.rng = rng
        self.clocks = clocks
        self.items = items
        self.run = run_id
        self.regulars = [f"reg-{i}-{run_id}" for i in range(REGULARS)]
        self.taste = unit_rows(rng, REGULARS)
        self.n_event: dict[str, int] = {}
        self.new_user = 0
        self.new_user_shown = 0
        self.impressions = dict.fromkeys(SEGMENTS, 0)
        self.clicks = dict.fromkeys(SEGMENTS, 0)
        self.regret = dict.fromkeys(SEGMENTS, 0.0)
        self.uniform_regret = dict.fromkeys(SEGMENTS, 0.0)
        self.serving = {s: dict.fromkeys(ALGORITHMS, 1 / len(ALGORITHMS)) for s in SEGMENTS}
        self.published: dict[str, dict] = {}
        self.last_refresh = -1e9
        self.history: list[tuple[float, dict]] = []  # (t, snapshot)

    # ----------------------------------------------------------------------------------
    def _next_n(self, user: str) -> int:
        n = self.n_event.get(user, 0)
        self.n_event[user] = n + 1
        return n

    def prepare(self, ctx: Context) -> None:
        for u, user in enumerate(self.regulars):
            for _ in range(WARM_UP):
                n = self._next_n(user)
                ts = self.clocks.next(user)
                topic, ev = simulate_feedback(self.rng, n, user, self.taste[u], self.items, ts)
                ctx.produce(topic, user, ev)
        lines = ", ".join(
            f"{s}: " + " ".join(f"{a} {c:.0%}" for a, c in TRUE_CTR[s].items()) for s in SEGMENTS
        )
        print(f"demo: bandits — true CTRs {lines}; {REGULARS} regular users warmed up")

    def _refresh(self, ctx: Context) -> None:
        for segment in SEGMENTS:
            value = ctx.redis_value(f"alg:{segment}")
            if not value:
                continue
            self.published[segment] = value
            weights = {a["name"]: float(a.get("weight", 0.0)) for a in value["algorithms"]}
            total = sum(weights.get(a, 0.0) for a in ALGORITHMS)
            if total > 0:
                self.serving[segment] = {a: weights.get(a, 0.0) / total for a in ALGORITHMS}

    def _serve(self, ctx: Context, segment: str) -> None:
        if segment == "new":
            if self.new_user_shown >= 2:
                self.new_user += 1
                self.new_user_shown = 0
            user = f"new-{self.new_user}-{self.run}"
            self.new_user_shown += 1
        else:
            user = self.regulars[int(self.rng.integers(REGULARS))]
        weights = self.serving[segment]
        probs = np.array([weights[a] for a in ALGORITHMS])
        k = int(self.rng.choice(len(ALGORITHMS), p=probs / probs.sum()))
        algo = ALGORITHMS[k]
        ctr = TRUE_CTR[segment]
        item = f"item-{int(self.rng.integers(N_ITEMS))}"
        imp_id = f"imp-{segment}-{self.impressions[segment]}-{self.run}"
        impression = feedback_event(
            user,
            self._next_n(user),
            item,
            "impression",
            self.clocks.next(user),
            impression_id=imp_id,
            algorithm=algo,
            propensity=round(max(float(probs[k]), 1e-6), 6),
        )
        ctx.produce("feedback.implicit", user, impression)
        self.impressions[segment] += 1
        best = ctr[BEST[segment]]
        self.regret[segment] += best - ctr[algo]
        self.uniform_regret[segment] += best - float(np.mean(list(ctr.values())))
        if self.rng.random() < ctr[algo]:
            click = feedback_event(
                user, self._next_n(user), item, "click", self.clocks.next(user),
                impression_id=imp_id,
            )  # fmt: skip
            ctx.produce("feedback.implicit", user, click)
            self.clicks[segment] += 1

    def tick(self, ctx: Context, elapsed: float) -> None:
        if elapsed - self.last_refresh >= REFRESH_S:
            self._refresh(ctx)
            self.last_refresh = elapsed
        for segment in SEGMENTS:
            for _ in range(due(self.impressions[segment], elapsed, RATE[segment])):
                self._serve(ctx, segment)

    def observe(self, ctx: Context, elapsed: float) -> None:
        self._refresh(ctx)
        snap = {
            "weights": {s: dict(self.serving[s]) for s in SEGMENTS},
            "regret": dict(self.regret),
            "uniform": dict(self.uniform_regret),
            "impressions": dict(self.impressions),
        }
        self.history.append((elapsed, snap))

    def cell(self) -> str:
        r, u = sum(self.regret.values()), sum(self.uniform_regret.values())
        ws = "  ".join(
            "   " + " ".join(f"{self.serving[s][a]:.2f}"[1:] for a in ALGORITHMS) for s in SEGMENTS
        )
        return f"{ws}  {r:5.1f}/{u:<5.1f}"

    def _trials(self) -> int:
        total = 0.0
        for value in self.published.values():
            total += sum(a["alpha"] + a["beta"] - 2 for a in value["algorithms"])
        return round(total)

    def settled(self, ctx: Context) -> bool:
        return self._trials() >= sum(self.impressions.values())

    def finish(self, ctx: Context) -> Outcome:
        self._refresh(ctx)
        lines, failures = [], []
        for segment in SEGMENTS:
            value = self.published.get(segment)
            if not value:
                failures.append(f"no weights published for segment {segment}")
                continue
            algos = {a["name"]: a for a in value["algorithms"]}
            cells = []
            for name in ALGORITHMS:
                a = algos[name]
                n = round(a["alpha"] + a["beta"] - 2)
                cells.append(
                    f"{name} w={a['weight']:.2f} P(best)={a['prob_best']:.2f} "
                    f"CTR {a['alpha'] - 1:.0f}/{n} (true {TRUE_CTR[segment][name]:.0%})"
                )
            top = max(ALGORITHMS, key=lambda x: algos[x]["weight"])
            p_best = algos[BEST[segment]]["prob_best"]
            ok = top == BEST[segment] and p_best >= MIN_PROB_BEST
            if not ok:
                failures.append(
                    f"{segment}: top weight {top}, P(best={BEST[segment]}) = {p_best:.2f}"
                )
            lines.append(
                f"{segment:<8} ε={value['exploration_rate']:.2f}: " + "; ".join(cells)
                + f" → {'converged on ' + top if ok else 'NOT converged'}"
            )  # fmt: skip
        n = sum(self.impressions.values())
        r, u = sum(self.regret.values()), sum(self.uniform_regret.values())
        clicks = sum(self.clicks.values())
        lines.append(
            f"cumulative regret: {r:.1f} expected clicks lost over {n} impressions "
            f"({clicks} clicks) vs always serving the best; uniform random serving: {u:.1f} "
            f"({r / u:.0%} of it)"
            if u
            else "no impressions"
        )
        ok = not failures
        return Outcome(ok, lines, "; ".join(failures))

    def plot(self, ctx: Context) -> list[Path]:
        made = demo_plot.figure(1, 3, "Bandits: served policy vs the truth", (14, 4.2))
        if made is None or not self.history:
            return []
        fig, (ax_r, *ax_w) = made
        t = [h[0] for h in self.history]
        for i, segment in enumerate(SEGMENTS):
            color = demo_plot.COLORS[i]
            ax_r.plot(t, [h[1]["regret"][segment] for h in self.history], color=color,
                      label=f"{segment}: Thompson (served)")  # fmt: skip
            ax_r.plot(t, [h[1]["uniform"][segment] for h in self.history], color=color, ls="--",
                      label=f"{segment}: uniform random")  # fmt: skip
            ax = ax_w[i]
            for k, algo in enumerate(ALGORITHMS):
                ax.plot(t, [h[1]["weights"][segment][algo] for h in self.history],
                        color=demo_plot.COLORS[k],
                        lw=2.5 if algo == BEST[segment] else 1.2,
                        label=f"{algo} (CTR {TRUE_CTR[segment][algo]:.0%})")  # fmt: skip
            ax.set(title=f"serving weights, segment {segment}", xlabel="seconds",
                   ylabel="weight (Redis alg:" + segment + ")", ylim=(0, 1))  # fmt: skip
            ax.legend(fontsize=8)
        ax_r.set(title="cumulative expected regret", xlabel="seconds", ylabel="clicks lost")
        ax_r.legend(fontsize=8)
        return [demo_plot.save(fig, ctx.out_dir / "bandits.png")]

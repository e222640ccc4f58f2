"""Insights from the other agents' outputs: bandit weights, experiment results and choice-
scoring weights (pure; no I/O — the insights agent calls :func:`apply_signal` per record).

Each of these topics carries, per key (a user segment, an experiment, a customer segment),
the key's *latest full state* with a version. So a rule needs one record, plus a little
memory kept in the key's :class:`SignalState`, to say which insights hold for the key now:

===================  ==============================================  ===========================
input                insight (kind, priority, confidence)            recommended action (target)
===================  ==============================================  ===========================
weights.algorithms   an algorithm is disabled in a segment           ``disable_algorithm``,
                     (underperformance, medium, 1 − P(best))         permanent (recommendation-
                                                                     orchestrator)
                     an algorithm is best with P(best) ≥             ``reallocate_traffic``
                     ``dominant_prob`` (opportunity, low, P(best))   towards it (same)
experiments.results  concluded with a treatment that beats control   ``promote_winner``
                     (experiment, high, 1 − p)                       (the experiment)
                     concluded, no treatment beat control            none: keep the control
                     (experiment, low, 1 − P(best treatment beats
                     control))
                     a guardrail violated (experiment, high, 1 − p)  running: none (the
                                                                     experiments agent rolls it
                                                                     back at its minimum sample);
                                                                     ended: ``rollback_variant``,
                                                                     and the variant is never
                                                                     promoted; ``investigate``
                                                                     once rolled back
                     sample ratio mismatch, tier red                 running: none (the agent
                     (anomaly, high, 1 − anytime-valid p)            asked already); ended:
                                                                     ``investigate``
weights.scoring      defaults, not applied or confidence below       none: collect more data
                     ``min_confidence`` for ``stuck_s`` of event
                     time (threshold_breach, medium, 1 − confidence)
===================  ==============================================  ===========================

**De-duplication.** A record whose version is not above the key's last applied version (an
offset replay, the same record produced twice) changes nothing. An insight's id is a hash of
(rule, component, group, metric), so the same finding on every newer record is one insight
whose numbers are refreshed in PostgreSQL; it gets a new revision (and event) only when its
direction, priority or action kind changes (:func:`agents.insights.evaluation.emit_insight`). An
active insight of the key that a newer record no longer supports is resolved. An experiment's
winner is decided by its first ``concluded`` result and kept: later results (conversions
still arriving) refresh the winner's numbers but never switch the recommendation.

**Hysteresis.** A dominant algorithm stays an insight while its P(best) is at least
``dominant_prob − dominant_hysteresis``, so a probability wandering around the threshold
does not open and resolve the same insight over and over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from scipy import stats

from agents.insights.evaluation import emit_insight, resolve_insight
from agents.insights.rules import Insight, stable_id

__all__ = [
    "KEY_FIELDS",
    "SignalConfig",
    "SignalState",
    "algorithm_insights",
    "apply_signal",
    "experiment_insights",
    "latest_refreshes",
    "scoring_insights",
]

#: The input topics (unprefixed) and the field that keys each of them.
KEY_FIELDS = {
    "weights.algorithms": "segment",
    "experiments.results": "experiment_id",
    "weights.scoring": "segment",
}
ORCHESTRATOR = (
    "recommendation-orchestrator"  # serves the algorithms, like agents.bandits.agent says
)


@dataclass(frozen=True)
class SignalConfig:
    """Thresholds of the rules (from the settings)."""

    dominant_prob: float = 0.95
    dominant_hysteresis: float = 0.05
    disable_ctr: float = 0.005
    scoring_min_confidence: float = 0.7
    scoring_min_sample: int = 50
    scoring_stuck_s: float = 3600.0


@dataclass
class SignalState:
    """The value of one source key in the table ``insight_signals``."""

    source: str
    key: str
    partition: int = 0
    version: int = -1
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    revs: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)

    def pack(self) -> bytes:
        return orjson.dumps({"v": 1, **self.__dict__})

    @classmethod
    def unpack(cls, blob: bytes) -> SignalState:
        d = orjson.loads(blob)
        if d.pop("v", None) != 1:
            raise ValueError("unsupported insight signal state")
        return cls(**d)


def _num(x: Any) -> float | None:
    """A finite float to 6 significant digits (small p-values keep theirs), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def _clip01(x: float) -> float:
    return float(round(min(1.0, max(0.0, x)), 6))


def _insight(rule: str, component: str, group: str, metric: str, **fields: Any) -> Insight:
    """An insight whose id and subject follow from its rule, component, group and metric (the
    id is what de-duplicates it across records)."""
    return Insight(
        insight_id=stable_id(rule, component, group, metric),
        subject=f"{component}/{group}",
        component=component,
        metric=metric,
        group=group,
        **fields,
    )


# --------------------------------------------------------------------------- algorithms


def algorithm_insights(
    event: Mapping[str, Any], active: Collection[str], cfg: SignalConfig
) -> list[Insight]:
    """Insights of one segment's ``weights.algorithms`` record.

    Parameters
    ----------
    event : mapping
        The record (schema ``weights.algorithms``).
    active : collection of str
        Ids of the key's insights active before this record (for the hysteresis).
    cfg : SignalConfig
        Thresholds.

    Returns
    -------
    list of Insight
        A disabled-algorithm insight per disabled algorithm; a dominant-algorithm insight
        when one enabled algorithm (of at least two) is best with high probability.

    Examples
    --------
    >>> ev = {"segment": "regular", "exploration_rate": 0.1, "version": 7, "algorithms": [
    ...     {"name": "a", "alpha": 400.0, "beta": 9600.0, "mean": 0.04, "prob_best": 0.97,
    ...      "disabled": False, "weight": 0.9},
    ...     {"name": "b", "alpha": 300.0, "beta": 9700.0, "mean": 0.03, "prob_best": 0.03,
    ...      "disabled": False, "weight": 0.07},
    ...     {"name": "c", "alpha": 3.0, "beta": 1997.0, "mean": 0.0015, "prob_best": 0.0,
    ...      "disabled": True, "weight": 0.03}]}
    >>> for i in algorithm_insights(ev, (), SignalConfig()):
    ...     print(i.kind, i.action_kind, i.group, i.confidence)
    underperformance disable_algorithm segment=regular/algorithm=c 1.0
    opportunity reallocate_traffic segment=regular/algorithm=a 0.97
    """
    segment = str(event["segment"])
    algos = list(event["algorithms"])
    enabled = [a for a in algos if not a["disabled"]]
    best = max(enabled or algos, key=lambda a: float(a["mean"]))
    best_mean = float(best["mean"])
    eps = float(event["exploration_rate"])
    common = {"segment": segment, "exploration_rate": _num(eps), "version": int(event["version"])}
    out = []
    for a in algos:
        if not a["disabled"]:
            continue
        name = str(a["name"])
        group = f"segment={segment}/algorithm={name}"
        mean, prob_best = float(a["mean"]), float(a["prob_best"])
        gap = (mean - best_mean) / best_mean if best_mean > 0 else 0.0
        below = float(stats.beta.cdf(cfg.disable_ctr, float(a["alpha"]), float(a["beta"])))
        out.append(
            _insight(
                "algorithm-disabled",
                "bandits",
                group,
                "ctr",
                kind="underperformance",
                direction="disabled",
                title=f"algorithm {name} disabled in segment {segment}"[:256],
                evidence={
                    **common,
                    "algorithm": name,
                    "alpha": _num(float(a["alpha"])),
                    "beta": _num(float(a["beta"])),
                    "mean": _num(mean),
                    "prob_best": _num(prob_best),
                    "weight": _num(a.get("weight")),
                    "best_algorithm": str(best["name"]),
                    "best_mean": _num(best_mean),
                    "relative_change": _num(gap),
                    "disable_ctr": _num(cfg.disable_ctr),
                    "prob_below_disable_ctr": _num(below),
                },
                # the posterior probability that it is not the best algorithm of the segment
                confidence=_clip01(1.0 - prob_best),
                priority="medium",  # the bandit already serves it only for re-probing
                recommended_action=(
                    f"Remove algorithm {name} from the candidates of segment {segment}: its "
                    f"CTR is confidently below {cfg.disable_ctr:.2%} (posterior mean "
                    f"{mean:.3%} vs {best_mean:.3%} for {best['name']}, P(best) = "
                    f"{prob_best:.3f}); the bandit only keeps re-probing it."
                )[:1024],
                action_kind="disable_algorithm",
                # permanent: unlike the bandit's own disable, which re-probes the algorithm later
                action_params={
                    "target": ORCHESTRATOR,
                    "segment": segment,
                    "algorithm": name,
                    "permanent": True,
                },
            )
        )
    if len(enabled) >= 2:
        top = max(enabled, key=lambda a: float(a["prob_best"]))
        name, prob_best = str(top["name"]), float(top["prob_best"])
        group = f"segment={segment}/algorithm={name}"
        iid = stable_id("algorithm-dominant", "bandits", group, "ctr")
        floor = cfg.dominant_prob - (cfg.dominant_hysteresis if iid in active else 0.0)
        if prob_best >= floor:
            runner = max((a for a in enabled if a is not top), key=lambda a: float(a["mean"]))
            mean, runner_mean = float(top["mean"]), float(runner["mean"])
            weight = _num(top.get("weight"))
            out.append(
                _insight(
                    "algorithm-dominant",
                    "bandits",
                    group,
                    "ctr",
                    kind="opportunity",
                    direction="dominant",
                    title=f"algorithm {name} is best in segment {segment}"[:256],
                    evidence={
                        **common,
                        "algorithm": name,
                        "prob_best": _num(prob_best),
                        "mean": _num(mean),
                        "weight": weight,
                        "runner_up": str(runner["name"]),
                        "runner_up_mean": _num(runner_mean),
                        "relative_change": _num(
                            (mean - runner_mean) / runner_mean if runner_mean > 0 else 0.0
                        ),
                        "enabled_algorithms": len(enabled),
                    },
                    confidence=_clip01(prob_best),
                    priority="low",
                    recommended_action=(
                        f"Shift more of segment {segment}'s traffic to {name}: it is the best "
                        f"algorithm with probability {prob_best:.3f} (CTR {mean:.3%} vs "
                        f"{runner_mean:.3%} for {runner['name']}) yet serves "
                        f"{(weight or 0.0):.0%} of it; e.g. lower the exploration rate "
                        f"{eps:.2f}."
                    )[:1024],
                    action_kind="reallocate_traffic",
                    action_params={
                        "target": ORCHESTRATOR,
                        "segment": segment,
                        "algorithm": name,
                        "direction": "increase",
                        "exploration_rate": eps,
                    },
                )
            )
    return out


# --------------------------------------------------------------------------- experiments


def _control(result: Mapping[str, Any]) -> str | None:
    """The variant no comparison is about (every comparison is a treatment vs control)."""
    treated = {c["variant"] for c in result["comparisons"]}
    return next((str(v["name"]) for v in result["variants"] if v["name"] not in treated), None)


def _is_primary(comp: Mapping[str, Any], primary: str | None) -> bool:
    if "role" in comp:
        return comp["role"] == "primary"
    return primary is not None and comp["metric"] == primary


def _decided(comp: Mapping[str, Any]) -> bool:
    """Significant by the test the experiment stops on: sequential, else fixed horizon."""
    return comp.get("sequential_decision") == "reject_null" or comp.get("significant") is True


def _p_value(comp: Mapping[str, Any]) -> float:
    """The p-value that decided (Holm-adjusted where the result has it); 1 if unknown."""
    keys = (
        ("sequential_p_value_holm", "sequential_p_value")
        if comp.get("sequential_decision") == "reject_null"
        else ("p_value_adjusted", "p_value_holm", "p_value")
    )
    for key in keys:
        p = comp.get(key)
        if isinstance(p, int | float) and math.isfinite(p):
            return float(p)
    return 1.0


def _comparison_evidence(comp: Mapping[str, Any], n_of: Mapping[str, int]) -> dict[str, Any]:
    ci = comp.get("ci") or [None, None]
    lift_ci = comp.get("lift_ci") or [None, None]
    return {
        "metric": str(comp["metric"]),
        "difference": _num(comp.get("difference")),
        "ci_low": _num(ci[0]),
        "ci_high": _num(ci[1]),
        "lift": _num(comp.get("lift")),
        "lift_low": _num(lift_ci[0]),
        "lift_high": _num(lift_ci[1]),
        "p_value": _num(comp.get("p_value")),
        "sequential_p_value": _num(comp.get("sequential_p_value_holm"))
        if comp.get("sequential_p_value_holm") is not None
        else _num(comp.get("sequential_p_value")),
        "chance_to_beat_control": _num(comp.get("chance_to_beat_control")),
        "n_variant": n_of.get(str(comp["variant"])),
    }


def _pick_winner(primary: Sequence[Mapping[str, Any]]) -> str | None:
    """The treatment with the largest positive significant difference, if any."""
    winners = [c for c in primary if _decided(c) and (_num(c.get("difference")) or 0.0) > 0]
    if not winners:
        return None
    return str(max(winners, key=lambda c: float(c["difference"]))["variant"])


def experiment_insights(
    result: Mapping[str, Any], memory: dict[str, Any], cfg: SignalConfig
) -> list[Insight]:
    """Insights of one ``experiments.results`` record; ``memory`` keeps the decided winner.

    Examples
    --------
    >>> res = {"experiment_id": "e1", "version": 3, "status": "concluded",
    ...        "primary_metric": "conversion", "total_units": 2000,
    ...        "variants": [{"name": "a", "n": 1000}, {"name": "b", "n": 1000}],
    ...        "comparisons": [{"variant": "b", "metric": "conversion", "difference": 0.03,
    ...                         "lift": 0.3, "sequential_decision": "reject_null",
    ...                         "sequential_p_value_holm": 0.001}],
    ...        "srm": {"p_value": 0.5, "sequential_p": 1.0, "tier": "ok"}}
    >>> memory = {}
    >>> [(i.kind, i.action_kind, i.confidence) for i in experiment_insights(res, memory,
    ...                                                                    SignalConfig())]
    [('experiment', 'promote_winner', 0.999)]
    >>> memory
    {'winner': 'b'}
    """
    exp = str(result["experiment_id"])
    group = f"experiment={exp}"
    status = result.get("status")
    primary_metric = result.get("primary_metric")
    comps = list(result["comparisons"])
    primary = [c for c in comps if _is_primary(c, primary_metric)]
    n_of = {str(v["name"]): int(v["n"]) for v in result["variants"]}
    rolled = {str(v["name"]) for v in result["variants"] if v.get("rolled_back") is True}
    control = _control(result)
    common = {
        "experiment_id": exp,
        "status": str(status) if status else None,
        "result_version": int(result["version"]),
        "total_units": result.get("total_units"),
        "control": control,
        "n_control": n_of.get(control) if control else None,
    }
    out = []

    harmful = {
        str(c["variant"])
        for c in comps
        if not _is_primary(c, primary_metric) and c.get("guardrail_violated") is True
    }
    if status == "concluded":
        if "winner" not in memory:  # decided once, by the first concluded result
            memory["winner"] = _pick_winner(primary) or ""
        winner = memory["winner"]
        metric = str(primary_metric or (primary[0]["metric"] if primary else "primary"))
        if winner in harmful:
            pass  # never promote a variant that harms a guardrail: its rollback insight says so
        elif winner:
            comp = next((c for c in primary if c["variant"] == winner), None)
            ev = {**common, "winner": winner, **(_comparison_evidence(comp, n_of) if comp else {})}
            ev["relative_change"] = ev.get("lift")
            p = _p_value(comp) if comp else 1.0
            lift = ev.get("lift")
            how = f"lift {lift:+.1%}" if lift is not None else "significantly"
            out.append(
                _insight(
                    "experiment-winner",
                    "experiments",
                    group,
                    metric,
                    kind="experiment",
                    direction="winner",
                    title=f"experiment {exp}: {winner} wins on {metric}"[:256],
                    evidence=ev,
                    confidence=_clip01(1.0 - p),
                    priority="high",
                    recommended_action=(
                        f"Promote {winner} in experiment {exp}: it beats {control} on {metric} "
                        f"({how}, difference {ev.get('difference')}, p = {p:.2g}); serve it to "
                        "all traffic and retire the other variants."
                    )[:1024],
                    action_kind="promote_winner",
                    action_params={
                        "target": exp,
                        "experiment_id": exp,
                        "variant": winner,
                        "control": control,
                        "metric": metric,
                    },
                )
            )
        elif primary:
            best = max(primary, key=lambda c: _num(c.get("difference")) or -math.inf)
            ev = {**common, **_comparison_evidence(best, n_of), "best_treatment": best["variant"]}
            beat = ev.get("chance_to_beat_control")
            out.append(
                _insight(
                    "experiment-winner",
                    "experiments",
                    group,
                    metric,
                    kind="experiment",
                    direction="no_winner",
                    title=f"experiment {exp}: no treatment beat {control} on {metric}"[:256],
                    evidence=ev,
                    # the posterior probability that the best treatment is not better
                    confidence=_clip01(1.0 - (beat if beat is not None else 0.5)),
                    priority="low",
                    recommended_action=(
                        f"Keep {control} in experiment {exp}: no treatment beat it on {metric} "
                        f"(best {best['variant']}, difference {ev.get('difference')})."
                    )[:1024],
                )
            )
    else:
        memory.pop("winner", None)  # running again (restarted): decide anew when it ends

    for comp in comps:
        if _is_primary(comp, primary_metric) or comp.get("guardrail_violated") is not True:
            continue
        variant, metric = str(comp["variant"]), str(comp["metric"])
        vgroup = f"{group}/variant={variant}"
        done = variant in rolled
        p = _p_value({**comp, "sequential_decision": "reject_null"})
        ev = {
            **common,
            "variant": variant,
            "rolled_back": done,
            **_comparison_evidence(comp, n_of),
            "guardrail_direction": comp.get("direction"),
        }
        ev["relative_change"] = ev.get("lift")
        params: dict[str, Any] = {
            "target": exp,
            "experiment_id": exp,
            "variant": variant,
            "metric": metric,
        }
        action: str | None
        if done:
            text = (
                f"Variant {variant} of experiment {exp} was rolled back for harming {metric} "
                f"(difference {ev['difference']}, p = {p:.2g}); find the cause before testing "
                "it again."
            )
            action = "investigate"
        elif status == "running":
            # The experiments agent owns this decision while the experiment runs: it rolls
            # the variant back as soon as both arms have their minimum sample. An action from
            # here would race it with a second rollback.
            text = (
                f"Roll back variant {variant} of experiment {exp}: it harms guardrail {metric} "
                f"(difference {ev['difference']}, always-valid p = {p:.2g}). The experiments "
                "agent does so once both arms reach their minimum sample; do it by hand if "
                "the harm cannot wait."
            )
            action = None
        else:  # concluded or stopped: nothing else will take the variant's traffic away
            text = (
                f"Roll back variant {variant} of experiment {exp}: it harms guardrail {metric} "
                f"(difference {ev['difference']}, always-valid p = {p:.2g}) and still gets "
                f"traffic while the experiment is {status}."
            )
            action = "rollback_variant"
        out.append(
            _insight(
                "experiment-guardrail",
                "experiments",
                vgroup,
                metric,
                kind="experiment",
                direction="guardrail_violated",
                title=f"experiment {exp}: {variant} harms guardrail {metric}"[:256],
                evidence=ev,
                confidence=_clip01(1.0 - p),
                priority="high",
                recommended_action=text[:1024],
                action_kind=action,
                action_params=params if action else {},
            )
        )

    srm = result["srm"]
    if srm.get("tier") == "red":
        p_seq = _num(srm.get("sequential_p"))
        # While it runs, the experiments agent has asked for this investigation itself (and
        # blocks stopping and reallocation); an ended experiment's conclusion is what is in
        # doubt, and nothing else says so.
        running = status == "running"
        out.append(
            _insight(
                "experiment-srm",
                "experiments",
                group,
                "srm",
                kind="anomaly",
                direction="sample_ratio_mismatch",
                title=f"experiment {exp}: sample ratio mismatch"[:256],
                evidence={
                    **common,
                    "srm_p_value": _num(srm.get("p_value")),
                    "srm_sequential_p": p_seq,
                    "units": [n_of[k] for k in sorted(n_of)][:32],
                    "variants": sorted(n_of)[:32],
                },
                confidence=_clip01(1.0 - (p_seq if p_seq is not None else 0.0)),
                priority="high",
                recommended_action=(
                    f"Check assignment and exposure logging of experiment {exp}: its units per "
                    "variant do not match the allocation, so its results cannot be trusted"
                    + ("." if running else " — nor its conclusion.")
                ),
                action_kind=None if running else "investigate",
                action_params={}
                if running
                else {"target": exp, "experiment_id": exp, "check": "srm"},
            )
        )
    return out


# --------------------------------------------------------------------------- scoring


def scoring_insights(
    event: Mapping[str, Any], memory: dict[str, Any], cfg: SignalConfig
) -> list[Insight]:
    """Insight of one segment's ``weights.scoring`` record; ``memory`` keeps since when the
    segment has had no learned, applied, confident weights (event time).

    Examples
    --------
    >>> cfg = SignalConfig(scoring_stuck_s=60)
    >>> ev = {"segment": "balanced", "ts": 0, "confidence": 0.1, "sample_size": 12,
    ...       "applied": True, "is_default": True, "version": 1}
    >>> memory = {}
    >>> scoring_insights(ev, memory, cfg), memory
    ([], {'since': 0})
    >>> [i.direction for i in scoring_insights({**ev, "ts": 60_000, "version": 2}, memory, cfg)]
    ['not_learned']
    """
    segment = str(event["segment"])
    confidence = float(event["confidence"])
    learned = (
        not event["is_default"] and event["applied"] and confidence >= cfg.scoring_min_confidence
    )
    if learned:
        memory.pop("since", None)
        return []
    ts = int(event["ts"])
    since = int(memory.setdefault("since", ts))
    stuck_ms = ts - since
    if stuck_ms < cfg.scoring_stuck_s * 1000:
        return []
    n = int(event["sample_size"])
    group = f"segment={segment}"
    state = "the defaults" if event["is_default"] else "learned weights not applied"
    if n < cfg.scoring_min_sample:
        advice = (
            f"collect more choice sessions from this segment ({n} of the "
            f"{cfg.scoring_min_sample} needed)"
        )
    else:
        advice = (
            f"its {n} sessions give a confidence of only {confidence:.2f} "
            f"(< {cfg.scoring_min_confidence:.2f}): collect more data and check that the "
            "segment's customers and factor scores are consistent"
        )
    return [
        _insight(
            "scoring-not-learned",
            "choices",
            group,
            "scoring_confidence",
            kind="threshold_breach",
            direction="not_learned",
            title=f"scoring weights of segment {segment} not learned yet"[:256],
            evidence={
                "segment": segment,
                "confidence": _num(confidence),
                "min_confidence": _num(cfg.scoring_min_confidence),
                "sample_size": n,
                "min_sample": cfg.scoring_min_sample,
                "is_default": bool(event["is_default"]),
                "applied": bool(event["applied"]),
                "since_ts": since,
                "hours": _num(stuck_ms / 3_600_000),
                "version": int(event["version"]),
            },
            # the less confident the model, the surer that more data is what it needs
            confidence=_clip01(1.0 - confidence),
            priority="medium",
            recommended_action=(
                f"Segment {segment} has been scored with {state} for "
                f"{stuck_ms / 3_600_000:.1f} h: {advice}."
            )[:1024],
        )
    ]


# --------------------------------------------------------------------------- one record

Rule = Callable[[Mapping[str, Any], SignalState, SignalConfig], list[Insight]]
_RULES: dict[str, Rule] = {
    "weights.algorithms": lambda ev, st, cfg: algorithm_insights(ev, st.active, cfg),
    "experiments.results": lambda ev, st, cfg: experiment_insights(ev, st.memory, cfg),
    "weights.scoring": lambda ev, st, cfg: scoring_insights(ev, st.memory, cfg),
}


def apply_signal(
    state: SignalState, event: Mapping[str, Any], now_ms: int, cfg: SignalConfig
) -> list[dict[str, Any]] | None:
    """Apply one record of ``state.source`` to its key's state.

    Returns
    -------
    list of dict or None
        None when the record is not newer than the last applied one (nothing changes);
        otherwise the outputs, in order: insight revisions (``emit`` true: a new or changed
        insight to publish; false: a refresh of its numbers) and resolutions.
    """
    version = int(event["version"])
    if version <= state.version:
        return None
    found = _RULES[state.source](event, state, cfg)
    outputs = [emit_insight(state, ins, now_ms) for ins in found]
    ids = {ins.insight_id for ins in found}
    outputs += [resolve_insight(state, iid) for iid in list(state.active) if iid not in ids]
    state.version = version
    return outputs


def latest_refreshes(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop refreshes that a later output of the same insight supersedes.

    Reading a backlog (a new deployment reads every retained result), a batch holds many
    versions of one key; only the last refresh of an insight's numbers matters, while every
    new revision and resolution is kept, in order.
    """
    later: set[str] = set()
    kept: list[dict[str, Any]] = []
    for out in reversed(outputs):
        iid = out["insight_id"] if out["type"] == "resolve" else out["insight"]["insight_id"]
        if out["type"] == "insight" and not out.get("emit") and iid in later:
            continue
        later.add(iid)
        kept.append(out)
    return kept[::-1]

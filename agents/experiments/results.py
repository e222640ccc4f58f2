"""Results and decisions of one experiment, computed from its state (pure, no I/O).

:func:`evaluate` is one *look*: it computes the full result (schema
``experiments.results``) from the state's sufficient statistics with the functions of
``agents.learning`` (``abstats``, ``sequential``, ``allocation``), advances the running
states of the always-valid tests, and takes the decisions that the look justifies:

* **SRM** — χ² of the units per variant against the allocation, and the anytime-valid
  Dirichlet-multinomial test (the product of one Bayes factor per allocation period, so it
  stays valid when the allocation changes). The alert tier (warn p < 0.01, red p < 0.001)
  follows the anytime-valid p-value, since results are read continuously. A red tier
  emits one ``investigate`` action and blocks early stopping and reallocation (the
  comparisons cannot be trusted), but not rollbacks.
* **Rollback** — a treatment whose always-valid test on a guardrail rejects (Holm over the
  treatments) with the whole confidence sequence on the harmful side, once both arms have
  the minimum sample, is rolled back: weight 0 from a new allocation period on,
  ``rollback_variant`` action. When every treatment is rolled back the experiment ends.
* **Early stop** (``monitoring: sequential``) — when the always-valid test of the primary
  metric rejects for any treatment (Holm-adjusted over treatments), every active variant
  has ``min_sample_size`` units and the experiment has run ``min_runtime_seconds`` of
  event time: one ``stop_experiment`` action, status ``concluded``. A confidence sequence
  inside ±MDE is reported as ``accept_null`` but does not stop the experiment.
  ``fixed_horizon`` experiments stop when every active variant reaches the required
  sample size (and the minimum run time); the fixed-horizon test then decides.
* **Reallocation** (``allocation_mode: bandit``) — after each allocation period of
  ``realloc_interval_s`` (event time): Thompson or top-two Thompson sampling over the active
  variants with the definition's floor and burn-in; from the second period on, posteriors
  use the period-weighted estimates, which stay unbiased when allocation and base rate
  both change. A new period starts; ``reallocate_traffic`` action with the weights.

Decisions are idempotent: their action ids are deterministic (``stop:<exp>``,
``rollback:<exp>:<variant>``, ``srm:<exp>``, ``realloc:<exp>:<period>``) and the state records
them, so a look never decides the same thing twice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sp_stats

from agents.experiments.ids import bounded_id
from agents.experiments.state import MAX_PERIODS, ExperimentState
from agents.learning.abstats import VariantStats, analyze, holm, srm_level, srm_test
from agents.learning.allocation import (
    BetaPosterior,
    NormalPosterior,
    period_arrays,
    period_weighted_estimate,
    thompson_allocation,
)
from agents.learning.assignment import total_variation
from agents.learning.sequential import (
    DEFAULT_MIN_N,
    DEFAULT_TAU2,
    SequentialState,
    confidence_sequence_radius,
    msprt_log_likelihood_ratio,
    msprt_update,
    srm_log_bayes_factor,
)

SOURCE = "experiments"
NAN = float("nan")


@dataclass(frozen=True)
class Policy:
    """Defaults for what a definition leaves out, and the agent's knobs."""

    min_sample: int = 500
    min_runtime_s: int = 3600
    realloc_interval_s: float = 3600.0
    bandit: str = "top_two"
    default_burn_in: int = 100
    tau2: float = DEFAULT_TAU2
    min_realloc_change: float = 0.01

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            min_sample=settings.experiment_min_sample,
            min_runtime_s=settings.experiment_min_runtime_s,
            realloc_interval_s=settings.experiment_realloc_interval_s,
            bandit=settings.experiment_bandit,
        )


@dataclass(frozen=True)
class Decision:
    """One decision: the action to announce and the record to keep."""

    action_id: str
    kind: str
    reason: str
    parameters: dict[str, Any]
    evidence: dict[str, Any]
    variant: str | None = None
    confidence: float | None = None
    weights: dict[str, float] | None = None

    def action_event(self, experiment_id: str, now_ms: int) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": self.action_id,
            "schema_version": 1,
            "ts": now_ms,
            "action_id": self.action_id,
            "target": experiment_id,
            "kind": self.kind,
            "parameters": self.parameters,
            "reason": self.reason[:1024],
            "source": SOURCE,
        }
        if self.confidence is not None and math.isfinite(self.confidence):
            event["confidence"] = min(max(float(self.confidence), 0.0), 1.0)
        return event


@dataclass
class Evaluation:
    result: dict[str, Any]
    decisions: list[Decision] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _prob(value: Any) -> float | None:
    v = _num(value)
    return None if v is None else min(max(v, 0.0), 1.0)


def _interval(lo: Any, hi: Any) -> list[float | None] | None:
    lo_, hi_ = _num(lo), _num(hi)
    return None if lo_ is None and hi_ is None else [lo_, hi_]


def _seed(*parts: Any) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


# --------------------------------------------------------------------------------------
# Sequential looks
# --------------------------------------------------------------------------------------


def _look(
    state: ExperimentState,
    key: str,
    control: VariantStats,
    treatment: VariantStats,
    metric_type: str,
    alpha: float,
    tau2: float,
    weighted: tuple[float, float] | None,
    cuped: bool = False,
) -> tuple[float, float, float]:
    """Advance one always-valid test; (p-value, CS lower, CS upper).

    One allocation period: mSPRT on the pooled statistics, CUPED-adjusted when ``cuped``.
    Several (bandit mode): the same mixture test on the period-weighted difference and its
    standard error (not adjusted: the period weighting has no covariate terms).
    """
    previous = SequentialState.from_dict(state.sequential.get(key, {}))
    if weighted is None:
        r = msprt_update(
            control,
            treatment,
            metric_type,  # type: ignore[arg-type]
            previous,
            alpha,
            tau2,
            cuped=cuped,
        )
        new = r.state
    else:
        estimate, se = weighted
        enough = control.n >= DEFAULT_MIN_N and treatment.n >= DEFAULT_MIN_N
        unit_var = 0.5 * (control.variance + treatment.variance)
        variance = se * se
        p_value, lower, upper = previous.p_value, previous.ci_lower, previous.ci_upper
        if enough and variance > 0 and unit_var > 0 and math.isfinite(estimate):
            abs_tau2 = tau2 * unit_var
            log_lr = float(msprt_log_likelihood_ratio(estimate, variance, abs_tau2))
            radius = float(confidence_sequence_radius(variance, abs_tau2, alpha))
            p_value = min(p_value, math.exp(-log_lr) if log_lr > 0 else 1.0, 1.0)
            lower, upper = max(lower, estimate - radius), min(upper, estimate + radius)
            if lower > upper:
                lower, upper = estimate - radius, estimate + radius
        new = SequentialState(p_value, lower, upper, previous.looks + 1)
    state.sequential[key] = new.to_dict()
    return new.p_value, new.ci_lower, new.ci_upper


# --------------------------------------------------------------------------------------
# SRM
# --------------------------------------------------------------------------------------


def _srm(state: ExperimentState) -> dict[str, Any]:
    k = len(state.defn.variants)
    observed = np.zeros(k)
    expected_share = np.zeros(k)
    log_bf = 0.0
    unexpected = 0
    for period in state.periods:
        n = np.asarray(period["n"], dtype=float)
        w = np.asarray(period["w"], dtype=float)
        live = w > 0
        unexpected += int(n[~live].sum())  # exposures to a rolled-back variant, in flight
        total = n[live].sum()
        if total <= 0:
            continue
        observed[live] += n[live]
        expected_share[live] += total * w[live] / w[live].sum()
        if live.sum() >= 2:
            log_bf += float(srm_log_bayes_factor(n[live], w[live]))
    chi = srm_test(observed, expected_share if expected_share.sum() > 0 else np.ones(k))
    p_now = math.exp(-log_bf) if log_bf > 0 else 1.0
    p_seq = min(float(state.srm.get("p", 1.0)), p_now)
    state.srm = {"p": p_seq, "looks": int(state.srm.get("looks", 0)) + 1}
    counters = state.counters
    return {
        "p_value": _prob(chi.p_value),
        "sequential_p": _prob(p_seq),
        "tier": srm_level(p_seq),
        "chi2": _num(chi.statistic),
        "chi2_tier": chi.level,
        "log_bayes_factor": _num(log_bf),
        "looks": state.srm["looks"],
        # Data quality of the exposure stream (no other place in the result schema).
        "unexpected_units": unexpected,
        "crossover_exposures": counters.get("crossover_exposures", 0),
        "duplicate_exposures": counters.get("duplicate_exposures", 0),
        "duplicate_conversions": counters.get("duplicate_conversions", 0),
        "held_units": counters.get("held_units", 0),
        "unexposed_conversions": counters.get("unexposed_conversions", 0),
        "units_with_covariate": counters.get("units_with_covariate", 0),
    }


# --------------------------------------------------------------------------------------
# The look
# --------------------------------------------------------------------------------------


def _period_weighted(state: ExperimentState, metric: int, control: int) -> Any:
    periods = [
        {name: s for name, s in zip(state.defn.variants, state.stats(metric, [p]), strict=True)}
        for p in range(len(state.periods))
    ]
    n, sums, sq = period_arrays(periods, state.defn.variants)
    return period_weighted_estimate(n, sums, sq, control=control, alpha=state.defn.alpha)


def evaluate(state: ExperimentState, now_ms: int, policy: Policy) -> Evaluation:
    """Compute the next result of ``state``, take due decisions, update ``state``."""
    d = state.defn
    k = len(d.variants)
    ci = d.control_index
    state.result_version += 1
    version = state.result_version
    multi_period = len(state.periods) > 1
    units = state.units()
    weights_now = np.asarray(state.weights, dtype=float)
    alloc = weights_now / weights_now.sum() if weights_now.sum() > 0 else weights_now
    treatments = [i for i in range(k) if i != ci]
    has_covariate = state.counters.get("units_with_covariate", 0) > 0
    z = float(sp_stats.norm.isf(d.alpha / 2))

    comparisons: list[dict[str, Any]] = []
    by_metric: dict[int, dict[int, dict[str, Any]]] = {}
    primary_result = None
    for m, metric in enumerate(d.metrics):
        mtype = d.metric_types[m]
        pooled = state.stats(m)
        cuped = m == 0 and d.cuped and has_covariate
        res = analyze(
            dict(zip(d.variants, pooled, strict=True)),
            d.control,
            None,
            mtype,  # type: ignore[arg-type]
            d.alpha,
            d.mde if m == 0 else NAN,
            d.power,
            relative_mde=False,
            correction=d.correction,  # type: ignore[arg-type]
            cuped=cuped,
        )
        if m == 0:
            primary_result = res
        pw = _period_weighted(state, m, ci) if multi_period else None
        raw_p = holm([res.comparisons[d.variants[i]].p_value for i in treatments])
        seq = {}
        for i in treatments:
            weighted = (float(pw.differences[i]), float(pw.difference_se[i])) if pw else None
            seq[i] = _look(
                state,
                f"{metric}|{d.variants[i]}",
                pooled[ci],
                pooled[i],
                mtype,
                d.alpha,
                policy.tau2,
                weighted,
                cuped=cuped and weighted is None,
            )
        seq_holm = holm([seq[i][0] for i in treatments])
        by_metric[m] = {}
        for j, i in enumerate(treatments):
            c = res.comparisons[d.variants[i]]
            p_seq, lo, hi = seq[i]
            p_seq_holm = float(seq_holm[j])
            if p_seq_holm <= d.alpha:
                decision = "reject_null"
            elif m == 0 and -d.mde < lo and hi < d.mde:
                decision = "accept_null"
            else:
                decision = "continue"
            comp: dict[str, Any] = {
                "variant": d.variants[i],
                "metric": metric,
                "difference": _num(c.difference),
                "ci": _interval(c.difference_ci_lower, c.difference_ci_upper),
                "lift": _num(c.relative_lift),
                "lift_ci": _interval(c.relative_lift_ci_lower, c.relative_lift_ci_upper),
                "p_value": _prob(c.p_value),
                "p_value_holm": _prob(raw_p[j]),
                "chance_to_beat_control": _prob(c.chance_to_beat_control),
                "sequential_p_value": _prob(p_seq),
                "sequential_decision": decision,
                "role": "primary" if m == 0 else "guardrail",
                "test": c.test,
                "statistic": _num(c.statistic),
                "df": _num(c.df),
                "p_value_adjusted": _prob(c.p_value_adjusted),
                "correction": d.correction,
                "significant": bool(c.significant),
                "control_mean": _num(c.control_mean),
                "treatment_mean": _num(c.treatment_mean),
                "sequential_p_value_holm": _prob(p_seq_holm),
                "sequential_ci_lower": _num(lo),
                "sequential_ci_upper": _num(hi),
            }
            if m == 0:
                comp["power"] = _prob(c.power)
            if cuped:
                comp["cuped_theta"] = _num(c.cuped_theta)
                comp["variance_reduction"] = _num(c.variance_reduction)
                comp["sequential_cuped"] = pw is None
            if pw is not None:
                comp["pw_difference"] = _num(pw.differences[i])
                comp["pw_ci_lower"] = _num(pw.ci_lower[i])
                comp["pw_ci_upper"] = _num(pw.ci_upper[i])
                comp["pw_p_value"] = _prob(pw.p_values[i])
            if m > 0:
                direction = d.directions[m]
                comp["direction"] = direction
                harmful = (direction == "increase_is_bad" and lo > 0) or (
                    direction == "decrease_is_bad" and hi < 0
                )
                comp["guardrail_violated"] = bool(p_seq_holm <= d.alpha and harmful)
            comparisons.append(comp)
            by_metric[m][i] = comp

    assert primary_result is not None
    primary_stats = state.stats(0)
    variants = []
    for i, name in enumerate(d.variants):
        s = primary_stats[i]
        sd = math.sqrt(s.variance) if s.n > 1 else NAN
        half = z * sd / math.sqrt(s.n) if s.n > 1 else NAN
        entry: dict[str, Any] = {
            "name": name,
            "n": int(s.n),
            "allocation": _prob(alloc[i]),
            "conversions": round(s.sum) if d.metric_types[0] == "binary" else None,
            "sum": _num(s.sum),
            "sum_squares": _num(s.sum_squares),
            "mean": _num(s.mean),
            "variance": _num(s.variance),
            "ci": _interval(s.mean - half, s.mean + half) if s.n > 1 else None,
            "rolled_back": name in state.rolled_back,
        }
        if has_covariate:
            entry["covariate_mean"] = _num(s.covariate_mean)
        variants.append(entry)

    srm = _srm(state)
    required = primary_result.required_sample_size
    required_n = math.ceil(required) if math.isfinite(required) else None
    powers = [by_metric[0][i]["power"] for i in treatments if by_metric[0][i]["power"] is not None]
    active = [i for i in range(k) if d.variants[i] not in state.rolled_back]
    horizon = required_n is not None and all(units[i] >= required_n for i in active)
    power = {
        "achieved_power": min(powers) if powers else None,
        "required_sample_size": required_n,
        "target_power": d.power,
        "mde": d.mde,
        "alpha": d.alpha,
        "horizon_reached": bool(horizon),
    }

    evaluation = Evaluation(result={})
    if state.status == "running":
        _decide(state, evaluation, by_metric, srm, units, required_n, policy)
        for x in evaluation.decisions:
            action = x.action_event(d.experiment_id, now_ms)
            evaluation.actions.append(action)
            record = [x.kind, x.variant, x.parameters, x.evidence, x.reason, version]
            state.remember_action(action, record)
        if any(x.weights for x in evaluation.decisions):
            current = np.asarray(state.weights, dtype=float)
            for v in variants:
                v["allocation"] = _prob(current[d.variants.index(v["name"])] / current.sum())
                v["rolled_back"] = v["name"] in state.rolled_back

    evaluation.result = {
        "event_id": bounded_id("res", d.experiment_id, version),
        "schema_version": 1,
        "ts": now_ms,
        "experiment_id": d.experiment_id,
        "version": version,
        "computed_at": now_ms,
        "status": state.status,
        "primary_metric": d.primary,
        "total_units": int(sum(units)),
        "variants": variants,
        "comparisons": comparisons,
        "srm": srm,
        "power": power,
    }
    state.last_result = evaluation.result
    state.dirty = False
    return evaluation


# --------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------


def _decide(
    state: ExperimentState,
    ev: Evaluation,
    by_metric: Mapping[int, Mapping[int, dict[str, Any]]],
    srm: Mapping[str, Any],
    units: Sequence[int],
    required_n: int | None,
    policy: Policy,
) -> None:
    d = state.defn
    exp = d.experiment_id
    ci = d.control_index
    k = len(d.variants)
    min_sample = d.min_sample_size if d.min_sample_size is not None else policy.min_sample
    min_runtime = (
        d.min_runtime_seconds if d.min_runtime_seconds is not None else policy.min_runtime_s
    )
    runtime = state.runtime_s()
    names = d.variants
    counts = {names[i]: int(units[i]) for i in range(k)}
    base_evidence = {
        "result_version": state.result_version,
        "units": counts,
        "runtime_s": runtime,
        "min_sample_size": min_sample,
        "min_runtime_seconds": min_runtime,
        "srm": dict(srm),
    }
    srm_red = srm["tier"] == "red"

    srm_id = bounded_id("srm", exp)
    if srm_red and srm_id not in state.actions:
        ev.decisions.append(
            Decision(
                srm_id,
                "investigate",
                f"Sample ratio mismatch in experiment {exp}: units {counts} do not match the "
                f"allocation (anytime-valid p = {_fmt(srm['sequential_p'])} < 0.001, "
                f"χ² p = {_fmt(srm['p_value'])}); results are not trustworthy until the "
                "assignment or exposure logging is fixed. Early stop and reallocation are "
                "blocked.",
                {"check": "srm", "sequential_p": srm["sequential_p"], "p_value": srm["p_value"]},
                base_evidence,
                confidence=1.0 - float(srm["sequential_p"] or 0.0),
            )
        )

    # Rollback of treatments that harm a guardrail.
    weights = list(state.weights)
    rolled = []
    for i in range(k):
        if i == ci or names[i] in state.rolled_back:
            continue
        if units[ci] < min_sample or units[i] < min_sample:
            continue
        for m in range(1, len(d.metrics)):
            comp = by_metric[m][i]
            if not comp.get("guardrail_violated"):
                continue
            weights[i] = 0.0
            rolled.append(names[i])
            ev.decisions.append(
                Decision(
                    bounded_id("rollback", exp, names[i]),
                    "rollback_variant",
                    f"Variant {names[i]} harms guardrail {d.metrics[m]} "
                    f"({comp['direction'].replace('_', ' ')}): difference "
                    f"{_fmt(comp['difference'])} vs control, {1 - d.alpha:.0%} confidence "
                    f"sequence [{_fmt(comp['sequential_ci_lower'])}, "
                    f"{_fmt(comp['sequential_ci_upper'])}], always-valid p = "
                    f"{_fmt(comp['sequential_p_value_holm'])} (Holm). Its traffic goes to 0.",
                    {
                        "variant": names[i],
                        "metric": d.metrics[m],
                        "difference": comp["difference"],
                        "sequential_p_value": comp["sequential_p_value_holm"],
                        "sequential_ci": [comp["sequential_ci_lower"], comp["sequential_ci_upper"]],
                        "variants": list(names),
                        "weights": weights,
                    },
                    {**base_evidence, "comparison": comp},
                    variant=names[i],
                    confidence=1.0 - float(comp["sequential_p_value_holm"] or 0.0),
                )
            )
            break
    if rolled:
        state.rolled_back.extend(rolled)
        state.start_period(state.last_ts, weights)
        for j, x in enumerate(ev.decisions):
            if x.kind == "rollback_variant":
                ev.decisions[j] = _with_weights(x, names, weights)

    active = [i for i in range(k) if names[i] not in state.rolled_back]
    live_treatments = [i for i in active if i != ci]
    stop_id = bounded_id("stop", exp)
    if stop_id in state.actions:
        return
    if not live_treatments:
        _stop(state, ev, stop_id, "all_rolled_back", None, base_evidence,
              f"Every treatment of experiment {exp} was rolled back for harming a guardrail; "
              "the experiment ends with the control.", names[ci], [])  # fmt: skip
        return
    if srm_red:
        return
    gate = all(units[i] >= min_sample for i in active) and runtime >= min_runtime
    primary = by_metric[0]
    if d.monitoring == "sequential" and gate:
        rejected = [
            i for i in live_treatments if primary[i]["sequential_decision"] == "reject_null"
        ]
        if rejected:
            best = max(rejected, key=lambda i: primary[i]["difference"] or 0.0)
            winner = names[best] if (primary[best]["difference"] or 0.0) > 0 else names[ci]
            comp = primary[best]
            _stop(
                state,
                ev,
                stop_id,
                "reject_null",
                comp,
                base_evidence,
                f"Sequential test rejected the null for {', '.join(names[i] for i in rejected)} "
                f"on {d.primary}: difference {_fmt(comp['difference'])} "
                f"(always-valid p = {_fmt(comp['sequential_p_value_holm'])} ≤ α = {d.alpha}, "
                f"{1 - d.alpha:.0%} confidence sequence [{_fmt(comp['sequential_ci_lower'])}, "
                f"{_fmt(comp['sequential_ci_upper'])}]) after {sum(units)} units and "
                f"{runtime / 3600:.2f} h of event time. Winner: {winner}.",
                winner,
                [names[i] for i in rejected],
            )
            return
    if (
        d.monitoring == "fixed_horizon"
        and required_n is not None
        and runtime >= min_runtime
        and all(units[i] >= required_n for i in active)
    ):
        significant = [i for i in live_treatments if primary[i]["significant"]]
        best = max(live_treatments, key=lambda i: primary[i]["difference"] or 0.0)
        winner = (
            names[best]
            if best in significant and (primary[best]["difference"] or 0.0) > 0
            else names[ci]
        )
        _stop(
            state,
            ev,
            stop_id,
            "significant" if significant else "not_significant",
            primary[best],
            base_evidence,
            f"Fixed horizon reached: every variant has {required_n} units (required for "
            f"MDE {d.mde} at α = {d.alpha}, power {d.power}); significant after "
            f"{d.correction}: {', '.join(names[i] for i in significant) or 'none'}. "
            f"Winner: {winner}.",
            winner,
            [names[i] for i in significant],
        )
        return
    if d.allocation_mode == "bandit":
        _reallocate(state, ev, active, units, policy, base_evidence)


def _with_weights(x: Decision, names: Sequence[str], weights: Sequence[float]) -> Decision:
    total = sum(weights)
    shares = {n: (w / total if total > 0 else 0.0) for n, w in zip(names, weights, strict=True)}
    params = {**x.parameters, "weights": [shares[n] for n in names]}
    return Decision(
        x.action_id, x.kind, x.reason, params, x.evidence, x.variant, x.confidence, shares
    )


def _stop(
    state: ExperimentState,
    ev: Evaluation,
    action_id: str,
    decision: str,
    comp: Mapping[str, Any] | None,
    evidence: Mapping[str, Any],
    reason: str,
    winner: str,
    variants: list[str],
) -> None:
    params: dict[str, Any] = {"decision": decision, "winner": winner, "variants": variants}
    confidence = None
    if comp is not None:
        params.update(
            metric=comp["metric"],
            difference=comp["difference"],
            sequential_p_value=comp["sequential_p_value_holm"],
            sequential_ci=[comp["sequential_ci_lower"], comp["sequential_ci_upper"]],
            p_value=comp["p_value"],
        )
        if comp["sequential_p_value_holm"] is not None:
            confidence = 1.0 - comp["sequential_p_value_holm"]
    state.status = "concluded"
    ev.decisions.append(
        Decision(
            action_id,
            "stop_experiment",
            reason,
            params,
            {**evidence, "comparison": dict(comp) if comp else None},
            variant=winner,
            confidence=confidence,
        )
    )


def _reallocate(
    state: ExperimentState,
    ev: Evaluation,
    active: list[int],
    units: Sequence[int],
    policy: Policy,
    evidence: Mapping[str, Any],
) -> None:
    d = state.defn
    period = state.period
    age_s = (state.last_ts - period["start"]) / 1000
    if age_s < policy.realloc_interval_s or len(state.periods) >= MAX_PERIODS:
        return
    p_index = len(state.periods)
    if len(state.periods) > 1:
        pw = _period_weighted(state, 0, d.control_index)
        posterior: Any = NormalPosterior(pw.means[active], pw.mean_se[active])
    else:
        pooled = state.stats(0)
        chosen = [pooled[i] for i in active]
        posterior = (
            BetaPosterior.from_stats(chosen)
            if d.metric_types[0] == "binary"
            else NormalPosterior.from_stats(chosen)
        )
    burn_in = d.burn_in if d.burn_in is not None else policy.default_burn_in
    floor = min(d.allocation_floor, 1.0 / len(active))
    current = np.asarray(state.weights, dtype=float)
    rng = np.random.default_rng(_seed(d.experiment_id, p_index))
    r = thompson_allocation(
        posterior,
        [units[i] for i in active],
        rng,
        top_two=policy.bandit == "top_two",
        floor=floor,
        min_n=burn_in,
        initial_weights=current[active] if current[active].sum() > 0 else None,
    )
    if r.method == "burn_in":
        return
    new = np.zeros(len(d.variants))
    new[active] = r.weights
    if total_variation(new, current) < policy.min_realloc_change:
        return
    state.start_period(state.last_ts, new.tolist())
    best = r.probability_best
    ev.decisions.append(
        Decision(
            bounded_id("realloc", d.experiment_id, p_index),
            "reallocate_traffic",
            f"Bandit reallocation ({r.method}, floor {floor:g}, {r.draws} draws) after period "
            f"{p_index - 1} of experiment {d.experiment_id}: "
            + ", ".join(f"{d.variants[i]} {new[i]:.3f}" for i in range(len(d.variants))),
            {
                "variants": list(d.variants),
                "weights": [float(w) for w in new],
                "probability_best": [
                    _prob(best[active.index(i)]) if i in active else 0.0
                    for i in range(len(d.variants))
                ],
                "method": r.method,
                "period": p_index,
                "floor": floor,
            },
            {**evidence, "allocation": r.to_dict()},
            weights=dict(zip(d.variants, (float(w) for w in new), strict=True)),
        )
    )

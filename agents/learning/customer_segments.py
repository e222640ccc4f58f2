"""Customer segments from stated preferences and choice behaviour.

Every factor score is "higher is better for the customer" in ``[0, 1]``; for the price
factor a high score therefore means a cheap (cost-efficient) candidate.

Evidence per customer
---------------------
* Stated shares ``s_f``: stated importance weights normalised to sum 1 over all factors.
  Available when the customer stated something (a positive row sum).
* Behavioural lift ``d_f = mean score of chosen candidates - mean score of the candidates
  shown in the same sessions``. Available when the customer made at least ``min_choices``
  choices.
* Chosen price level: where the chosen candidate's price sits among the shown ones, 0 =
  the cheapest, 1 = the most expensive, averaged over choices (optional).

Strength of each role factor (price, quality, speed, proximity)::

    stated strength    = s_f / stated_share_threshold
    behaviour strength = d_f / lift_threshold
    strength           = weighted mean of the available ones
                         (stated_weight, 1 - stated_weight)

A factor is *emphasised* when its strength is at least 1, i.e. it reaches its threshold.

Rules (first match wins)
------------------------
1. ``no_data`` → balanced: neither stated preferences nor enough choices.
2. ``no_strong_preference`` → balanced: no role factor is emphasised.
3. ``tie`` → balanced: another emphasised factor is within ``tie_margin`` of the strongest.
4. ``premium_quality_high_price`` → premium_buyer: quality is the strongest, price is not
   emphasised, and the customer picks expensive candidates: chosen price level
   ``>= premium_price_level`` or, when the level is unknown, price lift
   ``<= -premium_price_lift`` (chose below-average price scores, i.e. pricier candidates).
5. ``price_emphasis`` / ``quality_emphasis`` / ``speed_emphasis`` / ``proximity_emphasis``
   → price_sensitive / quality_focused / speed_priority / local_preference for the
   strongest factor.

All thresholds live in :class:`SegmentRules`. A role factor missing from the factor list
never fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ROLES",
    "SEGMENTS",
    "BehaviourSummary",
    "SegmentAssignment",
    "SegmentRules",
    "classify_segments",
    "summarise_behaviour",
]

SEGMENTS: tuple[str, ...] = (
    "price_sensitive",
    "quality_focused",
    "speed_priority",
    "local_preference",
    "premium_buyer",
    "balanced",
)
ROLES: tuple[str, ...] = ("price", "quality", "speed", "proximity")
_ROLE_SEGMENT = dict(zip(ROLES, SEGMENTS[:4], strict=True))


@dataclass(frozen=True)
class SegmentRules:
    """Thresholds and factor roles for :func:`classify_segments`.

    Parameters
    ----------
    price_factor, quality_factor, speed_factor, proximity_factor : str
        Names of the factors playing each role.
    stated_share_threshold : float
        Stated share at which a factor counts as emphasised.
    lift_threshold : float
        Chosen-minus-shown score lift at which a factor counts as emphasised.
    stated_weight : float
        Weight of the stated evidence when both sources exist (behaviour gets the rest).
    min_choices : int
        Choices needed before behaviour is used.
    tie_margin : float
        Emphasised factors whose strengths differ by less than this are a tie.
    premium_price_level : float
        Chosen price level at or above which a quality-first customer is premium.
    premium_price_lift : float
        Fallback when the level is unknown: price lift at or below minus this is premium.

    Examples
    --------
    >>> SegmentRules().role_factors()
    ('price', 'quality', 'speed', 'proximity')
    """

    price_factor: str = "price"
    quality_factor: str = "quality"
    speed_factor: str = "speed"
    proximity_factor: str = "proximity"
    stated_share_threshold: float = 0.3
    lift_threshold: float = 0.10
    stated_weight: float = 0.5
    min_choices: int = 5
    tie_margin: float = 0.05
    premium_price_level: float = 0.6
    premium_price_lift: float = 0.05

    def __post_init__(self) -> None:
        if self.stated_share_threshold <= 0 or self.lift_threshold <= 0:
            raise ValueError("thresholds must be positive")
        if not 0.0 <= self.stated_weight <= 1.0:
            raise ValueError("stated_weight must lie in [0, 1]")
        if self.min_choices < 1 or self.tie_margin < 0:
            raise ValueError("min_choices >= 1 and tie_margin >= 0 required")

    def role_factors(self) -> tuple[str, str, str, str]:
        """Factor names in the order of :data:`ROLES`."""
        return (self.price_factor, self.quality_factor, self.speed_factor, self.proximity_factor)


@dataclass(frozen=True, eq=False)
class BehaviourSummary:
    """Per-customer behaviour statistics, input of :func:`classify_segments`.

    Parameters
    ----------
    chosen_mean : ndarray, shape (m, F)
        Mean factor scores of chosen candidates (NaN without choices).
    shown_mean : ndarray, shape (m, F)
        Mean factor scores of all candidates shown in the sessions with a choice.
    n_choices : ndarray of int, shape (m,)
        Number of choices.
    chosen_price_level : ndarray, shape (m,)
        Mean price level of the chosen candidates (0 cheapest .. 1 most expensive), NaN
        when unknown.

    Examples
    --------
    >>> import numpy as np
    >>> b = BehaviourSummary(np.ones((1, 2)), np.ones((1, 2)), np.array([3]), np.array([0.5]))
    >>> b.lift.tolist()
    [[0.0, 0.0]]
    """

    chosen_mean: np.ndarray
    shown_mean: np.ndarray
    n_choices: np.ndarray
    chosen_price_level: np.ndarray

    @property
    def lift(self) -> np.ndarray:
        """Chosen minus shown mean scores, shape (m, F)."""
        return self.chosen_mean - self.shown_mean


def summarise_behaviour(
    X: np.ndarray,
    mask: np.ndarray,
    chosen: np.ndarray,
    customer: np.ndarray,
    n_customers: int,
    price_index: int | None = None,
) -> BehaviourSummary:
    """Aggregate sessions into per-customer behaviour statistics (vectorised).

    Parameters
    ----------
    X : ndarray, shape (n, J, F)
        Factor scores of the shown candidates (padded).
    mask : ndarray of bool, shape (n, J)
        True where a candidate was shown.
    chosen : ndarray of int, shape (n,)
        Chosen index, ``-1`` for no choice (such sessions are ignored).
    customer : ndarray of int, shape (n,)
        Customer index in ``[0, n_customers)`` of each session.
    n_customers : int
        Number of customers ``m``.
    price_index : int, optional
        Column of the price factor; enables the chosen price level.

    Returns
    -------
    BehaviourSummary
        Arrays of shape (m, F) and (m,).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[[0.9, 0.2], [0.1, 0.8]], [[0.5, 0.5], [0.3, 0.9]]])
    >>> b = summarise_behaviour(X, np.ones((2, 2), bool), np.array([1, 1]), np.array([0, 0]),
    ...                         1, price_index=0)
    >>> b.lift.round(2).tolist(), b.chosen_price_level.tolist()
    ([[-0.25, 0.25]], [1.0])
    """
    X = np.asarray(X, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    chosen = np.asarray(chosen, dtype=np.int64)
    customer = np.asarray(customer, dtype=np.int64)
    n, J, F = X.shape
    if mask.shape != (n, J) or chosen.shape != (n,) or customer.shape != (n,):
        raise ValueError("X (n, J, F), mask (n, J), chosen (n,) and customer (n,) required")
    if n and (customer.min() < 0 or customer.max() >= n_customers):
        raise ValueError("customer indices must lie in [0, n_customers)")
    X = np.where(mask[:, :, None], X, 0.0)
    picked = chosen >= 0
    Xp, mp, cp, who = X[picked], mask[picked], chosen[picked], customer[picked]
    rows = np.arange(Xp.shape[0])
    counts = np.bincount(who, minlength=n_customers)
    chosen_sum = np.zeros((n_customers, F))
    np.add.at(chosen_sum, who, Xp[rows, cp])
    shown_sum = np.zeros((n_customers, F))
    np.add.at(shown_sum, who, Xp.sum(axis=1) / mp.sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        chosen_mean = chosen_sum / counts[:, None]
        shown_mean = shown_sum / counts[:, None]
    level = np.full(n_customers, np.nan)
    if price_index is not None and Xp.shape[0]:
        price = Xp[:, :, price_index]
        mine = price[rows, cp][:, None]
        others = mp.copy()
        others[rows, cp] = False
        n_other = others.sum(axis=1)
        # A lower price score means a more expensive candidate; ties count half.
        cheaper = ((price > mine) & others).sum(axis=1) + 0.5 * ((price == mine) & others).sum(
            axis=1
        )
        has_other = n_other > 0
        session_level = np.where(has_other, cheaper / np.maximum(n_other, 1), 0.0)
        level_sum = np.bincount(who, weights=session_level * has_other, minlength=n_customers)
        level_n = np.bincount(who, weights=has_other.astype(float), minlength=n_customers)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(level_n > 0, level_sum / level_n, np.nan)
    return BehaviourSummary(chosen_mean, shown_mean, counts, level)


@dataclass(frozen=True, eq=False)
class SegmentAssignment:
    """Output of :func:`classify_segments`.

    Parameters
    ----------
    segments : ndarray of str, shape (m,)
        One of :data:`SEGMENTS` per customer.
    rules : ndarray of str, shape (m,)
        The rule that fired (see the module docstring).
    strengths : ndarray, shape (m, 4)
        Combined strength of price, quality, speed and proximity (NaN without evidence,
        ``-inf`` for a role missing from the factor list).
    evidence : ndarray of str, shape (m,)
        ``"stated"``, ``"behaviour"``, ``"both"`` or ``"none"``.

    Examples
    --------
    >>> import numpy as np
    >>> a = SegmentAssignment(np.array(["balanced"]), np.array(["no_data"]),
    ...                       np.full((1, 4), np.nan), np.array(["none"]))
    >>> a.segments.tolist()
    ['balanced']
    """

    segments: np.ndarray
    rules: np.ndarray
    strengths: np.ndarray
    evidence: np.ndarray


def classify_segments(
    factors: Sequence[str],
    stated: np.ndarray | None,
    behaviour: BehaviourSummary | None,
    rules: SegmentRules | None = None,
) -> SegmentAssignment:
    """Assign each customer a segment by the rules in the module docstring.

    Parameters
    ----------
    factors : sequence of str, length F
        Factor names, the order of the last axis of the arrays.
    stated : ndarray, shape (m, F), optional
        Stated importance weights (non-negative; NaN or an all-zero row = nothing stated).
    behaviour : BehaviourSummary, optional
        Per-customer choice statistics (see :func:`summarise_behaviour`).
    rules : SegmentRules, optional
        Thresholds; defaults to ``SegmentRules()``.

    Returns
    -------
    SegmentAssignment
        Segment, fired rule, strengths and evidence source per customer.

    Examples
    --------
    >>> import numpy as np
    >>> factors = ("price", "quality", "speed", "proximity")
    >>> stated = np.array([[0.6, 0.2, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25],
    ...                    [0.1, 0.45, 0.45, 0.0]])
    >>> out = classify_segments(factors, stated, None)
    >>> out.segments.tolist()
    ['price_sensitive', 'balanced', 'balanced']
    >>> out.rules.tolist()
    ['price_emphasis', 'no_strong_preference', 'tie']
    """
    rules = SegmentRules() if rules is None else rules
    factors = list(factors)
    F = len(factors)
    if stated is None and behaviour is None:
        raise ValueError("need stated preferences, behaviour or both")
    if stated is not None:
        m = np.asarray(stated).shape[0]
    else:
        assert behaviour is not None
        m = np.asarray(behaviour.n_choices).shape[0]

    if stated is not None:
        stated = np.asarray(stated, dtype=float)
        if stated.shape != (m, F):
            raise ValueError(f"stated must have shape {(m, F)}")
        if np.any(stated < 0):
            raise ValueError("stated weights must be non-negative")
        clean = np.nan_to_num(stated, nan=0.0)
        total = clean.sum(axis=1)
        has_stated = total > 0
        shares = clean / np.where(has_stated, total, 1.0)[:, None]
    else:
        has_stated = np.zeros(m, dtype=bool)
        shares = np.zeros((m, F))

    if behaviour is not None:
        if behaviour.chosen_mean.shape != (m, F) or behaviour.shown_mean.shape != (m, F):
            raise ValueError(f"behaviour arrays must have shape {(m, F)}")
        lift = behaviour.lift
        has_behaviour = (np.asarray(behaviour.n_choices) >= rules.min_choices) & np.all(
            np.isfinite(lift), axis=1
        )
        lift = np.where(has_behaviour[:, None], lift, 0.0)
        level = np.broadcast_to(np.asarray(behaviour.chosen_price_level, dtype=float), (m,))
    else:
        has_behaviour = np.zeros(m, dtype=bool)
        lift = np.zeros((m, F))
        level = np.full(m, np.nan)

    w_s = np.where(has_stated, rules.stated_weight, 0.0)
    w_b = np.where(has_behaviour, 1.0 - rules.stated_weight, 0.0)
    # With stated_weight 0 or 1 a lone source still counts on its own.
    w_s = np.where(has_stated & ~has_behaviour, 1.0, w_s)
    w_b = np.where(has_behaviour & ~has_stated, 1.0, w_b)
    w_total = w_s + w_b
    any_evidence = w_total > 0

    strengths = np.full((m, len(ROLES)), -np.inf)
    lifts = np.full((m, len(ROLES)), np.nan)
    for r, name in enumerate(rules.role_factors()):
        if name not in factors:
            continue
        f = factors.index(name)
        combined = (
            w_s * shares[:, f] / rules.stated_share_threshold
            + w_b * lift[:, f] / rules.lift_threshold
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            strengths[:, r] = np.where(any_evidence, combined / w_total, np.nan)
        lifts[:, r] = np.where(has_behaviour, lift[:, f], np.nan)

    ranked = np.where(np.isnan(strengths), -np.inf, strengths)
    top = ranked.argmax(axis=1)
    top_strength = ranked[np.arange(m), top]
    runner_up = np.sort(ranked, axis=1)[:, -2] if len(ROLES) > 1 else np.full(m, -np.inf)
    emphasised = top_strength >= 1.0
    with np.errstate(invalid="ignore"):  # -inf - -inf where no role factor has evidence
        gap = top_strength - runner_up
    tie = emphasised & (runner_up >= 1.0) & (gap < rules.tie_margin)

    price_strength = ranked[:, 0]
    price_lift = lifts[:, 0]
    high_level = np.where(
        np.isfinite(level),
        level >= rules.premium_price_level,
        np.nan_to_num(price_lift, nan=np.inf) <= -rules.premium_price_lift,
    )
    premium = (top == ROLES.index("quality")) & (price_strength < 1.0) & high_level

    role_segment = np.array([_ROLE_SEGMENT[r] for r in ROLES])
    role_rule = np.array([f"{r}_emphasis" for r in ROLES])
    conditions = [~any_evidence, ~emphasised, tie, premium]
    segments = np.select(
        conditions, ["balanced", "balanced", "balanced", "premium_buyer"], role_segment[top]
    )
    fired = np.select(
        conditions,
        ["no_data", "no_strong_preference", "tie", "premium_quality_high_price"],
        role_rule[top],
    )
    evidence = np.select(
        [has_stated & has_behaviour, has_stated, has_behaviour],
        ["both", "stated", "behaviour"],
        "none",
    )
    strengths = np.where(any_evidence[:, None], strengths, np.nan)
    return SegmentAssignment(
        segments=segments.astype(str),
        rules=fired.astype(str),
        strengths=strengths,
        evidence=evidence.astype(str),
    )

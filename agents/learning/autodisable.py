"""Automatic disabling and re-probing of algorithms whose click-through rate is confidently low.

Per algorithm (arm) a sliding window of daily buckets counts impressions and clicks
(:class:`WindowedCTR`). The rule: an enabled arm is **disabled** when its window
holds at least ``min_impressions`` impressions and the upper limit of the Clopper–Pearson
interval of its CTR is below ``threshold`` (0.5 %). After ``cooldown_s`` a disabled arm is
**probed** with a small share of traffic; once the probe has ``min_impressions`` impressions it
is **re-enabled** if its observed CTR reaches the threshold, or disabled again if its upper
limit is still below it (otherwise probing continues).

Re-enabling on the point estimate rather than on "upper limit above threshold": with
few impressions every upper limit is above the threshold, so that rule alone would re-enable
any arm as soon as probing starts. The point-estimate rule is checked at every step once the
probe has enough impressions, so a probe of an arm still at 0.2 % reaches 0.5 % by chance now
and then (about 5 % of probes in simulation); the usual rule disables such an arm again within
days, and meanwhile its Thompson weight stays low.

The window of an arm restarts whenever its state changes, and events timed before the change
are ignored, so evidence from before a decision never reverses it at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import special

__all__ = [
    "ArmState",
    "AutoDisable",
    "AutoDisableConfig",
    "Transition",
    "WindowEvidence",
    "WindowedCTR",
    "clopper_pearson",
]

_DAY_S = 86_400.0
_EMPTY = np.iinfo(np.int64).min


def clopper_pearson(
    clicks: np.ndarray, impressions: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) two-sided confidence interval of a binomial proportion.

    ``lower = B⁻¹(α/2; x, n − x + 1)``, ``upper = B⁻¹(1 − α/2; x + 1, n − x)`` with
    ``α = 1 − confidence``; lower is 0 when x = 0 and upper is 1 when x = n (also n = 0).
    Equals statsmodels ``proportion_confint(x, n, alpha, method="beta")``.

    Parameters
    ----------
    clicks : (k,) successes x
    impressions : (k,) trials n ≥ x
    confidence : two-sided confidence level in (0, 1)

    Returns
    -------
    lower, upper : (k,) float arrays

    >>> lo, hi = clopper_pearson(np.array([0, 5, 10]), np.array([100, 1000, 10]))
    >>> lo.round(5).tolist(), hi.round(5).tolist()
    ([0.0, 0.00163, 0.6915], [0.03622, 0.01163, 1.0])
    """
    x = np.asarray(clicks, dtype=float)
    n = np.asarray(impressions, dtype=float)
    if x.shape != n.shape:
        raise ValueError(
            f"clicks and impressions must have the same shape, got {x.shape}, {n.shape}"
        )
    if np.any(x < 0) or np.any(x > n):
        raise ValueError("need 0 <= clicks <= impressions")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    # Placeholder parameters where the limit is fixed at 0 or 1 keep betaincinv's domain valid.
    lower = np.where(x > 0, special.betaincinv(np.maximum(x, 1), n - x + 1, tail), 0.0)
    upper = np.where(x < n, special.betaincinv(x + 1, np.maximum(n - x, 1), 1 - tail), 1.0)
    return lower, upper


class ArmState(StrEnum):
    """Serving state of an algorithm.

    >>> str(ArmState.PROBING)
    'probing'
    """

    ENABLED = "enabled"
    DISABLED = "disabled"
    PROBING = "probing"


@dataclass(frozen=True)
class AutoDisableConfig:
    """Parameters of the auto-disable rule.

    threshold : CTR below which an arm is disabled (0.5 %)
    min_impressions : impressions needed in the window (or in the probe) before deciding
    confidence : two-sided level of the Clopper–Pearson interval (upper limit is one-sided
        1 − (1 − confidence)/2, i.e. 97.5 % by default)
    cooldown_s : time a disabled arm waits before it is probed
    probe_share : traffic share of a probing arm (see ``thompson.serving_weights``)
    n_buckets, bucket_width_s : the sliding window (7 daily buckets)

    >>> AutoDisableConfig().threshold
    0.005
    """

    threshold: float = 0.005
    min_impressions: int = 1000
    confidence: float = 0.95
    cooldown_s: float = _DAY_S
    probe_share: float = 0.01
    n_buckets: int = 7
    bucket_width_s: float = _DAY_S

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_impressions < 1:
            raise ValueError(f"min_impressions must be >= 1, got {self.min_impressions}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.cooldown_s < 0 or not 0.0 < self.probe_share < 1.0:
            raise ValueError("need cooldown_s >= 0 and probe_share in (0, 1)")
        if self.n_buckets < 1 or not self.bucket_width_s > 0:
            raise ValueError("need n_buckets >= 1 and bucket_width_s > 0")


class WindowedCTR:
    """Impressions and clicks per arm over a sliding window of time buckets.

    Bucket ``b = floor(ts / bucket_width_s)`` lives in slot ``b mod n_buckets`` of a ring. The
    window ends at the newest bucket seen (``head``) and holds the ``n_buckets`` buckets up to
    it; events in older buckets are ignored. Rotation depends only on bucket indices, so the
    counts do not depend on how events are batched or on how often :meth:`advance` is called.

    Parameters
    ----------
    n_arms : k
    n_buckets : buckets in the window (7)
    bucket_width_s : bucket width in seconds (one day)

    Attributes
    ----------
    impressions, clicks : (k, n_buckets) int64 counts per arm and slot
    bucket_ids : (n_buckets,) int64 bucket index held by each slot
    head : newest bucket index, None before the first event

    >>> w = WindowedCTR(2, n_buckets=3, bucket_width_s=10.0)
    >>> w.update(np.array([0, 0, 1]), np.array([1.0, 12.0, 25.0]), clicks=np.array([1, 0, 0]))
    >>> w.totals()
    (array([2, 1]), array([1, 0]))
    >>> w.advance(31.0)  # bucket 3 opens, bucket 0 (ts 1.0) leaves the window
    >>> w.totals()
    (array([1, 1]), array([0, 0]))
    """

    def __init__(self, n_arms: int, n_buckets: int = 7, bucket_width_s: float = _DAY_S) -> None:
        if n_arms < 1 or n_buckets < 1 or not bucket_width_s > 0:
            raise ValueError("need n_arms >= 1, n_buckets >= 1 and bucket_width_s > 0")
        self.bucket_width_s = float(bucket_width_s)
        self.impressions = np.zeros((n_arms, n_buckets), dtype=np.int64)
        self.clicks = np.zeros((n_arms, n_buckets), dtype=np.int64)
        self.bucket_ids = np.full(n_buckets, _EMPTY, dtype=np.int64)
        self.head: int | None = None

    @property
    def n_arms(self) -> int:
        """Number of arms k.

        >>> WindowedCTR(3).n_arms
        3
        """
        return self.impressions.shape[0]

    @property
    def n_buckets(self) -> int:
        """Number of buckets in the window.

        >>> WindowedCTR(3).n_buckets
        7
        """
        return self.impressions.shape[1]

    def bucket_of(self, ts: np.ndarray | float) -> np.ndarray:
        """Bucket index of timestamps; a timestamp on a boundary opens the new bucket.

        >>> WindowedCTR(1, bucket_width_s=10.0).bucket_of(np.array([9.99, 10.0, 20.0])).tolist()
        [0, 1, 2]
        """
        return np.floor(np.asarray(ts, dtype=float) / self.bucket_width_s).astype(np.int64)

    def _rotate(self, bucket: int) -> None:
        if self.head is not None and bucket <= self.head:
            return
        self.head = int(bucket)
        window = np.arange(bucket - self.n_buckets + 1, bucket + 1, dtype=np.int64)
        slots = window % self.n_buckets
        stale = slots[self.bucket_ids[slots] != window]
        self.impressions[:, stale] = 0
        self.clicks[:, stale] = 0
        self.bucket_ids[slots] = window

    def advance(self, ts: float) -> None:
        """Move the window forward to the bucket of ``ts`` (never backwards).

        >>> w = WindowedCTR(1, n_buckets=2, bucket_width_s=1.0)
        >>> w.update(np.array([0]), np.array([0.5]), clicks=np.array([1]))
        >>> w.advance(1.5); w.advance(1.0); w.totals()
        (array([1]), array([1]))
        """
        self._rotate(int(self.bucket_of(ts)))

    def update(
        self,
        arms: np.ndarray,
        ts: np.ndarray,
        clicks: np.ndarray,
        impressions: np.ndarray | None = None,
    ) -> None:
        """Count a batch of impressions (or per-event impression counts) and their clicks.

        Parameters
        ----------
        arms : (n,) int arm indices
        ts : (n,) event timestamps in seconds
        clicks : (n,) int clicks per event, 0 ≤ clicks ≤ impressions
        impressions : (n,) int impressions per event, default 1 each

        >>> w = WindowedCTR(1, n_buckets=2, bucket_width_s=1.0)
        >>> w.update(np.array([0, 0]), np.array([5.0, 3.0]), clicks=np.array([1, 1]))
        >>> w.totals()  # ts 3.0 is older than the window [4, 6)
        (array([1]), array([1]))
        """
        arms = np.asarray(arms)
        t = np.asarray(ts, dtype=float)
        c = np.asarray(clicks)
        imp = np.ones_like(arms, dtype=np.int64) if impressions is None else np.asarray(impressions)
        if not (arms.ndim == 1 and t.shape == arms.shape == c.shape == imp.shape):
            raise ValueError("arms, ts, clicks and impressions must have the same shape (n,)")
        if arms.size == 0:
            return
        for name, arr in (("arms", arms), ("clicks", c), ("impressions", imp)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        if arms.min() < 0 or arms.max() >= self.n_arms:
            raise ValueError(f"arm indices must be in [0, {self.n_arms})")
        if np.any(c < 0) or np.any(c > imp):
            raise ValueError("need 0 <= clicks <= impressions for every event")
        if not np.all(np.isfinite(t)):
            raise ValueError("timestamps must be finite")
        bucket = self.bucket_of(t)
        self._rotate(int(bucket.max()))
        assert self.head is not None
        keep = bucket > self.head - self.n_buckets
        cell = arms[keep].astype(np.int64) * self.n_buckets + bucket[keep] % self.n_buckets
        size = self.impressions.size
        self.impressions += (
            np.bincount(cell, imp[keep], size).astype(np.int64).reshape(self.impressions.shape)
        )
        self.clicks += np.bincount(cell, c[keep], size).astype(np.int64).reshape(self.clicks.shape)

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Impressions and clicks per arm over the window, each (k,) int64.

        >>> WindowedCTR(2).totals()
        (array([0, 0]), array([0, 0]))
        """
        return self.impressions.sum(axis=1), self.clicks.sum(axis=1)

    def reset_arm(self, arm: int) -> None:
        """Forget the counts of one arm.

        >>> w = WindowedCTR(1)
        >>> w.update(np.array([0]), np.array([0.0]), clicks=np.array([1]))
        >>> w.reset_arm(0); w.totals()
        (array([0]), array([0]))
        """
        self.impressions[arm] = 0
        self.clicks[arm] = 0

    def merge(self, other: WindowedCTR) -> WindowedCTR:
        """Window over the union of both event sets (a new object).

        >>> a, b = WindowedCTR(1, 2, 1.0), WindowedCTR(1, 2, 1.0)
        >>> a.update(np.array([0]), np.array([0.5]), clicks=np.array([1]))
        >>> b.update(np.array([0]), np.array([1.5]), clicks=np.array([0]))
        >>> (a + b).totals()
        (array([2]), array([1]))
        """
        if (self.n_arms, self.n_buckets, self.bucket_width_s) != (
            other.n_arms,
            other.n_buckets,
            other.bucket_width_s,
        ):
            raise ValueError("can only merge windows with the same arms and buckets")
        out = WindowedCTR.from_dict(self.to_dict())
        right = WindowedCTR.from_dict(other.to_dict())
        heads = [h for h in (out.head, right.head) if h is not None]
        if heads:
            out._rotate(max(heads))
            right._rotate(max(heads))
        out.impressions += right.impressions
        out.clicks += right.clicks
        return out

    __add__ = merge

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state.

        >>> sorted(WindowedCTR(1).to_dict())
        ['bucket_ids', 'bucket_width_s', 'clicks', 'head', 'impressions']
        """
        return {
            "bucket_width_s": self.bucket_width_s,
            "head": self.head,
            "bucket_ids": self.bucket_ids.tolist(),
            "impressions": self.impressions.tolist(),
            "clicks": self.clicks.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowedCTR:
        """Rebuild from :meth:`to_dict`.

        >>> w = WindowedCTR(2, 3, 60.0)
        >>> w.update(np.array([1]), np.array([100.0]), clicks=np.array([1]))
        >>> WindowedCTR.from_dict(w.to_dict()).to_dict() == w.to_dict()
        True
        """
        impressions = np.asarray(data["impressions"], dtype=np.int64)
        clicks = np.asarray(data["clicks"], dtype=np.int64)
        ids = np.asarray(data["bucket_ids"], dtype=np.int64)
        if impressions.ndim != 2 or clicks.shape != impressions.shape:
            raise ValueError("impressions and clicks must have the same shape (k, n_buckets)")
        if ids.shape != (impressions.shape[1],):
            raise ValueError("bucket_ids must have shape (n_buckets,)")
        out = cls(impressions.shape[0], impressions.shape[1], float(data["bucket_width_s"]))
        out.impressions, out.clicks, out.bucket_ids = impressions, clicks, ids
        out.head = None if data["head"] is None else int(data["head"])
        return out


@dataclass(frozen=True)
class WindowEvidence:
    """Window counts and CTR bounds per arm, each (k,).

    >>> WindowEvidence(np.array([10]), np.array([1]), np.array([0.1]), np.array([0.4])).ctr
    array([0.1])
    """

    impressions: np.ndarray
    clicks: np.ndarray
    ctr: np.ndarray
    upper_bound: np.ndarray


@dataclass(frozen=True)
class Transition:
    """A change of an arm's state, with the evidence that caused it (for announcements).

    >>> t = Transition(2, ArmState.ENABLED, ArmState.DISABLED, 86400.0, 5000, 5, 0.001,
    ...                0.0023, 0.005, 0.95, "upper bound below threshold")
    >>> t.to_dict()["to_state"]
    'disabled'
    """

    arm: int
    from_state: ArmState
    to_state: ArmState
    ts: float
    impressions: int
    clicks: int
    ctr: float
    upper_bound: float
    threshold: float
    confidence: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record.

        >>> Transition(0, ArmState.DISABLED, ArmState.PROBING, 0.0, 0, 0, 0.0, 1.0, 0.005,
        ...            0.95, "cool-down elapsed").to_dict()["from_state"]
        'disabled'
        """
        out = asdict(self)
        out["from_state"] = str(self.from_state)
        out["to_state"] = str(self.to_state)
        return out


class AutoDisable:
    """State machine enabled → disabled → probing → enabled/disabled, per arm.

    Parameters
    ----------
    n_arms : k
    config : rule parameters

    Attributes
    ----------
    window : :class:`WindowedCTR` holding the evidence of each arm since its last state change
    states : list of k :class:`ArmState`
    since_ts : (k,) time of each arm's last state change (NaN: never changed)

    >>> ad = AutoDisable(2)
    >>> day = 86400.0
    >>> ad.update(np.array([0, 1]), np.array([0.0, 0.0]), clicks=np.array([1, 40]),
    ...           impressions=np.array([5000, 5000]))
    >>> [(t.arm, str(t.to_state)) for t in ad.step(now=day / 2)]
    [(0, 'disabled')]
    >>> [(t.arm, str(t.to_state)) for t in ad.step(now=2 * day)]
    [(0, 'probing')]
    >>> ad.enabled.tolist(), ad.probing.tolist()
    ([False, True], [True, False])
    """

    def __init__(self, n_arms: int, config: AutoDisableConfig | None = None) -> None:
        self.config = config or AutoDisableConfig()
        self.window = WindowedCTR(n_arms, self.config.n_buckets, self.config.bucket_width_s)
        self.states = [ArmState.ENABLED] * n_arms
        self.since_ts = np.full(n_arms, np.nan)

    @property
    def n_arms(self) -> int:
        """Number of arms k.

        >>> AutoDisable(4).n_arms
        4
        """
        return self.window.n_arms

    @property
    def enabled(self) -> np.ndarray:
        """(k,) bool, arms served normally.

        >>> AutoDisable(2).enabled.tolist()
        [True, True]
        """
        return np.array([s is ArmState.ENABLED for s in self.states])

    @property
    def probing(self) -> np.ndarray:
        """(k,) bool, disabled arms served with ``config.probe_share`` of the traffic.

        >>> AutoDisable(2).probing.tolist()
        [False, False]
        """
        return np.array([s is ArmState.PROBING for s in self.states])

    def update(
        self,
        arms: np.ndarray,
        ts: np.ndarray,
        clicks: np.ndarray,
        impressions: np.ndarray | None = None,
    ) -> None:
        """Count outcomes; events timed before their arm's last state change are ignored.

        Shapes as in :meth:`WindowedCTR.update`.

        >>> ad = AutoDisable(1)
        >>> ad.update(np.array([0]), np.array([10.0]), clicks=np.array([0]))
        >>> ad.window.totals()
        (array([1]), array([0]))
        """
        arms = np.asarray(arms)
        t = np.asarray(ts, dtype=float)
        if arms.ndim != 1 or t.shape != arms.shape:
            raise ValueError("arms and ts must have the same shape (n,)")
        if arms.size and (
            not np.issubdtype(arms.dtype, np.integer) or arms.min() < 0 or arms.max() >= self.n_arms
        ):
            raise ValueError(f"arm indices must be integers in [0, {self.n_arms})")
        since = self.since_ts[arms]
        fresh = np.isnan(since) | (t >= since)
        imp = None if impressions is None else np.asarray(impressions)[fresh]
        self.window.update(arms[fresh], t[fresh], np.asarray(clicks)[fresh], imp)

    def evidence(self) -> WindowEvidence:
        """Counts, CTR and Clopper–Pearson upper bound of each arm's window.

        >>> AutoDisable(1).evidence().upper_bound.tolist()
        [1.0]
        """
        imps, clicks = self.window.totals()
        ctr = np.divide(clicks, imps, out=np.zeros(self.n_arms), where=imps > 0)
        _, upper = clopper_pearson(clicks, imps, self.config.confidence)
        return WindowEvidence(imps, clicks, ctr, upper)

    def step(self, now: float) -> list[Transition]:
        """Apply the rules at time ``now`` and return the transitions, in arm order.

        >>> AutoDisable(3).step(now=0.0)
        []
        """
        cfg = self.config
        self.window.advance(now)
        ev = self.evidence()
        transitions = []
        for arm, state in enumerate(self.states):
            enough = ev.impressions[arm] >= cfg.min_impressions
            confidently_low = enough and ev.upper_bound[arm] < cfg.threshold
            new_state, reason = state, ""
            if state is ArmState.ENABLED and confidently_low:
                new_state, reason = ArmState.DISABLED, "CTR upper bound below threshold"
            elif state is ArmState.DISABLED and not now - self.since_ts[arm] < cfg.cooldown_s:
                new_state, reason = ArmState.PROBING, "cool-down elapsed"
            elif state is ArmState.PROBING and enough and ev.ctr[arm] >= cfg.threshold:
                new_state, reason = ArmState.ENABLED, "probe CTR at or above threshold"
            elif state is ArmState.PROBING and confidently_low:
                new_state, reason = ArmState.DISABLED, "probe CTR upper bound below threshold"
            if new_state is state:
                continue
            transitions.append(
                Transition(
                    arm=arm,
                    from_state=state,
                    to_state=new_state,
                    ts=float(now),
                    impressions=int(ev.impressions[arm]),
                    clicks=int(ev.clicks[arm]),
                    ctr=float(ev.ctr[arm]),
                    upper_bound=float(ev.upper_bound[arm]),
                    threshold=cfg.threshold,
                    confidence=cfg.confidence,
                    reason=reason,
                )
            )
            self.states[arm] = new_state
            self.since_ts[arm] = now
            self.window.reset_arm(arm)
        return transitions

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (configuration included).

        >>> sorted(AutoDisable(1).to_dict())
        ['config', 'since_ts', 'states', 'window']
        """
        return {
            "config": asdict(self.config),
            "states": [str(s) for s in self.states],
            "since_ts": [None if np.isnan(t) else float(t) for t in self.since_ts],
            "window": self.window.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoDisable:
        """Rebuild from :meth:`to_dict`.

        >>> ad = AutoDisable(2)
        >>> AutoDisable.from_dict(ad.to_dict()).to_dict() == ad.to_dict()
        True
        """
        window = WindowedCTR.from_dict(data["window"])
        out = cls(window.n_arms, AutoDisableConfig(**data["config"]))
        if len(data["states"]) != out.n_arms or len(data["since_ts"]) != out.n_arms:
            raise ValueError(f"states and since_ts must have {out.n_arms} entries")
        out.window = window
        out.states = [ArmState(s) for s in data["states"]]
        out.since_ts = np.array([np.nan if t is None else t for t in data["since_ts"]], float)
        return out

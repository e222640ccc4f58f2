"""User activity segments: new, inactive, power, regular.

Rules, applied in this order (the first that matches wins):

1. **new** — fewer than ``new_below`` (5) interactions;
2. **inactive** — no activity for ``inactive_after_s`` (30 days) or more;
3. **power** — more than ``power_above`` (100) interactions;
4. **regular** — everyone else.

Why "new" wins over "inactive": a user with a handful of interactions is one we know little
about however long ago they came, and new users get the most exploration (ε = 0.30), which is
what a sparse history needs. Inactivity wins over power and regular because after a month away
the re-engagement strategy applies whatever the user's history. A user with no recorded activity
time (NaN) who is not new counts as inactive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SEGMENTS", "SegmentThresholds", "changed_segments", "classify"]

SEGMENTS = ("new", "inactive", "regular", "power")
_DAY_S = 86_400.0


@dataclass(frozen=True)
class SegmentThresholds:
    """Thresholds of the activity segments.

    ``new_below`` interactions or fewer-than is new; more than ``power_above`` is power; no
    activity for ``inactive_after_s`` seconds or more is inactive.

    >>> SegmentThresholds().inactive_after_s / 86400
    30.0
    """

    new_below: int = 5
    power_above: int = 100
    inactive_after_s: float = 30 * _DAY_S

    def __post_init__(self) -> None:
        if self.new_below < 0 or self.power_above < self.new_below:
            raise ValueError("need 0 <= new_below <= power_above")
        if not self.inactive_after_s > 0:
            raise ValueError("inactive_after_s must be > 0")


def classify(
    interactions: np.ndarray,
    last_active_ts: np.ndarray,
    now_ts: float | np.ndarray,
    thresholds: SegmentThresholds | None = None,
) -> np.ndarray:
    """Segment label of each user.

    Parameters
    ----------
    interactions : (n,) int interaction counts
    last_active_ts : (n,) float timestamps in seconds of the last activity; NaN if none
    now_ts : scalar or (n,) current time in seconds
    thresholds : segment thresholds, the defaults when None

    Returns
    -------
    (n,) array of str labels from :data:`SEGMENTS`

    >>> day = 86400.0
    >>> classify(np.array([2, 50, 150, 150, 3]),
    ...          np.array([0.0, 99 * day, 99 * day, 60 * day, 0.0]), 100 * day).tolist()
    ['new', 'regular', 'power', 'inactive', 'new']
    """
    th = thresholds or SegmentThresholds()
    n_int = np.asarray(interactions)
    last = np.asarray(last_active_ts, dtype=float)
    if n_int.ndim != 1 or last.shape != n_int.shape:
        raise ValueError(
            f"interactions and last_active_ts must have the same shape (n,); "
            f"got {n_int.shape}, {last.shape}"
        )
    if n_int.size and np.any(n_int < 0):
        raise ValueError("interaction counts must be >= 0")
    now = np.broadcast_to(np.asarray(now_ts, dtype=float), n_int.shape)
    idle = now - last
    inactive = ~(idle < th.inactive_after_s)  # NaN (never active) counts as inactive
    return np.select(
        [n_int < th.new_below, inactive, n_int > th.power_above],
        ["new", "inactive", "power"],
        default="regular",
    )


def changed_segments(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Indices of the users whose segment label differs between two aligned label arrays.

    Parameters
    ----------
    old, new : (n,) labels of the same users at two times

    Returns
    -------
    (m,) int64 indices into the arrays, ascending

    >>> changed_segments(np.array(["new", "regular", "power"]),
    ...                  np.array(["regular", "regular", "inactive"])).tolist()
    [0, 2]
    """
    a = np.asarray(old)
    b = np.asarray(new)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label arrays must have the same shape (n,); got {a.shape}, {b.shape}")
    return np.flatnonzero(a != b).astype(np.int64)

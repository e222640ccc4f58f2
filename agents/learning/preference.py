"""Preference vectors learned by an exponential moving average over item features.

For one user and one feedback event on an item with features ``x``::

    v ← (1 − α)·v + α·s·x,   α = clip(base_alpha × type_multiplier × |s|, 0, max_alpha)

where ``s`` is the signed strength of the feedback (:func:`signal_strength`). A batch may hold
several events of one user; they are applied in arrival order, and the whole batch is
computed in closed form so that no Python loop runs per event::

    v_n = Π_i (1 − α_i) · v_0 + Σ_i α_i s_i x_i Π_{j>i} (1 − α_j)

The products are taken as sums of ``log1p(−α)`` per user (α ≤ max_alpha < 1 keeps them
finite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

EXPLICIT_KINDS = ("rating", "like", "dislike", "save", "share")
IMPLICIT_KINDS = ("impression", "view", "click", "dwell", "conversion")
KINDS = EXPLICIT_KINDS + IMPLICIT_KINDS
KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}

# Fixed signs per kind; rating, dwell and conversion are scaled from their value instead.
_BASE_SIGN = np.array([0.0, 1.0, -1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])


@dataclass(frozen=True)
class EmaParams:
    """Learning-rate parameters of the preference EMA.

    ``type_multipliers`` maps every kind of :data:`KINDS` to its multiplier; ``dwell_ref_s``
    is the dwell time that counts as full strength, ``conversion_ref`` likewise for value.
    """

    base_alpha: float = 0.1
    max_alpha: float = 0.5
    type_multipliers: Mapping[str, float] | None = None
    dwell_ref_s: float = 120.0
    conversion_ref: float = 100.0

    def multipliers(self) -> np.ndarray:
        table = dict.fromkeys(KINDS, 1.0)
        table.update(self.type_multipliers or {})
        return np.array([table[k] for k in KINDS])


def signal_strength(kind_idx: np.ndarray, value: np.ndarray, params: EmaParams) -> np.ndarray:
    """Signed strength ``s`` in [−1, 1] of each event.

    Parameters
    ----------
    kind_idx : (n,) int array of indices into :data:`KINDS`
    value : (n,) float array; the rating (1–5), dwell seconds or conversion value, else ignored

    Ratings are centred on 3 (1 → −1, 5 → +1); like/save/share +1, dislike −1; views and
    clicks +1; dwell and conversions grow logarithmically with their value up to +1;
    impressions carry no preference signal (they still count as activity).

    >>> p = EmaParams()
    >>> k = np.array([KIND_INDEX[x] for x in ("rating", "rating", "dislike", "impression")])
    >>> signal_strength(k, np.array([5.0, 2.0, 0.0, 0.0]), p).tolist()
    [1.0, -0.5, -1.0, 0.0]
    """
    s = _BASE_SIGN[kind_idx].copy()
    value = np.nan_to_num(value, nan=0.0)
    rating = kind_idx == KIND_INDEX["rating"]
    s[rating] = (value[rating] - 3.0) / 2.0
    dwell = kind_idx == KIND_INDEX["dwell"]
    s[dwell] = np.log1p(np.maximum(value[dwell], 0)) / np.log1p(params.dwell_ref_s)
    conv = kind_idx == KIND_INDEX["conversion"]
    s[conv] = 0.5 + 0.5 * np.log1p(np.maximum(value[conv], 0)) / np.log1p(params.conversion_ref)
    return np.clip(s, -1.0, 1.0)


def learning_rates(kind_idx: np.ndarray, strength: np.ndarray, params: EmaParams) -> np.ndarray:
    """Per-event α = clip(base_alpha × multiplier(kind) × |s|, 0, max_alpha); shape (n,).

    >>> p = EmaParams(base_alpha=0.2, max_alpha=0.5)
    >>> learning_rates(np.array([0, 0]), np.array([1.0, -0.5]), p).tolist()
    [0.2, 0.1]
    """
    alpha = params.base_alpha * params.multipliers()[kind_idx] * np.abs(strength)
    return np.clip(alpha, 0.0, params.max_alpha)


def ema_batch(
    vectors: np.ndarray,
    owner: np.ndarray,
    alpha: np.ndarray,
    strength: np.ndarray,
    features: np.ndarray,
) -> np.ndarray:
    """Apply a batch of EMA updates, in order, to several users at once.

    Parameters
    ----------
    vectors : (u, d) float array, each user's vector before the batch (not modified)
    owner : (n,) int array, the row of ``vectors`` each event updates, events in arrival order
    alpha : (n,) float array in [0, 1), per-event rates
    strength : (n,) float array, per-event signed strengths
    features : (n, d) float array, the item features of each event

    Returns
    -------
    (u, d) float array: the vectors after all events.

    >>> v0 = np.zeros((1, 2))
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ema_batch(v0, np.array([0, 0]), np.array([0.5, 0.5]), np.ones(2), x).tolist()
    [[0.25, 0.5]]
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    n = owner.shape[0]
    out = vectors.copy()
    if n == 0:
        return out
    order = np.argsort(owner, kind="stable")
    own = owner[order]
    log_keep = np.log1p(-alpha[order])
    # Sum of log(1 − α_j) over the later events j > i of the same owner.
    total = np.bincount(own, weights=log_keep, minlength=vectors.shape[0])
    inclusive = np.cumsum(log_keep)
    starts = np.searchsorted(own, own, side="left")
    before_group = np.where(starts > 0, inclusive[starts - 1], 0.0)
    after_i = total[own] - (inclusive - before_group)
    weight = alpha[order] * strength[order] * np.exp(after_i)
    out *= np.exp(total)[:, None]
    np.add.at(out, own, weight[:, None] * features[order])
    return out


def ema_sequential(
    vector: np.ndarray, alpha: Sequence[float], strength: Sequence[float], features: np.ndarray
) -> np.ndarray:
    """Reference implementation: one user, one event at a time (for tests and docs).

    >>> ema_sequential(np.zeros(2), [0.5, 0.5], [1, 1], np.eye(2)).tolist()
    [0.25, 0.5]
    """
    v = np.asarray(vector, dtype=np.float64).copy()
    for a, s, x in zip(alpha, strength, features, strict=True):
        v = (1 - a) * v + a * s * np.asarray(x)
    return v


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (n, d) arrays (0 where a row is all zeros).

    >>> cosine_similarity(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]])).tolist()
    [1.0]
    """
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def window_contributions(
    owner: np.ndarray,
    kind_idx: np.ndarray,
    strength: np.ndarray,
    features: np.ndarray,
    params: EmaParams,
    n_owners: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit signals summed per user for a window: (Σ w·s·x, Σ w) with w = m(kind)·|s|.

    A window is applied later as one EMA step (:func:`window_rates`) towards the weighted
    mean signal ``Σ w·s·x / Σ w``; a window of one event is exactly that event's update.

    Parameters
    ----------
    owner : (n,) int array, row of the user of each event
    kind_idx, strength : (n,) arrays
    features : (n, d) float array
    n_owners : number of users (rows of the result)

    Returns
    -------
    sums : (n_owners, d) float array; weights : (n_owners,) float array

    >>> p = EmaParams(type_multipliers={"click": 0.5})
    >>> k = np.array([KIND_INDEX["click"]] * 2)
    >>> sums, w = window_contributions(np.array([0, 0]), k, np.ones(2), np.eye(2), p, 1)
    >>> sums.tolist(), w.tolist()
    ([[0.5, 0.5]], [1.0])
    """
    w = params.multipliers()[kind_idx] * np.abs(strength)
    sums = np.zeros((n_owners, features.shape[1]))
    np.add.at(sums, owner, (w * strength)[:, None] * features)
    return sums, np.bincount(owner, weights=w, minlength=n_owners)


def window_rates(weights: np.ndarray, params: EmaParams) -> np.ndarray:
    """EMA rate of a closed window: clip(base_alpha × Σ w, 0, max_alpha); shape like input.

    >>> window_rates(np.array([0.5, 100.0]), EmaParams(base_alpha=0.1, max_alpha=0.5)).tolist()
    [0.05, 0.5]
    """
    return np.clip(params.base_alpha * np.asarray(weights, dtype=np.float64), 0.0, params.max_alpha)

"""Deterministic, sticky assignment of units to experiment variants.

Every worker, and every service written in any language, must put a unit in the same
variant.  The recipe (documented with a worked example in ``docs/assignment.md``) uses
only SHA-256, 64-bit integers and IEEE-754 doubles:

1. ``message = UTF-8(salt + "\\x1f" + experiment_id + "\\x1f" + unit_id)``
2. ``x = uint64_big_endian(SHA-256(message)[0:8])``
3. ``h = (x >> 11) / 2**53`` -- the top 53 bits, so ``h`` is an exact double in ``[0, 1)``
   (``x / 2**64`` rounded to a double can be exactly 1.0).

The traffic gate uses ``salt = "traffic"``: a unit is in the experiment iff
``h_traffic < traffic``.  Raising ``traffic`` therefore only ever adds units.

The variant is chosen by weighted rendezvous hashing (an exponential race, also known as
P-MinHash): with ``h_v`` the hash under ``salt = "variant:" + name``,

    variant = argmin_v  -ln(1 - h_v) / w_v      (ties: first in variant order)

``-ln(1 - h_v) / w_v`` is an exponential variable with rate ``w_v``, so variant ``v`` wins
with probability ``w_v / sum(w)``.  Because each variant has its own hash, changing the
weights only moves units whose race result changes: when the weight ratios
``w'_v / w_v`` take at most two distinct values (ramping one variant up or down, adding or
removing a variant, any two-variant change) exactly the total-variation distance moves,
which is the minimum possible; for any other change at most ``2 TV / (1 + TV)`` moves
(expected fractions; see :func:`expected_moved_fraction`).
Cumulative weights over a single hash move more (e.g. 1/3 each -> 1/2, 1/4, 1/4 moves
1/4 of the units instead of the minimal 1/6).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "Assigner",
    "assign",
    "expected_moved_fraction",
    "total_variation",
    "unit_hash",
    "unit_hash_batch",
]

_SEPARATOR = "\x1f"
_TRAFFIC_SALT = "traffic"
_VARIANT_SALT = "variant:"
_TWO_POW_MINUS_53 = 2.0**-53
_sha256 = hashlib.sha256
# The first 8 digest bytes as a big-endian integer, without slicing a new bytes object.
_first_u64 = struct.Struct(">Q").unpack_from


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if _SEPARATOR in value:
        raise ValueError(f"{name} must not contain the separator \\x1f: {value!r}")


def _prefix(salt: str, experiment_id: str) -> bytes:
    return f"{salt}{_SEPARATOR}{experiment_id}{_SEPARATOR}".encode()


def unit_hash(experiment_id: str, unit_id: str, salt: str = _TRAFFIC_SALT) -> float:
    """Hash ``(salt, experiment_id, unit_id)`` to a double in ``[0, 1)``.

    Parameters
    ----------
    experiment_id : str
        Experiment identifier (must not contain ``"\\x1f"``).
    unit_id : str
        Unit identifier (user, session, ...).
    salt : str, default "traffic"
        Independent hash family: ``"traffic"`` for the gate, ``"variant:" + name`` for the
        variant race.

    Returns
    -------
    float
        ``(uint64_be(SHA-256(salt \\x1f experiment_id \\x1f unit_id)[:8]) >> 11) / 2**53``.

    Examples
    --------
    >>> unit_hash("checkout-button", "user-42")
    0.424758770863525
    >>> 0.0 <= unit_hash("checkout-button", "user-42", salt="variant:control") < 1.0
    True
    """
    _check_id("salt", salt)
    _check_id("experiment_id", experiment_id)
    digest = _sha256(_prefix(salt, experiment_id) + unit_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) * _TWO_POW_MINUS_53


def _hash_words(prefix: bytes, encoded_units: Sequence[bytes]) -> np.ndarray:
    first8 = b"".join([_sha256(prefix + unit).digest()[:8] for unit in encoded_units])
    return np.frombuffer(first8, dtype=">u8").astype(np.uint64)


def unit_hash_batch(
    experiment_id: str, unit_ids: Sequence[str], salt: str = _TRAFFIC_SALT
) -> np.ndarray:
    """Vectorised :func:`unit_hash` over many units.

    Parameters
    ----------
    experiment_id : str
        Experiment identifier.
    unit_ids : sequence of str, length n
        Unit identifiers.
    salt : str, default "traffic"
        Hash family, as in :func:`unit_hash`.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        The same values as :func:`unit_hash` for each unit.

    Examples
    --------
    >>> unit_hash_batch("checkout-button", ["user-42", "user-43"]).round(6).tolist()
    [0.424759, 0.901397]
    """
    _check_id("salt", salt)
    _check_id("experiment_id", experiment_id)
    words = _hash_words(_prefix(salt, experiment_id), [u.encode() for u in unit_ids])
    return (words >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53


class Assigner:
    """Per-experiment assignment with the constants precomputed for speed.

    Parameters
    ----------
    experiment_id : str
        Experiment identifier (no ``"\\x1f"``).
    variants : sequence of str, length k
        Variant names, unique, no ``"\\x1f"``.  Order only breaks exact score ties.
    weights : sequence of float, length k
        Non-negative allocation weights (need not sum to 1; a zero weight disables the
        variant without moving any other variant's units).
    traffic : float, default 1.0
        Fraction of units in the experiment, in ``[0, 1]``.

    Examples
    --------
    >>> a = Assigner("checkout-button", ["control", "green"], [0.5, 0.5], traffic=0.8)
    >>> a.assign("user-42"), a.assign("user-0"), a.assign("user-11")
    ('green', 'control', None)
    >>> a.assign_batch(["user-42", "user-0", "user-11"]).tolist()
    [1, 0, -1]
    >>> a.variant_names(a.assign_batch(["user-42", "user-11"]))
    ['green', None]
    """

    __slots__ = (
        "_index_of",
        "_items",
        "_traffic_limit",
        "_traffic_prefix",
        "experiment_id",
        "traffic",
        "variants",
        "weights",
    )

    experiment_id: str
    variants: tuple[str, ...]
    weights: tuple[float, ...]
    traffic: float

    def __init__(
        self,
        experiment_id: str,
        variants: Sequence[str],
        weights: Sequence[float],
        traffic: float = 1.0,
    ) -> None:
        _check_id("experiment_id", experiment_id)
        variants = tuple(variants)
        weights = tuple(float(w) for w in weights)
        if not variants:
            raise ValueError("at least one variant is required")
        if len(set(variants)) != len(variants):
            raise ValueError(f"variant names must be unique: {variants}")
        for name in variants:
            _check_id("variant name", name)
        if len(weights) != len(variants):
            raise ValueError("weights and variants must have the same length")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0: {weights}")
        traffic = float(traffic)
        if not 0.0 <= traffic <= 1.0:
            raise ValueError(f"traffic must be in [0, 1], got {traffic}")
        self.experiment_id = experiment_id
        self.variants = variants
        self.weights = weights
        self.traffic = traffic
        self._traffic_prefix = _prefix(_TRAFFIC_SALT, experiment_id)
        # h < traffic  <=>  (x >> 11) < traffic * 2**53  <=>  x < ceil(traffic * 2**53) << 11.
        # Comparing digest bytes with this 8-byte big-endian limit skips the int conversion
        # (a 32-byte digest whose first 8 bytes equal the limit compares greater, as it must).
        limit = math.ceil(traffic * 2.0**53) << 11
        self._traffic_limit = None if limit >= 2**64 else limit.to_bytes(8, "big")
        self._items = tuple(
            (_prefix(_VARIANT_SALT + name, experiment_id), w, name)
            for name, w in zip(variants, weights, strict=True)
            if w > 0
        )
        self._index_of = np.array([variants.index(name) for _p, _w, name in self._items])

    def __repr__(self) -> str:
        return (
            f"Assigner({self.experiment_id!r}, {list(self.variants)!r}, "
            f"{list(self.weights)!r}, traffic={self.traffic!r})"
        )

    def assign(self, unit_id: str) -> str | None:
        """Variant name for one unit, or ``None`` when the traffic gate excludes it.

        Parameters
        ----------
        unit_id : str
            Unit identifier.

        Returns
        -------
        str or None

        Examples
        --------
        >>> Assigner("exp", ["a", "b"], [1, 1]).assign("u1")
        'b'
        """
        sha = _sha256
        unit = unit_id.encode()
        if self._traffic_limit is not None and (
            sha(self._traffic_prefix + unit).digest() >= self._traffic_limit
        ):
            return None
        first_u64 = _first_u64
        log = math.log
        best_name = None
        best_score = math.inf
        for prefix, weight, name in self._items:
            (x,) = first_u64(sha(prefix + unit).digest())
            score = -log(1.0 - (x >> 11) * _TWO_POW_MINUS_53) / weight
            if score < best_score or best_name is None:
                best_score = score
                best_name = name
        return best_name

    def assign_batch(self, unit_ids: Sequence[str]) -> np.ndarray:
        """Variant indices for many units (``-1`` = not in the experiment).

        Hashing is one SHA-256 call per unit and hash family (there is no vectorised
        SHA-256 in numpy); the gate and the race are vectorised.

        Parameters
        ----------
        unit_ids : sequence of str, length n
            Unit identifiers.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
            Index into :attr:`variants`, or ``-1``.

        Examples
        --------
        >>> Assigner("exp", ["a", "b"], [1, 1]).assign_batch(["u1", "u2", "u3"]).tolist()
        [1, 0, 0]
        """
        units = [u.encode() for u in unit_ids]
        n = len(units)
        result = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return result
        if self._traffic_limit is None:
            inside = np.arange(n)
        else:
            limit = np.uint64(int.from_bytes(self._traffic_limit, "big"))
            inside = np.flatnonzero(_hash_words(self._traffic_prefix, units) < limit)
            units = [units[i] for i in inside.tolist()]
        if not units:
            return result
        scores = np.empty((len(self._items), len(units)))
        for row, (prefix, weight, _name) in enumerate(self._items):
            h = (_hash_words(prefix, units) >> np.uint64(11)).astype(np.float64)
            with np.errstate(over="ignore"):  # subnormal weights: score inf, never chosen
                scores[row] = -np.log(1.0 - h * _TWO_POW_MINUS_53) / weight
        result[inside] = self._index_of[np.argmin(scores, axis=0)]
        return result

    def variant_names(self, indices: np.ndarray) -> list[str | None]:
        """Map indices from :meth:`assign_batch` to names (``-1`` -> ``None``).

        Parameters
        ----------
        indices : numpy.ndarray of int, shape (n,)

        Returns
        -------
        list of str or None, length n

        Examples
        --------
        >>> Assigner("exp", ["a", "b"], [1, 1]).variant_names(np.array([1, -1]))
        ['b', None]
        """
        return [None if i < 0 else self.variants[i] for i in indices.tolist()]


@lru_cache(maxsize=1024)
def _cached_assigner(
    experiment_id: str, variants: tuple[str, ...], weights: tuple[float, ...], traffic: float
) -> Assigner:
    return Assigner(experiment_id, variants, weights, traffic)


def assign(
    experiment_id: str,
    unit_id: str,
    variants: Sequence[str],
    weights: Sequence[float],
    traffic: float = 1.0,
) -> str | None:
    """Variant for one unit, or ``None`` if the traffic gate excludes it.

    Convenience wrapper over :class:`Assigner`; the per-experiment constants are cached
    (bounded LRU keyed by the definition), so repeated calls stay on the fast path.

    Parameters
    ----------
    experiment_id : str
        Experiment identifier.
    unit_id : str
        Unit identifier.
    variants : sequence of str, length k
        Variant names.
    weights : sequence of float, length k
        Allocation weights.
    traffic : float, default 1.0
        Fraction of units in the experiment.

    Returns
    -------
    str or None

    Examples
    --------
    >>> assign("checkout-button", "user-42", ["control", "green"], [0.5, 0.5], 0.8)
    'green'
    >>> assign("checkout-button", "user-11", ["control", "green"], [0.5, 0.5], 0.8) is None
    True
    """
    return _cached_assigner(experiment_id, tuple(variants), tuple(weights), traffic).assign(unit_id)


def total_variation(weights_a: Sequence[float], weights_b: Sequence[float]) -> float:
    """Total-variation distance between two normalised allocations.

    This is the minimum fraction of units that any assignment scheme must move.

    Parameters
    ----------
    weights_a, weights_b : sequence of float, length k
        Allocation weights (normalised internally).

    Returns
    -------
    float
        ``0.5 * sum(|a_v - b_v|)`` in ``[0, 1]``.

    Examples
    --------
    >>> round(total_variation([1, 1, 1], [2, 1, 1]), 6)
    0.166667
    """
    a = np.asarray(weights_a, dtype=float)
    b = np.asarray(weights_b, dtype=float)
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def expected_moved_fraction(weights_a: Sequence[float], weights_b: Sequence[float]) -> float:
    """Expected fraction of units whose variant changes from ``weights_a`` to ``weights_b``.

    For the exponential race the probability that both allocations pick the same variant
    is ``J_P = sum_v 1 / sum_u max(a_u / a_v, b_u / b_v)`` (Moulton & Jiang 2018,
    "Maximally consistent sampling and the Jaccard index of probability distributions"),
    which no stateless scheme can beat for all pairs at once; this returns ``1 - J_P``.

    Parameters
    ----------
    weights_a, weights_b : sequence of float, length k
        Old and new weights (normalised internally; zero weights allowed).

    Returns
    -------
    float
        Expected moved fraction, between ``TV`` and ``2 TV / (1 + TV)``.

    Examples
    --------
    >>> round(expected_moved_fraction([1, 1, 1], [2, 1, 1]), 6)  # equals the TV distance
    0.166667
    >>> round(expected_moved_fraction([2, 1, 1], [1, 2, 1]), 6)  # TV is 0.25
    0.3
    """
    a = np.asarray(weights_a, dtype=float)
    b = np.asarray(weights_b, dtype=float)
    a = a / a.sum()
    b = b / b.sum()
    same = 0.0
    for v in np.flatnonzero((a > 0) & (b > 0)):
        same += 1.0 / np.maximum(a / a[v], b / b[v]).sum()
    return float(1.0 - same)

"""The per-user value of the preferences table, packed into compact bytes.

One value holds everything needed to apply an event at most once, so that the guard and
the update land in the same changelog record (at-least-once delivery, idempotent effect):

* the last applied source offset per input topic — a replay from an older committed offset
  skips what was applied. This watermark is what makes replays idempotent;
* the hashes of the user's recent event ids with their arrival time — the same event
  produced again (at another offset, e.g. a producer retry) is applied once. Ids are kept
  for a horizon (``LOOPWISE_DEDUPE_HORIZON_S``) and, if ``LOOPWISE_DEDUPE_IDS`` > 0, at
  least that many of the newest; a duplicate that arrives later than that is not
  recognised. :meth:`PreferenceState.prune` drops expired ids of users who went quiet, so a
  quiet user carries no ids at all.

The version is deterministic: it derives from the applied offsets (:meth:`event_version`),
so a replay that rebuilds a state after a crash gives it the same version it had, and a
Redis value written before the crash never looks newer than the rebuilt one.

It also holds the implicit-feedback window still open (the weighted sum of its signals),
the segment last published, and the partition the key lives on (timers write the table
outside stream iteration and must name it).

Vector storage (``LOOPWISE_VECTOR_DTYPE``, see :func:`set_vector_dtype`)
--------------------------------------------------------------------------
The memory target is <= 300 MB per 1M users x 32 dims (docs/benchmarks.md). A faust memory
store costs ~95 B per user before the value (key ``str`` 64 B, dict slot ~31 B) and a
``bytes`` object 33 B more, so a 128-byte float32 vector plus any header cannot fit. The
vector is therefore stored in 16 bits per component by default:

* ``int16`` (default): block floating point — one int8 power-of-two exponent per vector and
  int16 mantissas, so every component has the same absolute step ``2**exp`` with
  ``2**14 <= max|v| / 2**exp < 2**15``: a relative precision of ~2**-15 of the largest
  component (float16 gives 2**-11 of each component, i.e. 16x coarser on the components
  that dominate a dot product, and overflows above 65504). Rounding is *deterministically
  dithered* (a hash of each float32 value and of the state's offsets and version picks the
  rounding threshold), so it is unbiased: with round-to-nearest an EMA step smaller than
  half a grid step is lost every time, and a user with small learning rates (implicit
  windows, alpha ~0.002) sticks a few % away from the target for ever; dithered, the error
  is a zero-mean random walk of a few grid steps. The dither is a pure function of the
  state, so a replay that recomputes an update stores the same vector, and quantizing a
  vector already on its grid leaves it unchanged.
* ``float16``: round to nearest; simpler to read, coarser, subject to that stall.
* ``float32``: exact float32 as before, ~320 MB per 1M users (over the target).

What is published equals what is stored: assigning ``state.vector`` quantizes at once (the
array is made read-only, so an in-place edit cannot bypass that), and every sink and output
reads the quantized value. A state read from a value in another dtype (e.g. float32 written
by an older worker) keeps that dtype until its vector is next assigned, so re-packing it
(a prune) never changes a published vector under the same version.

Layouts (little-endian)
-----------------------
Layout 2 (written now). Header ``<BHIBHqqIqq`` (46 B): layout (= 2), partition (uint16),
interactions (uint32), flags, n_ids (uint16), version, last_ts_ms, last_active (uint32
seconds), explicit offset, implicit offset. Flags: bit 7 always set (see below), bit 0 a
window is open, bits 1-2 vector dtype (0 float32, 1 float16, 2 int16), bits 3-5 segment
code (7 = none). Then, when n_ids > 0: uint32 base second (the newest arrival), n_ids
uint64 id hashes (oldest first), n_ids uint16 ages in minutes before the base. Then the
vector: int16 → int8 exponent + dim int16; float16 → dim float16; float32 → dim float32.
Then, when a window is open: window_opened_ms (int64), window_weight (float64), dim float32
window sum. ``dim`` is not stored: it follows from the length.

Layout 1 (written by older workers, still read): header ``<qqqqqqqdHHHHH`` = version,
interactions, last_ts_ms, last_active_ms, explicit_offset, implicit_offset,
window_opened_ms, window_weight, partition, segment code, dim, n_ids, has_window; then
n_ids uint64 id hashes; dim float32 vector; n_ids uint32 arrival seconds; and, when a
window is open, dim float32 window sum.

Telling them apart: layout 1 starts with the int64 version, which is never negative, so
its byte 7 (the version's sign byte) never has bit 7 set; layout 2 has its flags at byte 7
with bit 7 always set. The test is unambiguous for every value either layout can hold.

Precision traded, on purpose:

* last_active is kept in whole seconds (it only feeds the inactivity classification,
  measured in days); last_ts, published as ``source_ts``, stays exact in ms;
* id arrival times are kept in whole minutes, rounded towards *newer*, so an id is kept
  up to 59 s longer than the horizon, never shorter; ages beyond 65 535 min (45 days)
  are clipped, which also only keeps them longer;
* the open window's sum stays float32: it accumulates over batches and lives only for
  ``LOOPWISE_IMPLICIT_WINDOW_S`` (a few seconds), so few users carry it at any time;
* id hashes stay 64-bit: with k ids kept, a new event is taken for a duplicate with
  probability k / 2**64 (32-bit hashes would make that k / 2**32, ~2e-8 per event for a
  user with 100 ids in the horizon, a few lost events a day at 1e9 events; they would save
  4 B per id only on users active within the horizon, not on quiet users).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from agents.learning.activity_segments import SEGMENTS

VectorDtype = Literal["int16", "float16", "float32"]
VECTOR_DTYPES: tuple[VectorDtype, ...] = ("float32", "float16", "int16")  # index = flag code

_HEADER_V1 = struct.Struct("<qqqqqqqdHHHHH")
HEADER = struct.Struct("<BHIBHqqIqq")
_WINDOW_META = struct.Struct("<qd")
LAYOUT = 2
TOPIC_SLOTS = {"feedback.explicit": 0, "feedback.implicit": 1}
NO_SEGMENT = 0xFFFF  # layout 1
_NO_SEGMENT_CODE = 7  # layout 2 (3 bits)
_FLAG_NEW_LAYOUT = 0x80
_FLAG_WINDOW = 0x01
_EXP_MIN, _EXP_MAX = -128, 113  # int8 exponent; 32767 * 2**113 < float32 max
_MANTISSA_MAX = 32767
_AGE_MAX_MIN = 0xFFFF
_UINT32_MAX = 0xFFFF_FFFF

_vector_dtype: VectorDtype = "int16"
# Placeholder vector while unpack() builds a state: the decoded vector is set right after,
# as stored, so decoding a value never pays for (or changes it by) a re-quantization.
_DECODING = np.empty(0, dtype=np.float32)


def set_vector_dtype(dtype: str) -> None:
    """Choose how vectors assigned from now on are quantized and stored (the worker calls
    this once with ``LOOPWISE_VECTOR_DTYPE``; states already in the table keep theirs until
    their vector next changes)."""
    global _vector_dtype
    if dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}, got {dtype!r}")
    _vector_dtype = dtype  # type: ignore[assignment]


def vector_dtype() -> VectorDtype:
    return _vector_dtype


def event_id_hash(event_id: str) -> int:
    """64-bit hash of an event id (blake2b, so it is stable across processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _dither(v: np.ndarray, salt: int) -> np.ndarray:
    """A threshold in [0, 1) per component, a pure function of its float32 bits, its index
    and ``salt`` (murmur3's finalizer): unbiased like random rounding, but reproducible.

    The salt must change from one update to the next: with the value alone, an update too
    small to leave the grid maps back to the same value, which gives the same threshold
    again, and the vector sticks at that fixed point for ever."""
    h = v.view(np.uint32) ^ (np.arange(v.shape[-1], dtype=np.uint32) * np.uint32(0x9E3779B9))
    h = h ^ _salts(salt, v.ndim)
    h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
    h = h ^ (h >> np.uint32(16))
    return (h >> np.uint32(8)).astype(np.float64) * 2.0**-24


def _salts(salt: int | np.ndarray, ndim: int) -> np.ndarray:
    """One salt, or one per row (broadcast over the components)."""
    arr = (np.asarray(salt, dtype=np.uint64) & np.uint64(_UINT32_MAX)).astype(np.uint32)
    return arr[..., None] if arr.ndim and ndim > 1 else arr


def int16_block(vectors: np.ndarray, salt: int | np.ndarray = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of float32 vectors → (int16 mantissas, int8 exponents), ``v ≈ m * 2**exp``.

    The exponent puts the largest magnitude in [2**14, 2**15) mantissa units; rounding is
    dithered (:func:`_dither`). A row already on its grid comes back unchanged, because
    floor(integer + u) = integer for u in [0, 1) and the largest mantissa keeps the exponent.
    """
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ValueError("preference vector is not finite")
    peak = np.abs(v).max(axis=-1) if v.shape[-1] else np.zeros(v.shape[:-1], np.float32)
    _, peak_exp = np.frexp(peak.astype(np.float64))
    exp = np.where(peak > 0, peak_exp - 15, _EXP_MIN).clip(_EXP_MIN, _EXP_MAX)
    scaled = v.astype(np.float64) * np.exp2(-exp.astype(np.float64))[..., None]
    mantissa = np.floor(scaled + _dither(v, salt)).clip(-_MANTISSA_MAX, _MANTISSA_MAX)
    return mantissa.astype(np.int16), exp.astype(np.int8)


def _from_int16_block(mantissa: np.ndarray, exp: int) -> np.ndarray:
    # m * 2**exp is exact in float32: |m| < 2**15 and exp >= -128 keeps it on float32's grid
    return (mantissa.astype(np.float64) * math.ldexp(1.0, exp)).astype(np.float32)


def encode_vector(vector: Any, dtype: VectorDtype, salt: int = 0) -> tuple[np.ndarray, bytes]:
    """(the float32 vector that ``dtype`` storage holds for ``vector``, read-only; its
    stored bytes). ``salt`` varies the int16 rounding (see :func:`_dither`)."""
    v = np.array(vector, dtype=np.float32)
    if dtype == "int16":
        mantissa, exp = int16_block(v, salt)
        v = _from_int16_block(mantissa, int(exp))
        stored = exp.tobytes() + mantissa.tobytes()
    elif dtype == "float16":
        if not np.isfinite(v).all() or (np.abs(v) > np.finfo(np.float16).max).any():
            raise ValueError("preference vector out of float16 range (LOOPWISE_VECTOR_DTYPE)")
        half = v.astype(np.float16)
        v, stored = half.astype(np.float32), half.tobytes()
    else:
        stored = v.tobytes()
    v.flags.writeable = False
    return v, stored


_ZEROS: dict[tuple[int, str], tuple[np.ndarray, bytes]] = {}


def _zero_vector(dim: int, dtype: VectorDtype) -> tuple[np.ndarray, bytes]:
    """The stored zero vector (every new user starts with one): encoded once per dim."""
    key = (dim, dtype)
    if key not in _ZEROS:
        _ZEROS[key] = encode_vector(np.zeros(dim, dtype=np.float32), dtype)
    return _ZEROS[key]


def quantize(vector: Any, dtype: VectorDtype, salt: int = 0) -> np.ndarray:
    """The float32 vector that ``dtype`` storage holds for ``vector`` (read-only)."""
    return encode_vector(vector, dtype, salt)[0]


def _vector_size(dim: int, dtype: VectorDtype) -> int:
    return {"int16": 1 + 2 * dim, "float16": 2 * dim, "float32": 4 * dim}[dtype]


def ids_section_size(n_ids: int) -> int:
    """Bytes of layout 2's id section: base second, uint64 hashes, uint16 minute ages."""
    return 4 + 10 * n_ids if n_ids else 0


@dataclass
class PreferenceState:
    vector: np.ndarray
    version: int = 0
    interactions: int = 0
    last_ts: int = 0
    last_active: int = 0
    offsets: list[int] = field(default_factory=lambda: [-1, -1])
    recent_ids: list[int] = field(default_factory=list)
    window_opened: int = 0
    window_weight: float = 0.0
    window_sum: np.ndarray | None = None
    partition: int = 0
    segment: str | None = None
    recent_seen: list[int] = field(default_factory=list)  # arrival time (s) of each id

    def __setattr__(self, name: str, value: Any) -> None:
        # Quantize on assignment, so the value the worker publishes is the one it stores.
        if name == "vector" and value is not _DECODING:
            dtype = vector_dtype()
            value, stored = encode_vector(value, dtype, self._rounding_salt())
            # kept with the vector: pack() writes these bytes instead of encoding again
            object.__setattr__(self, "_stored", stored)
            object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, name, value)

    def _rounding_salt(self) -> int:
        """Differs between successive assignments of a user's vector, and is the same when a
        replay recomputes one: the offsets grow with every batch of events (assigned after
        :meth:`remember`), the version with every window close and segment move. (While
        ``__init__`` runs, the fields after ``vector`` are not set yet: 0.)"""
        d = self.__dict__
        offsets = d.get("offsets") or (0, 0)
        mixed = (
            d.get("version", 0) * 0x9E3779B97F4A7C15
            + offsets[0] * 0xC2B2AE3D27D4EB4F
            + offsets[1] * 0x165667B19E3779F9
            + d.get("interactions", 0)
        )
        return (mixed ^ (mixed >> 32)) & _UINT32_MAX

    @property
    def stored_dtype(self) -> VectorDtype:
        """The dtype the vector is stored in (the configured one once it was assigned)."""
        return self._dtype  # type: ignore[attr-defined,no-any-return]

    @classmethod
    def empty(cls, dim: int) -> PreferenceState:
        vec, stored = _zero_vector(dim, vector_dtype())
        state = cls._built(vec, 0, 0, 0, 0, [-1, -1], [], 0, 0.0, None, 0, None, [])
        state._set_stored_vector(vec, vector_dtype(), stored)
        return state

    @classmethod
    def _built(cls, *values: Any) -> PreferenceState:
        """An instance from its field values in order, without ``__init__``: the dataclass
        ``__init__`` goes through ``__setattr__`` once per field (13 Python calls), a third
        of the cost of decoding a value. The caller sets the vector's storage after."""
        state = cls.__new__(cls)
        state.__dict__.update(zip(_FIELD_NAMES, values, strict=True))
        return state

    @staticmethod
    def assign_vectors(states: list[PreferenceState], vectors: np.ndarray) -> None:
        """``states[r].vector = vectors[r]`` for every row, quantized in one vectorized pass
        (the batch path: per-vector numpy calls cost more than the arithmetic). Gives the
        same vectors and bytes as assigning them one by one."""
        if not states:
            return
        dtype = vector_dtype()
        v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(states), -1)
        if dtype == "int16":
            salts = np.array([s._rounding_salt() for s in states], dtype=np.uint64)
            mantissa, exp = int16_block(v, salts)
            values = mantissa.astype(np.float64) * np.exp2(exp.astype(np.float64))[:, None]
            values = values.astype(np.float32)
            stored = [exp[r : r + 1].tobytes() + mantissa[r].tobytes() for r in range(len(v))]
        elif dtype == "float16":
            if not np.isfinite(v).all() or (np.abs(v) > np.finfo(np.float16).max).any():
                raise ValueError("preference vector out of float16 range (LOOPWISE_VECTOR_DTYPE)")
            half = v.astype(np.float16)
            values = half.astype(np.float32)
            stored = [half[r].tobytes() for r in range(len(v))]
        else:
            values = v.copy()
            stored = [values[r].tobytes() for r in range(len(v))]
        values.flags.writeable = False
        for r, state in enumerate(states):
            state._set_stored_vector(values[r], dtype, stored[r])

    @property
    def has_window(self) -> bool:
        return self.window_sum is not None

    def pack(self) -> bytes:
        """Layout 2 (see the module docstring)."""
        dtype = self.stored_dtype
        segment = _NO_SEGMENT_CODE if self.segment is None else SEGMENTS.index(self.segment)
        flags = (
            _FLAG_NEW_LAYOUT
            | (_FLAG_WINDOW if self.window_sum is not None else 0)
            | (VECTOR_DTYPES.index(dtype) << 1)
            | (segment << 3)
        )
        n_ids = len(self.recent_ids)
        header = HEADER.pack(
            LAYOUT, self.partition, min(self.interactions, _UINT32_MAX), flags, n_ids,
            self.version, self.last_ts, min(max(self.last_active // 1000, 0), _UINT32_MAX),
            self.offsets[0], self.offsets[1],
        )  # fmt: skip
        parts = [header]
        if n_ids:
            # one arrival time per id (0 = unknown), so the layout never goes out of step;
            # struct rather than numpy: a handful of ids per user, where numpy's per-call
            # cost was most of pack()'s time
            seen = [int(t) for t in self.recent_seen[:n_ids]]
            seen += [0] * (n_ids - len(seen))
            base = max(seen)
            ages = [min(max((base - t) // 60, 0), _AGE_MAX_MIN) for t in seen]  # towards newer
            parts.append(
                struct.pack(
                    f"<I{n_ids}Q{n_ids}H", min(max(base, 0), _UINT32_MAX), *self.recent_ids, *ages
                )
            )
        parts.append(self._stored)  # type: ignore[attr-defined]
        if self.window_sum is not None:
            parts.append(_WINDOW_META.pack(self.window_opened, self.window_weight))
            parts.append(np.asarray(self.window_sum, dtype=np.float32).tobytes())
        return b"".join(parts)

    @staticmethod
    def partition_of(blob: bytes) -> int:
        """The partition a packed value lives on, read from its header alone."""
        if len(blob) >= 8 and blob[7] & _FLAG_NEW_LAYOUT:
            return int.from_bytes(blob[1:3], "little")
        return int(_HEADER_V1.unpack_from(blob)[8])

    @classmethod
    def unpack(cls, blob: bytes) -> PreferenceState:
        """Either layout; layout 2 has bit 7 of byte 7 set (see the module docstring)."""
        if len(blob) >= 8 and blob[7] & _FLAG_NEW_LAYOUT:
            return cls._unpack_v2(blob)
        return cls._unpack_v1(blob)

    @classmethod
    def _unpack_v2(cls, blob: bytes) -> PreferenceState:
        (layout, partition, interactions, flags, n_ids, version, last_ts, last_active_s,
         off_e, off_i) = HEADER.unpack_from(blob)  # fmt: skip
        if layout != LAYOUT:
            raise ValueError(f"unknown preference state layout {layout}")
        dtype = VECTOR_DTYPES[(flags >> 1) & 0x3]
        has_window = bool(flags & _FLAG_WINDOW)
        segment = (flags >> 3) & 0x7
        pos = HEADER.size
        ids: list[int] = []
        seen: list[int] = []
        if n_ids:
            fields = struct.unpack_from(f"<I{n_ids}Q{n_ids}H", blob, pos)
            base = fields[0]
            ids = list(fields[1 : 1 + n_ids])
            seen = [base - 60 * age for age in fields[1 + n_ids :]]
            pos += ids_section_size(n_ids)
        # dim is implied by what is left: the vector and, with a window, 16 B + 4 B per dim
        rest = len(blob) - pos - (_WINDOW_META.size if has_window else 0)
        per_dim = _vector_size(1, dtype) - _vector_size(0, dtype) + (4 if has_window else 0)
        dim, extra = divmod(rest - _vector_size(0, dtype), per_dim)
        if extra or dim < 0:
            raise ValueError(f"preference state of {len(blob)} bytes does not fit its header")
        if dtype == "int16":
            exp = int(np.frombuffer(blob, dtype=np.int8, count=1, offset=pos)[0])
            mantissa = np.frombuffer(blob, dtype=np.int16, count=dim, offset=pos + 1)
            vec = _from_int16_block(mantissa, exp)
        elif dtype == "float16":
            vec = np.frombuffer(blob, dtype=np.float16, count=dim, offset=pos).astype(np.float32)
        else:
            vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
        stored = blob[pos : pos + _vector_size(dim, dtype)]
        pos += len(stored)
        opened, weight, window = 0, 0.0, None
        if has_window:
            opened, weight = _WINDOW_META.unpack_from(blob, pos)
            window = np.frombuffer(
                blob, dtype=np.float32, count=dim, offset=pos + _WINDOW_META.size
            ).copy()
        state = cls._built(
            vec, version, interactions, last_ts, last_active_s * 1000,
            [off_e, off_i], ids, opened, weight, window, partition,
            None if segment == _NO_SEGMENT_CODE else SEGMENTS[segment], seen,
        )  # fmt: skip
        state._set_stored_vector(vec, dtype, stored)
        return state

    @classmethod
    def _unpack_v1(cls, blob: bytes) -> PreferenceState:
        (version, interactions, last_ts, last_active, off_e, off_i, opened, weight,
         partition, segment, dim, n_ids, has_window) = _HEADER_V1.unpack_from(blob)  # fmt: skip
        pos = _HEADER_V1.size
        ids = np.frombuffer(blob, dtype=np.uint64, count=n_ids, offset=pos).tolist()
        pos += 8 * n_ids
        vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
        pos += 4 * dim
        seen = np.frombuffer(blob, dtype=np.uint32, count=n_ids, offset=pos).tolist()
        pos += 4 * n_ids
        window = (
            np.frombuffer(blob, dtype=np.float32, count=dim, offset=pos).copy()
            if has_window
            else None
        )
        state = cls._built(
            vec, version, interactions, last_ts, last_active,
            [off_e, off_i], ids, opened, weight, window, partition,
            None if segment == NO_SEGMENT else SEGMENTS[segment], seen,
        )  # fmt: skip
        state._set_stored_vector(vec, "float32", vec.tobytes())
        return state

    def _set_stored_vector(self, vec: np.ndarray, dtype: VectorDtype, stored: bytes) -> None:
        # Values read from a blob are already on their dtype's grid: keep them and that
        # dtype as they are (no re-quantization, no silent change of a published vector).
        vec.flags.writeable = False
        object.__setattr__(self, "vector", vec)
        object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, "_stored", stored)

    def seen(self, topic_slot: int, offset: int, id_hash: int) -> bool:
        """True when this event was already applied (by offset or by event id)."""
        return offset <= self.offsets[topic_slot] or id_hash in self.recent_ids

    def remember(
        self, topic_slot: int, offset: int, id_hash: int, arrived_s: int, min_ids: int,
        horizon_s: float,
    ) -> None:  # fmt: skip
        """Record an applied event; forget ids older than the horizon beyond the last
        ``min_ids``."""
        self.offsets[topic_slot] = max(self.offsets[topic_slot], offset)
        self.recent_ids.append(id_hash)
        self.recent_seen.append(arrived_s)
        self._expire(arrived_s - horizon_s, min_ids)

    def prune(self, now_s: float, horizon_s: float, min_ids: int = 0) -> bool:
        """Forget ids that arrived more than ``horizon_s`` before ``now_s`` (beyond the last
        ``min_ids``), for users who went quiet; True when any id was dropped. Touches
        neither the version nor the vector: the value is re-written, nothing is published."""
        return self._expire(now_s - horizon_s, min_ids) > 0

    def _expire(self, cutoff_s: float, min_ids: int) -> int:
        drop = 0
        while len(self.recent_ids) - drop > min_ids and self.recent_seen[drop] < cutoff_s:
            drop += 1
        if drop:
            del self.recent_ids[:drop], self.recent_seen[:drop]
        return drop

    def event_version(self) -> int:
        """The version after applying events: grows by 1024 per applied offset, leaving
        room for timer-driven changes (window closes, segment moves) in between."""
        return ((self.offsets[0] + 1) + (self.offsets[1] + 1)) << 10

    def add_to_window(self, signal_sum: np.ndarray, weight: float, now_ms: int) -> None:
        """Accumulate implicit signals (Σ w·s·x and Σ w) into the open window."""
        if self.window_sum is None:
            self.window_sum = np.zeros(self.vector.shape, dtype=np.float32)
            self.window_weight = 0.0
            self.window_opened = now_ms
        self.window_sum = self.window_sum + signal_sum.astype(np.float32)
        self.window_weight += weight

    def close_window(self) -> tuple[np.ndarray, float] | None:
        """The window's (Σ w·s·x, Σ w), emptied; None when no window is open."""
        if self.window_sum is None:
            return None
        closed = (self.window_sum.astype(np.float64), self.window_weight)
        self.window_sum, self.window_weight, self.window_opened = None, 0.0, 0
        return closed


_FIELD_NAMES = tuple(f.name for f in fields(PreferenceState))

"""Windowed analytics of the ``insights`` agent: mergeable per-window summaries (pure, numpy).

One table value per (component, window): the window ``[start, start + length)`` of event
time (the event's ``ts``) holds, per *group*, summaries that add up — so any range of
windows (a rolling day, a report's week, a ticket's before/after windows) is the sum of its
windows, and percentiles are computed on read:

* groups: ``all`` and one per label value of the dimensions ``method``, ``persona``,
  ``device`` and ``strategy`` (``method=website_scrape``). At most ``max_groups`` values per
  dimension and window; further values are counted in ``<dim>=(other)``.
* decisions (topic ``decisions``), per group: count, successes, success-indicator count and
  hits (conversion), quality count / sum / sum of squares, confidence sum, latency sum / sum
  of squares and a latency histogram with fixed log-spaced bins (:data:`LATENCY_EDGES_MS`,
  32 per decade from 1 ms to 10^8 ms: a percentile read from it is within about 3.7 % of
  the exact value), stored sparsely.
* metrics (topic ``metrics``), per metric name and group (dimensions named like the ones
  above): count, sum, sum of squares, min, max.

Idempotency (at-least-once delivery): each value keeps the last applied source offset per
input topic and the hashes of its most recent event ids. An event always falls into the
same window (its ``ts`` decides), so a replay from an older offset, or the same event
produced again at a new offset, is recognised in that window's value. Only the last
``dedupe_ids`` ids per window are kept; offset replays are always recognised.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

__all__ = [
    "DECISION_FIELDS",
    "DIMENSIONS",
    "LATENCY_EDGES_MS",
    "METRIC_FIELDS",
    "TOPIC_SLOTS",
    "WindowState",
    "apply_decisions",
    "apply_metrics",
    "event_id_hash",
    "group_values",
    "histogram_quantiles",
    "latency_bins",
    "merge_stats",
    "window_start",
]

TOPIC_SLOTS = {"decisions": 0, "metrics": 1}
DIMENSIONS = ("method", "persona", "device", "strategy")
ALL = "all"

# Decision summary fields, in the order of the stored lists.
DECISION_FIELDS = (
    "n",
    "success",
    "si_n",
    "si",
    "q_n",
    "q_sum",
    "q_sq",
    "conf_sum",
    "conf_sq",
    "lat_sum",
    "lat_sq",
)
_D = {name: i for i, name in enumerate(DECISION_FIELDS)}
METRIC_FIELDS = ("n", "sum", "sq", "min", "max")

BINS_PER_DECADE = 32
DECADES = 8
#: Upper edges of the latency bins in ms; bin 0 is [0, 1 ms), bin k is
#: [EDGES[k-1], EDGES[k]), the last bin (index len(EDGES)) holds values >= 10^8 ms.
LATENCY_EDGES_MS = 10.0 ** (np.arange(DECADES * BINS_PER_DECADE + 1) / BINS_PER_DECADE)
N_BINS = LATENCY_EDGES_MS.size + 1


def event_id_hash(event_id: str) -> int:
    """64-bit hash of an event id (blake2b, stable across processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def window_start(ts_ms: int, length_ms: int) -> int:
    """Start of the window holding ``ts_ms`` (windows are aligned to the epoch).

    >>> window_start(1_799_999, 1_800_000), window_start(1_800_000, 1_800_000)
    (0, 1800000)
    """
    return ts_ms - ts_ms % length_ms


def latency_bins(ms: np.ndarray) -> np.ndarray:
    """Histogram bin of each latency (ms), shape of ``ms``.

    >>> latency_bins(np.array([0.5, 1.0, 10.0, 1e9])).tolist()
    [0, 1, 33, 257]
    """
    return np.searchsorted(LATENCY_EDGES_MS, np.asarray(ms, dtype=float), side="right")


def _bin_bounds(k: int) -> tuple[float, float]:
    if k <= 0:
        return 0.0, 1.0
    if k >= LATENCY_EDGES_MS.size:
        top = float(LATENCY_EDGES_MS[-1])
        return top, top
    return float(LATENCY_EDGES_MS[k - 1]), float(LATENCY_EDGES_MS[k])


def histogram_quantiles(
    hist: Mapping[int, int] | Mapping[str, int], qs: Sequence[float]
) -> list[float]:
    """Quantiles of a sparse latency histogram (``{bin: count}``), NaN when empty.

    The rank ``q * N`` is located in the cumulative counts and interpolated inside its bin
    geometrically (linearly in the first bin), so the error is bounded by the bin width.

    >>> b, c = np.unique(latency_bins(np.arange(1.0, 101.0)), return_counts=True)
    >>> h = dict(zip(b.tolist(), c.tolist()))
    >>> bool(np.allclose(histogram_quantiles(h, [0.5, 0.99]), [50, 99], rtol=0.037))
    True
    """
    merged: dict[int, float] = {}
    for k, c in hist.items():
        merged[int(k)] = merged.get(int(k), 0.0) + float(c)
    if not merged:
        return [math.nan for _ in qs]
    bins = np.array(sorted(merged), dtype=np.int64)
    counts = np.array([merged[k] for k in bins.tolist()])
    cum = np.cumsum(counts)
    total = cum[-1]
    if total <= 0:
        return [math.nan for _ in qs]
    out = []
    for q in qs:
        target = min(max(q, 0.0), 1.0) * total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, bins.size - 1)
        before = cum[i - 1] if i > 0 else 0.0
        frac = 0.0 if counts[i] == 0 else min(1.0, max(0.0, (target - before) / counts[i]))
        lo, hi = _bin_bounds(int(bins[i]))
        if lo <= 0 or hi == lo:
            out.append(float(lo + frac * (hi - lo)))
        else:
            out.append(float(lo * (hi / lo) ** frac))
    return out


def group_values(stats: Mapping[str, Any], prefix: str) -> list[str]:
    """Labels of one dimension present in a window's decision groups (``method``)."""
    head = prefix + "="
    return sorted(g[len(head) :] for g in stats.get("decisions", {}) if g.startswith(head))


@dataclass
class WindowState:
    """The table value of one (component, window)."""

    component: str
    start: int
    end: int
    partition: int = 0
    version: int = 0
    offsets: list[int] = field(default_factory=lambda: [-1, -1])
    ids: list[int] = field(default_factory=list)
    first_ts: int = 0
    last_ts: int = 0
    updated_wall: int = 0
    decisions: dict[str, list[float]] = field(default_factory=dict)
    hist: dict[str, dict[int, int]] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    overflow: int = 0

    @property
    def key(self) -> str:
        return f"{self.component}|{self.start}"

    # ---------------------------------------------------------------- idempotency

    def seen(self, slot: int, offset: int, id_hash: int) -> bool:
        """True when this event (offset or id) was already applied to the window."""
        return offset <= self.offsets[slot] or id_hash in self.ids

    def remember(self, slot: int, offset: int, id_hash: int, max_ids: int) -> None:
        self.offsets[slot] = max(self.offsets[slot], offset)
        self.ids.append(id_hash)
        if len(self.ids) > max_ids:
            del self.ids[: len(self.ids) - max_ids]

    # ---------------------------------------------------------------- groups

    def group_key(self, dim: str, label: str, max_groups: int, table: Mapping[str, Any]) -> str:
        key = f"{dim}={label}"
        if key in table:
            return key
        present = sum(1 for g in table if g.startswith(dim + "=") and not g.endswith("=(other)"))
        if present >= max_groups:
            self.overflow += 1
            return f"{dim}=(other)"
        return key

    # ---------------------------------------------------------------- serialisation

    def stats(self) -> dict[str, Any]:
        """The analytics part (what Redis, PostgreSQL and reports see)."""
        return {
            "decisions": self.decisions,
            "hist": {g: {str(b): c for b, c in h.items()} for g, h in self.hist.items()},
            "metrics": self.metrics,
            "overflow": self.overflow,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }

    def pack(self) -> bytes:
        ids = base64.b64encode(np.asarray(self.ids, dtype=np.uint64).tobytes()).decode()
        return orjson.dumps(
            {
                "v": 1,
                "component": self.component,
                "start": self.start,
                "end": self.end,
                "partition": self.partition,
                "version": self.version,
                "offsets": self.offsets,
                "ids": ids,
                "updated_wall": self.updated_wall,
                **self.stats(),
            }
        )

    @classmethod
    def unpack(cls, blob: bytes) -> WindowState:
        d = orjson.loads(blob)
        if d.get("v") != 1:
            raise ValueError(f"unsupported window value version {d.get('v')}")
        ids = np.frombuffer(base64.b64decode(d["ids"]), dtype=np.uint64).tolist()
        return cls(
            component=d["component"],
            start=d["start"],
            end=d["end"],
            partition=d["partition"],
            version=d["version"],
            offsets=list(d["offsets"]),
            ids=ids,
            first_ts=d["first_ts"],
            last_ts=d["last_ts"],
            updated_wall=d["updated_wall"],
            decisions=d["decisions"],
            hist={g: {int(b): c for b, c in h.items()} for g, h in d["hist"].items()},
            metrics=d["metrics"],
            overflow=d.get("overflow", 0),
        )


def _codes(
    states: Sequence[WindowState],
    owner: Sequence[int],
    labels: Mapping[str, Sequence[str | None]],
    max_groups: int,
    table_of: Any,
) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
    """(state, group) pairs and, per (event, group) row, its pair code and event index."""
    pair_code: dict[tuple[int, str], int] = {}
    codes: list[int] = []
    events: list[int] = []
    for i, s in enumerate(owner):
        st = states[s]
        table = table_of(st, i)
        groups = [ALL]
        for dim in DIMENSIONS:
            label = labels[dim][i]
            if label is not None:
                groups.append(st.group_key(dim, label, max_groups, table))
                table.setdefault(groups[-1], None)  # reserve the slot for the cap count
        for g in groups:
            code = pair_code.setdefault((s, g), len(pair_code))
            codes.append(code)
            events.append(i)
    pairs = sorted(pair_code, key=pair_code.__getitem__)
    return pairs, np.asarray(codes, dtype=np.int64), np.asarray(events, dtype=np.int64)


def apply_decisions(
    states: Sequence[WindowState],
    owner: Sequence[int],
    payloads: Sequence[Mapping[str, Any]],
    max_groups: int,
) -> None:
    """Add decision events to their windows (vectorised over the batch).

    Parameters
    ----------
    states : sequence of WindowState
        Windows touched by the batch.
    owner : sequence of int, shape (n,)
        Index into ``states`` of each event's window.
    payloads : sequence of dict, shape (n,)
        Validated ``decisions`` events (already de-duplicated).
    max_groups : int
        Cap of distinct labels per dimension and window.
    """
    n = len(payloads)
    if n == 0:
        return
    labels = {d: [p.get(d) for p in payloads] for d in DIMENSIONS}
    pairs, codes, ev = _codes(states, owner, labels, max_groups, lambda st, i: st.decisions)
    success = np.array([1.0 if p["success"] else 0.0 for p in payloads])
    si = np.array([float(p.get("success_indicator", np.nan)) for p in payloads])
    quality = np.array([float(p.get("quality_score", np.nan)) for p in payloads])
    conf = np.array([float(p["confidence"]) for p in payloads])
    lat = np.array([float(p["processing_time_ms"]) for p in payloads])
    has_si, has_q = np.isfinite(si), np.isfinite(quality)
    si0, q0 = np.where(has_si, si, 0.0), np.where(has_q, quality, 0.0)
    columns = {
        "n": np.ones(n),
        "success": success,
        "si_n": has_si.astype(float),
        "si": si0,
        "q_n": has_q.astype(float),
        "q_sum": q0,
        "q_sq": q0 * q0,
        "conf_sum": conf,
        "conf_sq": conf * conf,
        "lat_sum": lat,
        "lat_sq": lat * lat,
    }
    m = len(pairs)
    sums = np.stack(
        [np.bincount(codes, weights=columns[f][ev], minlength=m) for f in DECISION_FIELDS], axis=1
    )
    for code, (s, g) in enumerate(pairs):
        row = states[s].decisions.get(g) or [0.0] * len(DECISION_FIELDS)
        states[s].decisions[g] = [a + float(b) for a, b in zip(row, sums[code], strict=True)]
    bins = latency_bins(lat)
    combined = codes * N_BINS + bins[ev]
    uniq, counts = np.unique(combined, return_counts=True)
    for c, k in zip(uniq.tolist(), counts.tolist(), strict=True):
        s, g = pairs[c // N_BINS]
        h = states[s].hist.setdefault(g, {})
        b = c % N_BINS
        h[b] = h.get(b, 0) + int(k)


def apply_metrics(
    states: Sequence[WindowState],
    owner: Sequence[int],
    payloads: Sequence[Mapping[str, Any]],
    max_groups: int,
) -> None:
    """Add metric samples to their windows, per metric name and group (vectorised)."""
    n = len(payloads)
    if n == 0:
        return
    dims = [p.get("dimensions") or {} for p in payloads]
    labels = {d: [x.get(d) for x in dims] for d in DIMENSIONS}
    names = [p["metric"] for p in payloads]
    pairs, codes, ev = _codes(
        states, owner, labels, max_groups, lambda st, i: st.metrics.setdefault(names[i], {})
    )
    # A pair is (state, group); the metric name comes from the event: split per name.
    name_arr = np.array(names, dtype=object)[ev]
    values = np.array([float(p["value"]) for p in payloads])[ev]
    keys: dict[tuple[int, str, str], int] = {}
    kc = np.empty(codes.size, dtype=np.int64)
    for r, (code, name) in enumerate(zip(codes.tolist(), name_arr.tolist(), strict=True)):
        s, g = pairs[code]
        kc[r] = keys.setdefault((s, name, g), len(keys))
    m = len(keys)
    cnt = np.bincount(kc, minlength=m)
    tot = np.bincount(kc, weights=values, minlength=m)
    sq = np.bincount(kc, weights=values * values, minlength=m)
    lo = np.full(m, np.inf)
    hi = np.full(m, -np.inf)
    np.minimum.at(lo, kc, values)
    np.maximum.at(hi, kc, values)
    for (s, name, g), c in keys.items():
        table = states[s].metrics.setdefault(name, {})
        row = table.get(g)
        if row is None:
            row = [0.0, 0.0, 0.0, math.inf, -math.inf]
        table[g] = [
            row[0] + float(cnt[c]),
            row[1] + float(tot[c]),
            row[2] + float(sq[c]),
            min(row[3], float(lo[c])),
            max(row[4], float(hi[c])),
        ]


def merge_stats(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of window stats (``WindowState.stats()`` dicts): the stats of their union."""
    decisions: dict[str, list[float]] = {}
    hist: dict[str, dict[str, int]] = {}
    metrics: dict[str, dict[str, list[float]]] = {}
    overflow = 0
    first, last = math.inf, 0
    for st in items:
        for g, row in st.get("decisions", {}).items():
            if row is None:
                continue
            cur = decisions.get(g)
            decisions[g] = (
                list(row) if cur is None else [a + b for a, b in zip(cur, row, strict=True)]
            )
        for g, h in st.get("hist", {}).items():
            dst = hist.setdefault(g, {})
            for b, c in h.items():
                dst[str(b)] = dst.get(str(b), 0) + int(c)
        for name, groups in st.get("metrics", {}).items():
            dst_m = metrics.setdefault(name, {})
            for g, row in groups.items():
                if row is None:
                    continue
                cur = dst_m.get(g)
                dst_m[g] = (
                    list(row)
                    if cur is None
                    else [cur[0] + row[0], cur[1] + row[1], cur[2] + row[2],
                          min(cur[3], row[3]), max(cur[4], row[4])]
                )  # fmt: skip
        overflow += int(st.get("overflow", 0))
        if st.get("first_ts"):
            first = min(first, st["first_ts"])
        last = max(last, st.get("last_ts", 0))
    return {
        "decisions": decisions,
        "hist": hist,
        "metrics": metrics,
        "overflow": overflow,
        "first_ts": 0 if first == math.inf else int(first),
        "last_ts": int(last),
    }


# --------------------------------------------------------------------------- reading

#: Metrics derived from decision logs: rates (successes / n), means and latency quantiles.
RATE_METRICS = {"success_rate", "error_rate", "conversion"}
MEAN_METRICS = {"quality", "confidence", "latency_mean"}
QUANTILE_METRICS = {"latency_p50": 0.50, "latency_p95": 0.95, "latency_p99": 0.99}
DECISION_METRICS = ("decisions", *sorted(RATE_METRICS), *sorted(MEAN_METRICS),
                    *QUANTILE_METRICS)  # fmt: skip


def decision_summary(stats: Mapping[str, Any], group: str, metric: str) -> tuple[int, float, float]:
    """``(n, total, total_squares)`` of a decision metric in one group (rates: 0/1 values).

    Quantile metrics have no additive summary; use ``latency_mean`` for them.
    """
    row = (stats.get("decisions") or {}).get(group)
    if not row:
        return 0, 0.0, 0.0
    d = dict(zip(DECISION_FIELDS, row, strict=False))
    n = int(d["n"])
    if metric == "success_rate":
        return n, d["success"], d["success"]
    if metric == "error_rate":
        return n, n - d["success"], n - d["success"]
    if metric == "conversion":
        return int(d["si_n"]), d["si"], d["si"]
    if metric == "quality":
        return int(d["q_n"]), d["q_sum"], d["q_sq"]
    if metric == "confidence":
        return n, d["conf_sum"], d.get("conf_sq", 0.0)
    if metric in ("latency_mean", "processing_time_ms"):
        return n, d["lat_sum"], d["lat_sq"]
    raise KeyError(f"no additive summary for decision metric {metric!r}")


def metric_summary(stats: Mapping[str, Any], group: str, metric: str) -> tuple[int, float, float]:
    """``(n, total, total_squares)`` of any additive metric: decision-derived or from
    the ``metrics`` topic (decision-derived names win when the window has decisions)."""
    if metric in RATE_METRICS or metric in MEAN_METRICS:
        n, total, sq = decision_summary(stats, group, metric)
        if n:
            return n, total, sq
    row = ((stats.get("metrics") or {}).get(metric) or {}).get(group)
    if not row:
        return 0, 0.0, 0.0
    return int(row[0]), float(row[1]), float(row[2])


def window_values(stats: Mapping[str, Any], group: str = ALL) -> dict[str, tuple[float, int]]:
    """Every metric of one group in one window (or merged range): ``metric → (value, n)``.

    Decision-derived: ``decisions`` (count), ``success_rate``, ``error_rate``,
    ``conversion`` (success-indicator rate), ``quality``, ``confidence``, ``latency_mean``
    and ``latency_p50/p95/p99`` (ms, from the histogram). Metric samples: their mean per
    metric name (a decision-derived name takes precedence).
    """
    out: dict[str, tuple[float, int]] = {}
    for name, groups in (stats.get("metrics") or {}).items():
        row = groups.get(group)
        if row and row[0] > 0:
            out[name] = (float(row[1] / row[0]), int(row[0]))
    row = (stats.get("decisions") or {}).get(group)
    if row and row[0] > 0:
        n = int(row[0])
        out["decisions"] = (float(n), n)
        for metric in (*RATE_METRICS, *MEAN_METRICS):
            k, total, _ = decision_summary(stats, group, metric)
            if k > 0:
                out[metric] = (float(total / k), k)
        hist = (stats.get("hist") or {}).get(group) or {}
        quantiles = histogram_quantiles(hist, list(QUANTILE_METRICS.values()))
        for metric, value in zip(QUANTILE_METRICS, quantiles, strict=True):
            if math.isfinite(value):
                out[metric] = (value, n)
    return out


def groups_of(stats: Mapping[str, Any]) -> set[str]:
    """Every group present in a window's decisions or metrics."""
    groups = {g for g, row in (stats.get("decisions") or {}).items() if row}
    for table in (stats.get("metrics") or {}).values():
        groups.update(g for g, row in table.items() if row)
    return groups


_NOT_TRENDED = frozenset({"decisions", "error_rate"})


def build_series(
    windows: Sequence[tuple[int, Mapping[str, Any]]],
    starts: Sequence[int],
    min_samples: int,
) -> dict[tuple[str, str], np.ndarray]:
    """Per (group, metric) the values over ``starts`` (NaN: no window or too few samples).

    Parameters
    ----------
    windows : sequence of (start, stats)
        Closed windows of one component.
    starts : sequence of int, shape (k,)
        Window starts of the series, in time order.
    min_samples : int
        A window's value counts only with at least this many samples.

    Returns
    -------
    dict
        ``(group, metric) → ndarray of shape (k,)``. The count ``decisions`` (volume is not
        a quality trend) and ``error_rate`` (the mirror of ``success_rate``) are left out.
    """
    by_start = dict(windows)
    index = {s: i for i, s in enumerate(starts)}
    series: dict[tuple[str, str], np.ndarray] = {}
    for start, stats in by_start.items():
        i = index.get(start)
        if i is None:
            continue
        for group in groups_of(stats):
            for metric, (value, n) in window_values(stats, group).items():
                if metric in _NOT_TRENDED or n < min_samples:
                    continue
                arr = series.get((group, metric))
                if arr is None:
                    arr = series[(group, metric)] = np.full(len(starts), np.nan)
                arr[i] = value
    return series

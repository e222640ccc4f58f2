"""Memory of 1M user preference vectors as the worker holds them, against a numpy array.

Run with ``python -m bench.bench_memory [--users N] [--dim D] [--json]`` (no services).

The worker keeps each user's :class:`agents.preferences.state.PreferenceState` packed into
bytes in the ``preferences`` table; faust's memory store is a plain dict, key ``str`` →
value ``bytes``, plus a second dict, key → partition (``Store._key_partition``, sharing the
key objects): faust fills it for keys it recovers from the changelog, and
:mod:`streams.state` for keys written live, so that a rebalance drops every key of a
partition that moved away.

Each case builds that dict for N users (default 1 000 000, ``LOOPWISE_ITEM_DIM``-dimensional
vectors, 32 by default) in a fresh subprocess and measures it twice: Python allocations
traced by ``tracemalloc`` (the figure compared with the target) and the process RSS delta.
The baseline, measured the same way in the same run, is a plain numpy ``(N, D)`` float32
array -- the vectors alone, nothing per user. Target: <= 300 MB per worker for 1M
users x 32 dimensions.

Cases (the value layouts are described in :mod:`agents.preferences.state`; layout 2 with
the default ``LOOPWISE_VECTOR_DTYPE=int16`` unless named):

* ``quiet (ids pruned)``: the steady state of a user quiet for longer than the
  de-duplication horizon: its ids were pruned (``LOOPWISE_DEDUPE_IDS`` = 0);
* ``seen once (1 id)``: a user seen once, within the horizon (one id hash and arrival);
* ``quiet + open window``: an implicit-feedback window open (16 B + D float32);
* ``quiet, no partition index``: without the key → partition dict (how live-written keys
  were held before it was recorded for them), for comparison;
* ``quiet, float16`` / ``quiet, float32``: the other ``LOOPWISE_VECTOR_DTYPE`` options;
* ``layout 1, 16 ids``: the previous layout as older workers wrote it (float32 vector, 16
  ids kept beyond the horizon), for comparison;
* ``quiet + guard state``: a user active within the last hour also has the guard's state
  (``g|<user>`` in the same table, orjson, here with its full 32-event history); the guard
  drops it after an hour of silence, so it scales with the users active in the last hour.

A per-user byte breakdown (value fields, ``bytes`` object header, allocator rounding, key
``str``, dict slots) is printed for the main case so the parts worth shrinking are visible.
This is a benchmark: nothing asserts on the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from agents.preferences.state import (
    _HEADER_V1,
    HEADER,
    PreferenceState,
    ids_section_size,
    int16_block,
    set_vector_dtype,
)
from streams.config import REPO_ROOT, Settings

TARGET_MB = 300.0
MB = 1_000_000
_QUIET: dict[str, Any] = {"ids": 0, "window": False, "partition_index": True, "dtype": "int16"}
CASES: dict[str, dict[str, Any]] = {
    "quiet (ids pruned)": _QUIET,
    "seen once (1 id)": {**_QUIET, "ids": 1},
    "quiet + open window": {**_QUIET, "window": True},
    "quiet, no partition index": {**_QUIET, "partition_index": False},
    "quiet, float16": {**_QUIET, "dtype": "float16"},
    "quiet, float32": {**_QUIET, "dtype": "float32"},
    "layout 1, 16 ids": {**_QUIET, "ids": 16, "dtype": "float32", "layout": 1},
    "quiet + guard state": {**_QUIET, "guard": True},
}
MAIN_CASE = "quiet (ids pruned)"


def user_key(i: int) -> str:
    return f"user-{i:07d}"


def template_state(dim: int, ids: int, window: bool) -> PreferenceState:
    rng = np.random.default_rng(7)
    state = PreferenceState(
        vector=rng.normal(size=dim).astype(np.float32) * 0.3,
        version=123 << 10,
        interactions=40,
        last_ts=1_700_000_000_000,
        last_active=1_700_000_000_000,
        offsets=[1234, 5678],
        recent_ids=[int(x) for x in rng.integers(0, 2**63, ids)],
        partition=3,
        segment="regular",
        recent_seen=[1_700_000_000 + i for i in range(ids)],
    )
    if window:
        state.window_sum = rng.normal(size=dim).astype(np.float32)
        state.window_weight = 1.5
        state.window_opened = 1_700_000_000_000
    return state


def pack_v1(state: PreferenceState) -> bytes:
    """Layout 1, as workers before layout 2 wrote it (for the comparison row)."""
    header = _HEADER_V1.pack(
        state.version, state.interactions, state.last_ts, state.last_active,
        state.offsets[0], state.offsets[1], state.window_opened, state.window_weight,
        state.partition, 2, state.vector.shape[0], len(state.recent_ids), int(state.has_window),
    )  # fmt: skip
    return b"".join([
        header, np.asarray(state.recent_ids, dtype=np.uint64).tobytes(),
        np.asarray(state.vector, dtype=np.float32).tobytes(),
        np.asarray(state.recent_seen, dtype=np.uint32).tobytes(),
    ])  # fmt: skip


def vector_section(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """(n, bytes) of each vector as layout 2 stores it in ``dtype``."""
    if dtype == "int16":
        mantissa, exp = int16_block(vectors)
        return np.concatenate([exp.view(np.uint8)[:, None], mantissa.view(np.uint8)], axis=1)
    return np.ascontiguousarray(vectors.astype(dtype)).view(np.uint8)


def packed_values(
    n: int, dim: int, ids: int, window: bool, dtype: str, layout: int = 2
) -> list[bytes]:
    """``n`` distinct packed values: the template's bytes with each user's own vector.

    Building the bytes from one numpy buffer is ~30x faster than ``pack()`` per user and
    gives byte-identical layouts (checked on the first users).
    """
    set_vector_dtype(dtype)
    template = template_state(dim, ids, window)
    pack = pack_v1 if layout == 1 else PreferenceState.pack
    blob = pack(template)
    rows = np.frombuffer(blob, dtype=np.uint8)[None, :].repeat(n, axis=0)
    vectors = (np.random.default_rng(11).normal(size=(n, dim)) * 0.3).astype(np.float32)
    if layout == 1:
        vec_at, section = _HEADER_V1.size + 8 * ids, vectors.view(np.uint8)
    else:
        # on the dtype's grid already, as the worker holds them (quantized on assignment)
        if dtype == "int16":
            mantissa, exp = int16_block(vectors)
            vectors = (mantissa * np.exp2(exp.astype(np.float64))[:, None]).astype(np.float32)
        elif dtype == "float16":
            vectors = vectors.astype(np.float16).astype(np.float32)
        vec_at, section = HEADER.size + ids_section_size(ids), vector_section(vectors, dtype)
    rows[:, vec_at : vec_at + section.shape[1]] = section
    values = [row.tobytes() for row in rows]
    del rows
    for i in range(3):
        template.vector = vectors[i]
        assert values[i] == pack(template), "layout drifted from PreferenceState.pack()"
    return values


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def guard_blob(events: int = 32) -> bytes:
    """A guard state (agents.preferences.guard) after ``events`` human-paced events."""
    from agents.learning.spam import Guard, GuardState, item_key
    from agents.preferences.guard import UserGuard

    rng = np.random.default_rng(5)
    state = GuardState()
    ts = 1.7e9 + np.cumsum(1 + rng.exponential(29, events))
    items = np.array([item_key(f"item-{i:05d}") for i in rng.integers(0, 1000, events)])
    Guard().observe_one(state, ts, items)
    return UserGuard(state=state, watermark=[-1, 123_456], last_s=1.7e9, partition=3).to_bytes()


def build_store(
    values: list[bytes], partition_index: bool, guard: bytes | None = None
) -> tuple[dict, dict | None]:
    store = {user_key(i): bytes(bytearray(v)) for i, v in enumerate(values)}
    if guard is not None:
        store.update({f"g|{user_key(i)}": bytes(bytearray(guard)) for i in range(len(values))})
    index = dict.fromkeys(store, 3) if partition_index else None
    return store, index


def measure_case(name: str, n: int, dim: int) -> dict[str, Any]:
    """Run in a fresh process: build the store for ``name`` and measure it."""
    if name == "numpy":
        rss0 = rss_bytes()
        array = np.empty((n, dim), dtype=np.float32)
        array.fill(1.0)  # touch every page
        rss = rss_bytes() - rss0
        del array
        tracemalloc.start()
        array = np.ones((n, dim), dtype=np.float32)
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return {"case": name, "traced": traced, "rss": rss, "value_len": 4 * dim}
    spec = CASES[name]
    values = packed_values(
        n, dim, spec["ids"], spec["window"], spec["dtype"], spec.get("layout", 2)
    )
    guard = guard_blob() if spec.get("guard") else None
    # Measure only what the store holds: the dict(s), the key and the value objects
    # (fresh copies of the prepared values, so they are allocated while measuring). RSS
    # first, untraced (tracemalloc's own bookkeeping would inflate it), then tracemalloc.
    rss0 = rss_bytes()
    store = build_store(values, spec["partition_index"], guard)
    rss = rss_bytes() - rss0
    del store
    tracemalloc.start()
    store, index = build_store(values, spec["partition_index"], guard)
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    sample_key = next(iter(store))
    return {
        "case": name,
        "traced": traced,
        "rss": rss,
        "value_len": len(values[0]),
        "value_object": sys.getsizeof(store[sample_key]),
        "key_object": sys.getsizeof(sample_key),
        "dict": sys.getsizeof(store) * (0.5 if guard else 1.0),
        "guard_len": len(guard) if guard else 0,
        "index_dict": sys.getsizeof(index) if index is not None else 0,
        "ids": spec["ids"],
        "window": spec["window"],
        "dtype": spec["dtype"],
    }


def run_case(name: str, n: int, dim: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_memory", "--case", name, "--users", str(n),
         "--dim", str(dim)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def alloc_size(nbytes: int) -> int:
    """Bytes CPython's allocator really takes for an object of ``nbytes``: pymalloc rounds
    up to 16 bytes up to 512; larger objects go to malloc (8-byte header, 16 alignment)."""
    if nbytes <= 512:
        return -(-nbytes // 16) * 16
    return -(-(nbytes + 8) // 16) * 16


def breakdown(r: dict[str, Any], n: int, dim: int) -> list[tuple[str, float]]:
    """Per-user bytes of a layout-2 case, part by part."""
    ids = r["ids"]
    vector = {"int16": 1 + 2 * dim, "float16": 2 * dim, "float32": 4 * dim}[r["dtype"]]
    rows = [(f"value: header (layout 2, {HEADER.size} B)", float(HEADER.size))]
    if ids:
        rows.append((f"value: id section ({ids} x (8 B hash + 2 B age) + 4 B base)",
                     float(ids_section_size(ids))))  # fmt: skip
    label = f"{dim} x int16 + 1 B exponent" if r["dtype"] == "int16" else f"{dim} x {r['dtype']}"
    rows.append((f"value: vector, {label}", float(vector)))
    if r["window"]:
        rows.append((f"value: open window, 16 B + {dim} x float32", 16.0 + 4 * dim))
    rows += [
        ("bytes object header", float(r["value_object"] - r["value_len"])),
        ("allocator rounding of the bytes object",
         float(alloc_size(r["value_object"]) - r["value_object"])),
        (f"key str object ({len(user_key(0))}-char id)", float(alloc_size(r["key_object"]))),
        ("dict slots (index + entry)", r["dict"] / n),
    ]  # fmt: skip
    if r["index_dict"]:
        rows.append(("partition index dict (key -> partition)", r["index_dict"] / n))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or JSON), return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=Settings.from_env().item_dim)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n, dim = args.users, args.dim
    if args.case:
        print(json.dumps(measure_case(args.case, n, dim)))
        return {}
    started = time.perf_counter()
    base = run_case("numpy", n, dim)
    cases = {name: run_case(name, n, dim) for name in CASES}
    scale = 1_000_000 / n  # figures are reported per 1M users
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "users": n,
        "dim": dim,
        "baseline_numpy_mb": base["traced"] * scale / MB,
        "baseline_numpy_rss_mb": base["rss"] * scale / MB,
        "target_mb": TARGET_MB,
    }
    for name, r in cases.items():
        mb = r["traced"] * scale / MB
        figures[name] = {
            "mb_per_1m": mb,
            "rss_mb_per_1m": r["rss"] * scale / MB,
            "bytes_per_user": r["traced"] / n,
            "value_bytes": r["value_len"],
            "ratio_vs_numpy": r["traced"] / base["traced"],
            # the larger of the two measures decides
            "met": max(mb, r["rss"] * scale / MB) <= TARGET_MB,
        }
    main_case = cases[MAIN_CASE]
    figures["breakdown_bytes_per_user"] = dict(breakdown(main_case, n, dim))
    figures["seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(figures, indent=2))
        return figures
    print(
        f"Preference state in memory, {n} users x {dim} dims, figures per 1M users "
        f"({figures['date']}; tracemalloc of the store, RSS delta beside it)"
    )
    print(f"  {'':46s}{'value B':>8s}{'B/user':>8s}{'MB':>8s}{'RSS MB':>8s}{'ratio':>8s}"
          f"{'target':>9s}")  # fmt: skip
    print(
        f"  {'baseline: numpy (N, D) float32':46s}{base['value_len']:8d}"
        f"{base['traced'] / n:8.0f}{figures['baseline_numpy_mb']:8.0f}"
        f"{figures['baseline_numpy_rss_mb']:8.0f}"
    )
    for name in CASES:
        f = figures[name]
        print(
            f"  {'dict str -> pack(): ' + name:46s}{f['value_bytes']:8d}{f['bytes_per_user']:8.0f}"
            f"{f['mb_per_1m']:8.0f}{f['rss_mb_per_1m']:8.0f}{f['ratio_vs_numpy']:7.1f}x"
            f"{'<= ' + str(int(TARGET_MB)):>9s}  {'met' if f['met'] else 'NOT met'}"
        )
    rows = breakdown(main_case, n, dim)
    total = sum(b for _, b in rows)
    print(f"  per-user breakdown, case '{MAIN_CASE}' (computed; sums to {total:.0f} B, "
          f"tracemalloc says {figures[MAIN_CASE]['bytes_per_user']:.0f} B):")  # fmt: skip
    for label, b in rows:
        print(f"    {label:56s}{b:7.1f} B  {100 * b / total:5.1f} %")
    return figures


if __name__ == "__main__":
    main()

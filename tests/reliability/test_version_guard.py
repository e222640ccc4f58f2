"""Concurrent stale writes (a zombie worker still flushing after its partitions moved, a
replay racing the live stream) never make a Redis or PostgreSQL value go back in version.

Several writers send every version of the same keys in shuffled orders at once, through the
worker's own sinks; a watcher reads the keys the whole time and records any step back; at
the end each key holds its highest version with that version's payload."""

from __future__ import annotations

import asyncio
import os
import random
import uuid

import orjson
import pytest

from agents.preferences.agent import UPSERT_SQL, json_rows
from streams.sinks.postgres_sink import PostgresRecords
from streams.sinks.redis_sink import RedisLatestValues
from tests.reliability import summary

pytestmark = pytest.mark.integration

KEYS = 6
VERSIONS = 60
WRITERS = 4


def distinct_runs(batch: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Consecutive runs of ``batch`` in which no key repeats, in order."""
    runs: list[list[tuple[str, int]]] = [[]]
    for key, version in batch:
        if any(k == key for k, _ in runs[-1]):
            runs.append([])
        runs[-1].append((key, version))
    return runs


def shuffled_batches(rng: random.Random, batch: int = 12) -> list[list[tuple[str, int]]]:
    pairs = [(f"k{k}", v) for k in range(KEYS) for v in range(1, VERSIONS + 1)]
    rng.shuffle(pairs)
    return [pairs[i : i + batch] for i in range(0, len(pairs), batch)]


async def watch(read: object, stop: asyncio.Event, steps_back: list[str]) -> int:
    seen: dict[str, int] = {}
    reads = 0
    while not stop.is_set():
        for key, version in (await read()).items():  # type: ignore[operator]
            if version < seen.get(key, 0):
                steps_back.append(f"{key}: {seen[key]} -> {version}")
            seen[key] = max(seen.get(key, 0), version)
        reads += 1
        await asyncio.sleep(0)
    return reads


def test_concurrent_stale_redis_writes_never_go_back() -> None:
    prefix = f"vg-{uuid.uuid4().hex[:8]}:"
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")

    async def main() -> tuple[list[str], dict[str, tuple[int, bytes] | None]]:
        sinks = [RedisLatestValues(url, key_prefix=prefix) for _ in range(WRITERS + 1)]
        keys = [f"k{k}" for k in range(KEYS)]

        async def read() -> dict[str, int]:
            values = await sinks[-1].read_many("pref", keys)
            return {k: v[0] for k, v in zip(keys, values, strict=True) if v is not None}

        async def write(sink: RedisLatestValues, seed: int) -> None:
            for batch in shuffled_batches(random.Random(seed)):
                await sink.write_many("pref", [(k, v, f"{k}@{v}".encode()) for k, v in batch])
                await asyncio.sleep(0)

        stop, steps_back = asyncio.Event(), []
        watcher = asyncio.create_task(watch(read, stop, steps_back))
        await asyncio.gather(*(write(s, seed) for seed, s in enumerate(sinks[:-1])))
        stop.set()
        assert await watcher > 10  # the watcher really ran alongside the writers
        final = dict(zip(keys, await sinks[-1].read_many("pref", keys), strict=True))
        for s in sinks:
            await s.close()
        return steps_back, final

    steps_back, final = asyncio.run(main())
    summary.record(
        summary.Row(
            "version guard (Redis)",
            WRITERS * KEYS * VERSIONS,
            f"{WRITERS} concurrent shuffled writers",
            len(steps_back),
            0,
        )
    )
    assert steps_back == []
    for key, value in final.items():
        assert value == (VERSIONS, f"{key}@{VERSIONS}".encode())


def test_concurrent_stale_postgres_upserts_never_go_back() -> None:
    users = [f"vg-{uuid.uuid4().hex[:8]}-k{k}" for k in range(KEYS)]
    url = os.environ.get("DATABASE_URL", "postgresql://loopwise:loopwise@127.0.0.1:5440/loopwise")

    async def main() -> tuple[list[str], dict[str, tuple[int, int]]]:
        pools = [PostgresRecords(url, max_size=2) for _ in range(WRITERS + 1)]
        for pool in pools:
            await pool.open()
        reader = pools[-1]

        async def read() -> dict[str, int]:
            rows = await reader.fetch(
                "SELECT user_id, version FROM user_preferences WHERE user_id = ANY(%s)", (users,)
            )
            return {u: int(v) for u, v in rows}

        async def write(pool: PostgresRecords, seed: int) -> None:
            for batch in shuffled_batches(random.Random(100 + seed)):
                # The agent's statement takes each user once (ON CONFLICT DO UPDATE cannot
                # touch a row twice): a batch's rows are split into runs of distinct users.
                for run in distinct_runs(batch):
                    rows = [
                        orjson.dumps(
                            {
                                "user_id": users[int(k[1:])],
                                "vector": [float(v)],
                                "version": v,
                                "segment": "regular",
                                "interactions": v,
                                "source_ts": v,
                            }
                        )
                        for k, v in run
                    ]
                    await pool.execute_batch(UPSERT_SQL, [json_rows(rows)], len(run))

        stop, steps_back = asyncio.Event(), []
        watcher = asyncio.create_task(watch(read, stop, steps_back))
        await asyncio.gather(*(write(p, seed) for seed, p in enumerate(pools[:-1])))
        stop.set()
        assert await watcher > 10
        rows = await reader.fetch(
            "SELECT user_id, version, interactions FROM user_preferences WHERE user_id = ANY(%s)",
            (users,),
        )
        await reader.fetch(
            "DELETE FROM user_preferences WHERE user_id = ANY(%s) RETURNING 1", (users,)
        )
        for pool in pools:
            await pool.close()
        return steps_back, {u: (int(v), int(n)) for u, v, n in rows}

    steps_back, final = asyncio.run(main())
    summary.record(
        summary.Row(
            "version guard (PostgreSQL)",
            WRITERS * KEYS * VERSIONS,
            f"{WRITERS} concurrent shuffled writers",
            len(steps_back),
            0,
        )
    )
    assert steps_back == []
    assert final == {u: (VERSIONS, VERSIONS) for u in users}

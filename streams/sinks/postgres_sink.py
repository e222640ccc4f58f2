"""Durable records in PostgreSQL through a connection pool, with idempotent upserts.

Every statement a sink runs is an upsert keyed by the record's identity (and guarded by a
version where records evolve), so replays after a crash add no rows and never go back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from streams.codecs import encode
from streams.metrics import SINK_WRITES
from streams.retry import retry_transient


def jsonb(value: Any) -> Any:
    """A ``jsonb`` parameter encoded like every Loopwise event (orjson, numpy natively)."""
    from psycopg.types.json import Jsonb

    return Jsonb(value, dumps=lambda v: encode(v).decode())


class PostgresRecords:
    """A pool plus ``execute_many`` with transient-fault retry."""

    def __init__(self, url: str, max_backoff_s: float = 5.0, max_size: int = 4) -> None:
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=10,
            kwargs={"connect_timeout": 5},
        )
        self.max_backoff_s = max_backoff_s

    async def open(self) -> None:
        # wait=False: a worker must start (and dead-letter, and learn) while PostgreSQL is
        # down; writes retry until it is back.
        await self.pool.open(wait=False)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._write(lambda cur: cur.executemany(sql, rows), len(rows))

    async def execute_batch(self, sql: str, params: Sequence[Any], rows: int) -> None:
        """One statement for ``rows`` rows carried in its parameters (e.g. one JSON array the
        statement reads with ``json_to_recordset``): one round trip and one plan instead of
        a pipeline of ``rows`` statements, whose per-row Python cost dominated large
        batches."""
        if rows:
            await self._write(lambda cur: cur.execute(sql, params), rows)

    async def _write(self, statement: Callable[[Any], Awaitable[Any]], rows: int) -> None:
        """Run ``statement(cursor)`` on a pooled connection, retrying transient faults."""

        async def run() -> None:
            async with self.pool.connection() as conn, conn.cursor() as cur:
                await statement(cur)

        await retry_transient(run, sink="postgres", max_backoff_s=self.max_backoff_s)
        SINK_WRITES.labels(sink="postgres").inc(rows)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def close(self) -> None:
        await self.pool.close()

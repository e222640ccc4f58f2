"""Retry of transient faults with capped exponential back-off.

Sinks call :func:`retry_transient` so that an outage of Redis or PostgreSQL delays the
agent (back-pressure: its offsets are not committed) instead of losing or dead-lettering
events. Only errors classed as transient are retried; anything else propagates.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import psycopg_pool
import redis.exceptions

from streams.metrics import SINK_RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    ConnectionError,
    TimeoutError,
    OSError,
)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    sink: str,
    max_backoff_s: float = 5.0,
    first_backoff_s: float = 0.05,
    give_up_after: int | None = None,
) -> T:
    """Await ``operation()`` until it succeeds, sleeping between transient failures.

    ``give_up_after`` bounds the attempts (None: retry for as long as it takes, which is
    what a sink wants: the fault is outside us and the data must not be dropped).
    """
    attempt = 0
    backoff = first_backoff_s
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            attempt += 1
            SINK_RETRIES.labels(sink=sink).inc()
            if give_up_after is not None and attempt >= give_up_after:
                raise
            delay = min(max_backoff_s, backoff) * (0.5 + random.random() / 2)
            log.warning("%s: transient fault (%s), retry %d in %.2fs", sink, exc, attempt, delay)
            await asyncio.sleep(delay)
            backoff *= 2

"""Latest values in Redis, written so that an older version never overwrites a newer one.

Each value is a hash ``{version, value}``; a Lua script compares versions on the server,
so concurrent writers (two workers during a rebalance) and replays cannot go backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from streams.metrics import SINK_WRITES
from streams.retry import retry_transient

# KEYS = value keys; ARGV = version1, payload1, version2, payload2, ...
_SET_IF_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local current = tonumber(redis.call('HGET', key, 'version'))
  if current == nil or current < version then
    redis.call('HSET', key, 'version', ARGV[2 * i - 1], 'value', ARGV[2 * i])
    written = written + 1
  end
end
return written
"""

_CHUNK = 256


class RedisLatestValues:
    """Versioned latest-value store: ``write_many`` / ``read``."""

    def __init__(
        self, url: str, key_prefix: str, max_backoff_s: float = 5.0, **client_kwargs: Any
    ) -> None:
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=3,
            health_check_interval=15,
            **client_kwargs,
        )
        self.key_prefix = key_prefix
        self.max_backoff_s = max_backoff_s
        self._script = self.client.register_script(_SET_IF_NEWER)

    def key(self, kind: str, entity: str) -> str:
        return f"{self.key_prefix}{kind}:{entity}"

    async def write_many(self, kind: str, items: Iterable[tuple[str, int, bytes]]) -> int:
        """Write ``(entity, version, payload)`` triples; returns how many were newer."""
        batch = list(items)
        written = 0
        for start in range(0, len(batch), _CHUNK):
            chunk = batch[start : start + _CHUNK]
            keys = [self.key(kind, entity) for entity, _, _ in chunk]
            args: list[Any] = []
            for _, version, payload in chunk:
                args.extend((version, payload))
            written += await retry_transient(
                lambda keys=keys, args=args: self._script(keys=keys, args=args),
                sink="redis",
                max_backoff_s=self.max_backoff_s,
            )
        SINK_WRITES.labels(sink="redis").inc(written)
        return written

    async def read(self, kind: str, entity: str) -> tuple[int, bytes] | None:
        """``(version, payload)`` or None when the key is missing."""
        version, value = await self.client.hmget(self.key(kind, entity), ["version", "value"])
        if version is None or value is None:
            return None
        return int(version), value

    async def read_many(self, kind: str, entities: Sequence[str]) -> list[tuple[int, bytes] | None]:
        pipe = self.client.pipeline(transaction=False)
        for entity in entities:
            pipe.hmget(self.key(kind, entity), ["version", "value"])
        rows = await pipe.execute()
        return [None if v is None or p is None else (int(v), p) for v, p in rows]

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()

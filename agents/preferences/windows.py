"""The implicit windows open on this worker, and the lock of the feedback agent.

The preferences agent's batches and timers, and the bandits' attribution timer, take
:attr:`OpenWindows.lock`, so they never interleave on a user's state or an impression's
record.
"""

from __future__ import annotations

import asyncio
from typing import Any


class OpenWindows:
    """This worker's users with an open implicit window (user → opened at, ms)."""

    def __init__(self) -> None:
        self.opened: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.scanned_assignment: frozenset[Any] = frozenset()
        self.last_scan = 0.0

    def due(self, now_ms: int, window_s: float) -> list[str]:
        limit = now_ms - int(window_s * 1000)
        return [u for u, opened in self.opened.items() if opened <= limit]


windows = OpenWindows()

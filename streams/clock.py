"""The one wall clock of the worker, in epoch milliseconds (event time is in the events)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)

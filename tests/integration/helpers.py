"""Helpers the integration test modules share (plain functions; the fixtures are in conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any], timeout_s: float = 60.0, what: str = "", poll_s: float = 0.3
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail after
    ``timeout_s`` saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")

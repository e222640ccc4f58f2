"""Whether each consumer of a worker makes progress: what ``/ready`` reports about them.

A consumer (an agent's batch loop, the implicit relay) tells its :class:`ConsumerHealth`
when a batch succeeded or failed, and gives it a way to read its lag. It is *stuck* when

* its current batch has been failing for ``LOOPWISE_STUCK_AFTER_S`` (the batch is retried
  with its offsets uncommitted, so nothing is lost, but nothing moves either), or
* it has had lag, and completed no batch, for that long (a fetcher that died, a partition
  left paused).

A stuck consumer makes ``/ready`` answer 503, sets ``loopwise_consumer_stuck{consumer}``
to 1 and logs one line saying why (and one when it recovers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streams.metrics import CONSUMER_STUCK

log = logging.getLogger(__name__)


class ConsumerHealth:
    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()  # the relay reports from its own thread
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.last_progress = clock()
        self.lag_since: float | None = None
        self.lag: Callable[[], int | None] = lambda: None
        self.stuck_reason: str | None = None

    def succeeded(self) -> None:
        with self._lock:
            self.failing_since = None
            self.last_progress = self._clock()
            self.lag_since = None

    def failed(self, exc: BaseException | str) -> None:
        with self._lock:
            if self.failing_since is None:
                self.failing_since = self._clock()
            self.last_error = exc if isinstance(exc, str) else repr(exc)

    def check(self, stuck_after_s: float) -> str | None:
        """Why this consumer is stuck now, or ``None``; updates the gauge and logs changes."""
        try:
            lag = self.lag()
        except Exception:  # a consumer between assignments: no verdict on its lag
            lag = None
        with self._lock:
            now = self._clock()
            reason = None
            if self.failing_since is not None and now - self.failing_since >= stuck_after_s:
                reason = (
                    f"its batch has been failing for {now - self.failing_since:.0f} s "
                    f"(last error: {self.last_error})"
                )
            if lag:
                if self.lag_since is None:
                    self.lag_since = now
                idle = now - max(self.last_progress, self.lag_since)
                if reason is None and idle >= stuck_after_s:
                    reason = f"{lag} events of lag and no batch completed for {idle:.0f} s"
            else:
                self.lag_since = None
            changed = reason != self.stuck_reason and (reason is None or self.stuck_reason is None)
            self.stuck_reason = reason
        CONSUMER_STUCK.labels(consumer=self.name).set(0 if reason is None else 1)
        if changed:
            if reason is None:
                log.warning("consumer %s: progressing again", self.name)
            else:
                log.error("consumer %s is stuck: %s", self.name, reason)
        return reason


_consumers: dict[str, ConsumerHealth] = {}


def register(name: str) -> ConsumerHealth:
    """The health record of consumer ``name`` (one per name and process)."""
    if name not in _consumers:
        _consumers[name] = ConsumerHealth(name)
    return _consumers[name]


def registered() -> dict[str, ConsumerHealth]:
    return dict(_consumers)


def stuck(stuck_after_s: float, paused: bool = False) -> dict[str, str]:
    """Every registered consumer that is stuck now, with the reason. While ``paused`` (the
    worker recovers tables after a rebalance: nobody consumes) lag does not count, and
    the wait for progress starts again afterwards."""
    if paused:
        for health in _consumers.values():
            health.lag_since = None
        return {}
    found = {}
    for name, health in list(_consumers.items()):
        reason = health.check(stuck_after_s)
        if reason is not None:
            found[name] = reason
    return found

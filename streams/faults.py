"""Test hook: transient faults injected at the processing boundaries (``LOOPWISE_FAULTS``).

``LOOPWISE_FAULTS="decode=0.05,deadletter=0.05,after_table=0.1,*=0.01"`` makes
:func:`point` raise :class:`InjectedFault` (a ``ConnectionError``, so a transient fault)
with that probability at the named point — every :func:`streams.state.crash_point`, the
boundary's decode and dead-letter send, the relay's — while a batch is being handled
(:func:`armed`; timers are never hit). The fault tests drive a stream with a known truth
through a worker that fails this way and check that nothing is lost or counted twice.
Off (empty) in production.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from streams.metrics import FAULTS_INJECTED

_rates: dict[str, float] = {}
_rng = random.Random(0)
_armed: ContextVar[bool] = ContextVar("loopwise_faults_armed", default=False)


class InjectedFault(ConnectionError):
    """A transient fault raised on purpose by the fault tests."""


def parse(spec: str) -> dict[str, float]:
    """``"decode=0.1,*=0.01"`` → ``{"decode": 0.1, "*": 0.01}``.

    >>> parse("decode=0.1, *=0.01")
    {'decode': 0.1, '*': 0.01}
    """
    rates = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not 0 <= float(value) <= 1:
            raise ValueError(f"expected point=probability pairs, got {part!r}")
        rates[name.strip()] = float(value)
    return rates


def configure(spec: str, seed: int = 0) -> None:
    _rates.clear()
    _rates.update(parse(spec))
    _rng.seed(seed)


@contextmanager
def armed() -> Iterator[None]:
    """Faults fire only inside this block (a batch being handled)."""
    token = _armed.set(True)
    try:
        yield
    finally:
        _armed.reset(token)


def point(name: str) -> None:
    if not _rates or not _armed.get():
        return
    rate = _rates.get(name, _rates.get("*", 0.0))
    if rate and _rng.random() < rate:
        FAULTS_INJECTED.labels(point=name).inc()
        raise InjectedFault(f"injected fault at {name} (LOOPWISE_FAULTS)")

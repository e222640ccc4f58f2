"""When a consumer counts as stuck: failing, or lagging without progress, for the threshold."""

from __future__ import annotations

import itertools

import pytest

from streams import consumer_health
from streams.consumer_health import ConsumerHealth, register, registered, stuck
from streams.metrics import REGISTRY

AFTER = 60.0
_names = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Lag:
    def __init__(self, value: int | None = None) -> None:
        self.value: int | Exception | None = value

    def __call__(self) -> int | None:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _health(clock: Clock, lag: Lag | None = None) -> ConsumerHealth:
    health = ConsumerHealth(f"test-health-{next(_names)}", clock=clock)
    if lag is not None:
        health.lag = lag
    return health


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("loopwise_consumer_stuck", {"consumer": name})


def test_a_fresh_consumer_is_not_stuck(clock: Clock) -> None:
    health = _health(clock)
    clock.now += 10 * AFTER
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0


def test_failing_for_less_than_the_threshold_is_not_stuck(clock: Clock) -> None:
    health = _health(clock)
    health.failed(ConnectionError("redis away"))
    clock.now += AFTER - 0.001
    health.failed(ConnectionError("still away"))  # the start of the failure is kept
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0


def test_failing_for_the_threshold_is_stuck_until_it_succeeds(clock: Clock) -> None:
    health = _health(clock)
    health.failed(ConnectionError("redis away"))
    clock.now += AFTER / 2
    health.failed("second error")
    clock.now += AFTER / 2
    reason = health.check(AFTER)
    assert reason is not None and "failing for 60 s" in reason and "second error" in reason
    assert _gauge(health.name) == 1
    clock.now += 1000
    assert health.check(AFTER) is not None
    health.succeeded()
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0
    assert health.failing_since is None


def test_a_new_failure_after_success_starts_the_wait_again(clock: Clock) -> None:
    health = _health(clock)
    health.failed("a")
    clock.now += AFTER - 1
    health.succeeded()
    health.failed("b")
    clock.now += AFTER - 1
    assert health.check(AFTER) is None


def test_lag_with_progress_is_not_stuck(clock: Clock) -> None:
    health = _health(clock, Lag(500))
    for _ in range(20):
        assert health.check(AFTER) is None
        clock.now += AFTER / 2
        health.succeeded()
    clock.now += AFTER - 1
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0


def test_lag_without_progress_is_stuck(clock: Clock) -> None:
    health = _health(clock, Lag(500))
    assert health.check(AFTER) is None  # the lag is seen now
    clock.now += AFTER - 1
    assert health.check(AFTER) is None
    clock.now += 1
    reason = health.check(AFTER)
    assert reason is not None and "500 events of lag" in reason
    assert _gauge(health.name) == 1
    health.succeeded()  # a batch completed
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0


def test_lag_that_goes_away_is_not_stuck(clock: Clock) -> None:
    lag = Lag(3)
    health = _health(clock, lag)
    health.check(AFTER)
    clock.now += AFTER - 1
    lag.value = 0  # caught up without a batch (e.g. the lag was compacted away)
    assert health.check(AFTER) is None
    lag.value = 3
    assert health.check(AFTER) is None  # the wait starts again when lag reappears
    clock.now += AFTER - 1
    assert health.check(AFTER) is None
    clock.now += 1
    assert health.check(AFTER) is not None


@pytest.mark.parametrize("probe_while_idle", [True, False])
def test_lag_appearing_after_a_long_idle_period_is_not_instantly_stuck(
    clock: Clock, probe_while_idle: bool
) -> None:
    lag = Lag(None)
    health = _health(clock, lag)
    health.succeeded()
    for _ in range(100):  # an hour without input: nothing to do is not being stuck
        clock.now += 36
        if probe_while_idle:
            lag.value = 0 if lag.value is None else None
            assert health.check(AFTER) is None
    lag.value = 7
    assert health.check(AFTER) is None
    assert _gauge(health.name) == 0
    clock.now += AFTER - 1
    assert health.check(AFTER) is None
    clock.now += 1
    assert health.check(AFTER) is not None


def test_a_lag_that_cannot_be_read_is_no_verdict(clock: Clock) -> None:
    lag = Lag(5)
    health = _health(clock, lag)
    health.check(AFTER)
    clock.now += AFTER - 1
    lag.value = RuntimeError("between assignments")
    assert health.check(AFTER) is None
    lag.value = 5
    clock.now += AFTER - 1
    assert health.check(AFTER) is None


def test_failing_is_reported_before_lag(clock: Clock) -> None:
    health = _health(clock, Lag(9))
    health.check(AFTER)
    health.failed(OSError("disk"))
    clock.now += AFTER
    reason = health.check(AFTER)
    assert reason is not None and reason.startswith("its batch has been failing")


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> dict[str, ConsumerHealth]:
    table: dict[str, ConsumerHealth] = {}
    monkeypatch.setattr(consumer_health, "_consumers", table)
    return table


def test_register_returns_one_record_per_name(consumers: dict[str, ConsumerHealth]) -> None:
    a = register("agent-a")
    assert register("agent-a") is a
    b = register("agent-b")
    assert b is not a
    assert registered() == {"agent-a": a, "agent-b": b}
    registered().clear()  # a copy
    assert set(registered()) == {"agent-a", "agent-b"}


def test_stuck_lists_the_stuck_consumers(
    clock: Clock, consumers: dict[str, ConsumerHealth]
) -> None:
    ok = consumers["h-ok"] = ConsumerHealth("h-ok", clock=clock)
    bad = consumers["h-bad"] = ConsumerHealth("h-bad", clock=clock)
    bad.failed("boom")
    assert stuck(AFTER) == {}
    clock.now += AFTER
    ok.succeeded()
    found = stuck(AFTER)
    assert list(found) == ["h-bad"] and "boom" in found["h-bad"]
    assert _gauge("h-bad") == 1 and _gauge("h-ok") == 0
    bad.succeeded()
    assert stuck(AFTER) == {}
    assert _gauge("h-bad") == 0


def test_paused_resets_the_wait_for_progress(
    clock: Clock, consumers: dict[str, ConsumerHealth]
) -> None:
    health = consumers["h-lagging"] = ConsumerHealth("h-lagging", clock=clock)
    health.lag = Lag(40)
    assert stuck(AFTER) == {}
    clock.now += AFTER - 1
    assert stuck(AFTER, paused=True) == {}  # tables recovering: nobody consumes
    clock.now += 30
    assert stuck(AFTER, paused=True) == {}
    clock.now += 30
    assert stuck(AFTER) == {}  # the wait starts again when the pause ends
    assert _gauge("h-lagging") == 0
    clock.now += AFTER - 1
    assert stuck(AFTER) == {}
    clock.now += 1
    assert list(stuck(AFTER)) == ["h-lagging"]
    assert _gauge("h-lagging") == 1

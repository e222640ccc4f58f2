from __future__ import annotations

import numpy as np
import pytest

from agents.bandits.attribution import (
    DAY_MS,
    Partial,
    Signal,
    apply_signals,
    close_attribution_windows,
    record_key,
    sum_partials,
)

WINDOW = 1_000


class Store:
    """A dict standing in for the table; ``commit`` persists what a batch changed."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def commit(self, changed: dict[str, dict]) -> None:
        self.data.update(changed)


def imp(offset: int, ts: int, iid: str, algo: int = 0, seg: int = 0) -> Signal:
    return Signal(offset, ts, "impression", iid, algo, seg)


def click(offset: int, ts: int, iid: str, kind: str = "click") -> Signal:
    return Signal(offset, ts, kind, iid, -1, -1)


def test_first_click_is_one_success_later_clicks_nothing() -> None:
    p, store = Partial(2, 3), Store()
    store.commit(apply_signals(p, [imp(0, 0, "a", algo=1, seg=1)], store.get, WINDOW, 7))
    store.commit(apply_signals(p, [click(1, 10, "a"), click(2, 20, "a", "conversion")],
                               store.get, WINDOW, 7))  # fmt: skip
    assert p.trials[1, 1] == 1 and p.successes[1, 1] == 1
    assert p.trials.sum() == 1 and p.offset == 2
    assert store.get(record_key("a"))["r"] == 1


def test_unanswered_impression_is_a_failure_when_its_window_closes() -> None:
    p, store = Partial(1, 2), Store()
    store.commit(apply_signals(p, [imp(0, 0, "a"), imp(1, 500, "b", algo=1)], store.get, WINDOW, 7))
    expired = close_attribution_windows(p, store.data.items(), until_ms=1_200, keep_days=7)
    assert expired == [record_key("a")]  # b's deadline (1500) has not passed
    assert p.trials.tolist() == [[1, 0]] and p.successes.sum() == 0
    assert p.watermark == 1_200


def test_late_click_after_the_deadline_does_not_count() -> None:
    p, store = Partial(1, 1), Store()
    store.commit(apply_signals(p, [imp(0, 0, "a")], store.get, WINDOW, 7))
    store.commit(apply_signals(p, [click(1, WINDOW + 1, "a")], store.get, WINDOW, 7))
    assert p.successes.sum() == 0
    close_attribution_windows(p, store.data.items(), until_ms=WINDOW + 1, keep_days=7)
    assert p.trials.sum() == 1 and p.successes.sum() == 0


def test_replaying_a_batch_changes_nothing() -> None:
    signals = [imp(0, 0, "a"), imp(1, 0, "b", algo=1), click(2, 5, "a"), click(3, 6, "b")]
    p, store = Partial(1, 2), Store()
    store.commit(apply_signals(p, signals, store.get, WINDOW, 7))
    before = (p.trials.copy(), p.successes.copy())
    assert apply_signals(p, signals, store.get, WINDOW, 7) == {}
    np.testing.assert_array_equal(p.trials, before[0])
    np.testing.assert_array_equal(p.successes, before[1])


@pytest.mark.parametrize("persisted", ["records only", "partial only", "neither", "both"])
def test_crash_between_record_and_partial_writes_is_repaired_by_the_replay(persisted: str) -> None:
    """Whatever subset of a batch's writes survived, the replay ends in the same state."""
    first = [imp(0, 0, "a"), imp(1, 0, "b", algo=1)]
    batch = [click(2, 5, "a"), imp(3, 7, "c"), click(4, 8, "c")]
    p, store = Partial(1, 2), Store()
    store.commit(apply_signals(p, first, store.get, WINDOW, 7))
    saved_partial = Partial.from_bytes(p.to_bytes())

    changed = apply_signals(p, batch, store.get, WINDOW, 7)
    if persisted in ("records only", "both"):
        store.commit(changed)
    restored = p if persisted in ("partial only", "both") else saved_partial
    restored = Partial.from_bytes(restored.to_bytes())
    store.commit(apply_signals(restored, batch, store.get, WINDOW, 7))  # the replay

    assert restored.trials.tolist() == [[2, 0]]  # a and c succeeded, once each
    assert restored.successes.tolist() == [[2, 0]]
    close_attribution_windows(restored, store.data.items(), until_ms=5_000, keep_days=7)
    assert restored.trials.tolist() == [[2, 1]] and restored.successes.tolist() == [[2, 0]]


def test_closing_again_after_a_crash_does_not_count_twice() -> None:
    p, store = Partial(1, 1), Store()
    store.commit(apply_signals(p, [imp(0, 0, "a"), imp(1, 0, "b")], store.get, WINDOW, 7))
    close_attribution_windows(
        p, store.data.items(), until_ms=2_000, keep_days=7
    )  # deletions then lost
    close_attribution_windows(p, store.data.items(), until_ms=2_500, keep_days=7)
    assert p.trials.sum() == 2
    # an impression replayed after its window was closed is not re-opened
    assert apply_signals(p, [imp(0, 0, "a")], lambda key: None, WINDOW, 7) == {}


def test_round_trip_and_sliding_window_sums() -> None:
    p = Partial(2, 2)
    p.count(0, 1, True, ts_ms=0, keep_days=7)
    p.count(1, 0, False, ts_ms=3 * DAY_MS, keep_days=7)
    q = Partial.from_bytes(p.to_bytes())
    assert q.trials.tolist() == p.trials.tolist() and sorted(q.days) == [0, 3]
    t, s = sum_partials([p, q])
    assert t.tolist() == [[0, 2], [2, 0]] and s.tolist() == [[0, 2], [0, 0]]
    t, s = sum_partials([p, q], since_day=1)
    assert t.tolist() == [[0, 0], [2, 0]] and s.sum() == 0
    p.count(0, 0, True, ts_ms=9 * DAY_MS, keep_days=7)  # day 0 falls out of a 7-day window
    assert sorted(p.days) == [3, 9]

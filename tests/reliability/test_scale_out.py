"""Scale-out on one machine: a second worker joins a running one during a stream and later
leaves; the partitions and the table state behind them move over and back, and the final
state equals the ground truth with nothing lost or doubled.

Prints its figures (events, partitions moved each way, time to rebalance) for docs/operations.md
and the issue's closing note."""

from __future__ import annotations

import time

import pytest

from streams.harness import Deployment, Worker
from tests.reliability.workload import (
    PacedProducer,
    Workload,
    assert_exact,
    group_positions,
    item_events,
    wait_committed_past,
    wait_for,
)

pytestmark = pytest.mark.integration
INPUT = "feedback.explicit"


def owned(worker: Worker, topic: str) -> set[int]:
    status, body = worker.get_json("/health")
    return set(body.get("assigned", {}).get(topic, [])) if status == 200 else set()


def serves(worker: Worker, users: list[str]) -> int:
    return sum(worker.get_json(f"/state/preferences/{u}")[0] == 200 for u in users)


def held_by_both(a: Worker, b: Worker, users: list[str]) -> int:
    return sum(
        a.get_json(f"/state/preferences/{u}")[0] == 200
        and b.get_json(f"/state/preferences/{u}")[0] == 200
        for u in users
    )


def test_second_worker_joins_and_leaves_during_a_stream(wide_deployment: Deployment) -> None:
    dep = wide_deployment
    topic = dep.topic(INPUT)
    partitions = dep.settings.partitions
    dep.produce("items", item_events(), key_field="item_id")
    first = dep.start_worker()
    workload = Workload.generate(dep.run_id, n_users=80, per_user=60, seed=43)
    stream = PacedProducer(dep, workload.events, rate=500)
    stream.start()
    wait_for(lambda: owned(first, topic) == set(range(partitions)), 30, "first owns all")
    time.sleep(2)

    joined_at = time.monotonic()
    second = dep.start_worker()
    wait_for(lambda: owned(second, topic) and owned(first, topic), 60, "partitions split")
    to_second = owned(second, topic)
    join_s = time.monotonic() - joined_at
    assert to_second | owned(first, topic) == set(range(partitions))
    assert not to_second & owned(first, topic)
    # The moved partitions' table state came along: the second worker serves their users.
    wait_for(lambda: serves(second, workload.users) > 0, 30, "second serves moved users")
    # ... and left the first: it keeps no stale copy (faust drops only keys it knows the
    # partition of; streams.state records it for keys written live).
    wait_for(lambda: held_by_both(first, second, workload.users) == 0, 30,
             "the first worker to drop the users it handed over")  # fmt: skip
    time.sleep(3)

    left_at = time.monotonic()
    second.stop()
    wait_for(lambda: owned(first, topic) == set(range(partitions)), 60, "first owns all again")
    leave_s = time.monotonic() - left_at
    stream.join()
    assert stream.error is None, stream.error
    targets = {p: end for p, (_, end) in group_positions(dep, INPUT).items()}
    wait_committed_past(dep, INPUT, targets, timeout_s=120)
    # Owning a partition comes before having recovered it: the moved-back users appear as
    # the changelog is read (the first worker kept no stale copies to answer in between).
    wait_for(lambda: serves(first, workload.users) == len(workload.users), 60,
             "the first worker to serve every user again")  # fmt: skip

    assert_exact(
        dep,
        workload,
        timeout_s=120,
        test=f"scale-out 1 → 2 → 1 workers ({partitions} partitions)",
        faults=f"{len(to_second)} partitions moved each way",
        recovery_s=max(join_s, leave_s),
    )
    print(
        f"\nscale-out figures: {len(workload.events)} events, {partitions} partitions, "
        f"{len(to_second)} moved to the new worker in {join_s:.1f} s (start to owning), "
        f"moved back in {leave_s:.1f} s after it left"
    )

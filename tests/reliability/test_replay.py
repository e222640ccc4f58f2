"""Replays change nothing: re-sent events (same event ids) and a consumer group reset to
the earliest offsets leave every store equal to the truth."""

from __future__ import annotations

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from streams.harness import Deployment
from streams.kafka_admin import admin
from tests.reliability.workload import Workload, assert_exact, item_events

pytestmark = pytest.mark.integration


def reset_group_to_earliest(dep: Deployment) -> None:
    client = admin(dep.settings)
    topics = [dep.topic("feedback.explicit"), dep.topic("feedback.implicit")]
    parts = [TopicPartition(t, p, 0) for t in topics for p in range(dep.settings.partitions)]
    futures = client.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(dep.settings.app_id, parts)]
    )
    for future in futures.values():
        future.result()


def test_resent_events_and_group_reset_change_nothing(deployment: Deployment) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    deployment.start_worker()
    workload = Workload.generate(deployment.run_id, n_users=12, per_user=25, seed=5)
    deployment.produce("feedback.explicit", workload.events)
    assert_exact(deployment, workload)

    resent = workload.events[::10]  # 10 % again, same event ids, new offsets
    deployment.produce("feedback.explicit", resent)
    deployment.stop()
    reset_group_to_earliest(deployment)
    deployment.start_worker()

    # Marker users after the replay: once they are in, everything before them was read.
    markers = Workload.generate(f"{deployment.run_id}-marker", n_users=8, per_user=2, seed=9)
    deployment.produce("feedback.explicit", markers.events)
    assert_exact(deployment, markers)
    assert_exact(
        deployment,
        workload,
        test="replay (10 % re-sent + group reset)",
        faults=f"{len(resent)} re-sent, offsets reset to 0",
    )

"""The guard keeps a bot's feedback out of learning; people's feedback passes untouched."""

from __future__ import annotations

import time

import pytest

from streams.harness import Deployment
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    feedback,
    implicit,
    item_event,
    redis_value,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_bot_is_quarantined_and_person_is_not(deployment: Deployment) -> None:
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    worker = deployment.start_worker()
    person = f"{deployment.run_id}-person"
    bot = f"{deployment.run_id}-bot"
    people = [feedback(n, person, f"item-{n % 8}", "like") for n in range(40)]
    bots = []
    for n in range(40):  # one like every 200 ms, like clockwork
        event = feedback(n, bot, f"item-{n % 8}", "like")
        event["ts"] = 1_700_000_000_000 + 200 * n
        bots.append(event)
    deployment.produce("feedback.explicit", people + bots)

    wait_for(lambda: (redis_value(deployment, person) or {}).get("interactions") == 40,
             what="the person's 40 events")  # fmt: skip

    def bot_accounted() -> bool:
        learned = (redis_value(deployment, bot) or {}).get("interactions", 0)
        return learned + len(deployment.read("quarantine")) == 40

    wait_for(bot_accounted, what="every bot event learned or quarantined")
    quarantined = deployment.read("quarantine")
    assert {q["error_kind"] for q in quarantined} == {"quarantined"}
    assert all("reliability score" in q["error_message"] for q in quarantined)
    learned = (redis_value(deployment, bot) or {}).get("interactions", 0)
    assert len(quarantined) >= 25
    assert learned <= 15  # only the first few, before its timing gave it away
    assert deployment.read("deadletter") == []

    status, metrics = 200, worker.get_json("/health")[1]
    assert status == 200 and metrics["status"] == "ok"


def test_explicit_feedback_behind_implicit_feedback_is_not_quarantined(
    deployment: Deployment,
) -> None:
    """A person's views are learned first; the ratings of the same twenty minutes arrive
    afterwards (an explicit backlog behind the relay after a restart). Judged in event
    time they are an ordinary person's pace, not a burst at the last view's time."""
    deployment.produce("items", [item_event(k, v) for k, v in ITEMS.items()], key_field="item_id")
    deployment.start_worker()
    person = f"{deployment.run_id}-late"
    # Recent times: the guard forgets users whose last event is over an hour old.
    start = int(time.time() * 1000) - 25 * 60_000
    acted = [start + 30_000 * n + (7_919 * n) % 20_000 for n in range(40)]
    views = []
    for n, ts in enumerate(acted):
        view = implicit(n, person, f"item-{n % 8}", "view")
        view.update(event_id=f"{person}-v{n}", ts=ts + 12_345)
        views.append(view)
    deployment.produce("feedback.implicit", views)
    wait_for(lambda: (redis_value(deployment, person) or {}).get("interactions") == 40,
             what="the person's 40 views")  # fmt: skip

    ratings = []
    for n, ts in enumerate(acted):
        rating = feedback(n, person, f"item-{(3 * n) % 8}", "rating", 1.0 + n % 5)
        rating["ts"] = ts
        ratings.append(rating)
    deployment.produce("feedback.explicit", ratings)
    wait_for(lambda: (redis_value(deployment, person) or {}).get("interactions") == 80,
             what="the 40 late ratings learned too")  # fmt: skip
    assert deployment.read("quarantine") == []

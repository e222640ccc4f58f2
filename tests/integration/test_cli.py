"""The operators' CLI against the real broker: topics, produce through validation, dlq."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.config import REPO_ROOT
from streams.harness import Deployment
from tests.integration.test_preferences_pipeline import (
    ITEMS,
    feedback,
    item_event,
    redis_value,
    wait_for,
)

pytestmark = pytest.mark.integration


def loopwise(
    dep: Deployment, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loopwise.cli.main", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **dep.base_env},
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_topics_create_is_idempotent_and_list_shows_them(deployment: Deployment) -> None:
    again = loopwise(deployment, "topics", "create")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.decode().splitlines()
    assert lines and all(line.startswith("exists") for line in lines)
    listing = loopwise(deployment, "topics", "list").stdout.decode()
    assert deployment.topic("feedback.explicit") in listing
    assert "MISSING" not in listing


def test_produce_validates_each_line_and_reports_rejections(
    deployment: Deployment, tmp_path: Path
) -> None:
    good = feedback(1, "cli-user", "item-1", "like")
    bad = feedback(2, "cli-user", "item-1", "rating", 42)
    source = tmp_path / "events.jsonl"
    source.write_bytes(orjson.dumps(good) + b"\n\n" + orjson.dumps(bad) + b"\n{oops\n")
    result = loopwise(deployment, "produce", "feedback.explicit", str(source))
    assert result.returncode == 1  # some lines were rejected
    err = result.stderr.decode()
    assert "line 3: rejected (schema_violation)" in err
    assert "line 4: rejected (not_json)" in err
    assert "produced 1 events" in err
    produced = deployment.read("feedback.explicit")
    assert [e["event_id"] for e in produced] == [good["event_id"]]

    unknown = loopwise(deployment, "produce", "no.such.topic", stdin=b"")
    assert unknown.returncode == 2 and b"known topics" in unknown.stderr


def test_dlq_show_and_replay_after_the_cause_is_fixed(deployment: Deployment) -> None:
    deployment.start_worker()
    user = f"{deployment.run_id}-late"
    early = feedback(1, user, "item-late", "like")  # the item does not exist yet
    deployment.produce("feedback.explicit", [early])
    wait_for(lambda: len(deployment.read("deadletter")) == 1, what="dead letter")

    shown = loopwise(deployment, "dlq", "show")
    assert shown.returncode == 0
    assert "unknown_item" in shown.stdout.decode()
    assert "1 dead letters: unknown_item=1" in shown.stderr.decode()

    deployment.produce("items", [item_event("item-late", ITEMS["item-1"])], key_field="item_id")
    replay = loopwise(deployment, "dlq", "replay", "--reason", "unknown_item")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1" in replay.stderr.decode()
    wait_for(
        lambda: (redis_value(deployment, user) or {}).get("interactions") == 1,
        what="replayed event applied",
    )

"""A session whose state lives on one partition refuses an event that arrives on another (its
offset watermarks are that partition's: the event could be taken for a replay and dropped).
Only a change of the topic's partition count gets such an event past the boundary."""

from __future__ import annotations

import asyncio

import orjson

from agents.choices import agent as choices
from agents.choices.state import SessionState
from streams.boundary import Valid
from tests.unit.fakes import Event, Message, Topic


def test_an_event_from_another_partition_is_dead_lettered_not_applied(monkeypatch) -> None:
    topic = Topic()
    monkeypatch.setattr(choices.boundary, "deadletter", topic)
    home = SessionState()
    home.partition = 1
    monkeypatch.setattr(choices.sessions_table, "get", lambda key, default=None: home.pack())
    payload = {"event_id": "c1", "schema_version": 1, "ts": 1, "session_id": "s1",
               "chosen_candidate_id": None}  # fmt: skip
    name = choices.settings.topic("recs.choices")
    event = Event(Message(name, 3, 7, b"s1", orjson.dumps(payload)))
    work = choices.SessionWork()
    asyncio.run(choices.apply_recs_event(work, Valid(payload, event), now=0))  # type: ignore[arg-type]
    [(_, letter)] = topic.sent
    assert letter["error_kind"] == "wrong_partition"
    assert letter["expected_partition"] == 1
    assert (letter["source"]["partition"], letter["source"]["offset"]) == (3, 7)
    assert not work.dirty and not work.outputs
    assert work.states["s1"].offsets == home.offsets  # nothing applied

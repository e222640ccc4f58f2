"""A choice waiting for its session is dead-lettered by a timer, long after its message was
read; the record must be the one ``Boundary.reject`` makes from the message itself."""

from __future__ import annotations

import asyncio
import base64

import orjson

from agents.choices import agent as choices
from agents.choices.state import CHOICE, Pending
from schemas.registry import get_schema
from tests.unit.fakes import Event, Message, Topic


def test_a_waiting_choice_is_dead_lettered_like_a_rejected_message(monkeypatch):
    topic = Topic()
    monkeypatch.setattr(choices.boundary, "deadletter", topic)
    payload = {"event_id": "e1", "schema_version": 1, "ts": 1, "session_id": "s1",
               "chosen_candidate_id": None}  # fmt: skip
    raw = orjson.dumps(payload)
    name = choices.settings.topic("recs.choices")
    msg = Message(name, 3, 41, b"s1", raw)
    waiting = Pending(CHOICE, payload, name, 3, 41, b"s1", raw, arrived_ms=0, id_hash=7)

    async def both() -> None:
        await choices.boundary.reject(Event(msg), "missing_session", "no session")
        await choices.send_dead_letter(waiting, "missing_session", "no session")

    asyncio.run(both())
    (key_a, direct), (key_b, delayed) = topic.sent
    # The same record but for the time it was made.
    assert key_a == key_b == name.encode()
    assert {**direct, "ts": 0} == {**delayed, "ts": 0}
    assert delayed["error_kind"] == "missing_session"
    assert delayed["source"]["topic"] == name
    assert (delayed["source"]["partition"], delayed["source"]["offset"]) == (3, 41)
    assert base64.b64decode(delayed["source"]["key"]) == b"s1"
    assert base64.b64decode(delayed["original"]) == raw
    get_schema("deadletter").validate(delayed)

"""Poison input at the worker: hypothesis-generated random bytes and mutated valid events
(plus one of each named kind) interleaved with a clean workload. Every invalid event is in
the dead-letter topic with its original bytes, its reason and its source coordinates; the
clean workload's results are exact; the worker never stops.

The oracle is the same validation the worker uses (:class:`streams.codecs.EventDecoder`),
plus the item catalog for ``unknown_item``."""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streams.codecs import EventDecoder, Rejected
from streams.config import Settings
from streams.harness import Deployment
from tests.reliability.workload import (
    ITEMS,
    OPEN_WINDOWS,
    Workload,
    assert_exact,
    item_events,
    produce_workload,
    wait_for,
)

pytestmark = pytest.mark.integration

VALID = {
    "event_id": "fuzz-0", "schema_version": 1, "ts": 1_700_000_000_000, "user_id": "fuzz-user",
    "item_id": "item-1", "kind": "rating", "value": 4.0,
}  # fmt: skip
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20),
    st.floats(allow_nan=False), st.lists(st.integers(), max_size=3),
    st.sampled_from(["NaN", "Infinity", "-Infinity", 1e309]),
)  # fmt: skip
# Over the tests' 100 kB input limit, under the topics' record limit (+ 16 kB).
OVERSIZE = b'{"event_id": "' + b"x" * 110_000 + b'"}'
NAMED = [  # one of each kind the issue names
    b"{not json",                                                    # not JSON
    orjson.dumps({**VALID, "kind": "like", "value": "loud"}),       # schema violation
    orjson.dumps({k: v for k, v in VALID.items() if k != "event_id"}),  # missing id
    orjson.dumps({**VALID, "value": 11.0}),                         # out of range
    b'{"event_id": "x", "value": NaN}',                              # NaN
    b'{"event_id": "x", "value": Infinity}',                         # Inf
    OVERSIZE,                                                        # oversize
    orjson.dumps({**VALID, "item_id": "no-such-item"}),             # unknown item
]  # fmt: skip


@st.composite
def mutated_event(draw: st.DrawFn, n: int) -> bytes:
    event: dict[str, Any] = {**VALID, "event_id": f"fuzz-{n}", "user_id": f"fuzz-user-{n}"}
    for field in draw(st.lists(st.sampled_from(sorted(event)), min_size=1, max_size=3)):
        if draw(st.booleans()):
            event.pop(field, None)
        else:
            event[field] = draw(ODD_VALUES)
    raw = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
    return raw.replace(b'"NaN"', b"NaN") if draw(st.booleans()) else raw


def fuzz_payloads(data: st.DataObject, count: int) -> list[bytes]:
    payloads = []
    for n in range(count):
        if data.draw(st.booleans(), label=f"random bytes {n}?"):
            payloads.append(data.draw(st.binary(min_size=0, max_size=300)))
        else:
            payloads.append(data.draw(mutated_event(n)))
    return payloads


def original(dl: dict[str, Any]) -> bytes:
    """The whole original of a dead letter, checked: a prefix is kept past the size limit,
    with the length and hash of the whole, which the named oversize poison reproduces."""
    kept = base64.b64decode(dl["original"])
    if "original_length" not in dl:
        return kept
    whole = OVERSIZE if len(OVERSIZE) == dl["original_length"] else b""
    assert whole.startswith(kept), "the prefix kept is not the start of the original"
    assert hashlib.sha256(whole).hexdigest() == dl["original_sha256"]
    return whole


def expected_kind(decode: EventDecoder, raw: bytes) -> str | None:
    """The dead-letter reason the worker must give, or None for a valid event."""
    try:
        event = decode(raw)
    except Rejected as rejected:
        return rejected.kind
    return None if event.get("item_id") in ITEMS else "unknown_item"


# One generated mix per run (each example needs a worker and a broker round trip); no
# shrinking: a failure is reported with the full mix.
@settings(max_examples=1, derandomize=True, deadline=None, database=None,
          phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
@given(data=st.data())
def test_fuzzed_and_named_poison_is_dead_lettered_and_changes_nothing(
    deployment: Deployment, data: st.DataObject
) -> None:
    deployment.produce("items", item_events(), key_field="item_id")
    worker = deployment.start_worker()
    decode = EventDecoder("feedback.explicit", deployment.settings.max_message_bytes)
    poison = NAMED + fuzz_payloads(data, 150)
    kinds = {raw: expected_kind(decode, raw) for raw in poison}
    invalid = [raw for raw in poison if kinds[raw] is not None]
    # The seven named kinds map onto these reasons (missing id and out of range are schema
    # violations, NaN and Inf are not JSON); the fuzz adds to them.
    assert {kinds[raw] for raw in NAMED} == {"not_json", "schema_violation", "oversize",
                                             "unknown_item"}  # fmt: skip
    assert len(invalid) > len(NAMED)  # the fuzz contributed invalid events

    workload = Workload.generate(deployment.run_id, n_users=20, per_user=20, seed=37)
    chunks = 8  # clean and poison interleaved: chunk i of each, in turn
    size = -(-len(workload.events) // chunks)
    for i in range(chunks):
        deployment.produce("feedback.explicit", workload.events[i * size : (i + 1) * size])
        deployment.produce("feedback.explicit", poison[i::chunks])
    started = time.monotonic()
    wait_for(lambda: len(deployment.read("deadletter")) >= len(invalid), 90, "dead letters")
    assert_exact(
        deployment,
        workload,
        test="poison input (named kinds + hypothesis fuzz)",
        faults=f"{len(invalid)} invalid of {len(invalid) + len(workload.events)}",
        recovery_s=time.monotonic() - started,
    )
    letters = deployment.read("deadletter")
    got = Counter((original(dl), dl["error_kind"]) for dl in letters)
    assert got == Counter((raw, kinds[raw]) for raw in invalid)
    topic = deployment.topic("feedback.explicit")
    for dl in letters:
        assert dl["source"]["topic"] == topic
        assert dl["source"]["partition"] in range(deployment.settings.partitions)
        assert dl["source"]["offset"] >= 0
        assert dl["error_message"]
    assert worker.alive()


VIEW = {
    "event_id": "bad-0", "schema_version": 1, "ts": 1_700_000_000_000, "user_id": "bad-user",
    "item_id": "item-1", "kind": "view",
}  # fmt: skip
NAMED_IMPLICIT = [  # rejected by the implicit relay, before the agent sees anything
    b"{not json",
    orjson.dumps({**VIEW, "kind": "glance"}),                        # unknown kind
    orjson.dumps({**VIEW, "kind": "dwell"}),                         # dwell without seconds
    orjson.dumps({**VIEW, "value": -1.0}),                           # out of range
    b'{"event_id": "x", "value": NaN}',
    OVERSIZE,                                                        # oversize
    orjson.dumps({**VIEW, "item_id": "no-such-item"}),              # unknown item
    orjson.dumps({**VIEW, "kind": "impression", "impression_id": "imp-1",
                  "algorithm": "no-such-algorithm"}),               # unknown arm
    b"",                                                             # empty
]  # fmt: skip


def implicit_kind(decode: EventDecoder, raw: bytes) -> str:
    try:
        event = decode(raw)
    except Rejected as rejected:
        return rejected.kind
    if (
        event["kind"] == "impression"
        and event.get("algorithm") not in Settings.from_env({}).algorithms
    ):
        return "unknown_arm"
    return "unknown_item" if event["item_id"] not in ITEMS else "valid"


def test_poison_on_the_implicit_topic_is_dead_lettered_by_the_relay(
    deployment: Deployment,
) -> None:
    """The relay's dead letters carry the same things as an agent's: the original bytes,
    the reason, and the coordinates on ``feedback.implicit`` (not the relay topic)."""
    deployment.produce("items", item_events(), key_field="item_id")
    worker = deployment.start_worker(**OPEN_WINDOWS)
    workload = Workload.generate(deployment.run_id, 12, 10, seed=41, implicit_share=1.0)
    produce_workload(deployment, workload.events[: len(workload.events) // 2])
    deployment.produce("feedback.implicit", NAMED_IMPLICIT)
    produce_workload(deployment, workload.events[len(workload.events) // 2 :])

    wait_for(lambda: len(deployment.read("deadletter")) >= len(NAMED_IMPLICIT), 60, "letters")
    assert_exact(deployment, workload)
    letters = deployment.read("deadletter")
    decode = EventDecoder("feedback.implicit", deployment.settings.max_message_bytes)
    want = Counter((raw, implicit_kind(decode, raw)) for raw in NAMED_IMPLICIT)
    got = Counter((original(dl), dl["error_kind"]) for dl in letters)
    assert got == want
    assert {kind for _, kind in want} >= {
        "not_json", "schema_violation", "unknown_item", "unknown_arm",
    }  # fmt: skip
    topic = deployment.topic("feedback.implicit")
    assert {dl["source"]["topic"] for dl in letters} == {topic}
    assert all(dl["source"]["offset"] >= 0 and dl["error_message"] for dl in letters)
    assert worker.alive()

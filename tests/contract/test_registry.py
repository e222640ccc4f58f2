"""The registry API that the codec, the API and the CLI use."""

import base64
import dataclasses
import json
from pathlib import Path

import fastjsonschema
import pytest

import schemas
from schemas.registry import (
    MAX_MESSAGE_BYTES,
    EventSchema,
    all_schemas,
    get_schema,
    record_name,
    validation_error_message,
)

EXAMPLES_DIR = Path(schemas.__file__).parent / "examples"
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # broker message.max.bytes default


def example(name: str, kind: str, stem: str) -> dict:
    return json.loads((EXAMPLES_DIR / name / kind / f"{stem}.json").read_text(encoding="utf-8"))


def error_message(name: str, event: dict, **kwargs) -> str:
    with pytest.raises(fastjsonschema.JsonSchemaValueException) as info:
        get_schema(name).validate(event)
    return validation_error_message(info.value, **kwargs)


def test_get_schema_returns_the_latest_version():
    schema = get_schema("feedback.implicit")
    assert isinstance(schema, EventSchema)
    assert (schema.name, schema.version) == ("feedback.implicit", 1)
    assert get_schema("feedback.implicit", version=1) is schema
    assert schema.record.__name__ == "FeedbackImplicit"


def test_unknown_schema_names_the_known_ones():
    with pytest.raises(
        KeyError, match=r"no event schema 'feedback\.explicitt'.*feedback\.explicit v1"
    ):
        get_schema("feedback.explicitt")
    with pytest.raises(KeyError, match=r"'items v2'"):
        get_schema("items", version=2)


def test_all_schemas_is_a_copy():
    first = all_schemas()
    first.pop("items")
    assert "items" in all_schemas()
    assert all(name == schema.name for name, schema in all_schemas().items())


def test_event_schema_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_schema("items").version = 2


def test_record_name():
    assert record_name("experiments.results", 1) == "ExperimentsResults"
    assert record_name("deadletter", 3) == "DeadletterV3"


def test_validate_returns_the_event_without_adding_defaults():
    event = example("feedback.explicit", "valid", "like")
    assert get_schema("feedback.explicit").validate(event) == event
    assert "value" not in event and "context" not in event


def test_error_message_names_the_nested_field():
    event = example("recs.sessions", "valid", "three_candidates")
    event["candidates"][1]["rank"] = 0
    assert error_message("recs.sessions", event) == (
        "candidates[1].rank: must be bigger than or equal to 1"
    )


def test_error_message_for_the_whole_event():
    event = example("feedback.explicit", "valid", "like") | {"score": 1}
    assert error_message("feedback.explicit", event) == (
        "(event): must not contain {'score'} properties"
    )


def test_error_message_of_a_rule_with_alternatives_is_its_description():
    event = example("feedback.implicit", "valid", "click")
    del event["impression_id"]
    assert error_message("feedback.implicit", event) == (
        "(event): impression events need impression_id and algorithm; "
        "click and conversion events need impression_id"
    )


def test_error_message_does_not_echo_the_value_and_is_bounded():
    event = example("feedback.explicit", "valid", "like")
    event["user_id"] = "x" * 100_000
    message = error_message("feedback.explicit", event)
    assert message == "user_id: must be shorter than or equal to 128 characters"
    event["kind"] = "k" * 100_000
    event["user_id"] = "u-1"
    assert len(error_message("feedback.explicit", event, limit=40)) == 40


def test_deadletter_holds_the_largest_message_a_broker_delivers():
    assert MAX_MESSAGE_BYTES < KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    original = base64.b64encode(b"\xff" * KAFKA_DEFAULT_MAX_MESSAGE_BYTES).decode()
    event = example("deadletter", "valid", "schema_violation") | {"original": original}
    assert get_schema("deadletter").validate(event) is event
    event["original"] = "A" * 1_500_004
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        get_schema("deadletter").validate(event)

"""Event schemas, loaded and compiled once at import.

Every ``schemas/json/<name>.v<version>.schema.json`` becomes an :class:`EventSchema`: its
parsed JSON Schema, a validator compiled by fastjsonschema, and its faust record
(:mod:`schemas.records`). ``<name>`` is also the topic name without the configurable prefix.

The files declare JSON Schema 2020-12 but use only keywords that draft 7 already had
(fastjsonschema implements drafts 4, 6 and 7 and compiles a 2020-12 file with its draft-7
rules); ``tests/contract`` checks the keyword set and that fastjsonschema and the reference
implementation (jsonschema) agree on every example. Local ``$ref``s are inlined before
compiling: the generated code then checks every field in place instead of calling a
function per field, which is measurably faster on the hot path.

>>> schema = get_schema("feedback.explicit")
>>> event = {"event_id": "e-1", "schema_version": 1, "ts": 1767225600000,
...          "user_id": "u-1", "item_id": "i-1", "kind": "rating", "value": 6}
>>> try:
...     schema.validate(event)
... except fastjsonschema.JsonSchemaValueException as exc:
...     print(validation_error_message(exc))
value: must be smaller than or equal to 5
"""

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import fastjsonschema

from schemas import records

__all__ = [
    "MAX_MESSAGE_BYTES",
    "EventSchema",
    "all_schemas",
    "get_schema",
    "record_name",
    "validation_error_message",
]

#: Largest message value (bytes) an input topic accepts; larger ones are dead-lettered.
MAX_MESSAGE_BYTES = 1_000_000

SCHEMA_ID_BASE = "https://loopwise.dev/schemas/"
_SCHEMA_FILE = re.compile(r"(?P<name>[a-z][a-z_.]*[a-z])\.v(?P<version>[1-9][0-9]*)\.schema\.json")


@dataclass(frozen=True, slots=True)
class EventSchema:
    """One version of an event schema.

    ``validate(event)`` returns the event unchanged when it is valid and raises
    ``fastjsonschema.JsonSchemaValueException`` otherwise; it never fills in defaults.
    """

    name: str
    version: int
    json_schema: dict[str, Any]
    validate: Callable[[Any], Any]
    record: type[records.EventRecord]


def record_name(name: str, version: int) -> str:
    """Name of the record class of a schema.

    >>> record_name("feedback.explicit", 1), record_name("weights.scoring", 2)
    ('FeedbackExplicit', 'WeightsScoringV2')
    """
    base = "".join(part.capitalize() for part in re.split(r"[._]", name))
    return base if version == 1 else f"{base}V{version}"


def _inline_refs(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/<name>"}`` replaced by that definition.

    Keywords beside a ``$ref`` are dropped; the contract tests allow only annotations there.
    """
    if isinstance(node, list):
        return [_inline_refs(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.removeprefix("#/$defs/")
        if name == ref or name not in defs:
            raise ValueError(f"only local references to $defs are supported, not {ref!r}")
        if name in seen:
            raise ValueError(f"recursive definition {name!r} cannot be inlined")
        return _inline_refs(defs[name], defs, (*seen, name))
    return {key: _inline_refs(value, defs, seen) for key, value in node.items() if key != "$defs"}


def _load(file_name: str, text: str) -> EventSchema:
    match = _SCHEMA_FILE.fullmatch(file_name)
    if match is None:
        raise ValueError(f"schema file {file_name!r} is not named <name>.v<version>.schema.json")
    name, version = match["name"], int(match["version"])
    json_schema = json.loads(text)
    expected_id = f"{SCHEMA_ID_BASE}{name}.v{version}.json"
    if json_schema.get("$id") != expected_id:
        raise ValueError(f"{file_name}: $id must be {expected_id!r}")
    record = getattr(records, record_name(name, version), None)
    if record is None:
        raise LookupError(f"{file_name}: schemas.records has no {record_name(name, version)}")
    inlined = _inline_refs(json_schema, json_schema.get("$defs", {}))
    # use_default=False: validation must not add properties to the event it checks.
    validate = fastjsonschema.compile(inlined, use_default=False)
    return EventSchema(name, version, json_schema, validate, record)


def _load_all() -> dict[tuple[str, int], EventSchema]:
    loaded = {}
    for entry in resources.files(__package__).joinpath("json").iterdir():
        if entry.name.endswith(".json"):
            schema = _load(entry.name, entry.read_text(encoding="utf-8"))
            loaded[schema.name, schema.version] = schema
    return dict(sorted(loaded.items()))


_BY_VERSION: Mapping[tuple[str, int], EventSchema] = MappingProxyType(_load_all())
# _BY_VERSION is sorted by (name, version), so the last one written per name is the latest.
_LATEST: Mapping[str, EventSchema] = MappingProxyType(
    {name: schema for (name, _), schema in _BY_VERSION.items()}
)


def get_schema(name: str, version: int | None = None) -> EventSchema:
    """The schema called ``name`` (the topic name without prefix), latest version unless
    ``version`` is given.

    >>> get_schema("items").record.__name__
    'Items'
    """
    try:
        return _LATEST[name] if version is None else _BY_VERSION[name, version]
    except KeyError:
        wanted = name if version is None else f"{name} v{version}"
        known = ", ".join(f"{n} v{v}" for n, v in _BY_VERSION)
        raise KeyError(f"no event schema {wanted!r}; known: {known}") from None


def all_schemas() -> dict[str, EventSchema]:
    """The latest version of every schema, by name."""
    return dict(_LATEST)


def validation_error_message(exc: fastjsonschema.JsonSchemaValueException, limit: int = 512) -> str:
    """A short message for a failed validation: where (dotted path) and what.

    When a rule made of alternatives (``anyOf``) fails, its ``description`` says what the
    rule wants. The offending value is not echoed (it may be huge); the result has at most
    ``limit`` characters.
    """
    name = exc.name or "data"
    where = name.removeprefix("data").removeprefix(".") or "(event)"
    what = exc.message.removeprefix(name).strip()
    if exc.rule == "anyOf" and isinstance(exc.definition, dict):
        what = exc.definition.get("description", what)
    text = f"{where}: {what}"
    return text if len(text) <= limit else text[: limit - 3] + "..."

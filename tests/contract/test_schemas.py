"""Contract tests: the JSON Schemas, their examples, the compiled validators and the records
agree with each other.

The reference implementation is ``jsonschema``'s Draft 2020-12 validator; the runtime one is
the fastjsonschema-compiled validator from ``schemas.registry``. Every example (and many
mutations of the valid ones) must get the same verdict from both.
"""

import contextlib
import copy
import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from schemas import records
from schemas.registry import EventSchema, all_schemas, get_schema, record_name

SCHEMA_DIR = Path(schemas.__file__).parent
EXAMPLES_DIR = SCHEMA_DIR / "examples"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ID_PATTERN = "^[A-Za-z0-9._:\\-]+$"
TS_MAX = 4102444800000

NAMES = sorted(all_schemas())
# Every version of every schema, one per file json/<name>.v<version>.schema.json.
VERSIONS = [
    get_schema(name, int(version))
    for name, _, version in (
        path.name.removesuffix(".schema.json").rpartition(".v")
        for path in sorted((SCHEMA_DIR / "json").glob("*.schema.json"))
    )
]
# Topics that producers outside Loopwise write to (the input topics), plus the experiment
# definitions that the API and CLI announce; their examples must cover more failure modes.
INPUTS = {
    "feedback.explicit",
    "feedback.implicit",
    "items",
    "recs.sessions",
    "recs.choices",
    "recs.interactions",
    "experiments.exposures",
    "experiments.conversions",
    "experiments.definitions",
    "decisions",
    "metrics",
}

# Keywords that fastjsonschema (drafts 4/6/7) and jsonschema (2020-12) both implement the
# same way. Left out on purpose: "format" (asserted by fastjsonschema, only annotated by
# jsonschema), "default" (fastjsonschema would write it into the event),
# "contentEncoding"/"contentMediaType" (fastjsonschema decodes the value), and the 2019+
# keywords fastjsonschema ignores (prefixItems, unevaluated*, dependent*, $anchor, ...).
ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description"}
SINGLE_SUBSCHEMA = {"items", "additionalProperties", "propertyNames", "contains", "not"}
SINGLE_SUBSCHEMA |= {"if", "then", "else"}
SUBSCHEMA_LISTS = {"allOf", "anyOf", "oneOf"}
SUBSCHEMA_MAPS = {"properties", "$defs"}
ASSERTIONS = {
    "$ref",
    "type",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
}
ALLOWED_KEYWORDS = ANNOTATIONS | SINGLE_SUBSCHEMA | SUBSCHEMA_LISTS | SUBSCHEMA_MAPS | ASSERTIONS


def _ecma_end_of_input(pattern: str) -> str:
    return pattern.removesuffix("$") + r"\Z" if pattern.endswith("$") else pattern


def _ecma_pattern(validator, pattern, instance, schema):
    """``pattern`` with the ECMA-262 meaning of a final ``$``: end of input.

    JSON Schema patterns are ECMA-262 regular expressions; jsonschema hands them to Python's
    ``re``, whose ``$`` also matches before a trailing newline, so it would accept ``"u-1\\n"``
    as an id. fastjsonschema (and any ECMA engine) rejects it. ``test_schema_patterns`` keeps
    every pattern of the form ``^...$`` so that this translation is exact.
    """
    if validator.is_type(instance, "string") and not re.search(
        _ecma_end_of_input(pattern), instance
    ):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


ReferenceValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


def schema_of(name: str, event: Any) -> EventSchema:
    """The version of ``name`` that ``event`` claims (the latest if it claims none known)."""
    version = event.get("schema_version") if isinstance(event, dict) else None
    if type(version) is int:
        with contextlib.suppress(KeyError):
            return get_schema(name, version)
    return get_schema(name)


@functools.cache
def _reference(name: str, version: int) -> jsonschema.protocols.Validator:
    return ReferenceValidator(get_schema(name, version).json_schema)


def reference(name: str, event: Any) -> jsonschema.protocols.Validator:
    schema = schema_of(name, event)
    return _reference(schema.name, schema.version)


def fast_accepts(name: str, event: Any) -> bool:
    try:
        schema_of(name, event).validate(event)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def reference_accepts(name: str, event: Any) -> bool:
    return reference(name, event).is_valid(event)


# (event name, "valid" or "invalid", path) of every examples/<name>/<kind>/<case>.json
EXAMPLES = [
    (path.parent.parent.name, path.parent.name, path)
    for path in sorted(EXAMPLES_DIR.glob("*/*/*.json"))
]
VALID = [(name, path) for name, kind, path in EXAMPLES if kind == "valid"]
INVALID = [(name, path) for name, kind, path in EXAMPLES if kind == "invalid"]


def _example_id(case: tuple[str, Path]) -> str:
    name, path = case
    return f"{name}/{path.stem}"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def resolve(node: dict[str, Any], json_schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = json_schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def subschemas(node: Any):
    """Every schema object inside ``node`` (itself included), by keyword position."""
    if not isinstance(node, dict):
        return
    yield node
    for key, value in node.items():
        if key in SINGLE_SUBSCHEMA:
            yield from subschemas(value)
        elif key in SUBSCHEMA_LISTS:
            for item in value:
                yield from subschemas(item)
        elif key in SUBSCHEMA_MAPS:
            for item in value.values():
                yield from subschemas(item)


# ---------------------------------------------------------------- the schema files


def test_every_file_in_json_is_a_schema():
    assert len(VERSIONS) == len(list((SCHEMA_DIR / "json").iterdir()))
    assert {schema.name for schema in VERSIONS} == set(NAMES)


def _schema_id(schema: EventSchema) -> str:
    return f"{schema.name}.v{schema.version}"


each_schema = pytest.mark.parametrize("schema", VERSIONS, ids=_schema_id)


@each_schema
def test_schema_is_valid_2020_12(schema):
    json_schema = schema.json_schema
    assert json_schema["$schema"] == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(json_schema)


@each_schema
def test_schema_conventions(schema):
    json_schema = schema.json_schema
    assert json_schema["$id"] == f"https://loopwise.dev/schemas/{_schema_id(schema)}.json"
    assert json_schema["type"] == "object"
    assert json_schema["additionalProperties"] is False
    properties = json_schema["properties"]
    assert {"event_id", "schema_version", "ts"} <= set(json_schema["required"])
    assert set(json_schema["required"]) <= set(properties)
    schema_version = properties["schema_version"]
    assert (schema_version["type"], schema_version["const"]) == ("integer", schema.version)
    event_id = resolve(properties["event_id"], json_schema)
    assert (event_id["type"], event_id["minLength"], event_id["maxLength"]) == ("string", 1, 128)
    assert event_id["pattern"] == ID_PATTERN
    ts = resolve(properties["ts"], json_schema)
    assert (ts["type"], ts["minimum"], ts["maximum"]) == ("integer", 0, TS_MAX)


@each_schema
def test_schema_uses_only_keywords_both_engines_implement(schema):
    for node in subschemas(schema.json_schema):
        assert set(node) <= ALLOWED_KEYWORDS, set(node) - ALLOWED_KEYWORDS
        if "$ref" in node:
            # fastjsonschema ignores keywords beside $ref, 2020-12 applies them.
            assert set(node) <= {"$ref"} | ANNOTATIONS, node
            assert node["$ref"].startswith("#/$defs/")


@each_schema
def test_schema_bounds_every_value(schema):
    """Strings, arrays, objects with open-ended keys and numbers all have limits (numbers
    that may be null are statistics, left open)."""
    for node in subschemas(schema.json_schema):
        kinds = node.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if "string" in kinds and "enum" not in node:
            assert "maxLength" in node or "pattern" in node, node
        if "array" in kinds:
            assert "maxItems" in node, node
        if "object" in kinds and node.get("additionalProperties") is not False:
            assert "maxProperties" in node, node
        if {"integer", "number"} & set(kinds) and "null" not in kinds and "const" not in node:
            # Both sides: orjson reads 1e999 as inf, and only a bound rejects it.
            assert "minimum" in node or "exclusiveMinimum" in node, node
            assert "maximum" in node or "exclusiveMaximum" in node, node


@each_schema
def test_schema_patterns(schema):
    for node in subschemas(schema.json_schema):
        pattern = node.get("pattern")
        if pattern is not None:
            assert pattern.startswith("^"), pattern
            assert pattern.endswith("$") and "$" not in pattern[:-1], pattern


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name", NAMES)
def test_examples_exist(name):
    valid = [p for n, p in VALID if n == name]
    invalid = [p for n, p in INVALID if n == name]
    assert len(valid) >= 2
    assert len(invalid) >= (3 if name in INPUTS else 1)


def test_examples_belong_to_schemas():
    assert {p.name for p in EXAMPLES_DIR.iterdir()} == set(NAMES)
    assert {kind for _, kind, _ in EXAMPLES} == {"valid", "invalid"}


@pytest.mark.parametrize("case", VALID, ids=_example_id)
def test_valid_example_is_accepted_by_both_engines(case):
    name, path = case
    event = load(path)
    reference(name, event).validate(event)
    assert schema_of(name, event).validate(event) == load(path)  # nothing filled in


@pytest.mark.parametrize("case", INVALID, ids=_example_id)
def test_invalid_example_is_rejected_by_both_engines(case):
    name, path = case
    event = load(path)
    assert not reference_accepts(name, event)
    assert not fast_accepts(name, event)


def test_a_trailing_newline_does_not_make_a_valid_id():
    """Why ReferenceValidator gives ``$`` its ECMA-262 meaning: plain jsonschema disagrees."""
    event = load(EXAMPLES_DIR / "feedback.explicit" / "valid" / "like.json")
    event["user_id"] += "\n"
    assert not fast_accepts("feedback.explicit", event)
    assert not reference_accepts("feedback.explicit", event)
    plain = jsonschema.Draft202012Validator(get_schema("feedback.explicit").json_schema)
    assert plain.is_valid(event)


# ---------------------------------------------------------------- records


def record_required(record: type[records.EventRecord]) -> set[str]:
    options = record._options
    return set(options.fields) - options.optionalset | record.required_nullable


JSON_TYPE_OF_HINT = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    types.NoneType: "null",
}
JSON_TYPE_OF_VALUE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def hint_json_types(hint: Any) -> set[str]:
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if is_union else (hint,)
    return {JSON_TYPE_OF_HINT[typing.get_origin(m) or m] for m in members}


def schema_json_types(node: dict[str, Any], json_schema: dict[str, Any]) -> set[str]:
    node = resolve(node, json_schema)
    if "anyOf" in node:
        return set().union(*(schema_json_types(n, json_schema) for n in node["anyOf"]))
    if "type" in node:
        return {node["type"]} if isinstance(node["type"], str) else set(node["type"])
    return {JSON_TYPE_OF_VALUE[type(v)] for v in node.get("enum", [node.get("const")])}


def test_every_record_has_a_schema():
    defined = {
        name
        for name, value in vars(records).items()
        if isinstance(value, type)
        and issubclass(value, records.EventRecord)
        and value is not records.EventRecord
    }
    assert defined == {record_name(s.name, s.version) for s in VERSIONS}


@each_schema
def test_record_fields_and_required_match_schema(schema):
    assert schema.record.__name__ == record_name(schema.name, schema.version)
    assert set(schema.record._options.fields) == set(schema.json_schema["properties"])
    assert record_required(schema.record) == set(schema.json_schema["required"])


@each_schema
def test_record_types_match_schema(schema):
    json_schema = schema.json_schema
    required = set(json_schema["required"])
    for field, hint in schema.record._options.fields.items():
        expected = schema_json_types(json_schema["properties"][field], json_schema)
        if field not in required:
            expected |= {"null"}  # absent in the event, None on the record
        assert hint_json_types(hint) == expected, field


@pytest.mark.parametrize("case", VALID, ids=_example_id)
def test_record_round_trip(case):
    name, path = case
    event = load(path)
    schema = schema_of(name, event)
    as_dict = schema.record(**event).asdict()
    assert as_dict == event
    reference(name, as_dict).validate(as_dict)
    schema.validate(as_dict)
    assert schema.record.loads(schema.record(**event).dumps()).asdict() == event


# ---------------------------------------------------------------- both engines agree


def locations(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths to every value inside ``doc`` (dict keys and list indices)."""
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return []
    found = []
    for key, value in items:
        found.append((*prefix, key))
        found.extend(locations(value, (*prefix, key)))
    return found


def parent_of(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


NUMBERS = st.one_of(
    st.sampled_from([-1, 0, 0.5, 1, 5, 6, 86401, 2**31, 2**53, 2**64, 1e15 + 1, -1e16, 1e300]),
    st.sampled_from([TS_MAX + 1, 1.5, -0.0, 1e-300]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
STRINGS = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=0, max_value=3000).map(lambda n: "x" * n),
    st.sampled_from(["", "u-1\n", "Price", "price", "rating", "like", "mobile", "none"]),
)
OTHER_TYPES = st.sampled_from([None, True, False, [], {}, ["a"], {"a": 1}])
VALUES = st.one_of(NUMBERS, STRINGS, OTHER_TYPES)
VALID_EVENTS = [(name, load(path)) for name, path in VALID]


@settings(max_examples=600, derandomize=True, deadline=None)
@given(data=st.data())
def test_engines_agree_on_mutated_examples(data):
    name, example = data.draw(st.sampled_from(VALID_EVENTS), label="example")
    event = copy.deepcopy(example)
    path = data.draw(st.sampled_from(locations(event)), label="path")
    parent, key = parent_of(event, path), path[-1]
    mutation = data.draw(st.sampled_from(["drop", "number", "string", "other", "add"]))
    if mutation == "drop":
        del parent[key]
    elif mutation == "number":
        parent[key] = data.draw(NUMBERS, label="number")
    elif mutation == "string":
        parent[key] = data.draw(STRINGS, label="string")
    elif mutation == "other":
        parent[key] = data.draw(OTHER_TYPES, label="other")
    else:
        target = parent[key] if isinstance(parent[key], dict) else parent
        if isinstance(target, dict):
            target[data.draw(STRINGS, label="new key")] = data.draw(VALUES, label="value")
        else:
            target.append(data.draw(VALUES, label="item"))
    assert fast_accepts(name, event) == reference_accepts(name, event)

"""docs/openapi.yaml is a valid OpenAPI 3.1 document and describes exactly the worker's routes.

The routes are read from the faust app itself (``app.web.views`` after importing every module
that registers views, plus faust's built-in blueprints applied as the web server would), so a
new ``@app.page`` without documentation — or documentation of a removed route — fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

REPO = Path(__file__).resolve().parents[3]
SPEC_PATH = REPO / "docs" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def served() -> dict[tuple[str, str], str]:
    """(METHOD, path) → module of the view, for every route a worker serves."""
    import loopwise.worker  # noqa: F401  (imports every agent and view module)
    from streams.app import app

    # faust applies its built-in blueprints when the web server starts; do the same here.
    app.web.blueprints.apply(app.web)
    routes: dict[tuple[str, str], str] = {}
    for path, view in app.web.views.items():
        # HEAD is added by faust to every view; it is not an operation of its own.
        for method in view.get_methods() - {"HEAD"}:
            routes[(method, path)] = type(view).__module__
    return routes


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document, base_uri = read_from_filename(str(SPEC_PATH))
    assert document["openapi"].startswith("3.1")
    # base_uri lets the validator follow the relative $refs into schemas/json/.
    validate(document, base_uri=base_uri)


def test_the_validator_rejects_a_broken_document(spec: dict[str, Any]) -> None:
    broken = {**spec, "paths": {"/health": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(Exception, match="description"):
        validate(broken, base_uri=SPEC_PATH.as_uri())


def test_documented_routes_are_exactly_the_served_routes(
    spec: dict[str, Any], served: dict[tuple[str, str], str]
) -> None:
    documented = set(_operations(spec))
    assert ("POST", "/feedback") in served and ("GET", "/insights") in served
    assert not set(served) - documented, f"undocumented routes: {sorted(set(served) - documented)}"
    assert not documented - set(served), (
        f"documented, not served: {sorted(documented - set(served))}"
    )


def test_faust_builtins_are_marked_as_such(
    spec: dict[str, Any], served: dict[tuple[str, str], str]
) -> None:
    for key, op in _operations(spec).items():
        builtin = served[key].startswith("faust.")
        assert op.get("x-faust-builtin", False) == builtin, key
        assert ("faust" in op["tags"]) == builtin, key


def test_mutating_endpoints_need_the_token_and_document_their_errors(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    mutating = set()
    for (method, path), op in _operations(spec).items():
        if method == "GET":
            assert "security" not in op, f"{path}: reads are unauthenticated"
            continue
        mutating.add(path)
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        assert {"401", "413"} <= set(op["responses"]), (method, path)
    assert {"/feedback", "/experiments", "/experiments/{experiment_id}/stop"} <= mutating


def test_every_path_parameter_is_declared(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            declared = set()
            for p in params:
                if "$ref" in p:
                    p = spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                if p["in"] == "path":
                    declared.add(p["name"])
            assert declared == in_path, (method, path)


def test_error_responses_have_json_bodies(spec: dict[str, Any]) -> None:
    responses = spec["components"]["responses"]
    for (method, path), op in _operations(spec).items():
        for status, response in op["responses"].items():
            if not status.startswith("4") and status != "503":
                continue
            if "$ref" in response:
                response = responses[response["$ref"].rsplit("/", 1)[1]]
            assert "application/json" in response["content"], (method, path, status)


def test_feedback_body_references_the_event_schemas(spec: dict[str, Any]) -> None:
    from schemas.registry import get_schema

    body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    refs = {ref["$ref"] for ref in body["schema"]["oneOf"]}
    assert refs == {
        "../schemas/json/feedback.explicit.v1.schema.json",
        "../schemas/json/feedback.implicit.v1.schema.json",
    }
    for ref in refs:
        assert (SPEC_PATH.parent / ref).resolve().is_file()
    get_schema("feedback.explicit").validate(body["example"])


def test_the_experiment_example_is_a_valid_definition(spec: dict[str, Any]) -> None:
    from agents.experiments.store import validate_definition

    body = spec["paths"]["/experiments"]["post"]["requestBody"]["content"]["application/json"]
    definition = validate_definition(body["example"])
    assert definition["status"] == "running"
    assert body["schema"]["$ref"] == "#/components/schemas/ExperimentDefinitionInput"


def test_readme_links_the_document() -> None:
    assert "docs/openapi.yaml" in (REPO / "README.md").read_text()

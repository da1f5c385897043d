"""The committed docs/shipping-openapi.json is the document the code serves, and it is valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import schemathesis

from ordermesh.services.shipping.openapi import openapi_document, openapi_json
from tests.helpers import assert_committed_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "shipping-openapi.json"
HOW = (
    "run `python -m ordermesh.services.shipping.openapi > docs/shipping-openapi.json` "
    "and commit docs/shipping-openapi.json"
)


def test_committed_document_matches_the_code() -> None:
    assert_committed_document(COMMITTED, openapi_json(), HOW)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_is_valid_openapi_with_resolvable_refs() -> None:
    document = openapi_document()
    schemathesis.openapi.from_dict(document).validate()
    for ref in _refs(document):
        assert re.fullmatch(r"#/components/schemas/\w+", ref), ref
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"], f"dangling {ref}"


def test_every_api_operation_documents_its_problems_and_service_auth() -> None:
    document = openapi_document()
    assert document["info"]["title"] == "ordermesh shipping"
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = {
        operation["operationId"]: (path, operation)
        for path, item in document["paths"].items()
        for operation in item.values()
    }
    assert {"scheduleShipment", "getShipment", "cancelShipment"} <= set(operations)
    for path, operation in operations.values():
        if not path.startswith("/api/"):
            continue
        assert operation["security"] == [{"HTTPBearer": []}], path
        for status in ("401", "403", "422", "503"):
            content = operation["responses"][status]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], parameter["name"]
    schedule = operations["scheduleShipment"][1]["responses"]
    assert {"200", "201", "409"} <= set(schedule) and "Location" in schedule["201"]["headers"]
    assert "404" in operations["getShipment"][1]["responses"]
    links = schedule["201"]["links"]
    assert {link["operationId"] for link in links.values()} <= set(operations)

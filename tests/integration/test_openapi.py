"""The committed OpenAPI document (docs/openapi.json) is the one the code serves, and it is valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import schemathesis

from ordermesh.services.orders.openapi import openapi_document, openapi_json
from tests.helpers import assert_committed_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
HOW = "run `make openapi` and commit docs/openapi.json"


def test_committed_document_matches_the_code() -> None:
    assert_committed_document(COMMITTED, openapi_json(), HOW)


def test_serialisation_is_deterministic() -> None:
    text = openapi_json()
    assert text == openapi_json()


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


def test_every_api_operation_documents_its_problems_and_auth() -> None:
    document = openapi_document()
    operation_ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            if not path.startswith("/api/"):
                continue
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            for status in ("401", "422", "503"):
                content = operation["responses"][status]["content"]
                assert content == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
            for parameter in operation.get("parameters", []):
                assert "anyOf" not in parameter["schema"], f"{parameter['name']} documented as nullable"
    assert len(operation_ids) == len(set(operation_ids))
    links = document["paths"]["/api/orders"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} <= set(operation_ids)

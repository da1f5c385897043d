"""The order service's OpenAPI document, serialised deterministically for ``docs/openapi.json``.

Built from the app itself (no database is touched), so the committed file can be checked against
the code: ``make openapi`` regenerates it, and a test fails when the two drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from ordermesh.config import Settings
from ordermesh.services.orders.app import create_order_app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as a dict (a fresh copy on every call)."""
    document: dict[str, Any] = create_order_app(Settings()).openapi()
    loaded: dict[str, Any] = json.loads(json.dumps(document))
    return loaded


def openapi_json() -> str:
    """The OpenAPI document as ASCII JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"

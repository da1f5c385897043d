"""The shipping service's OpenAPI document, serialised deterministically for
``docs/shipping-openapi.json``.

Built from an app made as the kit makes it (``create_app`` with the spec's title and security
schemes, plus the routes), without a database: regenerate with
``python -m ordermesh.services.shipping.openapi > docs/shipping-openapi.json``; a test fails when
the committed file drifts from the code.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from ordermesh.auth import Tokens
from ordermesh.config import Settings
from ordermesh.errors import InfrastructureError
from ordermesh.http.app import create_app
from ordermesh.services.shipping.rest import shipping_router
from ordermesh.services.shipping.service import ShippingService
from ordermesh.services.shipping.spec import SPEC


async def _not_serving(_app: FastAPI) -> None:
    raise InfrastructureError("documentation only")


def _no_service() -> ShippingService:
    raise InfrastructureError("documentation only")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as a dict (a fresh copy on every call)."""
    app = create_app(SPEC.title, _not_serving, security_schemes=SPEC.security_schemes)
    app.include_router(shipping_router(Tokens(Settings()), _no_service))
    loaded: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return loaded


def openapi_json() -> str:
    """The OpenAPI document as ASCII JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(openapi_json(), end="")

"""Bearer tokens on the REST edge: the header read once, by hand, and the scheme as OpenAPI
documents it. One plain dependency per route rather than FastAPI's ``HTTPBearer``, which adds a
second dependency per request, a measurable share of a cached read (bench/http_orders.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ordermesh import logs
from ordermesh.auth import Tokens, require_service
from ordermesh.errors import Unauthenticated

SECURED: dict[str, Any] = {"security": [{"HTTPBearer": []}]}  # an operation's openapi_extra


def bearer_credentials(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>``; ``Unauthenticated`` (401) without one."""
    scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    return credentials.strip()


def service_caller(tokens: Tokens, request: Request) -> str:
    """The calling service (``service:NAME``) of an internal route: 401 without a valid token, 403
    for an end user's. Named on the request's log lines (its access line included)."""
    subject = require_service(tokens.verify(bearer_credentials(request)))
    logs.tag(user_id=subject)
    return subject


def bearer_scheme(description: str) -> dict[str, Any]:
    """The ``securitySchemes`` entry that ``SECURED`` operations refer to."""
    return {"HTTPBearer": {"type": "http", "scheme": "bearer", "description": description}}


__all__ = ["SECURED", "bearer_credentials", "bearer_scheme", "service_caller"]

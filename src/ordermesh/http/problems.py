"""Errors as RFC 9457 problem documents; the one place where error classes meet HTTP codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ordermesh import errors

PROBLEM = "application/problem+json"

STATUS: list[tuple[type[errors.OrdermeshError], int, str]] = [
    (errors.ValidationError, 422, "invalid-input"),
    (errors.DomainError, 409, "rule-violated"),
    (errors.NotFound, 404, "not-found"),
    (errors.ConcurrencyConflict, 409, "concurrent-change"),
    (errors.Unauthenticated, 401, "unauthenticated"),
    (errors.PermissionDenied, 403, "forbidden"),
    (errors.IdempotencyKeyInUse, 409, "idempotency-key-in-use"),
    (errors.IdempotencyKeyReused, 422, "idempotency-key-reused"),
    (errors.InfrastructureError, 503, "unavailable"),
]


class Violation(BaseModel):
    field: str
    description: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    violations: list[Violation] = []


def problem_response(
    status: int,
    slug: str,
    detail: str,
    violations: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://ordermesh.dev/problems/{slug}",
        "title": slug.replace("-", " "),
        "status": status,
        "detail": detail,
        "violations": violations or [],
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM)


def error_response(exc: errors.OrdermeshError) -> Response:
    for cls, status, slug in STATUS:
        if isinstance(exc, cls):
            violations = (
                [{"field": v.field, "description": v.description} for v in exc.violations]
                if isinstance(exc, errors.ValidationError)
                else None
            )
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return problem_response(status, slug, str(exc), violations, headers)
    return problem_response(500, "internal", "unexpected error")


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem statuses a route can answer."""
    return {
        s: {
            "description": "a problem document",
            "content": {PROBLEM: {"schema": Problem.model_json_schema()}},
        }
        for s in statuses
    }


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install(app: FastAPI) -> None:
    async def on_domain(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.OrdermeshError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        violations = [{"field": _field(tuple(e["loc"])), "description": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{v['field']}: {v['description']}" for v in violations)
        return problem_response(422, "invalid-input", detail or "invalid request", violations)

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(exc.status_code, slug, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(errors.OrdermeshError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

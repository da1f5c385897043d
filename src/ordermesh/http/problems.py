"""Errors as RFC 9457 problem documents in FastAPI: the exception handlers, the responses and
the OpenAPI entries. The documents themselves (and the error-class table) are ``ordermesh.problems``,
which clients share without FastAPI."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ordermesh import errors
from ordermesh.problems import PROBLEM, STATUS, error_from_problem, problem_body, problem_for


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
    return Response(
        problem_body(status, slug, detail, violations), status, headers=headers, media_type=PROBLEM
    )


def error_response(exc: BaseException) -> Response:
    problem = problem_for(exc)
    return Response(problem.body, problem.status, headers=problem.headers or None, media_type=PROBLEM)


PROBLEM_REF = "#/components/schemas/Problem"

_DESCRIPTIONS = {
    401: "the bearer token is missing, invalid or expired",
    403: "valid credentials that do not grant access",
    404: "no such resource (or not yours to know about)",
    409: "a business rule or a concurrent request refused the change",
    422: "invalid input: every offending field is listed in `violations`",
    429: "too many requests for now: retry after the seconds in `Retry-After`",
    503: "a backing service (database) is unavailable; retry later",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem statuses a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(s, "a problem document"),
            "content": {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}},
        }
        if s == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": "the authentication scheme to use: `Bearer`",
                    "schema": {"type": "string"},
                }
            }
        if s == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "whole seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        out[s] = entry
    return out


def add_schemas(openapi: dict[str, Any]) -> None:
    """Put ``Problem`` (and ``Violation``) into an OpenAPI document's components, where
    :func:`documented` entries point."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["Problem"] = schema


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _violation(error: Mapping[str, Any]) -> dict[str, str]:
    if error.get("type") == "json_invalid":
        # FastAPI puts the character offset in the location; say it in words instead.
        loc = tuple(error.get("loc", ()))
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = error.get("ctx", {}).get("error", "")
        return {"field": "body", "description": f"invalid JSON{where}: {reason}".rstrip(": ")}
    return {"field": _field(tuple(error["loc"])), "description": str(error["msg"])}


# FastAPI answers 400 "There was an error parsing the body" when reading a JSON body fails with
# anything but a JSONDecodeError; for the client that is the same mistake as malformed JSON.
_UNPARSABLE_BODY = "There was an error parsing the body"


def _unparsable_body(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 encoded JSON ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"a number in the JSON body has more than {sys.get_int_max_str_digits()} digits"
    return "the body could not be read as JSON"


def install(app: FastAPI) -> None:
    async def on_domain(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.OrdermeshError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        violations = [_violation(e) for e in exc.errors()]
        detail = "; ".join(f"{v['field']}: {v['description']}" for v in violations)
        return problem_response(422, "invalid-input", detail or "invalid request", violations)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
            violation = {"field": "body", "description": _unparsable_body(exc.__cause__)}
            return problem_response(422, "invalid-input", f"body: {violation['description']}", [violation])
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = str(exc.detail)
        # Starlette's routing says only "Not Found" / "Method Not Allowed": say what was asked.
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f"; allowed: {allowed}" if allowed else ""
            )
        return problem_response(exc.status_code, slug, detail, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # A bug: answered as a problem document like every other error (not Starlette's text/plain
        # 500), with nothing of its text; Starlette still logs the traceback.
        return error_response(exc)

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(errors.OrdermeshError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


__all__ = [
    "PROBLEM",
    "PROBLEM_REF",
    "STATUS",
    "Problem",
    "Violation",
    "add_schemas",
    "documented",
    "error_from_problem",
    "error_response",
    "install",
    "problem_response",
]

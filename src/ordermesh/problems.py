"""RFC 9457 problem documents as bytes, both ways: the codec HTTP servers and HTTP clients share.

No FastAPI or Starlette here (``ordermesh.client`` must work without them); the FastAPI handlers
that answer with these documents live in ``ordermesh.http.problems``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ordermesh import errors

PROBLEM = "application/problem+json"
TYPE_PREFIX = "https://ordermesh.dev/problems/"
RETRY_UNAVAILABLE_AFTER = 1  # seconds, on every 503

# The one place where error classes meet HTTP codes; the first matching row wins.
STATUS: list[tuple[type[errors.OrdermeshError], int, str]] = [
    (errors.ValidationError, 422, "invalid-input"),
    (errors.DomainError, 409, "rule-violated"),
    (errors.NotFound, 404, "not-found"),
    (errors.ConcurrencyConflict, 409, "concurrent-change"),
    (errors.Unauthenticated, 401, "unauthenticated"),
    (errors.PermissionDenied, 403, "forbidden"),
    (errors.IdempotencyKeyInUse, 409, "idempotency-key-in-use"),
    (errors.IdempotencyKeyReused, 422, "idempotency-key-reused"),
    (errors.RateLimited, 429, "rate-limited"),
    (errors.InfrastructureError, 503, "unavailable"),
]

# What an error says is capped, since it may quote the input: a run of more than
# _LONGEST_WORD non-blank characters (more than any valid id, key or name) is cut to its first
# _QUOTED ones and "…", and the whole text to ``limit`` characters.
_LONGEST_WORD = 160
_QUOTED = 40
_LONG_WORD = re.compile(rf"\S{{{_LONGEST_WORD + 1},}}")
DETAIL_LIMIT = 500
DESCRIPTION_LIMIT = 300


def clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    """``text`` safe to send back: a huge input quoted in it is cut to a short prefix + "…"."""
    if len(text) <= _LONGEST_WORD:
        return text
    text = _LONG_WORD.sub(lambda m: m.group()[:_QUOTED] + "…", text)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True, slots=True)
class ProblemDocument:
    """An answer to an error: its HTTP status and its ``application/problem+json`` body."""

    status: int
    body: bytes
    retry_after: float = 0.0  # 429: seconds until the caller may try again

    @property
    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status == 429 and self.retry_after > 0:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}  # whole seconds (RFC 9110)
        if self.status == 503:
            # A backing service is down: worth retrying soon, and every client knows this header.
            return {"Retry-After": str(RETRY_UNAVAILABLE_AFTER)}
        return {}


def problem_body(
    status: int, slug: str, detail: str, violations: Sequence[dict[str, str]] | None = None
) -> bytes:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": slug.replace("-", " "),
        "status": status,
        "detail": clip(detail),
        "violations": [
            {
                "field": clip(v["field"], DESCRIPTION_LIMIT),
                "description": clip(v["description"], DESCRIPTION_LIMIT),
            }
            for v in violations or ()
        ],
    }
    return orjson.dumps(body)


def problem_for(exc: BaseException) -> ProblemDocument:
    """The problem document ``exc`` is answered with (500 for anything the table does not know)."""
    for cls, status, slug in STATUS:
        if isinstance(exc, cls):
            violations = (
                [{"field": v.field, "description": v.description} for v in exc.violations]
                if isinstance(exc, errors.ValidationError)
                else None
            )
            retry_after = exc.retry_after if isinstance(exc, errors.RateLimited) else 0.0
            return ProblemDocument(status, problem_body(status, slug, str(exc), violations), retry_after)
    return ProblemDocument(500, problem_body(500, "internal", "unexpected error"))


def error_from_problem(status: int, body: bytes) -> errors.OrdermeshError:
    """The error a problem document stands for (what clients raise for an HTTP error answer)."""
    violations: list[errors.FieldViolation] = []
    try:
        doc = orjson.loads(body)
        detail = str(doc.get("detail") or doc)
        slug = str(doc.get("type", "")).rsplit("/", 1)[-1]
        violations = [
            errors.FieldViolation(v["field"], v["description"]) for v in doc.get("violations") or []
        ]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        detail, slug = body.decode(errors="replace")[:500] or f"HTTP {status}", ""
    if status == 401:
        return errors.Unauthenticated(detail)
    if status == 403:
        return errors.PermissionDenied(detail)
    if status == 404:
        return errors.NotFound(detail)
    if status == 409:
        if slug == "idempotency-key-in-use":
            return errors.IdempotencyKeyInUse(detail)
        return errors.DomainError(detail)
    if status == 429:
        return errors.RateLimited(detail)
    if status == 422:
        if slug == "idempotency-key-reused":
            return errors.IdempotencyKeyReused(detail)
        return errors.ValidationError(detail, violations)
    if 400 <= status < 500:  # the request itself was refused (400, 405, 413, …): never retried
        return errors.DomainError(f"HTTP {status}: {detail}")
    return errors.InfrastructureError(f"HTTP {status}: {detail}")

"""The one error hierarchy of ordermesh.

Every error a caller can act on derives from :class:`OrdermeshError`; transports map the classes
to their own codes at the edge (``ordermesh.http.problems``, ``ordermesh.rpc.status``), so
domain code never knows HTTP or gRPC::

    OrdermeshError
    ├── DomainError              a business rule said no                     -> 409 / FAILED_PRECONDITION
    │   └── ValidationError      the input itself is malformed               -> 422 / INVALID_ARGUMENT
    ├── NotFound                 no such order, stream, projection…          -> 404 / NOT_FOUND
    ├── ConcurrencyConflict      stale expected version on append           -> 409 / ABORTED
    ├── AuthError
    │   ├── Unauthenticated      no or bad credentials                       -> 401 / UNAUTHENTICATED
    │   └── PermissionDenied     valid credentials, not yours                -> 403 / PERMISSION_DENIED
    ├── IdempotencyError
    │   ├── IdempotencyKeyInUse  the same key is still being processed       -> 409 / ABORTED
    │   └── IdempotencyKeyReused the same key came with a different request  -> 422 / INVALID_ARGUMENT
    ├── RateLimited              too many requests (or open streams) for now -> 429 / RESOURCE_EXHAUSTED
    ├── InfrastructureError      a database or broker is unreachable         -> 503 / UNAVAILABLE
    └── ConfigError              a setting (ORDERMESH_*) is malformed        -> one line at start, exit 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class OrdermeshError(Exception):
    """Base of every error ordermesh raises on purpose."""


class DomainError(OrdermeshError):
    """A business rule refused the command (e.g. shipping a cancelled order)."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class ValidationError(DomainError):
    """Malformed input; carries one violation per offending field."""

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations)


class NotFound(OrdermeshError):
    """The thing asked for does not exist (or the caller may not know it exists)."""


class ConcurrencyConflict(OrdermeshError):
    """An append's expected version was stale: someone else wrote to the stream first."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int | None = None) -> None:
        detail = f", actual {actual_version}" if actual_version is not None else ""
        super().__init__(f"stream {stream_id!r}: expected version {expected_version}{detail}")
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class AuthError(OrdermeshError):
    """Authentication or authorisation failed."""


class Unauthenticated(AuthError):
    """No credentials, or credentials that do not verify."""


class PermissionDenied(AuthError):
    """Valid credentials that do not grant access to this resource."""


class IdempotencyError(OrdermeshError):
    """An Idempotency-Key could not be honoured."""


class IdempotencyKeyInUse(IdempotencyError):
    """A request with this key is still in flight."""


class IdempotencyKeyReused(IdempotencyError):
    """This key was first used with a different request."""


class RateLimited(OrdermeshError):
    """The caller sent more than its share; ``retry_after`` seconds from now it may try again
    (0: no telling, e.g. until it closes one of its streams)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InfrastructureError(OrdermeshError):
    """A backing service (database, broker) failed or is unreachable."""


class ConfigError(OrdermeshError):
    """A setting is malformed or unusable (a bad ``ORDERMESH_*`` value, a port in use); the
    message names the variable and what it expects, and the process exits 1 at start."""

    def __init__(self, message: str, variable: str = "") -> None:
        super().__init__(message)
        self.variable = variable

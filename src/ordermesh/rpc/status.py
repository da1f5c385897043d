"""Errors as gRPC statuses with rich details (``google.rpc.Status``), and back again.

The one place where error classes meet gRPC codes. Every status carries an ``ErrorInfo`` (reason
and domain ``ordermesh.dev``), so a client can tell apart errors that share a code; a
``ValidationError`` also carries a ``BadRequest`` listing each offending field, and ``RateLimited``
a ``RetryInfo`` saying when to try again. Reasons are the REST problem slugs in upper snake case.
Messages are clipped as problem documents are (``ordermesh.problems.clip``): an error never
sends back more than a short prefix of a huge input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status  # type: ignore[import-untyped, unused-ignore]

from ordermesh import errors
from ordermesh.problems import DESCRIPTION_LIMIT, clip

DOMAIN = "ordermesh.dev"
_DETAILS_KEY = "grpc-status-details-bin"  # where grpc_status puts the google.rpc.Status
INTERNAL_REASON = "INTERNAL"

# Most specific first: ValidationError is a DomainError.
_MAPPING: list[tuple[type[errors.OrdermeshError], grpc.StatusCode, str]] = [
    (errors.ValidationError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT"),
    (errors.DomainError, grpc.StatusCode.FAILED_PRECONDITION, "RULE_VIOLATED"),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (errors.ConcurrencyConflict, grpc.StatusCode.ABORTED, "CONCURRENT_CHANGE"),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN"),
    (errors.IdempotencyKeyInUse, grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE"),
    (errors.IdempotencyKeyReused, grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED"),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    (errors.InfrastructureError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
]
_BY_REASON = {reason: cls for cls, _, reason in _MAPPING}
# Statuses that come without our ErrorInfo (another server, a proxy): the closest class by code.
_BY_CODE: dict[grpc.StatusCode, type[errors.OrdermeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.ValidationError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.DomainError,
    grpc.StatusCode.ABORTED: errors.DomainError,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


def rich_status(exc: BaseException) -> status_pb2.Status:
    """The status that answers ``exc``: the mapped code for an ``OrdermeshError``, else INTERNAL
    with a generic message (an unexpected exception is a bug; its text may leak internals)."""
    for cls, code, reason in _MAPPING:
        if isinstance(exc, cls):
            details: list[Message] = [_error_info(reason, _metadata(exc))]
            if isinstance(exc, errors.ValidationError) and exc.violations:
                violation = error_details_pb2.BadRequest.FieldViolation
                fields = [
                    violation(
                        field=clip(v.field, DESCRIPTION_LIMIT),
                        description=clip(v.description, DESCRIPTION_LIMIT),
                    )
                    for v in exc.violations
                ]
                details.append(error_details_pb2.BadRequest(field_violations=fields))
            if isinstance(exc, errors.RateLimited) and exc.retry_after > 0:
                delay = Duration()
                delay.FromNanoseconds(round(exc.retry_after * 1e9))
                details.append(error_details_pb2.RetryInfo(retry_delay=delay))
            return _status(code, clip(str(exc)) or reason.replace("_", " ").lower(), details)
    return _status(grpc.StatusCode.INTERNAL, "internal error", [_error_info(INTERNAL_REASON, {})])


def to_grpc_status(exc: BaseException) -> grpc.Status:
    """:func:`rich_status` ready for ``context.abort_with_status``."""
    status: grpc.Status = rpc_status.to_status(rich_status(exc))
    return status


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.OrdermeshError:
    """The ``OrdermeshError`` a failed call stands for (the gRPC client's side of the mapping).

    Our own statuses map back by ``ErrorInfo.reason``; any other code by itself, and what has
    no class (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) becomes ``InfrastructureError``.
    """
    code, message = exc.code(), exc.details() or ""
    info, violations, retry_after = _read_details(exc)
    cls = _BY_REASON.get(info.reason) if info is not None and info.domain == DOMAIN else None
    cls = cls or _BY_CODE.get(code)
    if cls is errors.ConcurrencyConflict:
        assert info is not None
        conflict = _conflict(info.metadata)
        return conflict if conflict is not None else errors.DomainError(message)
    if cls is errors.ValidationError:
        return errors.ValidationError(message, violations)
    if cls is errors.RateLimited:
        return errors.RateLimited(message, retry_after)
    if cls is None:
        return errors.InfrastructureError(f"{code.name}: {message}")
    return cls(message)


def _status(code: grpc.StatusCode, message: str, details: Sequence[Message]) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _error_info(reason: str, metadata: Mapping[str, str]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def _metadata(exc: errors.OrdermeshError) -> dict[str, str]:
    if isinstance(exc, errors.ConcurrencyConflict):
        out = {"stream_id": exc.stream_id, "expected_version": str(exc.expected_version)}
        if exc.actual_version is not None:
            out["actual_version"] = str(exc.actual_version)
        return out
    return {}


def _conflict(metadata: Mapping[str, str]) -> errors.ConcurrencyConflict | None:
    try:
        actual = metadata.get("actual_version")
        return errors.ConcurrencyConflict(
            metadata["stream_id"], int(metadata["expected_version"]), None if actual is None else int(actual)
        )
    except (KeyError, ValueError):
        return None


def _read_details(
    exc: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[errors.FieldViolation], float]:
    raw = next((v for k, v in exc.trailing_metadata() or () if k == _DETAILS_KEY), None)
    try:
        status = status_pb2.Status.FromString(raw) if isinstance(raw, bytes) else None
    except DecodeError:
        status = None
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[errors.FieldViolation] = []
    retry_after = 0.0
    for detail in status.details if status is not None else ():
        unpacked, bad, retry = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if detail.Unpack(unpacked):  # False when the detail is of another type
            info = unpacked
        elif detail.Unpack(bad):
            violations += [errors.FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return info, violations, retry_after

"""The request-decoding guard of ``rpc.interceptors.CallInterceptor``: a request message that
cannot be decoded is answered with INVALID_ARGUMENT (a ``ValidationError`` naming the field
``request``), where grpc.aio alone would answer UNKNOWN.

The wrapped handler's deserializer (:func:`guarded`) turns a decoding failure into a stand-in
value instead of raising, and the handler wrapper (:func:`checked`) raises the error for it inside
the interceptor's error layer, so the rejection is logged and counted like any other answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ordermesh.errors import FieldViolation, ValidationError

_Deserializer = Callable[[bytes], Any]


def guarded(deserialize: _Deserializer | None) -> _Deserializer | None:
    """A request that cannot be decoded becomes an :class:`_Undecodable`, answered with
    INVALID_ARGUMENT by the wrapper (grpc.aio alone would answer UNKNOWN)."""
    if deserialize is None:
        return None
    inner = deserialize

    def guarded(raw: bytes) -> Any:
        try:
            return inner(raw)
        except Exception as exc:
            return _Undecodable(str(exc) or type(exc).__name__)

    return guarded


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """Stands for a request message that did not decode, until the handler wrapper rejects it."""

    reason: str

    def error(self) -> ValidationError:
        description = f"could not be decoded: {self.reason}"
        return ValidationError(f"request: {description}", [FieldViolation("request", description)])


def checked(request: Any, streaming: bool) -> Any:
    """``request`` (a streamed one: each message as it comes) once it decoded; raises the
    ``ValidationError`` of one that did not."""
    if isinstance(request, _Undecodable):
        raise request.error()
    return _checked_stream(request) if streaming else request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


__all__ = ["checked", "guarded"]

"""Server interceptors (grpc.aio): everything a call needs besides its handler.

Each interceptor wraps the ``RpcMethodHandler`` that ``continuation`` returns, of any kind (unary
or streamed request and response; coroutine, async generator or plain function, dispatched as
grpc.aio itself does), so handlers hold no cross-cutting code. :class:`CallInterceptor` does the
wrapping; a subclass sees each call through :meth:`~CallInterceptor.unary` (one response) and
:meth:`~CallInterceptor.stream` (streamed responses). Every call runs in its own task and
context, so context variables set by one interceptor are seen by those inside it, the handler
(an async generator included) and, once the inner ones return, those outside it.

``build_server`` installs them outermost first: logging, metrics, errors, auth, deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from ordermesh.errors import FieldViolation, Unauthenticated, ValidationError
from ordermesh.http.auth import Tokens
from ordermesh.rpc.context import principal_or_none, set_deadline, set_principal
from ordermesh.rpc.status import to_grpc_status

log = logging.getLogger("ordermesh.rpc")

#: Methods anyone may call: health checks and reflection carry no token.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Context = grpc.aio.ServicerContext[Any, Any]
Proceed = Callable[[Any], Awaitable[Any]]
ProceedStream = Callable[[Any], AsyncGenerator[Any, None]]
_Deserializer = Callable[[bytes], Any]

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_END = object()


@dataclass(frozen=True, slots=True)
class Call:
    """One incoming call, as the interceptors see it."""

    method: str  # "/package.Service/Method"
    context: Context
    request_streaming: bool
    response_streaming: bool


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler; override :meth:`unary` and :meth:`stream` (both pass through)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        kind = (handler.request_streaming, handler.response_streaming)
        behaviour: Callable[..., Any] | None = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[kind]
        assert behaviour is not None, f"{method}: handler without a behaviour"
        wrapped: Callable[..., Any]
        if handler.response_streaming:

            async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
                call = Call(method, context, handler.request_streaming, True)
                inner = self.stream(call, request, lambda r: _stream(behaviour, r, context))
                async with aclosing(inner) as messages:
                    async for message in messages:
                        yield message

            wrapped = streamed
        else:

            async def unary(request: Any, context: Context) -> Any:
                call = Call(method, context, handler.request_streaming, False)
                return await self.unary(call, request, lambda r: _unary(behaviour, r, context))

            wrapped = unary
        return _FACTORIES[kind](
            wrapped,
            request_deserializer=self.request_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        """A call with one response: ``await proceed(request)`` is the rest of the chain."""
        return await proceed(request)

    def stream(self, call: Call, request: Any, proceed: ProceedStream) -> AsyncGenerator[Any, None]:
        """A call with streamed responses: yield what ``proceed(request)`` yields."""
        return proceed(request)

    def request_deserializer(self, deserialize: _Deserializer | None) -> _Deserializer | None:
        return deserialize


async def _unary(behaviour: Callable[..., Any], request: Any, context: Context) -> Any:
    if inspect.iscoroutinefunction(behaviour):
        return await behaviour(request, context)
    return await asyncio.to_thread(behaviour, request, context)  # a plain function: off the loop


async def _stream(behaviour: Callable[..., Any], request: Any, context: Context) -> AsyncGenerator[Any, None]:
    if inspect.isasyncgenfunction(behaviour):
        async with aclosing(behaviour(request, context)) as messages:
            async for message in messages:
                yield message
    elif inspect.iscoroutinefunction(behaviour):
        await behaviour(request, context)  # it sends with context.write()
    else:
        messages = iter(await asyncio.to_thread(behaviour, request, context))
        while (message := await asyncio.to_thread(next, messages, _END)) is not _END:
            yield message


class AuthInterceptor(CallInterceptor):
    """Verifies the bearer token (``authorization: Bearer <jwt>`` metadata) of every call but
    public ones and makes its subject the principal (``current_principal()``); raises
    ``Unauthenticated`` (answered as UNAUTHENTICATED) when it is missing or does not verify."""

    def __init__(self, tokens: Tokens, public: Sequence[str] = PUBLIC_METHOD_PREFIXES) -> None:
        self._tokens = tokens
        self._public = tuple(public)

    def authenticate(self, call: Call) -> None:
        if not call.method.startswith(self._public):
            set_principal(self._tokens.verify(_bearer_token(call.context)))

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        self.authenticate(call)
        return await proceed(request)

    async def stream(self, call: Call, request: Any, proceed: ProceedStream) -> AsyncGenerator[Any, None]:
        self.authenticate(call)
        async with aclosing(proceed(request)) as messages:
            async for message in messages:
                yield message


def _bearer_token(context: Context) -> str:
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if not values:
        raise Unauthenticated("no credentials: send the metadata `authorization: Bearer <token>`")
    value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the `authorization` metadata must be one `Bearer <token>`")
    return token.strip()


class DeadlineInterceptor(CallInterceptor):
    """Sets the call's deadline (``remaining_seconds()``) from the client's. A call with one
    response and no client deadline gets ``default`` seconds: then its handler is cancelled and
    the client gets DEADLINE_EXCEEDED. (gRPC itself cancels handlers at the client's deadline.)
    Streamed responses get no default: they are live subscriptions, ended by the client or by
    the server's shutdown."""

    def __init__(self, default: float = 10.0) -> None:
        if default <= 0:
            raise ValueError(f"default deadline must be positive, not {default}")
        self.default = default

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        remaining = _client_budget(call.context)
        budget = self.default if remaining is None else remaining
        deadline = time.monotonic() + budget
        set_deadline(deadline)
        timer = asyncio.timeout(budget if remaining is None else None)
        try:
            async with timer:
                return await proceed(request)
        except TimeoutError:
            if not (timer.expired() or time.monotonic() >= deadline):
                raise  # the handler's own timeout, before the deadline: a bug, not ours to hide
            detail = "deadline exceeded"
            if remaining is None:
                detail += f": the server's default of {self.default:g} s (send a deadline to choose another)"
            await call.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, detail)

    async def stream(self, call: Call, request: Any, proceed: ProceedStream) -> AsyncGenerator[Any, None]:
        remaining = _client_budget(call.context)
        deadline = None if remaining is None else time.monotonic() + remaining
        set_deadline(deadline)
        try:
            async with aclosing(proceed(request)) as messages:
                async for message in messages:
                    yield message
        except TimeoutError:
            if deadline is None or time.monotonic() < deadline:
                raise
            await call.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


_NO_DEADLINE = 10 * 365 * 86400.0  # older grpc versions report "none" as a far future


def _client_budget(context: Context) -> float | None:
    remaining: float | None = context.time_remaining()
    return None if remaining is None or remaining >= _NO_DEADLINE else remaining


class ErrorsInterceptor(CallInterceptor):
    """Answers what a handler raises: an ``OrdermeshError`` with its status and rich details
    (``ordermesh.rpc.status``), anything else with INTERNAL and a generic message (logged with
    its traceback: it is a bug). A status the handler chose stands: ``context.abort``, or
    ``set_code`` before raising (as the generated base servicer does for UNIMPLEMENTED). A
    request that cannot be decoded is INVALID_ARGUMENT (grpc.aio alone would answer UNKNOWN)."""

    def request_deserializer(self, deserialize: _Deserializer | None) -> _Deserializer | None:
        if deserialize is None:
            return None
        inner = deserialize

        def guarded(raw: bytes) -> Any:
            try:
                return inner(raw)
            except Exception as exc:
                return _Undecodable(str(exc) or type(exc).__name__)

        return guarded

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        try:
            return await proceed(_checked(request, call.request_streaming))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._answer(call, exc)

    async def stream(self, call: Call, request: Any, proceed: ProceedStream) -> AsyncGenerator[Any, None]:
        try:
            async with aclosing(proceed(_checked(request, call.request_streaming))) as messages:
                async for message in messages:
                    yield message
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._answer(call, exc)

    async def _answer(self, call: Call, exc: Exception) -> NoReturn:
        status = to_grpc_status(exc)
        if status.code == grpc.StatusCode.INTERNAL:
            chosen: grpc.StatusCode | None = call.context.code()
            if chosen is not None and chosen != grpc.StatusCode.OK:
                await call.context.abort(chosen, call.context.details() or "")
            log.error("%s failed: unexpected %s", call.method, type(exc).__name__, exc_info=exc)
        await call.context.abort_with_status(status)


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """Stands for a request message that did not decode, until the handler wrapper rejects it."""

    reason: str

    def error(self) -> ValidationError:
        description = f"could not be decoded: {self.reason}"
        return ValidationError(f"request: {description}", [FieldViolation("request", description)])


def _checked(request: Any, streaming: bool) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error()
    return _checked_stream(request) if streaming else request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


class _Observer(CallInterceptor):
    """Sees each call end (status code, seconds, messages streamed) and each message sent."""

    def record(self, call: Call, code: grpc.StatusCode, seconds: float, messages: int) -> None:
        raise NotImplementedError

    def sent(self, call: Call) -> None:
        """A streamed message was handed to gRPC."""

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        start, error = time.perf_counter(), None
        try:
            return await proceed(request)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.record(call, _outcome(call.context, error), time.perf_counter() - start, 0)

    async def stream(self, call: Call, request: Any, proceed: ProceedStream) -> AsyncGenerator[Any, None]:
        start, error, count = time.perf_counter(), None, 0
        try:
            async with aclosing(proceed(request)) as messages:
                async for message in messages:
                    count += 1
                    self.sent(call)
                    yield message
        except BaseException as exc:  # GeneratorExit too: the stream was dropped
            error = exc
            raise
        finally:
            self.record(call, _outcome(call.context, error), time.perf_counter() - start, count)


def _outcome(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining: float | None = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code: grpc.StatusCode | None = context.code()  # set by abort(), or by the handler
    if code is not None:
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(_Observer):
    """Prometheus: calls by method and code, latency by method (a stream's lasts until it ends),
    messages sent on server streams by method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "ordermesh_grpc_calls", "gRPC calls answered", ["method", "code"], registry=registry
        )
        self.latency = Histogram(
            "ordermesh_grpc_call_seconds",
            "gRPC call duration (streams: until the stream ends)",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        self.messages = Counter(
            "ordermesh_grpc_stream_messages", "Messages sent on server streams", ["method"], registry=registry
        )

    def sent(self, call: Call) -> None:
        self.messages.labels(call.method).inc()

    def record(self, call: Call, code: grpc.StatusCode, seconds: float, messages: int) -> None:
        self.calls.labels(call.method, code.name).inc()
        self.latency.labels(call.method).observe(seconds)


class LoggingInterceptor(_Observer):
    """One INFO line per call on ``ordermesh.rpc``: method, code, duration, user (and messages
    for streams), in the text as key=value and as ``rpc_*`` record attributes."""

    def record(self, call: Call, code: grpc.StatusCode, seconds: float, messages: int) -> None:
        user = principal_or_none()
        fields: dict[str, Any] = {
            "rpc_method": call.method,
            "rpc_code": code.name,
            "rpc_duration_ms": round(seconds * 1000, 3),
            "rpc_user": user,
        }
        text = "rpc method=%s code=%s duration_ms=%.3f user=%s"
        args: list[Any] = [call.method, code.name, seconds * 1000, user or "-"]
        if call.response_streaming:
            fields["rpc_messages"] = messages
            text += " messages=%d"
            args.append(messages)
        log.info(text, *args, extra=fields)

"""The server interceptor (grpc.aio): everything a call needs besides its handler.

:class:`CallInterceptor` wraps the ``RpcMethodHandler`` that ``continuation`` returns, of any kind
(unary or streamed request and response; coroutine, async generator or plain function, dispatched
as grpc.aio itself does), so handlers hold no cross-cutting code. One wrapper does, outermost
first, what used to be five interceptors:

1. logging and metrics: they see every outcome, rejections included, with the final code and the
   whole duration;
2. errors: the one place that turns exceptions into statuses (so auth just raises
   ``Unauthenticated``), and undecodable requests into INVALID_ARGUMENT;
3. auth: the bearer token's subject becomes the principal (public methods need none);
4. deadline: the call's deadline, and the server's default timer around the handler alone.

Injected faults (``rpc.faults``, set with ``ordermesh faults``) come before auth, inside errors:
a faulted call is logged, counted and answered like a real failure; with none set, one check.

The wrapped handler is built once per method (and handler) and reused; per call there is one
coroutine (or async generator) layer. Every call runs in its own task and context, so the context
variables set here (principal, deadline) are seen by the handler, an async generator included.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from ordermesh import tracing
from ordermesh.auth import Tokens
from ordermesh.errors import FieldViolation, Unauthenticated, ValidationError
from ordermesh.resilience.faults import Faults
from ordermesh.rpc.context import principal_or_none, set_deadline, set_principal
from ordermesh.rpc.faults import inject
from ordermesh.rpc.status import to_grpc_status

log = logging.getLogger("ordermesh.rpc")
# Live streams report their message count every this many messages, not only when they end
# (counting each message costs ~2.4 µs; a batch of them costs nothing measurable).
_FLUSH_EVERY = 64

#: Methods anyone may call: health checks and reflection carry no token.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Deserializer = Callable[[bytes], Any]

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_END = object()
_OK = grpc.StatusCode.OK
_NO_DEADLINE = 10 * 365 * 86400.0  # older grpc versions report "none" as a far future
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class Metrics:
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
            buckets=_LATENCY_BUCKETS,
        )
        self.messages = Counter(
            "ordermesh_grpc_stream_messages", "Messages sent on server streams", ["method"], registry=registry
        )


class _Method:
    """What the wrapper of one method needs per call, computed once: its name, whether it is
    public, and its metric children (calls per code, latency, messages)."""

    __slots__ = (
        "_calls",
        "_metrics",
        "latency",
        "messages",
        "name",
        "public",
        "response_streaming",
        "traced",
    )

    def __init__(
        self, name: str, public: bool, response_streaming: bool, metrics: Metrics | None, traced: bool = False
    ) -> None:
        self.name = name
        self.public = public
        self.response_streaming = response_streaming
        self.traced = traced
        self._metrics = metrics
        self._calls: dict[grpc.StatusCode, Any] = {}
        self.latency = None if metrics is None else metrics.latency.labels(name)
        self.messages = None if metrics is None or not response_streaming else metrics.messages.labels(name)

    def record(self, context: Context, error: BaseException | None, seconds: float, messages: int) -> None:
        """The call ended: count it, time it, log it (when INFO is on for ``ordermesh.rpc``) and,
        traced, put its final code on the call's span."""
        metrics = self._metrics
        logging_on = log.isEnabledFor(logging.INFO)
        if metrics is None and not logging_on and not self.traced:
            return
        code = _outcome(context, error)
        if self.traced:
            _settle_span(code, context)
        if metrics is not None:
            if messages % _FLUSH_EVERY and self.messages is not None:
                self.messages.inc(messages % _FLUSH_EVERY)  # the rest went in while streaming
            calls = self._calls.get(code)
            if calls is None:
                calls = self._calls[code] = metrics.calls.labels(self.name, code.name)
            calls.inc()
            assert self.latency is not None
            self.latency.observe(seconds)
        if logging_on:
            self._log(code, seconds, messages)

    def _log(self, code: grpc.StatusCode, seconds: float, messages: int) -> None:
        """One INFO line per call: method, code, duration, user (and messages for streams), in
        the text as key=value and as ``rpc_*`` record attributes."""
        user = principal_or_none()
        fields: dict[str, Any] = {
            "rpc_method": self.name,
            "rpc_code": code.name,
            "rpc_duration_ms": round(seconds * 1000, 3),
            "rpc_user": user,
        }
        text = "rpc method=%s code=%s duration_ms=%.3f user=%s"
        args: list[Any] = [self.name, code.name, seconds * 1000, user or "-"]
        if self.response_streaming:
            fields["rpc_messages"] = messages
            text += " messages=%d"
            args.append(messages)
        log.info(text, *args, extra=fields)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Logging, metrics (``metrics=None``: none), errors, auth (the bearer token of
    ``authorization: Bearer <jwt>`` metadata, on every method but those starting with one of
    ``public``) and deadlines (``default`` seconds for calls with one response and no client
    deadline), in that order, around every handler; with ``faults``, the link faults injected into
    every non-public method (``rpc.faults``)."""

    def __init__(
        self,
        tokens: Tokens,
        *,
        metrics: CollectorRegistry | None = None,
        default_deadline: float = 10.0,
        public: Sequence[str] = PUBLIC_METHOD_PREFIXES,
        faults: Faults | None = None,
        traced: bool = False,
    ) -> None:
        if default_deadline <= 0:
            raise ValueError(f"default deadline must be positive, not {default_deadline}")
        self._tokens = tokens
        # ``traced``: OpenTelemetry's server interceptor runs in front and makes the call's span
        # (we tag it); otherwise we continue a caller's trace ourselves.
        self._traced = traced
        self._propagate = not traced
        self._metrics = None if metrics is None else Metrics(metrics)
        self.default_deadline = default_deadline
        self._public = tuple(public)
        self._faults = faults
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` with every concern around it (built once per method and handler)."""
        kind = (handler.request_streaming, handler.response_streaming)
        behaviour: Callable[..., Any] | None = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[kind]
        assert behaviour is not None, f"{method}: handler without a behaviour"
        state = _Method(
            method, method.startswith(self._public), handler.response_streaming, self._metrics, self._traced
        )
        wrapped: Callable[..., Any]
        if handler.response_streaming:
            wrapped = self._streamed(state, behaviour, handler.request_streaming)
        else:
            wrapped = self._unary(state, behaviour, handler.request_streaming)
        return _FACTORIES[kind](
            wrapped,
            request_deserializer=_guarded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(
        self, state: _Method, behaviour: Callable[..., Any], request_streaming: bool
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        is_coroutine = inspect.iscoroutinefunction(behaviour)
        default = self.default_deadline
        traced = self._traced
        authenticate = None if state.public else self._authenticate
        faults = None if state.public else self._faults
        answer = self._answer

        async def unary(request: Any, context: Context) -> Any:
            start, error = time.perf_counter(), None
            try:
                try:
                    request = _checked(request, request_streaming)
                    if faults is not None and faults.link is not None:
                        await inject(faults, context, default)
                    if authenticate is not None:
                        authenticate(context)
                    if traced and not request_streaming:
                        tracing.tag(order_id=getattr(request, "order_id", None))  # the call's span
                    remaining = _client_budget(context)
                    if remaining is None:  # the server's default: a timer around the handler
                        deadline = time.monotonic() + default
                        set_deadline(deadline)
                        timer = asyncio.timeout(default)
                        try:
                            async with timer:
                                if is_coroutine:
                                    return await behaviour(request, context)
                                return await asyncio.to_thread(behaviour, request, context)
                        except TimeoutError:
                            if not (timer.expired() or time.monotonic() >= deadline):
                                raise  # the handler's own timeout, before the deadline: a bug
                            await context.abort(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"deadline exceeded: the server's default of {default:g} s"
                                " (send a deadline to choose another)",
                            )
                    else:  # the client's deadline: gRPC itself cancels the handler then
                        deadline = time.monotonic() + remaining
                        set_deadline(deadline)
                        try:
                            if is_coroutine:
                                return await behaviour(request, context)
                            return await asyncio.to_thread(behaviour, request, context)  # off the loop
                        except TimeoutError:
                            if time.monotonic() < deadline:
                                raise
                            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await answer(state, context, exc)
            except BaseException as exc:
                error = exc
                raise
            finally:
                state.record(context, error, time.perf_counter() - start, 0)

        return unary

    def _streamed(
        self, state: _Method, behaviour: Callable[..., Any], request_streaming: bool
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        authenticate = None if state.public else self._authenticate
        faults = None if state.public else self._faults
        answer = self._answer

        async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
            start, error, count = time.perf_counter(), None, 0
            try:
                try:
                    request = _checked(request, request_streaming)
                    if faults is not None and faults.link is not None:
                        await inject(faults, context, None)
                    if authenticate is not None:
                        authenticate(context)
                    # streamed responses get no default deadline: they are live subscriptions,
                    # ended by the client or by the server's shutdown
                    remaining = _client_budget(context)
                    deadline = None if remaining is None else time.monotonic() + remaining
                    set_deadline(deadline)
                    try:
                        async with aclosing(_stream(behaviour, request, context)) as messages:
                            async for message in messages:
                                count += 1
                                if count % _FLUSH_EVERY == 0 and state.messages is not None:
                                    state.messages.inc(_FLUSH_EVERY)
                                yield message
                    except TimeoutError:
                        if deadline is None or time.monotonic() < deadline:
                            raise
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await answer(state, context, exc)
            except BaseException as exc:  # GeneratorExit too: the stream was dropped
                error = exc
                raise
            finally:
                state.record(context, error, time.perf_counter() - start, count)

        return streamed

    def _authenticate(self, context: Context) -> None:
        """Makes the bearer token's subject the principal (``current_principal()``); raises
        ``Unauthenticated`` (answered as UNAUTHENTICATED) when it is missing or does not verify.
        Without OpenTelemetry's server interceptor in front (no SDK: see ``rpc.server``), also
        continues the caller's trace (``traceparent`` metadata) for what the call writes."""
        # One pass over the metadata: grpc builds a fresh tuple of it on every call of
        # invocation_metadata().
        authorization: list[str | bytes] = []
        incoming = state = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization.append(value)
            elif key == "traceparent" and isinstance(value, str):
                incoming = value
            elif key == "tracestate" and isinstance(value, str):
                state = value
        set_principal(self._tokens.verify(_bearer_token(authorization)))
        if self._propagate:
            # Never detached: every call runs in a task and a context of its own.
            tracing.continue_remote(incoming, state)

    @staticmethod
    async def _answer(state: _Method, context: Context, exc: Exception) -> NoReturn:
        """Answers what a handler raised: an ``OrdermeshError`` with its status and rich details
        (``ordermesh.rpc.status``), anything else with INTERNAL and a generic message (logged
        with its traceback: it is a bug). A status the handler chose stands: ``context.abort``,
        or ``set_code`` before raising (as the generated base servicer does for UNIMPLEMENTED)."""
        status = to_grpc_status(exc)
        if status.code == grpc.StatusCode.INTERNAL:
            chosen: grpc.StatusCode | None = context.code()
            if chosen is not None and chosen != _OK:
                await context.abort(chosen, context.details() or "")
            log.error("%s failed: unexpected %s", state.name, type(exc).__name__, exc_info=exc)
        await context.abort_with_status(status)


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


def _bearer_token(values: list[str | bytes]) -> str:
    if not values:
        raise Unauthenticated("no credentials: send the metadata `authorization: Bearer <token>`")
    value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the `authorization` metadata must be one `Bearer <token>`")
    return token.strip()


def _settle_span(code: grpc.StatusCode, context: Context) -> None:
    """The final status on the call's span: our errors answer with ``abort_with_status``, which
    OpenTelemetry's interceptor does not see."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not _OK:
        details: str | None = context.details() if code is not grpc.StatusCode.CANCELLED else None
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))


def _client_budget(context: Context) -> float | None:
    remaining: float | None = context.time_remaining()
    return None if remaining is None or remaining >= _NO_DEADLINE else remaining


def _outcome(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining: float | None = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code: grpc.StatusCode | None = context.code()  # set by abort(), or by the handler
    if code is not None:
        return code
    return _OK if error is None else grpc.StatusCode.UNKNOWN


def _guarded(deserialize: _Deserializer | None) -> _Deserializer | None:
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


def _checked(request: Any, streaming: bool) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error()
    return _checked_stream(request) if streaming else request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request

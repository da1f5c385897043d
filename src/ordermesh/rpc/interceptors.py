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

Beside it: ``rpc.telemetry`` (what a call leaves behind: metrics, access log line, span status)
and ``rpc.decoding`` (undecodable requests answered with INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, NoReturn, TypeAlias

import grpc
from prometheus_client import CollectorRegistry

from ordermesh import tracing
from ordermesh.auth import Tokens
from ordermesh.errors import Unauthenticated
from ordermesh.resilience.faults import Faults
from ordermesh.rpc.context import set_deadline, set_principal
from ordermesh.rpc.decoding import checked, guarded
from ordermesh.rpc.faults import inject
from ordermesh.rpc.status import to_grpc_status
from ordermesh.rpc.telemetry import FLUSH_EVERY, Method, Metrics

log = logging.getLogger("ordermesh.rpc")

#: Methods anyone may call: health checks and reflection carry no token.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_END = object()
_OK = grpc.StatusCode.OK
_NO_DEADLINE = 10 * 365 * 86400.0  # older grpc versions report "none" as a far future


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
        state = Method(
            method, method.startswith(self._public), handler.response_streaming, self._metrics, self._traced
        )
        wrapped: Callable[..., Any]
        if handler.response_streaming:
            wrapped = self._streamed(state, behaviour, handler.request_streaming)
        else:
            wrapped = self._unary(state, behaviour, handler.request_streaming)
        return _FACTORIES[kind](
            wrapped,
            request_deserializer=guarded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(
        self, state: Method, behaviour: Callable[..., Any], request_streaming: bool
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
                    request = checked(request, request_streaming)
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
        self, state: Method, behaviour: Callable[..., Any], request_streaming: bool
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        authenticate = None if state.public else self._authenticate
        faults = None if state.public else self._faults
        answer = self._answer

        async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
            start, error, count = time.perf_counter(), None, 0
            try:
                try:
                    request = checked(request, request_streaming)
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
                                if count % FLUSH_EVERY == 0 and state.messages is not None:
                                    state.messages.inc(FLUSH_EVERY)
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
    async def _answer(state: Method, context: Context, exc: Exception) -> NoReturn:
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


def _client_budget(context: Context) -> float | None:
    remaining: float | None = context.time_remaining()
    return None if remaining is None or remaining >= _NO_DEADLINE else remaining


__all__ = ["PUBLIC_METHOD_PREFIXES", "CallInterceptor", "Context", "Handler", "Metrics"]

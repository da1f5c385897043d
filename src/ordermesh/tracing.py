"""Trace context through OpenTelemetry: one order is one trace, from the REST or gRPC call
through its events, the broker and the saga to the customer's mail.

The context is OpenTelemetry's (``opentelemetry-api``): the current span of the running task,
carried between processes by the W3C Trace Context propagator (``traceparent``, ``tracestate``).

- HTTP and gRPC: with an SDK installed (``kit.telemetry``, when an OTLP endpoint is configured)
  the contrib instrumentations (ASGI, grpc, aiohttp client) make the server and client spans and
  carry the context. Without one, the edges still continue a caller's trace
  (``continue_remote``, one header parse) so what the call writes belongs to it.
- Events: every event written carries the current ``traceparent`` (and ``tracestate``) in its
  metadata (``event_metadata``): the relay, the saga and the consumers continue from there.
- Messages: the same two headers, read case-insensitively (``extract``); ``messaging.context``
  makes a span for each publish and each delivery.
- Our own spans (``span``): broker publish and consume, saga steps and compensations, SMTP
  sends, with ``ordermesh.order_id`` / ``ordermesh.saga_id`` where known (``tag``).

Without an SDK, OpenTelemetry's API mints no ids and records nothing: a span is a pass-through
of its parent's context. A caller's trace id then still reaches events, messages, mails and log
lines (``current_ids``); a request that brings none has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ordermesh import __version__

ORDER_ID = "ordermesh.order_id"
SAGA_ID = "ordermesh.saga_id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_W3C = TraceContextTextMapPropagator()


class _Headers(Getter[Mapping[str, Any]]):
    """Message headers and event metadata: names matched case-insensitively (AMQP header names
    are case-sensitive, but a publisher copying HTTP headers may capitalise them)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            value = next((v for k, v in carrier.items() if isinstance(k, str) and k.lower() == key), None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k for k in carrier if isinstance(k, str)]


_HEADERS = _Headers()


def enabled() -> bool:
    """Whether an OpenTelemetry SDK (any real ``TracerProvider``) is installed in this process:
    the edges and clients built now add the contrib instrumentations only then."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


_tracer: tuple[trace.TracerProvider | None, trace.Tracer | None] = (None, None)


def tracer() -> trace.Tracer:
    """Our tracer from the current global provider (not a ``ProxyTracer`` fixed to the first
    provider it saw: a test may install and remove one)."""
    global _tracer
    provider = trace.get_tracer_provider()
    cached_provider, cached = _tracer
    if cached is None or cached_provider is not provider:
        cached = provider.get_tracer("ordermesh", __version__)
        _tracer = (provider, cached)
    return cached


def extract(headers: Mapping[str, Any]) -> Context:
    """The context a message, an event's metadata or a saga's data continues: a fresh context
    (not the current one) holding the remote span, or none when there is no valid ``traceparent``
    (an invalid or unfit ``tracestate`` is dropped, the trace kept)."""
    return _W3C.extract(headers, getter=_HEADERS)


def inject(carrier: dict[str, str], ctx: Context | None = None) -> dict[str, str]:
    """``carrier`` with the ``traceparent``/``tracestate`` of ``ctx`` (default: the current
    context); unchanged outside a trace."""
    _W3C.inject(carrier, context=ctx)
    return carrier


def event_metadata() -> dict[str, str]:
    """What every event written in this context carries: ``{}`` outside a trace."""
    return inject({})


@contextmanager
def span(
    name: str,
    *,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> Iterator[Span]:
    """One of our spans, current inside the block, a child of ``parent`` (default: the current
    span). An exception leaving the block is recorded on it and sets its status to error."""
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current


def tag(*, order_id: str | None = None, saga_id: str | None = None) -> None:
    """Name the order (and saga) the current span works on, when it is recorded."""
    current = trace.get_current_span()
    if not current.is_recording():
        return
    if order_id:
        current.set_attribute(ORDER_ID, order_id)
    if saga_id:
        current.set_attribute(SAGA_ID, saga_id)


def continue_remote(traceparent: str | None, tracestate: str | None = None) -> Token[Context] | None:
    """Make a caller's trace current (an edge without an instrumentation in front of it); the
    token for ``otel_context.detach``, or None when there is nothing valid to continue."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate is not None:
        carrier[TRACESTATE] = tracestate
    remote = _W3C.extract(carrier)
    if not trace.get_current_span(remote).get_span_context().is_valid:
        return None
    return otel_context.attach(remote)


def current() -> str | None:
    """The current span as a ``traceparent``; None outside a trace."""
    return event_metadata().get(TRACEPARENT)


def current_state() -> str | None:
    """The current span's ``tracestate``; None when it has none."""
    return trace.get_current_span().get_span_context().trace_state.to_header() or None


def current_ids() -> tuple[str, str]:
    """The current trace id and span id, as hex ("", "" outside a trace): what log lines carry."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id (hex) of a ``traceparent`` header value; None when it is not a valid one."""
    ctx = trace.get_current_span(extract({TRACEPARENT: traceparent or ""})).get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def span_id(traceparent: str | None) -> str | None:
    """The span id (hex) of a ``traceparent`` header value; None when it is not a valid one."""
    ctx = trace.get_current_span(extract({TRACEPARENT: traceparent or ""})).get_span_context()
    return trace.format_span_id(ctx.span_id) if ctx.is_valid else None


def grpc_client_interceptors() -> list[Any]:
    """For a grpc.aio channel built now: OpenTelemetry's client interceptors (a CLIENT span per
    call, the context sent as metadata) with an SDK installed, none without (they would cost a
    trip through grpc.aio's interceptor pipeline on every call for a pass-through)."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import (  # type: ignore[import-untyped, unused-ignore]
        aio_client_interceptors,
    )

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def http_trace_configs() -> list[Any]:
    """For an aiohttp session built now: OpenTelemetry's client instrumentation (a CLIENT span per
    request, the context sent as headers) with an SDK installed, none without."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    return [create_trace_config()]

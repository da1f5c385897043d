"""What every gRPC call leaves behind when it ends, for ``rpc.interceptors.CallInterceptor``:
its Prometheus metrics, its access log line (logger ``ordermesh.rpc``) and, traced, its final
status on the call's span.

Each method's share of it (:class:`Method`: its name, whether it is public, its metric children)
is computed once, when the interceptor wraps the method's handler, so a call pays for lookups only
the first time it ends with a new code.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from ordermesh.rpc.context import principal_or_none

log = logging.getLogger("ordermesh.rpc")
# Live streams report their message count every this many messages, not only when they end
# (counting each message costs ~2.4 µs; a batch of them costs nothing measurable).
FLUSH_EVERY = 64

Context = grpc.aio.ServicerContext[Any, Any]
_OK = grpc.StatusCode.OK
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


class Method:
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
            if messages % FLUSH_EVERY and self.messages is not None:
                self.messages.inc(messages % FLUSH_EVERY)  # the rest went in while streaming
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


def _outcome(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining: float | None = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code: grpc.StatusCode | None = context.code()  # set by abort(), or by the handler
    if code is not None:
        return code
    return _OK if error is None else grpc.StatusCode.UNKNOWN


__all__ = ["FLUSH_EVERY", "Method", "Metrics"]

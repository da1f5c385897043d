"""Prometheus metrics and the request's trace context as one pure ASGI middleware (Starlette's
BaseHTTPMiddleware costs a task and a stream per request, and every layer costs a little: the
edge concerns share one).

Tracing here: with OpenTelemetry's ASGI middleware in front (an SDK installed), the server span
is named after the route template once routing is done (``POST /api/orders``, not the raw path)
and tagged with the ``order_id`` path parameter; without it (``propagate``), a caller's
``traceparent`` is continued for what the request writes. Either way the answer carries the
current ``traceparent``, so a client can find its trace."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordermesh import tracing


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "ordermesh_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ordermesh_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

        # The labelled children, by label values: ``labels()`` takes a lock and builds a tuple
        # on every call (~3 µs each, twice a request); the set of routes is small and fixed.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = self.requests.labels(method, route, str(status))
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self._timed[(method, route)] = self.latency.labels(method, route)
        counted.inc()
        timed.observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, propagate: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.propagate = propagate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        token = None
        if self.propagate:
            token = tracing.continue_remote(_header(scope, b"traceparent"), _header(scope, b"tracestate"))
        traceparent = tracing.current()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if traceparent is not None:
                    message["headers"] = [*message.get("headers", []), (b"traceparent", traceparent.encode())]
                span = trace.get_current_span()
                if span.is_recording():  # routed by now; the span ends with the answer's body
                    _name_span(span, scope)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The route template, not the raw path, keeps label cardinality bounded.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
            if token is not None:
                otel_context.detach(token)


def _name_span(span: trace.Span, scope: Scope) -> None:
    route = getattr(scope.get("route"), "path", None)
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    order_id = scope.get("path_params", {}).get("order_id")
    if isinstance(order_id, str):
        span.set_attribute(tracing.ORDER_ID, order_id)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None

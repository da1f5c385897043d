"""The FastAPI app factory every HTTP service shares: health, metrics, problem documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp

from ordermesh import __version__, tracing
from ordermesh.errors import InfrastructureError
from ordermesh.http import problems
from ordermesh.http.access import AccessLog
from ordermesh.http.deadline import CallerDeadline
from ordermesh.http.metrics import HttpMetrics, MetricsMiddleware
from ordermesh.http.middleware import BodyLimits, HttpLimits

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
ReadyCheck = Callable[[FastAPI], Awaitable[None]]

_OK = b'{"status":"ok"}'
_UNTRACED = ("/livez", "/readyz", "/metrics")
_HEALTH = {
    "type": "object",
    "properties": {"status": {"const": "ok"}},
    "required": ["status"],
}


class ServiceApp(FastAPI):
    """FastAPI with the OpenAPI document tidied: shared problem schemas in the components, and
    optional parameters without FastAPI's ``null`` branch (a query string or header is absent,
    never null)."""

    security_schemes: dict[str, Any] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        """With an OpenTelemetry SDK installed, the contrib ASGI middleware outermost, so every
        request's server span covers all of it (injected faults and errors included); without,
        nothing (``MetricsMiddleware`` continues a caller's trace). The health and metrics routes
        make no spans: probes would bury the traces that matter."""
        stack = super().build_middleware_stack()
        if not getattr(self.state, "traced", False):
            return stack
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(
            stack,
            excluded_urls=",".join(f"{path}$" for path in _UNTRACED),
            # The method alone until routing: MetricsMiddleware names it after the route template.
            default_span_details=lambda scope: (scope.get("method", "HTTP"), {}),
            exclude_spans=["receive", "send"],  # a span per ASGI message is noise, and costs
        )

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()  # cached as self.openapi_schema: tidied in place, once
        if self.security_schemes:
            document.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                self.security_schemes
            )
        problems.add_schemas(document)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    _drop_null_branch(parameter)
        return document


def _drop_null_branch(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if parameter.get("required") or not isinstance(branches, list):
        return
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == 1 and len(kept) < len(branches):
        del schema["anyOf"]
        schema.update(kept[0])


def _native_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry spans and metrics off (keyword arguments for FastAPI): the
    contrib ASGI instrumentation makes our server spans (``ServiceApp.build_middleware_stack``),
    and on, FastAPI would also ask the global providers whether they are configured on every
    request (~5 µs a request measured in bench/http_orders.py). (FastAPI before 0.165 has no such
    thing.)"""
    try:
        import fastapi.telemetry  # noqa: F401
    except ImportError:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(
    title: str,
    ready: ReadyCheck,
    lifespan: Lifespan | None = None,
    security_schemes: dict[str, Any] | None = None,
    limits: HttpLimits | None = None,
) -> FastAPI:
    """``security_schemes`` documents authentication that routes do without FastAPI's security
    dependencies (they reference it through ``openapi_extra``). ``limits`` (default: the settings'
    defaults) caps request bodies here, before any route reads one or authenticates; the listener
    serving the app (``kit.listeners``) takes its header limits from ``app.state.http_limits``."""
    limits = limits or HttpLimits()
    app = ServiceApp(title=title, version=__version__, lifespan=lifespan, **_native_telemetry())
    app.security_schemes = security_schemes
    app.state.traced = tracing.enabled()  # decided once, as the app is built (kit.telemetry runs first)
    metrics = HttpMetrics()
    app.state.metrics = metrics
    app.state.http_limits = limits
    problems.install(app)

    @app.get(
        "/livez",
        tags=["health"],
        responses={
            200: {"description": "the process is up", "content": {"application/json": {"schema": _HEALTH}}}
        },
    )
    async def livez() -> Response:
        return Response(_OK, media_type="application/json")

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            200: {"description": "ready to serve", "content": {"application/json": {"schema": _HEALTH}}},
            **problems.documented(503),
        },
    )
    async def readyz() -> Response:
        try:
            await ready(app)
        except InfrastructureError as exc:
            return problems.error_response(exc)
        return Response(_OK, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return metrics.response()

    # Innermost: a request runs under its caller's deadline (X-Ordermesh-Deadline-Ms), its
    # body already checked. Added first, so inside the metrics middleware: refusals are counted too.
    app.add_middleware(CallerDeadline)
    app.add_middleware(BodyLimits, limits=limits)
    app.add_middleware(AccessLog)  # inside the trace, outside the limits: every answer is logged
    app.add_middleware(MetricsMiddleware, metrics=metrics, propagate=not app.state.traced)
    return app

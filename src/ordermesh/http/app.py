"""The FastAPI app factory every HTTP service shares: health, metrics, problem documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from starlette.responses import Response

from ordermesh import __version__
from ordermesh.errors import InfrastructureError
from ordermesh.http import problems
from ordermesh.http.metrics import HttpMetrics, MetricsMiddleware

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
ReadyCheck = Callable[[FastAPI], Awaitable[None]]

_OK = b'{"status":"ok"}'


def create_app(title: str, ready: ReadyCheck, lifespan: Lifespan | None = None) -> FastAPI:
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    metrics = HttpMetrics()
    app.state.metrics = metrics
    problems.install(app)

    @app.get("/livez", tags=["health"], responses={200: {"description": "the process is up"}})
    async def livez() -> Response:
        return Response(_OK, media_type="application/json")

    @app.get(
        "/readyz",
        tags=["health"],
        responses={200: {"description": "ready to serve"}, **problems.documented(503)},
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

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app

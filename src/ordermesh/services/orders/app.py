"""The order service's HTTP app: shared edge + order routes, wired from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ordermesh.auth import Tokens
from ordermesh.clock import Clock
from ordermesh.config import Settings
from ordermesh.http.app import create_app
from ordermesh.readmodel.projection import Projector
from ordermesh.services.orders import metrics as projection_metrics
from ordermesh.services.orders.rest import BEARER, router
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.saga_api import router as saga_router
from ordermesh.services.orders.tracking import router as tracking_router

TITLE = "ordermesh orders"


def install_order_api(app: FastAPI, tokens: Tokens, system: OrderSystem | None = None) -> None:
    """The order routes on ``app`` (the kit's, or ``create_order_app``'s), reading
    ``app.state.system``."""
    app.state.tokens = tokens
    if system is not None:
        app.state.system = system
    # The API's routes go straight into the app's route list, first: Starlette tries routes in
    # order (ahead of docs and health routes saves the hot reads a handful of failed matches),
    # and ``include_router`` would wrap them in a router of their own, matched per request on
    # top of the routes (~10 µs a request, bench/http_orders.py).
    app.router.routes[0:0] = router.routes
    app.include_router(saga_router)
    app.include_router(tracking_router)

    def projectors() -> list[Projector]:
        owned: OrderSystem | None = getattr(app.state, "system", None)
        return owned.projectors if owned is not None else []

    projection_metrics.register(app.state.metrics.registry, projectors)


def create_order_app(
    settings: Settings, system: OrderSystem | None = None, clock: Clock | None = None
) -> FastAPI:
    """A stand-alone app (tests, benchmarks, the OpenAPI document). With ``system`` the caller owns
    its lifecycle; without, the app builds and closes one from ``settings`` in its lifespan.
    The service process is built by the kit instead (``services/orders/spec.py``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if system is not None:
            yield
            return
        built = await build_order_system(settings.effective_database_url, clock, settings.snapshot_every)
        await built.start()
        app.state.system = built
        try:
            yield
        finally:
            await built.close()

    async def ready(app: FastAPI) -> None:
        owned: OrderSystem = app.state.system
        await owned.ready()

    app = create_app(TITLE, ready, lifespan, security_schemes=BEARER)
    install_order_api(app, Tokens(settings, clock), system)
    return app

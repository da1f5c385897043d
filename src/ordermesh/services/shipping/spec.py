"""The shipping service as the kit runs it: its own database, an outbox published to the
``shipping`` exchange, and the REST routes on ``ORDERMESH_SHIPPING_HTTP_PORT``."""

from __future__ import annotations

from ordermesh.contracts.shipping import EXCHANGE
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.services.shipping.rest import BEARER, shipping_router
from ordermesh.services.shipping.service import ShippingService


async def build(rt: Runtime) -> None:
    service = await ShippingService.open(await rt.database(), await rt.outbox(EXCHANGE), rt.clock)
    rt.app.include_router(shipping_router(rt.tokens, lambda: service))


SPEC = ServiceSpec(
    name="shipping",
    title="ordermesh shipping",
    build=build,
    http_port="shipping_http_port",
    security_schemes=BEARER,
)

__all__ = ["SPEC", "build"]

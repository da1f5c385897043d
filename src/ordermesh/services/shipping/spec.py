"""The shipping service as the kit runs it: its own database, an outbox published to the
``shipping`` exchange, and the REST routes on ``ORDERMESH_SHIPPING_HTTP_PORT``; with
``ORDERMESH_SAGA=choreographed``, also its reactions to the stock and order events (``consumers``)."""

from __future__ import annotations

from ordermesh.contracts.shipping import EXCHANGE
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging.inbox import SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.services.shipping.consumers import (
    INBOX_CONSUMER,
    QUEUES,
    ShippingReactions,
    start_shipping_consumers,
)
from ordermesh.services.shipping.rest import BEARER, shipping_router
from ordermesh.services.shipping.service import ShippingService


async def build(rt: Runtime) -> None:
    service = await ShippingService.open(await rt.database(), await rt.outbox(EXCHANGE), rt.clock)
    rt.app.include_router(shipping_router(rt.tokens, lambda: service))
    if rt.settings.saga == "choreographed":
        reactions = ShippingReactions(
            service, await SqlInbox.open(await rt.database(), INBOX_CONSUMER, rt.clock)
        )
        metrics = ConsumerMetrics(rt.metrics)
        for sub in await start_shipping_consumers(await rt.broker(), reactions, metrics):
            rt.stack.push_async_callback(sub.stop)  # before the broker closes: in-flight ones finish


SPEC = ServiceSpec(
    name="shipping",
    title="ordermesh shipping",
    build=build,
    http_port="shipping_http_port",
    security_schemes=BEARER,
    queues=tuple(QUEUES),
)

__all__ = ["SPEC", "build"]

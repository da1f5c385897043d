"""The shipping service's part of the choreographed saga (``ORDERMESH_SAGA=choreographed``):
``stock.reserved`` schedules the order's shipment (the message carries its lines) ->
``shipment.scheduled``; ``order.cancelled`` cancels it -> ``shipment.cancelled``.

The two come on separate queues, so either may be handled first. A cancel first leaves a
cancelled tombstone, and the late schedule is refused by the store: the cancellation wins, and
that refusal is the expected end of the message, not an error. A cancel after the schedule
cancels the shipment and says so.

Effectively once: each reaction is the service's own use case, idempotent by order id (a second
schedule answers the first shipment; a second cancel changes nothing), committing the shipment
and its message together. The inbox is read before and written after it (the service opens its
own transaction), so a crash in between redelivers the message and the use case answers what it
did the first time, publishing nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ordermesh.contracts import inventory as stock_contract
from ordermesh.contracts import orders as order_contract
from ordermesh.errors import DomainError
from ordermesh.messaging import Broker
from ordermesh.messaging.inbox import Inbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Delivery, Handler, PermanentError, RetryPolicy, Subscription
from ordermesh.messaging.reactions import bound, react_once, subscribe_all
from ordermesh.services.shipping.domain import Item
from ordermesh.services.shipping.service import ShippingService

log = logging.getLogger("ordermesh.shipping")

INBOX_CONSUMER = "shipping"
REACTED = "shipping.choreography.reacted"  # the failpoint between a reaction and its inbox record
RETRY = RetryPolicy(max_attempts=30, initial=0.1, multiplier=2.0, maximum=5.0)
QUEUES = {  # queue -> (exchange, binding key): what shipping consumes (``ordermesh dlq`` lists them)
    "shipping.stock_reserved": (stock_contract.EXCHANGE, stock_contract.STOCK_RESERVED),
    "shipping.order_cancelled": (order_contract.EXCHANGE, "order.cancelled"),
}


class ShippingReactions:
    def __init__(self, service: ShippingService, inbox: Inbox) -> None:
        self.service, self.inbox = service, inbox

    async def on_stock_reserved(self, delivery: Delivery) -> None:
        try:
            reserved = stock_contract.StockReserved.model_validate_json(delivery.message.body)
        except ValueError as exc:
            raise PermanentError(f"stock.reserved: {exc}") from exc
        items = [Item(line.sku, line.quantity) for line in reserved.items]
        try:
            await self.service.schedule(reserved.order_id, items)
        except DomainError as exc:
            if (await self.service.get(reserved.order_id)).status != "cancelled":
                raise
            log.info("order %s: not scheduled, its cancellation came first (%s)", reserved.order_id, exc)

    async def on_order_cancelled(self, delivery: Delivery) -> None:
        order = delivery.message.payload()
        if not isinstance(order, dict) or not isinstance(order.get("id"), str):
            raise PermanentError("order.cancelled without an order id")
        await self.service.cancel(order["id"])

    def once(self, react: Callable[[Delivery], Awaitable[None]]) -> Handler:
        return react_once(self.inbox, react, failpoint_name=REACTED)


async def start_shipping_consumers(
    broker: Broker, reactions: ShippingReactions, metrics: ConsumerMetrics | None = None
) -> list[Subscription]:
    """Subscribe ``shipping.stock_reserved`` and ``shipping.order_cancelled``; returns at once."""
    handlers = {
        stock_contract.STOCK_RESERVED: reactions.once(reactions.on_stock_reserved),
        "order.cancelled": reactions.once(reactions.on_order_cancelled),
    }
    return await subscribe_all(broker, bound(QUEUES, handlers), retry=RETRY, metrics=metrics)


__all__ = ["INBOX_CONSUMER", "QUEUES", "REACTED", "RETRY", "ShippingReactions", "start_shipping_consumers"]

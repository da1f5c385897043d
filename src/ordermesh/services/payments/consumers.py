"""The payment service's part of the choreographed saga (``ORDERMESH_SAGA=choreographed``):
``order.created`` charges the order, ``order.cancelled`` refunds it. The outcomes go out as the
service always publishes them (``payment.processed`` / ``payment.failed`` / ``payment.refunded``,
through the outbox, in the ledger's transaction).

Effectively once: each reaction is the service's own use case, idempotent by order id (a second
charge answers the first outcome; a second refund refunds nothing more and publishes nothing). The
inbox is read before and written after it, not around it in one transaction: a charge asks an
outside provider, which no database transaction can include, and the use cases open their own
transactions. A crash between the effect and the inbox record redelivers the message; the use
case then answers what it did the first time. A refund that overtakes its charge (the saga was
cancelled first) records the order as cancelled, and the late charge is declined: the
compensation wins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ordermesh.contracts import orders as order_contract
from ordermesh.messaging import Broker
from ordermesh.messaging.inbox import Inbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Delivery, Handler, PermanentError, RetryPolicy, Subscription
from ordermesh.messaging.reactions import bound, react_once, subscribe_all
from ordermesh.services.payments.domain import MAX_REASON
from ordermesh.services.payments.service import PaymentService

INBOX_CONSUMER = "payments"
REACTED = "payments.choreography.reacted"  # the failpoint between a reaction and its inbox record
# Short first retries: a provider hiccup or a charge in flight in another process settles fast;
# past ~2 minutes of failing, the message is dead-lettered for an operator (and the saga's
# deadline cancels the order meanwhile).
RETRY = RetryPolicy(max_attempts=30, initial=0.1, multiplier=2.0, maximum=5.0)
QUEUES = {  # queue -> (exchange, binding key): what payments consumes (``ordermesh dlq`` lists them)
    "payments.order_created": (order_contract.EXCHANGE, "order.created"),
    "payments.order_cancelled": (order_contract.EXCHANGE, "order.cancelled"),
}


def _order(delivery: Delivery, *fields: str) -> dict[str, Any]:
    body = delivery.message.payload()
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise PermanentError(f"{delivery.message.routing_key} without an order id")
    missing = [f for f in fields if f not in body]
    if missing:
        raise PermanentError(f"{delivery.message.routing_key} without {', '.join(missing)}")
    return body


def once(inbox: Inbox, react: Callable[[Delivery], Awaitable[None]]) -> Handler:
    return react_once(inbox, react, failpoint_name=REACTED)


class PaymentReactions:
    def __init__(self, service: PaymentService) -> None:
        self.service = service

    async def on_order_created(self, delivery: Delivery) -> None:
        order = _order(delivery, "total", "currency")
        await self.service.process_payment(order["id"], int(order["total"]), str(order["currency"]))

    async def on_order_cancelled(self, delivery: Delivery) -> None:
        order = _order(delivery)
        reason = str(order.get("cancel_reason") or "order cancelled")[:MAX_REASON]
        await self.service.refund(order["id"], reason)


async def start_payment_consumers(
    broker: Broker, service: PaymentService, inbox: Inbox, metrics: ConsumerMetrics | None = None
) -> list[Subscription]:
    """Subscribe ``payments.order_created`` and ``payments.order_cancelled``; returns at once."""
    reactions = PaymentReactions(service)
    handlers = {
        "order.created": once(inbox, reactions.on_order_created),
        "order.cancelled": once(inbox, reactions.on_order_cancelled),
    }
    return await subscribe_all(broker, bound(QUEUES, handlers), retry=RETRY, metrics=metrics)


__all__ = [
    "INBOX_CONSUMER",
    "QUEUES",
    "REACTED",
    "RETRY",
    "PaymentReactions",
    "once",
    "start_payment_consumers",
]

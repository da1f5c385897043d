"""The order service's published messages: exchange, routing keys and what their bodies promise.

One message per order event on the durable topic exchange ``orders``, routing key
``order.<what happened>``, body the order resource as of that event (the REST API's JSON, so
``id`` and ``user_email`` are always there). The body's full schema is the AsyncAPI document's
``Order`` (``docs/asyncapi.json``).
"""

from __future__ import annotations

from typing import Final

EXCHANGE: Final = "orders"
# Stored event type -> routing key.
ROUTING_KEYS: Final = {
    "OrderCreated": "order.created",
    "PaymentProcessed": "order.paid",
    "PaymentFailed": "order.payment_failed",
    "StockReserved": "order.stock_reserved",
    "StockReservationFailed": "order.stock_reservation_failed",
    "StockReleased": "order.stock_released",
    "OrderShipped": "order.shipped",
    "OrderCancelled": "order.cancelled",
    "OrderRefunded": "order.refunded",
}
# The routing keys the system's own consumers follow (the notification service; the
# choreographed saga): the outbox relay parks one of these that no queue takes, until its
# consumer is there. Every other order event is published for whoever binds to it, and dropped
# from the bus when nobody does (the event store keeps it).
MUST_ARRIVE: Final = frozenset({"order.created", "order.shipped", "order.cancelled"})
# What ``user_email`` matches. Deliberately ASCII: what every SMTP server accepts, and nothing a
# database chokes on (NUL).
EMAIL_PATTERN: Final = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}$"

"""The inventory's part of the choreographed saga (``ORDERMESH_SAGA=choreographed``):

- ``order.created``: keep the order's lines (``inventory_order_lines``, in the inventory's own
  database): the payment message that triggers the reservation does not carry them;
- ``payment.processed``: reserve them -> ``stock.reserved`` / ``stock.reservation_failed``;
- ``order.cancelled``: release -> ``stock.released`` (nothing held: nothing published; a release
  that overtakes its reserve leaves a tombstone, and the late reserve fails "released before
  reserve", holding nothing);
- ``order.shipped``: commit -> ``stock.committed``.

Commit follows ``order.shipped``, not ``shipment.scheduled``: the order service alone decides
between shipping and cancelling (a stalled saga may be cancelled while its shipment is being
scheduled), so the stock moves to shipped only for an order that did ship, and is released only
for one that did not. A release can then never meet a committed reservation.

Effectively once: storing the lines runs inside the inbox's transaction (one commit records
both). The stock reactions are the store's own use cases, idempotent by order id, each
committing the stock, the reservation and its message together; the inbox is read before and
written after them (the store opens its own transaction), so a crash in between redelivers the
message and the use case answers what it did the first time, moving nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ordermesh.contracts import orders as order_contract
from ordermesh.contracts import payments as payment_contract
from ordermesh.db import SqlDb, Tx, migrate
from ordermesh.messaging import Broker
from ordermesh.messaging.inbox import Inbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Delivery, Handler, PermanentError, RetryPolicy, Subscription
from ordermesh.messaging.reactions import bound, react_once, subscribe_all
from ordermesh.services.inventory.domain import MAX_REASON, Line
from ordermesh.services.inventory.store import InventoryStore

INBOX_CONSUMER = "inventory"
REACTED = "inventory.choreography.reacted"  # the failpoint between a reaction and its inbox record
RETRY = RetryPolicy(max_attempts=30, initial=0.1, multiplier=2.0, maximum=5.0)
QUEUES = {  # queue -> (exchange, binding key): what inventory consumes (``ordermesh dlq`` lists them)
    "inventory.order_created": (order_contract.EXCHANGE, "order.created"),
    "inventory.payment_processed": (payment_contract.EXCHANGE, payment_contract.PAYMENT_PROCESSED),
    "inventory.order_cancelled": (order_contract.EXCHANGE, "order.cancelled"),
    "inventory.order_shipped": (order_contract.EXCHANGE, "order.shipped"),
}
_LINES = {
    dialect: [
        "CREATE TABLE IF NOT EXISTS inventory_order_lines (order_id text PRIMARY KEY, items text NOT NULL)"
    ]
    for dialect in ("postgres", "sqlite")
}


class NotYet(Exception):
    """The message came before what it needs (a payment before its order's lines): retried."""


def _body(delivery: Delivery, key: str) -> dict[str, Any]:
    body = delivery.message.payload()
    if not isinstance(body, dict) or not isinstance(body.get(key), str):
        raise PermanentError(f"{delivery.message.routing_key} without {key}")
    return body


def _reason(order: dict[str, Any]) -> str:
    """The order's cancel reason as a release reason: printable, and no longer than allowed."""
    text = str(order.get("cancel_reason") or "order cancelled")
    return "".join(c if ord(c) >= 32 else " " for c in text)[:MAX_REASON]


class InventoryReactions:
    def __init__(self, store: InventoryStore, inbox: Inbox) -> None:
        self.store, self.inbox = store, inbox

    @classmethod
    async def open(cls, db: SqlDb, store: InventoryStore, inbox: Inbox) -> InventoryReactions:
        await migrate(db, _LINES)
        return cls(store, inbox)

    async def on_order_created(self, delivery: Delivery) -> None:
        order = _body(delivery, "id")
        try:
            lines = [{"sku": str(i["sku"]), "quantity": int(i["quantity"])} for i in order["items"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"order.created with malformed items: {exc}") from exc

        async def keep(tx: Tx | None) -> None:
            assert tx is not None  # a SqlInbox: the lines and the message id commit together
            await tx.execute(
                "INSERT INTO inventory_order_lines (order_id, items) VALUES ($1, $2) "
                "ON CONFLICT (order_id) DO NOTHING",
                order["id"],
                orjson.dumps(lines).decode(),
            )

        await self.inbox.once(delivery.message.message_id, keep)

    async def on_payment_processed(self, delivery: Delivery) -> None:
        order_id = _body(delivery, "order_id")["order_id"]
        row = await self.store.db.fetchrow(
            "SELECT items FROM inventory_order_lines WHERE order_id = $1", order_id
        )
        if row is None:
            raise NotYet(f"order {order_id}: paid before its order.created arrived here")
        lines = [Line(i["sku"], i["quantity"]) for i in orjson.loads(row[0])]
        await self.store.reserve(order_id, lines)

    async def on_order_cancelled(self, delivery: Delivery) -> None:
        order = _body(delivery, "id")
        await self.store.release(order["id"], _reason(order))

    async def on_order_shipped(self, delivery: Delivery) -> None:
        await self.store.commit(_body(delivery, "id")["id"])

    def once(self, react: Callable[[Delivery], Awaitable[None]]) -> Handler:
        return react_once(self.inbox, react, failpoint_name=REACTED)


async def start_inventory_consumers(
    broker: Broker, reactions: InventoryReactions, metrics: ConsumerMetrics | None = None
) -> list[Subscription]:
    """Subscribe the inventory's four queues; returns at once."""
    handlers = {
        "order.created": reactions.on_order_created,  # its inbox record commits with the lines it keeps
        payment_contract.PAYMENT_PROCESSED: reactions.once(reactions.on_payment_processed),
        "order.cancelled": reactions.once(reactions.on_order_cancelled),
        "order.shipped": reactions.once(reactions.on_order_shipped),
    }
    return await subscribe_all(broker, bound(QUEUES, handlers), retry=RETRY, metrics=metrics)


__all__ = [
    "INBOX_CONSUMER",
    "QUEUES",
    "REACTED",
    "RETRY",
    "InventoryReactions",
    "NotYet",
    "start_inventory_consumers",
]

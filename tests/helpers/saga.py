"""The order saga across the real services, each built by the kit in this process (on its own
ephemeral ports and its own database), in both styles: orchestrated (gRPC and REST over sockets)
and choreographed (events alone, through ONE broker the four services share: the embedded
broker's file, or RabbitMQ under a fresh prefix).

``fulfilment(style, tmp_path)`` runs the four services of a saga and yields a ``System`` to place
orders, wait for each to settle, and check the issue's invariants: every order ends shipped or
cancelled with a reason; money charged minus refunded is the total if shipped and 0 if
cancelled; stock adds up and nothing stays reserved once every saga has ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from ordermesh.errors import NotFound
from ordermesh.kit import Runtime
from ordermesh.kit.testing import running
from ordermesh.messaging import open_broker
from ordermesh.services.inventory.spec import SPEC as INVENTORY
from ordermesh.services.orders.choreography import RETRY as CHOREOGRAPHY_RETRY
from ordermesh.services.orders.spec import SPEC as ORDERS
from ordermesh.services.payments.spec import SPEC as PAYMENTS
from ordermesh.services.shipping.spec import SPEC as SHIPPING
from tests.helpers.backends import amqp_url
from tests.helpers.timing import eventually

STOCK = 1000  # the demo catalog: SKU-1 ... SKU-9


@dataclass
class System:
    """The running services of one saga, seen through the order API as a user sees them."""

    orders: Runtime
    payments: Runtime
    inventory: Runtime
    http: aiohttp.ClientSession
    tokens: Tokens
    style: str = "orchestrated"

    async def place(self, items: list[dict[str, Any]], user: str = "alice") -> str:
        body = {"user_email": f"{user}@example.com", "currency": "EUR", "items": items}
        headers = {"Authorization": f"Bearer {self.tokens.issue(user)}"}
        async with self.http.post(f"{self.orders.http_url}/api/orders", json=body, headers=headers) as r:
            assert r.status == 201, await r.text()
            return str((await r.json())["id"])

    async def get(self, path: str, user: str = "alice") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens.issue(user)}"}
        async with self.http.get(f"{self.orders.http_url}{path}", headers=headers) as r:
            return r.status, await r.json()

    async def settled(self, order_id: str, timeout: float = 20, user: str = "alice") -> dict[str, Any]:
        """The order and its saga once the saga has ended (shipped or cancelled), and the read
        model shows every event of the order (choreographed, the refund is recorded after the
        cancellation)."""

        async def ended() -> dict[str, Any]:
            _, order = await self.get(f"/api/orders/{order_id}", user)
            status, saga = await self.get(f"/api/orders/{order_id}/saga", user)
            # The read model follows the saga log a moment later: wait for both.
            assert status == 200 and saga["state"] in ("completed", "compensated", "failed"), saga
            assert order["status"] in ("shipped", "cancelled"), order
            _, events = await self.get(f"/api/orders/{order_id}/events", user)
            assert order["version"] == len(events["events"]), (order, events)
            return {"order": order, "saga": saga}

        # Another service's saga: polled through the order API.
        return await eventually(ended, timeout, what=f"order {order_id} settled", interval=0.02)

    async def check_invariants(self, orders: dict[str, dict[str, Any]]) -> None:
        token = self.tokens.issue_service("test")
        async with PaymentsClient(self.payments.grpc_target, token) as pay:
            for order_id, settled in orders.items():
                order = settled["order"]
                assert order["status"] in ("shipped", "cancelled"), order
                try:
                    payment = await pay.get_payment(order_id)
                    net = payment.charged - payment.refunded
                except NotFound:
                    net = 0
                if order["status"] == "shipped":
                    assert net == order["total"] and order["tracking_id"], order
                else:
                    assert net == 0 and order["cancel_reason"], order
        async with InventoryClient(self.inventory.grpc_target, token) as stock:
            levels = await stock.stock()
        for level in levels:
            assert level.available + level.reserved + level.shipped == STOCK, level
            assert level.reserved == 0, level  # nothing held once every saga has ended


# The choreography's queues by the exchange they follow (``ordermesh.services.*.consumers``):
# what a RabbitMQ run leaves behind, deleted after it.
CHOREOGRAPHY_QUEUES = {
    "orders": [
        "payments.order_created",
        "payments.order_cancelled",
        "inventory.order_created",
        "inventory.order_cancelled",
        "inventory.order_shipped",
        "shipping.order_cancelled",
    ],
    "payments": ["inventory.payment_processed", "orders.payment_events"],
    "inventory": ["shipping.stock_reserved", "orders.stock_events"],
    "shipping": ["orders.shipment_events"],
}


async def drop_topology(url: str) -> None:
    """Delete a RabbitMQ run's exchanges and queues (declared again here, so this broker owns them)."""
    broker = await open_broker(url)

    async def ignore(_: Any) -> None:
        return None

    try:
        for exchange, queues in CHOREOGRAPHY_QUEUES.items():
            await broker.declare_exchange(exchange)
            for queue in queues:
                # With the consumers' retry policy: its delay queues are declared, so deleted too.
                await (
                    await broker.subscribe(queue, exchange, ["#"], ignore, retry=CHOREOGRAPHY_RETRY)
                ).stop()
        await broker.delete_topology()
    finally:
        await broker.close()


def broker_for(style: str, tmp_path: Path) -> str:
    """One broker for every service: each runtime opens it from this URL."""
    if style == "choreographed-amqp":
        return amqp_url()
    if style == "choreographed":
        return f"sqlite:///{tmp_path}/broker.db"
    return "memory://"  # orchestrated: the relay's messages go nowhere that matters here


@contextlib.asynccontextmanager
async def fulfilment(
    style: str, tmp_path: Path, *, shipping: bool = True, **overrides: Any
) -> AsyncIterator[System]:
    """The four services in ``style``; without ``shipping``, the shipping service is never started
    (choreographed: nothing schedules a shipment, so every saga stalls at it)."""
    base = Settings(
        data_dir=tmp_path,
        broker_url=broker_for(style, tmp_path),
        payment_limit=100_000,
        saga="orchestrated" if style == "orchestrated" else "choreographed",
        database_url=overrides.pop("database_url", ""),  # unset: a SQLite file per service
    )
    async with contextlib.AsyncExitStack() as stack:
        if style == "choreographed-amqp":
            stack.push_async_callback(drop_topology, base.broker_url)
        # The consumers first: their queues are bound before the first order event is published.
        payments = await stack.enter_async_context(running(PAYMENTS, base))
        inventory = await stack.enter_async_context(running(INVENTORY, base))
        shipping_url = ""
        if shipping:
            shipping_url = (await stack.enter_async_context(running(SHIPPING, base))).http_url
        settings = base.model_copy(
            update={
                "payments_target": payments.grpc_target,
                "inventory_target": inventory.grpc_target,
                "shipping_url": shipping_url,
                "saga_step_timeout": 2.0,
                "saga_deadline": 20.0,
            }
            | overrides
        )
        orders = await stack.enter_async_context(running(ORDERS, settings))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield System(orders, payments, inventory, http, orders.tokens, base.saga)


# Every style, RabbitMQ's marked (a missing server skips it outside CI).
STYLES = ["orchestrated", "choreographed", pytest.param("choreographed-amqp", marks=pytest.mark.rabbitmq)]
CHOREOGRAPHED = STYLES[1:]


__all__ = [
    "CHOREOGRAPHED",
    "CHOREOGRAPHY_QUEUES",
    "STOCK",
    "STYLES",
    "System",
    "broker_for",
    "drop_topology",
    "fulfilment",
]

"""The order saga across the real services (each built by the kit, on its own ephemeral ports and
its own database), in both styles: orchestrated (gRPC and REST over sockets) and choreographed
(events alone, through ONE broker the four services share: the embedded broker's file, or
RabbitMQ under a fresh prefix). The issue's invariants are checked after every run: every order
ends shipped or cancelled with a reason; money charged minus refunded is the total if shipped and
0 if cancelled; stock adds up and nothing stays reserved for a cancelled order; and the saga log
reads the same whichever style ran it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
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
from tests.conftest import AMQP_URL, require_rabbitmq

STOCK = 1000  # the demo catalog: SKU-1 ... SKU-9


@dataclass
class System:
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
        """The order once its saga has ended (shipped or cancelled)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            _, order = await self.get(f"/api/orders/{order_id}", user)
            status, saga = await self.get(f"/api/orders/{order_id}/saga", user)
            # The read model follows the saga log a moment later: wait for both.
            saga_ended = status == 200 and saga["state"] in ("completed", "compensated", "failed")
            if saga_ended and order["status"] in ("shipped", "cancelled"):
                # ... and for the read model to show every event of the order (choreographed, the
                # refund is recorded after the cancellation).
                _, events = await self.get(f"/api/orders/{order_id}/events", user)
                if order["version"] == len(events["events"]):
                    return {"order": order, "saga": saga}
            assert asyncio.get_running_loop().time() < deadline, (order, saga)
            await asyncio.sleep(0.02)  # another process's saga: polled through its API

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
        require_rabbitmq()
        return f"{AMQP_URL}?prefix=t{uuid.uuid4().hex[:10]}."
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


STYLES = ["orchestrated", "choreographed", pytest.param("choreographed-amqp", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=STYLES)
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    async with fulfilment(request.param, tmp_path) as built:
        yield built


async def test_an_order_is_paid_reserved_shipped_and_its_saga_shows_every_step(system: System) -> None:
    order_id = await system.place([{"sku": "SKU-1", "quantity": 2, "unit_price": 1250}])
    settled = await system.settled(order_id)
    order, saga = settled["order"], settled["saga"]
    assert order["status"] == "shipped" and order["tracking_id"].startswith("OM")
    assert saga["style"] == system.style and saga["state"] == "completed" and saga["compensations"] == []
    assert [(s["name"], s["service"], s["outcome"], s["attempts"]) for s in saga["steps"]] == [
        ("payment", "payments", "succeeded", 1),
        ("stock", "inventory", "succeeded", 1),
        ("shipment", "shipping", "succeeded", 1),
        ("commit", "inventory", "succeeded", 1),
    ]
    assert all(s["started_at"] and s["ended_at"] for s in saga["steps"])
    # The order's history tells the same story, step by step.
    _, events = await system.get(f"/api/orders/{order_id}/events")
    assert [e["type"] for e in events["events"]] == [
        "OrderCreated",
        "PaymentProcessed",
        "StockReserved",
        "OrderShipped",
    ]
    await system.check_invariants({order_id: settled})


async def test_a_declined_payment_cancels_with_nothing_charged(system: System) -> None:
    order_id = await system.place([{"sku": "SKU-2", "quantity": 2, "unit_price": 60_000}])  # over the limit
    settled = await system.settled(order_id)
    order, saga = settled["order"], settled["saga"]
    assert order["status"] == "cancelled" and order["cancel_reason"].startswith("payment declined")
    assert saga["state"] == "compensated" and [c["name"] for c in saga["compensations"]] == ["cancel"]
    await system.check_invariants({order_id: settled})


async def test_short_stock_refunds_then_cancels_naming_the_sku(system: System) -> None:
    order_id = await system.place(
        [
            {"sku": "SKU-3", "quantity": 1, "unit_price": 10},
            {"sku": "SKU-4", "quantity": 5000, "unit_price": 1},
        ]
    )
    settled = await system.settled(order_id)
    order, saga = settled["order"], settled["saga"]
    assert order["status"] == "cancelled" and "SKU-4" in order["cancel_reason"]
    assert order["refunded_amount"] == order["total"]
    assert [c["name"] for c in saga["compensations"]] == ["payment", "cancel"]
    _, events = await system.get(f"/api/orders/{order_id}/events")
    # Orchestrated, the saga refunds then cancels; choreographed, the cancellation is what makes
    # payments refund, so the order records it first.
    undo = ["OrderRefunded", "OrderCancelled"]
    assert [e["type"] for e in events["events"]] == [
        "OrderCreated",
        "PaymentProcessed",
        "StockReservationFailed",
        *(undo if system.style == "orchestrated" else reversed(undo)),
    ]
    await system.check_invariants({order_id: settled})


async def test_a_mix_of_orders_at_once_all_end_well(system: System) -> None:
    items = [
        [{"sku": "SKU-5", "quantity": 3, "unit_price": 100}],  # ships
        [{"sku": "SKU-5", "quantity": 1, "unit_price": 200_000}],  # declined
        [{"sku": "SKU-6", "quantity": 999, "unit_price": 1}],  # these compete for SKU-6's 1,000:
        [{"sku": "SKU-6", "quantity": 2, "unit_price": 1}],  # some ship, the rest are short
    ] * 3
    ids = await asyncio.gather(*(system.place(i, user=f"u{n}") for n, i in enumerate(items)))
    # Each saga ended, not only its order: choreographed, the stock is committed after the order
    # shows shipped (inventory reacts to order.shipped), and the invariants need that too.
    settled = {order_id: await system.settled(order_id, 30, f"u{n}") for n, order_id in enumerate(ids)}
    statuses = [settled[i]["order"]["status"] for i in ids]
    assert statuses[0::4] == ["shipped"] * 3 and statuses[1::4] == ["cancelled"] * 3
    assert "shipped" in statuses[2::4] + statuses[3::4]
    await system.check_invariants(settled)


async def test_another_users_saga_is_not_found(system: System) -> None:
    order_id = await system.place([{"sku": "SKU-7", "quantity": 1, "unit_price": 10}])
    assert (await system.get(f"/api/orders/{order_id}/saga", user="mallory"))[0] == 404


async def test_the_operator_sees_sagas_from_the_cli(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ordermesh.cli import app

    shipped = await system.place([{"sku": "SKU-8", "quantity": 1, "unit_price": 10}])
    declined = await system.place([{"sku": "SKU-8", "quantity": 1, "unit_price": 150_000}])
    await system.settled(shipped)
    await system.settled(declined)
    monkeypatch.setenv("ORDERMESH_DATA_DIR", str(tmp_path))
    runner = CliRunner()

    async def invoke(*args: str) -> Any:  # the CLI runs its own event loop: in a thread
        return await asyncio.to_thread(runner.invoke, app, list(args))

    async def run(*args: str) -> Any:
        done = await invoke(*args)
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    shown = await run("saga", "show", shipped, "--json")
    assert shown["state"] == "completed" and [s["name"] for s in shown["steps"]][-1] == "commit"
    assert [r["saga_id"] for r in await run("saga", "list", "--state", "compensated", "--json")] == [declined]
    assert {r["saga_id"] for r in await run("saga", "list", "--json")} == {shipped, declined}
    table = await invoke("saga", "show", declined)
    assert table.exit_code == 0 and "payment declined" in table.stdout
    bad = await invoke("saga", "list", "--state", "stuck")
    assert bad.exit_code == 2 and "--state must be one of" in bad.output

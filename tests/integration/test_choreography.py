"""The choreographed saga's own promises, across the real services sharing one broker: a saga
that stalls (a service down past the deadline) is cancelled and compensated; a service that is
down while orders come in loses none of them when it is back; and an event delivered again (a
copy with the same id, or a re-send with a new one) changes nothing twice. The invariants of
``tests.helpers.saga`` are checked after each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from ordermesh import failpoints
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from ordermesh.db import connect
from ordermesh.kit.testing import running
from ordermesh.messaging import open_broker
from ordermesh.messaging.port import Delivery, Message
from ordermesh.services.inventory.consumers import REACTED as INVENTORY_REACTED
from ordermesh.services.inventory.spec import SPEC as INVENTORY
from ordermesh.services.notifications.sink import start_mail_sink
from ordermesh.services.notifications.spec import SPEC as NOTIFICATIONS
from ordermesh.services.orders.choreography import REACTED as ORDERS_REACTED
from ordermesh.services.orders.spec import SPEC as ORDERS
from ordermesh.services.payments.consumers import REACTED as PAYMENTS_REACTED
from ordermesh.services.payments.spec import SPEC as PAYMENTS
from ordermesh.services.shipping.consumers import REACTED as SHIPPING_REACTED
from ordermesh.services.shipping.spec import SPEC as SHIPPING
from tests.helpers import (
    CHOREOGRAPHED,
    PG_URL,
    System,
    broker_for,
    drop_topology,
    eventually,
    fulfilment,
)

STYLES = CHOREOGRAPHED

REACTED = (PAYMENTS_REACTED, INVENTORY_REACTED, SHIPPING_REACTED, ORDERS_REACTED)
# Who follows each routing key in the choreography (its inbox's consumer name).
FOLLOWERS = {
    "order.created": ("payments", "inventory"),
    "payment.processed": ("inventory", "orders"),
    "stock.reserved": ("shipping", "orders"),
    "shipment.scheduled": ("orders",),
    "order.shipped": ("inventory",),
    "stock.committed": ("orders",),
}


@pytest.mark.parametrize("style", STYLES)
async def test_a_stalled_saga_is_cancelled_past_its_deadline_and_compensated(
    style: str, tmp_path: Path
) -> None:
    # Shipping never runs: nothing schedules the shipment, and a 1.5 s deadline ends the wait.
    async with fulfilment(style, tmp_path, shipping=False, saga_deadline=1.5) as system:
        order_id = await system.place([{"sku": "SKU-1", "quantity": 3, "unit_price": 700}])
        settled = await system.settled(order_id)
        await system.check_invariants({order_id: settled})
    order, saga = settled["order"], settled["saga"]
    assert (
        order["status"] == "cancelled"
        and order["cancel_reason"] == "the saga's deadline passed during shipment"
    )
    assert order["refunded_amount"] == 2100 and order["stock_released"]
    assert saga["style"] == "choreographed" and saga["state"] == "compensated"
    assert saga["reason"] == order["cancel_reason"]
    assert [(s["name"], s["outcome"]) for s in saga["steps"]] == [
        ("payment", "succeeded"),
        ("stock", "succeeded"),
        ("shipment", "failed"),
    ]
    # What was done is undone, last first; the shipment was never confirmed: nothing to wait for.
    assert [(c["name"], c["outcome"]) for c in saga["compensations"]] == [
        ("stock", "succeeded"),
        ("payment", "succeeded"),
        ("cancel", "succeeded"),
    ]


@pytest.mark.parametrize("style", STYLES)
async def test_orders_placed_while_payments_is_down_all_ship_once_it_is_back(
    style: str, tmp_path: Path
) -> None:
    base = Settings(
        data_dir=tmp_path, broker_url=broker_for(style, tmp_path), payment_limit=100_000, saga="choreographed"
    )
    async with contextlib.AsyncExitStack() as stack:
        if style == "choreographed-amqp":
            stack.push_async_callback(drop_topology, base.broker_url)
        async with running(PAYMENTS, base):
            pass  # its queues are bound: the broker keeps what comes while it is down
        inventory = await stack.enter_async_context(running(INVENTORY, base))
        await stack.enter_async_context(running(SHIPPING, base))
        orders = await stack.enter_async_context(
            running(ORDERS, base.model_copy(update={"saga_deadline": 60.0}))
        )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        placed = [[{"sku": "SKU-2", "quantity": n, "unit_price": 100}] for n in (1, 2, 3)]
        # The payments runtime is only needed for the invariants: a placeholder until it is back.
        system = System(orders, orders, inventory, http, orders.tokens, "choreographed")
        ids = [await system.place(items) for items in placed]
        await asyncio.sleep(0.5)  # time for a saga to move, were anything to move it
        for order_id in ids:  # nothing moves without payments
            assert (await system.get(f"/api/orders/{order_id}"))[1]["status"] == "pending"
        system.payments = await stack.enter_async_context(running(PAYMENTS, base))
        settled = {order_id: await system.settled(order_id) for order_id in ids}
        assert all(s["order"]["status"] == "shipped" for s in settled.values()), settled
        await system.check_invariants(settled)


@pytest.mark.parametrize("style", STYLES)
async def test_an_event_delivered_again_changes_nothing_twice(style: str, tmp_path: Path) -> None:
    async with fulfilment(style, tmp_path) as system:
        spy = await open_broker(system.orders.settings.effective_broker_url)
        seen: list[tuple[str, Message]] = []

        def keep(exchange: str) -> Any:
            async def record(delivery: Delivery) -> None:
                seen.append((exchange, delivery.message))

            return record

        try:
            subs = [
                await spy.subscribe(f"test.spy_{exchange}", exchange, ["#"], keep(exchange))
                for exchange in ("orders", "payments", "inventory", "shipping")
            ]
            order_id = await system.place([{"sku": "SKU-9", "quantity": 2, "unit_price": 450}])
            before = await system.settled(order_id)
            assert before["order"]["status"] == "shipped"
            await eventually(
                lambda: {m.routing_key for _, m in seen} >= set(FOLLOWERS), what="every choreography event"
            )
            state = await _state(system, order_id)
            originals = [(x, m) for x, m in seen if m.routing_key in FOLLOWERS]
            assert sorted(m.routing_key for _, m in originals) == sorted(FOLLOWERS)  # each exactly once
            # Every choreography event again: once as a copy (same id: the inbox drops it), once
            # re-sent with a new id (the inbox cannot know it: the reaction must be idempotent).
            resent = [(x, dataclasses.replace(m, message_id=str(uuid.uuid4()))) for x, m in originals]
            for exchange, message in originals + resent:
                await spy.publish(exchange, [message])
            for _, message in resent:
                for consumer in FOLLOWERS[message.routing_key]:
                    await _recorded_in_inbox(tmp_path, consumer, message.message_id)
            await asyncio.sleep(0.5)  # anything a second reaction would publish has been published
            assert await _state(system, order_id) == state
            published = {m.message_id for _, m in originals + resent}
            again = [m.routing_key for _, m in seen if m.message_id not in published]
            assert [k for k in again if k in FOLLOWERS] == []  # no service published anything twice
            if style == "choreographed":
                assert await spy.dead_letters() == []
            for sub in subs:
                await sub.stop()
        finally:
            await spy.delete_topology()  # its spy queues (the services' are the fixture's to drop)
            await spy.close()
        await system.check_invariants({order_id: before})


async def _state(system: System, order_id: str) -> Any:
    """Everything a second reaction could change: the order's events, its saga log, the money, the stock."""
    _, events = await system.get(f"/api/orders/{order_id}/events")
    _, saga = await system.get(f"/api/orders/{order_id}/saga")
    token = system.tokens.issue_service("test")
    async with PaymentsClient(system.payments.grpc_target, token) as pay:
        payment = await pay.get_payment(order_id)
    async with InventoryClient(system.inventory.grpc_target, token) as stock:
        levels = await stock.stock()
    return (
        [(e["type"], e["version"]) for e in events["events"]],
        saga,
        (payment.charged, payment.refunded),
        [(s.sku, s.available, s.reserved, s.shipped) for s in levels],
    )


async def _recorded_in_inbox(tmp_path: Path, consumer: str, message_id: str) -> None:
    """Until ``consumer``'s inbox (its service's SQLite file) has recorded ``message_id``."""
    db = await connect(f"sqlite:///{tmp_path / (consumer + '.db')}")
    sql = "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2"
    try:
        await eventually(lambda: db.fetchrow(sql, consumer, message_id), what=f"{consumer} got {message_id}")
    finally:
        await db.close()


async def test_a_crash_between_each_reaction_and_its_inbox_record_does_nothing_twice(tmp_path: Path) -> None:
    # Every service's reactions fail every other time after their effect, before the inbox records
    # the message (as a process killed there would): the broker delivers each again, the inbox
    # has no record of it, and the reaction runs a second time against what the first one did.
    crashes = dict.fromkeys(REACTED, 0)

    def alternate(name: str) -> Any:
        def hit() -> None:
            crashes[name] += 1
            if crashes[name] % 2:
                raise RuntimeError(f"{name}: crashed after the effect")

        return hit

    with contextlib.ExitStack() as armed:
        for name in REACTED:
            armed.enter_context(failpoints.armed(name, alternate(name)))
        async with fulfilment("choreographed", tmp_path) as system:
            shipped = await system.place([{"sku": "SKU-3", "quantity": 4, "unit_price": 250}])
            short = await system.place([{"sku": "SKU-4", "quantity": 5000, "unit_price": 1}])
            settled = {order_id: await system.settled(order_id) for order_id in (shipped, short)}
            await system.check_invariants(settled)
            histories = {o: (await system.get(f"/api/orders/{o}/events"))[1]["events"] for o in settled}
    assert all(n >= 2 for n in crashes.values()), crashes  # every service crashed and went on
    assert (
        settled[shipped]["order"]["status"] == "shipped" and settled[short]["order"]["status"] == "cancelled"
    )
    assert [e["type"] for e in histories[shipped]] == [
        "OrderCreated",
        "PaymentProcessed",
        "StockReserved",
        "OrderShipped",
    ]
    assert [e["type"] for e in histories[short]] == [
        "OrderCreated",
        "PaymentProcessed",
        "StockReservationFailed",
        "OrderCancelled",
        "OrderRefunded",
    ]
    assert [s["attempts"] for s in settled[shipped]["saga"]["steps"]] == [1, 1, 1, 1]


@pytest.mark.postgres
async def test_the_choreography_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    # Every service in its own schema of one PostgreSQL database (its inbox there too).
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    try:
        async with fulfilment("choreographed", tmp_path, database_url=pg_url) as system:
            placed = [
                [{"sku": "SKU-5", "quantity": 2, "unit_price": 300}],  # ships
                [{"sku": "SKU-5", "quantity": 1, "unit_price": 200_000}],  # declined
                [{"sku": "SKU-6", "quantity": 5000, "unit_price": 1}],  # short
            ]
            ids = [await system.place(items, user=f"u{n}") for n, items in enumerate(placed)]
            settled = {}
            for n, order_id in enumerate(ids):
                settled[order_id] = await system.settled(order_id, user=f"u{n}")
            await system.check_invariants(settled)
        statuses = [settled[i]["order"]["status"] for i in ids]
        assert statuses == ["shipped", "cancelled", "cancelled"]
        assert [settled[i]["saga"]["state"] for i in ids] == ["completed", "compensated", "compensated"]
    finally:
        db = await connect(PG_URL)
        try:
            for service in ("orders", "payments", "inventory", "shipping"):
                await db.execute(f"DROP SCHEMA IF EXISTS {schema}_{service} CASCADE")
        finally:
            await db.close()


async def test_every_order_gets_one_confirmation_and_one_final_mail(tmp_path: Path) -> None:
    sink = await start_mail_sink("127.0.0.1", 0, tmp_path / "mail.jsonl")
    try:
        async with fulfilment("choreographed", tmp_path) as system:
            mail = system.orders.settings.model_copy(update={"smtp_url": f"smtp://127.0.0.1:{sink.port}"})
            async with running(NOTIFICATIONS, mail):
                placed = [
                    [{"sku": "SKU-7", "quantity": 1, "unit_price": 900}],  # ships
                    [{"sku": "SKU-7", "quantity": 1, "unit_price": 300_000}],  # declined
                    [{"sku": "SKU-8", "quantity": 9999, "unit_price": 1}],  # short
                ]
                ids = [await system.place(items, user=f"m{n}") for n, items in enumerate(placed)]
                for n, order_id in enumerate(ids):
                    await system.settled(order_id, user=f"m{n}")
                await sink.wait_for(6)
                await asyncio.sleep(0.5)  # a seventh mail would be a duplicate
        subjects = sorted(m.subject for m in sink.received)
        shipped, declined, short = ids
        assert subjects == sorted(
            [f"Order {i} confirmed" for i in ids]
            + [f"Order {shipped} shipped", f"Order {declined} cancelled", f"Order {short} cancelled"]
        )
    finally:
        await sink.stop()

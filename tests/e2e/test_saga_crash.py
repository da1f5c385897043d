"""Sagas that survive kill -9, each service its own process (``ordermesh run NAME``) on the
embedded defaults: the order service killed right after a step acted (and before its log said
so), and a downstream killed under a saga. Every saga resumes and ends the same way; no step takes
effect twice (checked against the payment ledger and the stock)."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from tests.helpers import AMQP_URL, Fleet, eventually_sync, require_rabbitmq


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "data")
    for service in ("payments", "inventory", "shipping"):
        f.start(service)
    try:
        yield f
    finally:
        f.stop_all()


TOKENS = Tokens(Settings())
ORDER = {
    "user_email": "kim@example.com",
    "currency": "EUR",
    "items": [{"sku": "SKU-3", "quantity": 4, "unit_price": 250}],
}


def place(fleet: Fleet) -> str:
    answer = requests.post(
        f"{fleet.url('orders')}/api/orders",
        json=ORDER,
        headers={"Authorization": f"Bearer {TOKENS.issue('kim')}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def saga_of(fleet: Fleet, order_id: str) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {TOKENS.issue('kim')}"}
    saga = requests.get(f"{fleet.url('orders')}/api/orders/{order_id}/saga", headers=headers, timeout=5)
    return dict(saga.json()) if saga.status_code == 200 else None


def settled(fleet: Fleet, order_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The order and its saga once it has shipped (another process's saga: polled)."""
    headers = {"Authorization": f"Bearer {TOKENS.issue('kim')}"}

    def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
        order = requests.get(f"{fleet.url('orders')}/api/orders/{order_id}", headers=headers, timeout=5)
        saga = saga_of(fleet, order_id)
        assert saga is not None and saga["state"] == "completed", saga
        assert order.json()["status"] == "shipped", order.text
        return order.json(), saga

    return eventually_sync(shipped, interval=0.1)


def met_the_missing_inventory(fleet: Fleet, order_id: str, style: str) -> bool:
    """Orchestrated: a call to inventory (stock, or commit) failed and waits to be tried again,
    unless the saga was done with inventory before it was killed; choreographed: the order is
    paid, and payment.processed waits in inventory's queue."""
    if style == "choreographed":
        return step_of(fleet, order_id, "payment").get("outcome") == "succeeded"
    stock, commit = step_of(fleet, order_id, "stock"), step_of(fleet, order_id, "commit")
    waiting = {stock.get("outcome"), commit.get("outcome")} & {"retrying", "parked"}
    return bool(waiting) or commit.get("outcome") == "succeeded"


def step_of(fleet: Fleet, order_id: str, name: str) -> dict[str, Any]:
    """The saga log's record of step ``name`` of the order's saga ({} until there is one)."""
    steps = (saga_of(fleet, order_id) or {}).get("steps", [])
    return next((dict(s) for s in steps if s["name"] == name), {})


async def downstream_effects(fleet: Fleet, order_id: str) -> tuple[int, int, Any]:
    token = TOKENS.issue_service("test")
    pay_at = f"127.0.0.1:{fleet.env['ORDERMESH_PAYMENTS_GRPC_PORT']}"
    stock_at = f"127.0.0.1:{fleet.env['ORDERMESH_INVENTORY_GRPC_PORT']}"
    async with PaymentsClient(pay_at, token) as pay, InventoryClient(stock_at, token) as stock:
        payment = await pay.get_payment(order_id)
        (level,) = await stock.stock(["SKU-3"])
    return payment.charged, payment.refunded, level


@pytest.mark.parametrize("step", ["payment", "stock", "shipment", "commit"])
def test_the_order_service_killed_after_a_step_acted_resumes_and_nothing_happens_twice(
    fleet: Fleet, step: str
) -> None:
    armed = fleet.start("orders", ORDERMESH_FAILPOINTS=f"saga.after.{step}=kill")
    order_id = place(fleet)
    assert armed.wait(30) == -signal.SIGKILL  # it died with the step done and not yet logged
    fleet.start("orders")  # back, without the failpoint: the saga is due and resumes
    order, saga = settled(fleet, order_id)
    assert order["tracking_id"]
    attempts = {s["name"]: s["attempts"] for s in saga["steps"]}
    assert attempts[step] == 2 and sum(attempts.values()) == 5  # that step re-sent, no other
    charged, refunded, level = asyncio.run(downstream_effects(fleet, order_id))
    assert (charged, refunded) == (1000, 0)  # charged once, although asked twice
    assert (level.available, level.reserved, level.shipped) == (996, 0, 4)  # reserved once, shipped once


def test_a_downstream_killed_under_a_saga_is_waited_for(fleet: Fleet) -> None:
    fleet.start("orders", ORDERMESH_SAGA_STEP_TIMEOUT="0.5")
    fleet.procs["inventory"].kill()  # kill -9 inventory: the saga's next step cannot be made
    fleet.procs["inventory"].wait()
    order_id = place(fleet)
    # The stock step fails, and the saga tries it again on its durable wake-ups.
    eventually_sync(lambda: step_of(fleet, order_id, "stock").get("attempts", 0) >= 2, interval=0.1)
    fleet.start("inventory")
    _, saga = settled(fleet, order_id)
    stock = next(s for s in saga["steps"] if s["name"] == "stock")
    assert stock["attempts"] >= 2 and stock["outcome"] == "succeeded"
    charged, refunded, level = asyncio.run(downstream_effects(fleet, order_id))
    assert (charged, refunded) == (1000, 0) and (level.reserved, level.shipped) == (0, 4)


@pytest.mark.parametrize("victim", ["payments", "inventory", "shipping", "orders"])
def test_choreographed_a_service_killed_after_it_reacted_picks_up_where_it_was(
    tmp_path: Path, victim: str
) -> None:
    """Each service killed -9 right after its reaction took effect and before its inbox said so:
    restarted, the event comes again, the reaction runs again (idempotent by order id), and the
    order still ships once."""
    fleet = Fleet(tmp_path / "data")
    fleet.env["ORDERMESH_SAGA"] = "choreographed"
    try:
        for service in ("payments", "inventory", "shipping", "orders"):
            armed = (
                {"ORDERMESH_FAILPOINTS": f"{service}.choreography.reacted=kill"} if service == victim else {}
            )
            fleet.start(service, **armed)
        order_id = place(fleet)
        assert fleet.procs[victim].wait(30) == -signal.SIGKILL
        fleet.start(victim)
        order, saga = settled(fleet, order_id)
        assert saga["style"] == "choreographed" and order["tracking_id"]
        charged, refunded, level = asyncio.run(downstream_effects(fleet, order_id))
        assert (charged, refunded) == (1000, 0)
        assert (level.available, level.reserved, level.shipped) == (996, 0, 4)
    finally:
        fleet.stop_all()


@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.parametrize("style", ["orchestrated", "choreographed"])
def test_both_styles_on_postgresql_and_rabbitmq_with_a_service_killed(
    tmp_path: Path, pg_url: str, style: str
) -> None:
    """Production mode: every service in its own schema of one PostgreSQL database, RabbitMQ
    between them, each its own process; inventory is killed -9 with orders in flight."""
    import uuid

    require_rabbitmq()
    fleet = Fleet(tmp_path / "data")
    fleet.env |= {
        "ORDERMESH_SAGA": style,
        "ORDERMESH_DATABASE_URL": pg_url,  # its search_path prefixes each service's schema
        "ORDERMESH_BROKER_URL": f"{AMQP_URL}?prefix=saga{uuid.uuid4().hex[:8]}.",
        "ORDERMESH_SAGA_STEP_TIMEOUT": "1",
    }
    try:
        for service in ("payments", "inventory", "shipping", "orders"):
            fleet.start(service)
        ids = [place(fleet) for _ in range(3)]
        fleet.procs["inventory"].kill()
        fleet.procs["inventory"].wait()
        for order_id in ids:
            eventually_sync(
                functools.partial(met_the_missing_inventory, fleet, order_id, style), interval=0.1
            )
        fleet.start("inventory")
        for order_id in ids:
            order, saga = settled(fleet, order_id)
            assert saga["style"] == style and order["tracking_id"]
        charged, refunded, level = asyncio.run(downstream_effects(fleet, ids[0]))
        assert (charged, refunded) == (1000, 0)
        assert (level.available, level.reserved, level.shipped) == (988, 0, 12)
        assert not (tmp_path / "data" / "orders.db").exists()  # nothing local in production mode
    finally:
        fleet.stop_all()

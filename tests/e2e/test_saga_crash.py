"""Sagas that survive kill -9, each service its own process (``ordermesh run NAME``) on the
embedded defaults: the order service killed right after a step acted (and before its log said
so), and a downstream killed under a saga. Every saga resumes and ends the same way; no step takes
effect twice (checked against the payment ledger and the stock)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from tests.helpers import Fleet


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


def settled(fleet: Fleet, order_id: str, timeout: float = 40) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKENS.issue('kim')}"}
    deadline = time.monotonic() + timeout
    while True:
        order = requests.get(
            f"{fleet.url('orders')}/api/orders/{order_id}", headers=headers, timeout=5
        ).json()
        saga = requests.get(f"{fleet.url('orders')}/api/orders/{order_id}/saga", headers=headers, timeout=5)
        if saga.status_code == 200 and saga.json()["state"] == "completed" and order["status"] == "shipped":
            return order, saga.json()
        assert time.monotonic() < deadline, (order, saga.text)
        time.sleep(0.1)


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
    time.sleep(2.0)  # longer than a step may take: the saga retries on its durable wake-ups
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

    from tests.conftest import AMQP_URL, require_rabbitmq

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
        time.sleep(1.5)  # the sagas meet a missing inventory
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

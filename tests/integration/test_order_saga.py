"""The order saga across the real services (each built by the kit, on its own ephemeral ports and
its own database), in both styles: orchestrated (gRPC and REST over sockets) and choreographed
(events alone, through ONE broker the four services share: the embedded broker's file, or
RabbitMQ under a fresh prefix). The issue's invariants are checked after every run: every order
ends shipped or cancelled with a reason; money charged minus refunded is the total if shipped and
0 if cancelled; stock adds up and nothing stays reserved for a cancelled order; and the saga log
reads the same whichever style ran it. The services, ``System`` and the invariants are the kit's
(``tests.helpers.saga``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import STYLES, System, fulfilment


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

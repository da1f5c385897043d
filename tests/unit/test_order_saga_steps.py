"""The order saga's steps against in-memory downstreams and an injected clock: the compensation
orders the issue asks for, steps that are re-sent change nothing twice, and an outage past the
deadline compensates without a second of real waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ordermesh.clock import FakeClock
from ordermesh.errors import DomainError, InfrastructureError
from ordermesh.saga import MemorySagaStore, SagaPolicy, SagaRunner
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.saga import SAGA, Downstream, OrderSaga


@dataclass
class Answer:
    payment_id: str = "pay-1"
    status: str = "succeeded"
    decline_reason: str = ""
    amount: int = 0
    currency: str = "EUR"
    reservation_id: str = "rsv-1"
    reason: str = ""
    tracking_id: str | None = "OM123"
    refunded_now: int = 0


@dataclass
class Fakes:
    """Payments, inventory and shipping in one, with a log of calls and scripted failures."""

    calls: list[str] = field(default_factory=list)
    fail: dict[str, list[Exception]] = field(default_factory=dict)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        plan = self.fail.get(name)
        if plan:
            raise plan.pop(0)

    async def process_payment(
        self, order_id: str, amount: int, currency: str, *, timeout: float | None = None
    ) -> Any:
        self._call("pay")
        return Answer(amount=amount, currency=currency)

    async def refund(self, order_id: str, reason: str = "", *, timeout: float | None = None) -> Any:
        self._call("refund")
        return Answer(refunded_now=1)

    async def reserve(self, order_id: str, items: Any, *, timeout: float | None = None) -> Any:
        self._call("reserve")
        return Answer(status="reserved")

    async def release(self, order_id: str, reason: str = "", *, timeout: float | None = None) -> Any:
        self._call("release")
        return Answer(status="released")

    async def commit(self, order_id: str, *, timeout: float | None = None) -> Any:
        self._call("commit")
        return Answer(status="committed")

    async def schedule(self, order_id: str, items: Any, *, timeout: float | None = None) -> Any:
        self._call("schedule")
        return Answer()

    async def cancel(self, order_id: str, *, timeout: float | None = None) -> Any:
        self._call("cancel-shipment")
        return Answer()


@pytest.fixture
async def system() -> AsyncIterator[OrderSystem]:
    built = await build_order_system("memory://")
    await built.start()
    yield built
    await built.close()


async def run(
    system: OrderSystem, fakes: Fakes, clock: FakeClock, **policy: float
) -> tuple[Any, dict[str, Any]]:
    order = await system.service.create_order("ann", "ann@example.com", "EUR", [OrderLine("SKU-1", 2, 500)])
    saga = OrderSaga(system.service, Downstream(fakes, fakes, fakes))
    runner = SagaRunner(MemorySagaStore(), {SAGA: saga.definition()}, clock, SagaPolicy(**policy))
    data = {"total": order["total"], "currency": "EUR", "items": [{"sku": "SKU-1", "quantity": 2}]}
    record = await runner.start(order["id"], SAGA, data)
    while not record.terminal:
        clock.advance(10)
        record = await runner.drive(order["id"])
    return record, (await system.service.repository.load(order["id"])).to_snapshot()


async def test_a_refused_shipment_releases_refunds_and_cancels_in_that_order(system: OrderSystem) -> None:
    fakes = Fakes(fail={"schedule": [DomainError("no carrier delivers there")]})
    record, order = await run(system, fakes, FakeClock())
    assert fakes.calls == ["pay", "reserve", "schedule", "release", "refund"]
    assert record.state == "compensated" and record.reason == "shipment: no carrier delivers there"
    assert order["status"] == "cancelled" and order["stock_released"] and order["refunded_amount"] == 1000
    history = [e["type"] for e in await system.service.history(order["id"], None)]
    assert history == [
        "OrderCreated",
        "PaymentProcessed",
        "StockReserved",
        "StockReleased",
        "OrderRefunded",
        "OrderCancelled",
    ]


async def test_a_step_sent_again_records_nothing_twice(system: OrderSystem) -> None:
    # Inventory is restarting when the stock is committed: the step is sent again, and the order
    # still records each of its events once.
    fakes = Fakes(fail={"commit": [InfrastructureError("inventory restarting")]})
    record, order = await run(system, fakes, FakeClock(), retry_initial=1.0)
    assert record.state == "completed" and fakes.calls.count("commit") == 2
    assert order["status"] == "shipped" and order["tracking_id"] == "OM123"
    history = [e["type"] for e in await system.service.history(order["id"], None)]
    assert history == ["OrderCreated", "PaymentProcessed", "StockReserved", "OrderShipped"]


async def test_a_payment_service_down_past_the_deadline_cancels_the_order(system: OrderSystem) -> None:
    fakes = Fakes(fail={"pay": [InfrastructureError("payments down")] * 100})
    record, order = await run(system, fakes, FakeClock(), deadline=60.0, retry_initial=1.0, retry_max=5.0)
    assert record.state == "compensated" and "deadline" in record.reason
    assert order["status"] == "cancelled" and "deadline" in order["cancel_reason"]
    # The payment may have gone through unanswered: it is refunded all the same (idempotent).
    assert fakes.calls[-1] == "refund" and "reserve" not in fakes.calls

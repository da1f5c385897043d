"""The order service's side of the choreographed saga, fed its events directly, with an injected
clock: the saga log it writes (the orchestrator's step names and compensation order), events that
overtake one another, duplicates, a user's cancellation and a stall past the deadline, without a
second of real waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ordermesh.clock import FakeClock
from ordermesh.contracts import inventory as stock
from ordermesh.contracts import payments as pay
from ordermesh.contracts import shipping as ship
from ordermesh.messaging.inbox import MemoryInbox
from ordermesh.messaging.port import Delivery, Message, PermanentError
from ordermesh.saga import MemorySagaStore, SagaRecord
from ordermesh.services.orders.choreography import Choreography, NotYet
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.saga import SAGA, record_on_order

LINES = [{"sku": "SKU-1", "quantity": 2}]


@dataclass
class World:
    system: OrderSystem
    sagas: MemorySagaStore
    clock: FakeClock
    choreography: Choreography
    order_id: str = ""
    total: int = 0

    async def saga(self) -> SagaRecord:
        record = await self.sagas.get(self.order_id)
        assert record is not None
        return record

    async def order(self) -> dict[str, object]:
        return (await self.system.service.repository.load(self.order_id)).to_snapshot()

    def paid(self) -> pay.PaymentProcessed:
        return pay.PaymentProcessed(
            order_id=self.order_id, payment_id="pay-1", amount=self.total, currency="EUR"
        )

    def reserved(self) -> stock.StockReserved:
        items = [stock.StockLine(sku="SKU-1", quantity=2)]
        return stock.StockReserved(order_id=self.order_id, reservation_id="rsv-1", items=items)

    def scheduled(self) -> ship.ShipmentScheduled:
        return ship.ShipmentScheduled(
            shipment_id="shp-1",
            order_id=self.order_id,
            tracking_id="OM42",
            items=[ship.ShipmentItem(sku="SKU-1", quantity=2)],
            scheduled_at=datetime(2026, 1, 1, tzinfo=UTC),
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    system = await build_order_system("memory://")
    await system.start()
    clock, sagas = FakeClock(), MemorySagaStore()
    built = World(
        system, sagas, clock, Choreography(system.service, sagas, clock, 60.0, MemoryInbox("orders"))
    )
    order = await system.service.create_order("ann", "ann@example.com", "EUR", [OrderLine("SKU-1", 2, 500)])
    built.order_id, built.total = order["id"], order["total"]
    await built.choreography.begin(
        built.order_id, SAGA, {"total": built.total, "currency": "EUR", "items": LINES}
    )
    yield built
    await system.close()


def steps(record: SagaRecord, kind: str = "action") -> list[tuple[str, str]]:
    return [(s.name, s.outcome) for s in record.steps if s.kind == kind]


async def test_the_events_in_turn_ship_the_order_and_complete_the_saga(world: World) -> None:
    c = world.choreography
    assert steps(await world.saga()) == [("payment", "running")]
    await c.payment_processed(world.paid())
    assert steps(await world.saga()) == [("payment", "succeeded"), ("stock", "running")]
    await c.stock_reserved(world.reserved())
    await c.shipment_scheduled(world.scheduled())
    assert (await world.order())["status"] == "shipped"  # before the commit: inventory commits on it
    await c.stock_committed(stock.StockCommitted(order_id=world.order_id, reservation_id="rsv-1", items=[]))
    saga = await world.saga()
    assert saga.style == "choreographed" and saga.state == "completed" and saga.wake_at is None
    assert steps(saga) == [(n, "succeeded") for n in ("payment", "stock", "shipment", "commit")]
    assert [s.detail for s in saga.steps] == ["pay-1", "rsv-1", "OM42", "OM42"]
    assert steps(saga, "compensation") == []


async def test_an_event_that_overtakes_the_one_before_it_waits_for_it(world: World) -> None:
    with pytest.raises(NotYet):
        await world.choreography.stock_reserved(world.reserved())  # the payment is not recorded yet
    with pytest.raises(NotYet):
        await world.choreography.shipment_scheduled(world.scheduled())
    assert (await world.order())["status"] == "pending"
    await world.choreography.payment_processed(world.paid())
    await world.choreography.stock_reserved(world.reserved())  # the broker's retry
    assert steps(await world.saga()) == [
        ("payment", "succeeded"),
        ("stock", "succeeded"),
        ("shipment", "running"),
    ]


async def test_a_declined_payment_cancels_with_nothing_to_undo(world: World) -> None:
    declined = pay.PaymentFailed(
        order_id=world.order_id,
        payment_id="pay-1",
        amount=world.total,
        currency="EUR",
        reason="over the limit",
    )
    await world.choreography.payment_failed(declined)
    await world.choreography.payment_failed(declined)  # re-sent: nothing twice
    saga, order = await world.saga(), await world.order()
    assert order["status"] == "cancelled" and order["cancel_reason"] == "payment declined: over the limit"
    assert saga.state == "compensated" and saga.reason == order["cancel_reason"]
    assert steps(saga) == [("payment", "failed")] and steps(saga, "compensation") == [("cancel", "succeeded")]
    history = [e["type"] for e in await world.system.service.history(world.order_id, None)]
    assert history == ["OrderCreated", "PaymentFailed", "OrderCancelled"]


async def test_short_stock_waits_for_the_refund_before_it_is_compensated(world: World) -> None:
    c = world.choreography
    await c.payment_processed(world.paid())
    refused = stock.StockReservationFailed(
        order_id=world.order_id,
        reservation_id="rsv-1",
        reason="SKU-1: 2 wanted, 0 available",
        short_skus=["SKU-1"],
        items=[],
    )
    await c.stock_reservation_failed(refused)
    saga = await world.saga()
    assert saga.state == "compensating" and "SKU-1" in saga.reason
    assert steps(saga, "compensation") == [("payment", "running"), ("cancel", "succeeded")]
    refunded = pay.PaymentRefunded(
        order_id=world.order_id, payment_id="pay-1", amount=world.total, currency="EUR"
    )
    await c.payment_refunded(refunded)
    saga, order = await world.saga(), await world.order()
    assert saga.state == "compensated" and steps(saga, "compensation") == [
        ("payment", "succeeded"),
        ("cancel", "succeeded"),
    ]
    assert order["refunded_amount"] == world.total and order["status"] == "cancelled"


async def test_a_stall_past_the_deadline_cancels_and_waits_for_the_undos(world: World) -> None:
    c = world.choreography
    await c.payment_processed(world.paid())
    await c.stock_reserved(world.reserved())
    world.clock.advance(59)
    assert await c.sweep() == 0  # not due before the deadline
    world.clock.advance(2)
    assert await c.sweep() == 1
    saga, order = await world.saga(), await world.order()
    assert order["cancel_reason"] == "the saga's deadline passed during shipment"
    assert saga.state == "compensating" and steps(saga)[-1] == ("shipment", "failed")
    assert steps(saga, "compensation") == [
        ("stock", "running"),
        ("payment", "running"),
        ("cancel", "succeeded"),
    ]
    world.clock.advance(61)  # an undo that does not come is reported, and looked at again later
    assert await c.sweep() == 1 and (await world.saga()).state == "compensating"
    await c.stock_released(
        stock.StockReleased(order_id=world.order_id, reservation_id="rsv-1", reason="x", items=[])
    )
    refunded = pay.PaymentRefunded(
        order_id=world.order_id, payment_id="pay-1", amount=world.total, currency="EUR"
    )
    await c.payment_refunded(refunded)
    saga, order = await world.saga(), await world.order()
    assert saga.state == "compensated" and order["stock_released"] and order["refunded_amount"] == world.total
    # A shipment scheduled after all (shipping was only slow) is recorded, and its undo awaited.
    await c.shipment_scheduled(world.scheduled())
    assert (await world.order())["status"] == "cancelled"
    assert steps(await world.saga())[-1] == ("shipment", "succeeded")


async def test_an_order_cancelled_by_someone_else_turns_the_saga_to_compensation(world: World) -> None:
    await world.choreography.payment_processed(world.paid())

    def cancel(order, now):  # type: ignore[no-untyped-def]
        order.cancel("the customer changed their mind", now)

    await record_on_order(world.system.service, world.order_id, cancel)
    # The next event about the order (here the reservation, made before inventory saw the cancel).
    await world.choreography.stock_reserved(world.reserved())
    saga = await world.saga()
    assert saga.state == "compensating" and saga.reason == "the customer changed their mind"
    assert steps(saga, "compensation") == [
        ("stock", "running"),
        ("payment", "running"),
        ("cancel", "succeeded"),
    ]


async def test_a_delivery_twice_is_handled_once_and_a_bad_one_is_dead_lettered(world: World) -> None:
    body = world.paid().model_dump_json().encode()
    message = Message(pay.PAYMENT_PROCESSED, body, message_id="m-1")
    delivery = Delivery(message, pay.EXCHANGE, "orders.payment_events")
    await world.choreography.handle(delivery)
    version = (await world.saga()).version
    await world.choreography.handle(delivery)
    assert (await world.saga()).version == version
    assert await world.choreography.inbox.seen("m-1")
    with pytest.raises(PermanentError):
        await world.choreography.handle(
            Delivery(Message(pay.PAYMENT_PROCESSED, b'{"order_id": 1}'), pay.EXCHANGE, "q")
        )
    unknown = Message(
        pay.PAYMENT_PROCESSED, world.paid().model_copy(update={"order_id": "nope"}).model_dump_json().encode()
    )
    with pytest.raises(PermanentError):  # an order that does not exist: no retry would help
        await world.choreography.handle(Delivery(unknown, pay.EXCHANGE, "q"))

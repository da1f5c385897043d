"""Order fulfilment as an orchestrated saga (``ORDERMESH_SAGA=orchestrated``, the default): the
order service's saga manager pays (payments, gRPC), reserves stock (inventory, gRPC), schedules
the shipment (shipping, REST) and commits the stock, moving the order through its lifecycle
events as each step answers; a no or a missed deadline undoes what was done, last first, and
cancels the order with the reason.

Steps are re-sent after a crash (the saga log records a step before it runs), so each one is
idempotent twice over: downstream by order id (a second charge answers the first; a refund after
the charge refunds nothing more), and here, where an order event is recorded only if the order
does not show it yet.

The saga log is a table in the order service's own database (``saga.SqlSagaStore``) rather than
an event-sourced aggregate: the order's own history already tells each step as it happens
(``PaymentProcessed``, ``StockReserved``, ``OrderShipped``, ``OrderCancelled``…), and the log is
what the engine needs to resume: where it is, attempts, wake-up times — state, not history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ordermesh import tracing
from ordermesh.errors import ConcurrencyConflict
from ordermesh.eventstore.model import NO_STREAM
from ordermesh.eventstore.subscription import CheckpointStore, subscribe
from ordermesh.saga import SagaContext, SagaDefinition, Step, StepFailed
from ordermesh.services.orders.domain import TERMINAL, OrderAggregate
from ordermesh.services.orders.events import OrderCreated, codec
from ordermesh.services.orders.projections import STREAM_PREFIX
from ordermesh.services.orders.service import OrderService

log = logging.getLogger("ordermesh.orders.saga")

SAGA = "order-fulfilment"
STARTER = "order-saga-starter"  # the subscription that starts a saga for every new order


# The downstream services as the saga needs them: what ``ordermesh.client`` offers, narrowed.
class Payment(Protocol):
    @property
    def payment_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def decline_reason(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...


class Payments(Protocol):
    async def process_payment(
        self, order_id: str, amount: int, currency: str, *, timeout: float | None = None
    ) -> Payment: ...

    async def refund(self, order_id: str, reason: str = "", *, timeout: float | None = None) -> Any: ...


class Reservation(Protocol):
    @property
    def reservation_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...


class Inventory(Protocol):
    async def reserve(
        self, order_id: str, items: Iterable[tuple[str, int]], *, timeout: float | None = None
    ) -> Reservation: ...

    async def release(
        self, order_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Reservation: ...

    async def commit(self, order_id: str, *, timeout: float | None = None) -> Reservation: ...


class Shipment(Protocol):
    @property
    def tracking_id(self) -> str | None: ...


class Shipping(Protocol):
    async def schedule(
        self, order_id: str, items: Iterable[tuple[str, int]], *, timeout: float | None = None
    ) -> Shipment: ...

    async def cancel(self, order_id: str, *, timeout: float | None = None) -> Any: ...


@dataclass
class Downstream:
    payments: Payments
    inventory: Inventory
    shipping: Shipping


Command = Callable[[OrderAggregate, datetime], None]


async def record_on_order(orders: OrderService, order_id: str, command: Command) -> OrderAggregate:
    """Apply ``command`` to the order and save what it records (nothing when the order shows it
    already: a re-sent step, or a redelivered event, changes nothing twice). A concurrent writer
    makes it re-read and decide again: the order's stream is the one arbiter of its fate. Shared
    by both saga styles (``choreography`` records its events through it too)."""
    for _ in range(5):
        order = await orders.repository.load(order_id)
        command(order, orders.clock.now())
        if not order.pending():
            return order
        try:
            await orders.repository.save(order, tracing.event_metadata())
        except ConcurrencyConflict:
            continue
        return order
    raise ConcurrencyConflict(orders.repository.stream_id(order_id), NO_STREAM)


class OrderSaga:
    """The saga's steps, bound to the order service and its three downstreams."""

    def __init__(self, orders: OrderService, downstream: Downstream) -> None:
        self.orders = orders
        self.down = downstream

    def definition(self) -> SagaDefinition:
        return SagaDefinition(
            SAGA,
            (
                Step("payment", "payments", self.pay, self.refund),
                Step("stock", "inventory", self.reserve, self.release),
                Step("shipment", "shipping", self.schedule, self.cancel_shipment),
                Step("commit", "inventory", self.commit),
            ),
            finish=Step("cancel", "orders", self.cancel_order),
        )

    async def _record(self, order_id: str, command: Command) -> OrderAggregate:
        return await record_on_order(self.orders, order_id, command)

    # -- steps ------------------------------------------------------------------------------------

    async def pay(self, ctx: SagaContext) -> str:
        data = ctx.data
        paid = await self.down.payments.process_payment(
            ctx.saga_id, data["total"], data["currency"], timeout=ctx.timeout
        )
        if paid.status != "succeeded":
            reason = f"payment declined: {paid.decline_reason or 'no reason given'}"

            def failed(order: OrderAggregate, now: datetime) -> None:
                if order.status == "pending" and order.failure_reason is None:
                    order.record_payment_failure(reason, now)

            await self._record(ctx.saga_id, failed)
            raise StepFailed(reason)

        def recorded(order: OrderAggregate, now: datetime) -> None:
            if order.payment_id is None and order.status == "pending":
                order.record_payment(paid.payment_id, paid.amount, paid.currency, now)

        await self._record(ctx.saga_id, recorded)
        return paid.payment_id

    async def refund(self, ctx: SagaContext) -> str:
        refunded = await self.down.payments.refund(ctx.saga_id, ctx.reason, timeout=ctx.timeout)

        def recorded(order: OrderAggregate, now: datetime) -> None:
            if order.payment_id is not None and not order.refunded_amount and order.status != "shipped":
                order.refund(now)

        await self._record(ctx.saga_id, recorded)
        return f"refunded {refunded.refunded_now}"

    async def reserve(self, ctx: SagaContext) -> str:
        items = [(i["sku"], i["quantity"]) for i in ctx.data["items"]]
        held = await self.down.inventory.reserve(ctx.saga_id, items, timeout=ctx.timeout)
        if held.status != "reserved":
            reason = f"stock unavailable: {held.reason or held.status}"

            def failed(order: OrderAggregate, now: datetime) -> None:
                if order.status == "paid" and order.failure_reason is None:
                    order.record_reservation_failure(reason, now)

            await self._record(ctx.saga_id, failed)
            raise StepFailed(reason)

        def recorded(order: OrderAggregate, now: datetime) -> None:
            if order.reservation_id is None and order.status == "paid":
                order.reserve_stock(held.reservation_id, now)

        await self._record(ctx.saga_id, recorded)
        return held.reservation_id

    async def release(self, ctx: SagaContext) -> str:
        released = await self.down.inventory.release(ctx.saga_id, ctx.reason, timeout=ctx.timeout)

        def recorded(order: OrderAggregate, now: datetime) -> None:
            if order.reservation_id is not None and not order.stock_released and order.status != "shipped":
                order.release_stock(now)

        await self._record(ctx.saga_id, recorded)
        return released.status

    async def schedule(self, ctx: SagaContext) -> str:
        items = [(i["sku"], i["quantity"]) for i in ctx.data["items"]]
        shipment = await self.down.shipping.schedule(ctx.saga_id, items, timeout=ctx.timeout)
        ctx.produced["tracking_id"] = shipment.tracking_id
        return shipment.tracking_id or ""

    async def cancel_shipment(self, ctx: SagaContext) -> str:
        await self.down.shipping.cancel(ctx.saga_id, timeout=ctx.timeout)
        return "cancelled"

    async def commit(self, ctx: SagaContext) -> str:
        await self.down.inventory.commit(ctx.saga_id, timeout=ctx.timeout)
        tracking = str(ctx.data["tracking_id"])

        def shipped(order: OrderAggregate, now: datetime) -> None:
            if order.status == "stock_reserved":
                order.ship(tracking, now)

        await self._record(ctx.saga_id, shipped)
        return tracking

    async def cancel_order(self, ctx: SagaContext) -> str:
        reason = ctx.reason or "the order could not be fulfilled"

        def cancelled(order: OrderAggregate, now: datetime) -> None:
            if order.status not in TERMINAL:
                order.cancel(reason, now)

        await self._record(ctx.saga_id, cancelled)
        return reason


def saga_data(event: OrderCreated, trace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the saga needs of the order; with the ``traceparent`` (and ``tracestate``) of
    ``trace`` (the order's event metadata), so its steps continue the order's trace."""
    data: dict[str, Any] = {
        "total": event.total,
        "currency": event.currency,
        "items": [{"sku": line.sku, "quantity": line.quantity} for line in event.items],
    }
    for key in (tracing.TRACEPARENT, tracing.TRACESTATE):
        value = (trace or {}).get(key)
        if isinstance(value, str) and value:
            data[key] = value
    return data


class SagaStarter(Protocol):
    """What begins a saga: the orchestrating ``SagaRunner``, or the choreography's log keeper."""

    async def begin(self, saga_id: str, name: str, data: dict[str, Any]) -> Any: ...


async def start_sagas(
    orders: OrderService,
    runner: SagaStarter,
    checkpoints: CheckpointStore,
    stop: asyncio.Event,
    name: str = STARTER,
) -> None:
    """Start a saga for every order created, from a durable checkpoint (``name``'s): an order
    whose process died before its saga began gets one when the service is back. Runs until
    ``stop``."""

    async def follow() -> None:
        while True:
            try:
                async with subscribe(orders.repository.store, checkpoints, name) as events:
                    async for event in events:
                        if event.type == OrderCreated.TYPE and event.stream_id.startswith(STREAM_PREFIX):
                            created = codec.decode(event)
                            assert isinstance(created, OrderCreated)
                            data = saga_data(created, event.metadata)
                            await runner.begin(created.order_id, SAGA, data)
                        await events.commit(event.position)
            except Exception:  # the database went away: the checkpoint says where to start again
                log.exception("saga starter: retrying in a second")
                await asyncio.sleep(1.0)

    following = asyncio.create_task(follow(), name=name)
    await stop.wait()
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following


__all__ = [
    "SAGA",
    "Command",
    "Downstream",
    "OrderSaga",
    "SagaStarter",
    "record_on_order",
    "saga_data",
    "start_sagas",
]

"""Order fulfilment by events alone (``ORDERMESH_SAGA=choreographed``): payments charges on
``order.created``, inventory reserves on ``payment.processed``, shipping schedules on
``stock.reserved``, and inventory commits on ``order.shipped``; a ``payment.failed``, a
``stock.reservation_failed`` or a missed deadline cancels the order, and on ``order.cancelled``
the others undo what they did (refund, release, cancel the shipment).

The order service follows it all (queues ``orders.payment_events``, ``orders.stock_events``,
``orders.shipment_events``): it moves the order as each event arrives and writes the same saga
log as the orchestrator (its transitions, and the log's shape, are in ``choreography_log``).

Decisions:

- The order's stream is the one arbiter. The order ships (on ``shipment.scheduled``) or is
  cancelled (a failure, the deadline, a user) by an optimistic append, so exactly one of the two
  happens, and inventory commits on ``order.shipped`` rather than on the shipment: stock moves to
  shipped only for an order that shipped and is released only for one that did not.
- The saga log is derived from the order as much as from the event: every handler first writes
  what the order shows (paid, reserved, shipped, cancelled), then what the event adds (a failure,
  an undo). So events that overtake one another, a handler killed half-way or a cancel by a user
  all end in the same record. Each write is a compare-and-set, retried on a conflict.
- An event that comes before the order is ready for it (``stock.reserved`` before the order
  recorded its payment: other queue, other speed) raises ``NotYet`` and is retried by the broker.
- Effectively once: the inbox is read before and written after a handler; the handler itself is
  idempotent by order state (``record_on_order`` records only what the order does not show yet)
  and by the saga record (a step already succeeded is left alone), so a redelivery after a crash
  between the two changes nothing twice. The two writes (event store, saga log) cannot share
  the inbox's transaction: the repository opens its own.
- Stalls: a running saga's ``wake_at`` is its deadline; the detector (``watch``, on the injected
  clock) cancels the order past it, and ``order.cancelled`` makes the others compensate. Only
  effects the order service saw confirmed are waited for (``payment.refunded`` for a payment,
  ``stock.released`` for a reservation, ``shipment.cancelled`` for a shipment): a service that is
  down past the deadline did nothing to undo yet, and when it comes back it meets the
  cancellation first or undoes at once what it then does. Such late events are still recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ordermesh.clock import Clock
from ordermesh.contracts import inventory as stock
from ordermesh.contracts import payments as pay
from ordermesh.contracts import shipping as ship
from ordermesh.errors import ConcurrencyConflict, DomainError, NotFound
from ordermesh.eventstore.subscription import CheckpointStore
from ordermesh.kit import Runtime
from ordermesh.messaging import Broker
from ordermesh.messaging.inbox import Inbox, MemoryInbox, SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Delivery, RetryPolicy, Subscription
from ordermesh.messaging.reactions import react_once, subscribe_all
from ordermesh.saga import SagaRecord, SagaStore, StepRecord
from ordermesh.services.orders.choreography_log import (
    NAMES,
    STEPS,
    end_as_order,
    follow_order,
    order_data,
    step_done,
    step_failed,
    undone,
)
from ordermesh.services.orders.domain import TERMINAL, OrderAggregate
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.saga import SAGA, Command, record_on_order, start_sagas
from ordermesh.services.orders.service import OrderService

log = logging.getLogger("ordermesh.orders.choreography")

STARTER = "order-saga-choreography-starter"  # its own checkpoint: switching styles starts afresh
INBOX_CONSUMER = "orders"
REACTED = "orders.choreography.reacted"  # the failpoint between a reaction and its inbox record
RETRY = RetryPolicy(max_attempts=30, initial=0.1, multiplier=2.0, maximum=5.0)
QUEUES = {  # queue -> (exchange, binding key)
    "orders.payment_events": (pay.EXCHANGE, "payment.*"),
    "orders.stock_events": (stock.EXCHANGE, "stock.*"),
    "orders.shipment_events": (ship.EXCHANGE, "shipment.*"),
}

Change = Callable[[SagaRecord, datetime], SagaRecord]


class NotYet(Exception):
    """An event came before the order reached the state it follows: the broker retries it."""


# -- the order service's side -------------------------------------------------------------------


def _exists(order: OrderAggregate) -> None:
    if order.version == 0:
        raise NotFound(f"order {order.id!r} does not exist")


class Choreography:
    """Keeps the orders and their saga log in step with the events, and cancels stalled sagas."""

    def __init__(
        self, orders: OrderService, sagas: SagaStore, clock: Clock, deadline: float, inbox: Inbox
    ) -> None:
        self.orders, self.sagas, self.clock, self.inbox = orders, sagas, clock, inbox
        self.deadline = timedelta(seconds=deadline)
        self._reactions = self._reactions_by_key()
        # A business refusal or a malformed body can never succeed on a retry: dead-lettered.
        self._once = react_once(
            inbox, self._react, failpoint_name=REACTED, refusals=(DomainError, NotFound, ValueError)
        )

    async def begin(self, saga_id: str, name: str, data: dict[str, Any]) -> SagaRecord:
        """The saga's record, created once (the starter and an early event may both try)."""
        now = self.clock.now()
        first = StepRecord(NAMES[0], STEPS[NAMES[0]], attempts=1, started_at=now)
        end = now + self.deadline
        return await self.sagas.create(
            SagaRecord(saga_id, name, "choreographed", "running", data, now, end, now, (first,), wake_at=end)
        )

    async def _record(self, order_id: str, command: Command) -> OrderAggregate:
        def checked(order: OrderAggregate, now: datetime) -> None:
            _exists(order)
            command(order, now)

        return await record_on_order(self.orders, order_id, checked)

    async def _move(self, order: OrderAggregate, change: Change | None = None) -> SagaRecord:
        """Write the order's state and ``change`` to its saga's log (compare-and-set, retried)."""
        for _ in range(50):
            record = await self.sagas.get(order.id) or await self.begin(order.id, SAGA, order_data(order))
            now = self.clock.now()
            moved = follow_order(record, order, now)
            if change is not None:
                moved = change(moved, now)
            moved = end_as_order(moved, order, now)
            if moved == record:
                return record
            saved = await self.sagas.save(replace(moved, updated_at=now))
            if saved is not None:
                return saved
        raise ConcurrencyConflict(f"saga-log/{order.id}", record.version)

    # -- payments -------------------------------------------------------------------------------

    async def payment_processed(self, body: pay.PaymentProcessed) -> None:
        def paid(order: OrderAggregate, now: datetime) -> None:
            if order.status == "pending" and order.payment_id is None:
                order.record_payment(body.payment_id, body.amount, body.currency, now)

        order = await self._record(body.order_id, paid)
        await self._move(order, lambda r, now: step_done(r, "payment", body.payment_id, now))

    async def payment_failed(self, body: pay.PaymentFailed) -> None:
        reason = f"payment declined: {body.reason or 'no reason given'}"

        def declined(order: OrderAggregate, now: datetime) -> None:
            if order.status == "pending" and order.failure_reason is None:
                order.record_payment_failure(reason, now)
                order.cancel(reason, now)

        order = await self._record(body.order_id, declined)
        await self._move(order, lambda r, now: step_failed(r, "payment", reason, now))

    async def payment_refunded(self, body: pay.PaymentRefunded) -> None:
        def refunded(order: OrderAggregate, now: datetime) -> None:
            if order.payment_id is not None and not order.refunded_amount and order.status != "shipped":
                order.refund(now)

        order = await self._record(body.order_id, refunded)
        await self._move(order, lambda r, now: undone(r, "payment", f"refunded {body.amount}", now))

    # -- inventory ------------------------------------------------------------------------------

    async def stock_reserved(self, body: stock.StockReserved) -> None:
        def reserved(order: OrderAggregate, now: datetime) -> None:
            if order.status == "pending":
                raise NotYet(f"order {order.id}: stock reserved before its payment was recorded")
            if order.status == "paid":
                order.reserve_stock(body.reservation_id, now)

        order = await self._record(body.order_id, reserved)
        await self._move(order, lambda r, now: step_done(r, "stock", body.reservation_id, now))

    async def stock_reservation_failed(self, body: stock.StockReservationFailed) -> None:
        reason = f"stock unavailable: {body.reason or 'rejected'}"

        def short(order: OrderAggregate, now: datetime) -> None:
            if order.status == "pending":
                raise NotYet(f"order {order.id}: stock refused before its payment was recorded")
            if order.status == "paid" and order.failure_reason is None:
                order.record_reservation_failure(reason, now)
                order.cancel(reason, now)

        order = await self._record(body.order_id, short)
        await self._move(order, lambda r, now: step_failed(r, "stock", reason, now))

    async def stock_released(self, body: stock.StockReleased) -> None:
        def released(order: OrderAggregate, now: datetime) -> None:
            if order.reservation_id is not None and not order.stock_released and order.status != "shipped":
                order.release_stock(now)

        order = await self._record(body.order_id, released)
        await self._move(order, lambda r, now: undone(r, "stock", "released", now))

    async def stock_committed(self, body: stock.StockCommitted) -> None:
        def committed(order: OrderAggregate, now: datetime) -> None:
            if order.status != "shipped":  # inventory commits on order.shipped: it is, just not here yet
                raise NotYet(f"order {order.id}: stock committed before the order shows it shipped")

        order = await self._record(body.order_id, committed)
        await self._move(order, lambda r, now: step_done(r, "commit", order.tracking_id or "", now))

    # -- shipping -------------------------------------------------------------------------------

    async def shipment_scheduled(self, body: ship.ShipmentScheduled) -> None:
        def scheduled(order: OrderAggregate, now: datetime) -> None:
            if order.status in ("pending", "paid"):
                raise NotYet(f"order {order.id}: shipment scheduled before its stock was recorded")
            if order.status == "stock_reserved":
                order.ship(body.tracking_id, now)

        order = await self._record(body.order_id, scheduled)
        await self._move(order, lambda r, now: step_done(r, "shipment", body.tracking_id, now))

    async def shipment_cancelled(self, body: ship.ShipmentCancelled) -> None:
        order = await self._record(body.order_id, lambda order, now: None)
        await self._move(order, lambda r, now: undone(r, "shipment", "cancelled", now))

    # -- stalls ---------------------------------------------------------------------------------

    async def expire(self, saga_id: str) -> SagaRecord | None:
        """A due saga: past its deadline, its order is cancelled (unless it shipped meanwhile);
        one still compensating is reported and looked at again a deadline later."""
        record = await self.sagas.get(saga_id)
        now = self.clock.now()
        if record is None or record.terminal:
            return record
        if record.state == "running" and now >= record.deadline_at:
            during = next((s.name for s in record.steps if s.outcome != "succeeded"), "the saga")
            reason = f"the saga's deadline passed during {during}"

            def expired(order: OrderAggregate, now: datetime) -> None:
                if order.status not in TERMINAL:
                    order.cancel(reason, now)

            order = await self._record(saga_id, expired)
            moved = await self._move(order)
            if not moved.terminal and moved.state == "running":  # it shipped: only the commit is due
                log.warning(
                    "saga %s: past its deadline after the order shipped; waiting for the commit", saga_id
                )
                return await self._later(moved, now)
            return moved
        if record.state == "compensating":
            outstanding = [
                s.name for s in record.steps if s.kind == "compensation" and s.outcome != "succeeded"
            ]
            log.warning("saga %s: still waiting for the undo of %s", saga_id, ", ".join(outstanding))
        return await self._later(record, now)

    async def _later(self, record: SagaRecord, now: datetime) -> SagaRecord | None:
        wake = record.deadline_at if now < record.deadline_at else now + self.deadline
        return await self.sagas.save(replace(record, wake_at=wake, updated_at=now))

    async def sweep(self) -> int:
        """Handle every due saga once; how many there were."""
        due = await self.sagas.due(self.clock.now())
        for saga_id in due:
            try:
                await self.expire(saga_id)
            except Exception:  # an outage: the saga stays due
                log.exception("saga %s: could not be expired", saga_id)
        return len(due)

    async def watch(self, stop: asyncio.Event, poll: float = 0.2) -> None:
        """The stall detector: ``sweep`` every ``poll`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("stall detector: the saga log could not be read")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)

    # -- deliveries -----------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """One event from any of the three queues, effectively once (see the module doc)."""
        if delivery.message.routing_key in self._reactions:  # else: a key this version ignores
            await self._once(delivery)

    async def _react(self, delivery: Delivery) -> None:
        await self._reactions[delivery.message.routing_key](delivery.message.body)

    def _reactions_by_key(self) -> dict[str, Callable[[bytes], Awaitable[None]]]:
        def on(model: Any, react: Callable[[Any], Awaitable[None]]) -> Callable[[bytes], Awaitable[None]]:
            return lambda body: react(model.model_validate_json(body))

        return {
            pay.PAYMENT_PROCESSED: on(pay.PaymentProcessed, self.payment_processed),
            pay.PAYMENT_FAILED: on(pay.PaymentFailed, self.payment_failed),
            pay.PAYMENT_REFUNDED: on(pay.PaymentRefunded, self.payment_refunded),
            stock.STOCK_RESERVED: on(stock.StockReserved, self.stock_reserved),
            stock.STOCK_RESERVATION_FAILED: on(stock.StockReservationFailed, self.stock_reservation_failed),
            stock.STOCK_RELEASED: on(stock.StockReleased, self.stock_released),
            stock.STOCK_COMMITTED: on(stock.StockCommitted, self.stock_committed),
            ship.SHIPMENT_SCHEDULED: on(ship.ShipmentScheduled, self.shipment_scheduled),
            ship.SHIPMENT_CANCELLED: on(ship.ShipmentCancelled, self.shipment_cancelled),
        }


async def start_order_consumers(
    broker: Broker, choreography: Choreography, metrics: ConsumerMetrics | None = None
) -> list[Subscription]:
    queues = {queue: (exchange, key, choreography.handle) for queue, (exchange, key) in QUEUES.items()}
    return await subscribe_all(broker, queues, retry=RETRY, metrics=metrics)


async def choreograph(
    rt: Runtime, system: OrderSystem, sagas: SagaStore, checkpoints: CheckpointStore
) -> None:
    """The order service's part: its consumers, the saga log's starter and the stall detector."""
    inbox: Inbox = (
        await SqlInbox.open(system.db, INBOX_CONSUMER, rt.clock) if system.db else MemoryInbox(INBOX_CONSUMER)
    )
    choreography = Choreography(system.service, sagas, rt.clock, rt.settings.saga_deadline, inbox)
    rt.app.state.sagas = sagas
    for sub in await start_order_consumers(await rt.broker(), choreography, ConsumerMetrics(rt.metrics)):
        rt.stack.push_async_callback(sub.stop)  # before the broker closes: in-flight ones finish
    rt.background("saga-stall-detector", choreography.watch)
    rt.background(
        "saga-starter", lambda stop: start_sagas(system.service, choreography, checkpoints, stop, STARTER)
    )


__all__ = ["QUEUES", "REACTED", "STARTER", "Choreography", "NotYet", "choreograph", "start_order_consumers"]

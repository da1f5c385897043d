"""The shipping service's use cases: schedule, get, cancel. Each change and the message announcing
it commit in one transaction (the outbox table), so a message is never lost nor sent for a change
that did not happen."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from ordermesh.clock import Clock, SystemClock
from ordermesh.contracts import shipping as contract
from ordermesh.db import SqlDb, Tx
from ordermesh.errors import InfrastructureError, NotFound
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.messaging.port import Message
from ordermesh.services.shipping.domain import (
    Address,
    Item,
    Shipment,
    check_order_id,
    check_repeat,
    new_shipment_id,
    new_tracking_id,
    shipment_request,
)
from ordermesh.services.shipping.store import ShipmentStore

# Message ids are a function of (routing key, order id): a shipment is scheduled and cancelled at
# most once per order, so a replayed or re-sent message keeps its id and inboxes drop the copy.
_MESSAGE_IDS = uuid.UUID("6f1c3f0e-5b8e-4d55-9a55-0c6b1f2f5e01")
_TRACKING_ATTEMPTS = 5


def message_id(routing_key: str, order_id: str) -> str:
    return str(uuid.uuid5(_MESSAGE_IDS, f"{routing_key}:{order_id}"))


class ShippingService:
    def __init__(
        self,
        db: SqlDb,
        outbox: SqlOutbox,
        clock: Clock | None = None,
        tracking_ids: Callable[[], str] = new_tracking_id,
    ) -> None:
        self.store = ShipmentStore(db)
        self.db = db
        self.outbox = outbox
        self.clock = clock or SystemClock()
        self._tracking_ids = tracking_ids

    @classmethod
    async def open(cls, db: SqlDb, outbox: SqlOutbox, clock: Clock | None = None) -> ShippingService:
        service = cls(db, outbox, clock)
        await service.store.migrate()
        return service

    async def schedule(
        self, order_id: str, items: Iterable[Item], address: Address | None = None
    ) -> tuple[Shipment, bool]:
        """The order's shipment and whether this call created it (False: it already existed)."""
        request = shipment_request(order_id, items, address)
        async with self.db.transaction() as tx:
            existing = await self.store.find(tx, order_id)
            created = False
            if existing is None:
                existing, created = await self._insert(tx, request.order_id, request.items, address)
            if created:
                await self.outbox.add(tx, contract.EXCHANGE, [self._scheduled(existing)])
            else:
                check_repeat(existing, request)  # raising rolls back: nothing was written
        if created:
            self.outbox.wake()
        return existing, created

    async def _insert(
        self, tx: Tx, order_id: str, items: tuple[Item, ...], address: Address | None
    ) -> tuple[Shipment, bool]:
        for _ in range(_TRACKING_ATTEMPTS):
            candidate = Shipment(
                shipment_id=new_shipment_id(),
                order_id=order_id,
                tracking_id=self._tracking_ids(),
                status="scheduled",
                items=items,
                address=address,
                scheduled_at=self.clock.now(),
                cancelled_at=None,
            )
            row = await self.store.insert(tx, candidate)
            if row is not None:
                return row, row.shipment_id == candidate.shipment_id
        raise InfrastructureError(f"order {order_id}: no unused tracking id in {_TRACKING_ATTEMPTS} attempts")

    async def get(self, order_id: str) -> Shipment:
        check_order_id(order_id)
        shipment = await self.store.get(order_id)
        if shipment is None:
            raise NotFound(f"order {order_id} has no shipment")
        return shipment

    async def cancel(self, order_id: str) -> tuple[Shipment, bool]:
        """The order's shipment, cancelled, and whether this call changed anything. Before any
        shipment exists, a cancelled tombstone is recorded (no message: nothing was scheduled)."""
        check_order_id(order_id)
        now = self.clock.now()
        async with self.db.transaction() as tx:
            shipment = await self.store.find(tx, order_id, for_update=True)
            if shipment is None:
                tombstone = Shipment(new_shipment_id(), order_id, None, "cancelled", (), None, None, now)
                shipment = await self.store.insert(tx, tombstone)
                if shipment is None:  # only a tracking id can collide, and a tombstone has none
                    raise InfrastructureError(f"order {order_id}: could not record the cancellation")
                if shipment.shipment_id == tombstone.shipment_id:
                    return shipment, True
                shipment = await self.store.find(tx, order_id, for_update=True)
                assert shipment is not None  # rows are never deleted
            if shipment.status == "cancelled":
                return shipment, False
            cancelled = Shipment(
                shipment.shipment_id,
                shipment.order_id,
                shipment.tracking_id,
                "cancelled",
                shipment.items,
                shipment.address,
                shipment.scheduled_at,
                now,
            )
            await self.store.mark_cancelled(tx, cancelled)
            await self.outbox.add(tx, contract.EXCHANGE, [self._cancelled(cancelled)])
        self.outbox.wake()
        return cancelled, True

    def _scheduled(self, s: Shipment) -> Message:
        assert s.tracking_id is not None and s.scheduled_at is not None
        body = contract.ShipmentScheduled(
            shipment_id=s.shipment_id,
            order_id=s.order_id,
            tracking_id=s.tracking_id,
            items=[contract.ShipmentItem(sku=i.sku, quantity=i.quantity) for i in s.items],
            address=_address_body(s.address),
            scheduled_at=s.scheduled_at,
        )
        return self._message(contract.SHIPMENT_SCHEDULED, s, body.model_dump(mode="json"), s.scheduled_at)

    def _cancelled(self, s: Shipment) -> Message:
        assert s.tracking_id is not None and s.cancelled_at is not None
        body = contract.ShipmentCancelled(
            shipment_id=s.shipment_id,
            order_id=s.order_id,
            tracking_id=s.tracking_id,
            cancelled_at=s.cancelled_at,
        )
        return self._message(contract.SHIPMENT_CANCELLED, s, body.model_dump(mode="json"), s.cancelled_at)

    def _message(self, routing_key: str, s: Shipment, body: dict[str, object], at: datetime) -> Message:
        return Message.json(
            routing_key,
            body,
            message_id=message_id(routing_key, s.order_id),
            schema_version=contract.SCHEMA_VERSION,
            occurred_at=at,
            correlation_id=s.order_id,
        )


def _address_body(address: Address | None) -> contract.ShippingAddress | None:
    if address is None:
        return None
    return contract.ShippingAddress(
        name=address.name,
        line1=address.line1,
        line2=address.line2,
        city=address.city,
        postal_code=address.postal_code,
        country=address.country,
    )


__all__ = ["ShippingService", "message_id"]

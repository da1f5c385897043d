"""Reservations as the messages the inventory publishes (``ordermesh.contracts.inventory``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from ordermesh.contracts import inventory as contract
from ordermesh.messaging.port import Message
from ordermesh.services.inventory.domain import Reservation, Status

_ROUTING = {
    Status.RESERVED: contract.STOCK_RESERVED,
    Status.REJECTED: contract.STOCK_RESERVATION_FAILED,
    Status.RELEASED: contract.STOCK_RELEASED,
    Status.COMMITTED: contract.STOCK_COMMITTED,
}


def _body(reservation: Reservation) -> BaseModel:
    items = [contract.StockLine(sku=line.sku, quantity=line.quantity) for line in reservation.items]
    common = {"order_id": reservation.order_id, "reservation_id": reservation.reservation_id}
    match reservation.status:
        case Status.RESERVED:
            return contract.StockReserved(**common, items=items)
        case Status.REJECTED:
            short = list(reservation.short_skus)
            return contract.StockReservationFailed(
                **common, reason=reservation.reason, short_skus=short, items=items
            )
        case Status.RELEASED:
            return contract.StockReleased(**common, reason=reservation.reason, items=items)
        case Status.COMMITTED:
            return contract.StockCommitted(**common, items=items)


def message_for(reservation: Reservation, occurred_at: datetime) -> Message:
    """The message announcing that ``reservation`` just reached its status."""
    key = _ROUTING[reservation.status]
    return Message.json(
        key,
        _body(reservation).model_dump(mode="json"),
        message_id=contract.message_id(key, reservation.order_id),
        schema_version=contract.SCHEMA_VERSION,
        occurred_at=occurred_at,
        correlation_id=reservation.order_id,
    )

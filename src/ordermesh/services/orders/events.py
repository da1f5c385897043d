"""The order's domain events. Names and fields are the stored contract: change them only with an
upcaster (see ``upcasters`` below)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from ordermesh.eventstore.aggregate import DomainEvent, EventCodec
from ordermesh.eventstore.upcasting import Upcasters


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: int  # minor units of the order's currency

    @property
    def subtotal(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True, slots=True)
class OrderCreated(DomainEvent):
    TYPE = "OrderCreated"
    SCHEMA_VERSION = 2

    order_id: str
    user_id: str
    user_email: str
    items: tuple[OrderLine, ...]
    currency: str
    total: int

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        items = tuple(OrderLine(**item) for item in data["items"])
        return cls(**{**data, "items": items})


@dataclass(frozen=True, slots=True)
class PaymentProcessed(DomainEvent):
    TYPE = "PaymentProcessed"
    payment_id: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class PaymentFailed(DomainEvent):
    TYPE = "PaymentFailed"
    reason: str


@dataclass(frozen=True, slots=True)
class StockReserved(DomainEvent):
    TYPE = "StockReserved"
    reservation_id: str


@dataclass(frozen=True, slots=True)
class StockReservationFailed(DomainEvent):
    TYPE = "StockReservationFailed"
    reason: str


@dataclass(frozen=True, slots=True)
class StockReleased(DomainEvent):
    TYPE = "StockReleased"
    reservation_id: str


@dataclass(frozen=True, slots=True)
class OrderShipped(DomainEvent):
    TYPE = "OrderShipped"
    tracking_id: str


@dataclass(frozen=True, slots=True)
class OrderCancelled(DomainEvent):
    TYPE = "OrderCancelled"
    reason: str


@dataclass(frozen=True, slots=True)
class OrderRefunded(DomainEvent):
    TYPE = "OrderRefunded"
    payment_id: str
    amount: int
    currency: str


upcasters = Upcasters()


@upcasters.register("OrderCreated", 1)
def _order_created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 (before the REST API existed) had `email` and `price`, and no stored total.
    items = [
        {"sku": i["sku"], "quantity": i["quantity"], "unit_price": i.get("unit_price", i.get("price"))}
        for i in data["items"]
    ]
    return {
        "order_id": data["order_id"],
        "user_id": data["user_id"],
        "user_email": data.get("user_email", data.get("email", "")),
        "items": items,
        "currency": data["currency"],
        "total": data.get("total", sum(i["quantity"] * i["unit_price"] for i in items)),
    }


ALL_EVENTS: tuple[type[DomainEvent], ...] = (
    OrderCreated,
    PaymentProcessed,
    PaymentFailed,
    StockReserved,
    StockReservationFailed,
    StockReleased,
    OrderShipped,
    OrderCancelled,
    OrderRefunded,
)

codec = EventCodec(*ALL_EVENTS, upcasters=upcasters)

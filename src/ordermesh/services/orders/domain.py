"""The order aggregate: invariants and state transitions, free of any transport or storage type.

Lifecycle::

    pending ──PaymentProcessed──► paid ──StockReserved──► stock_reserved ──OrderShipped──► shipped
       │                           │                         │
       └───────────── OrderCancelled (any non-terminal state) ┴──────────────────────────► cancelled

``PaymentFailed`` and ``StockReservationFailed`` record why a saga step failed without moving the
status; the saga then compensates (``OrderRefunded``, ``StockReleased``) and cancels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, Self

from iso4217 import Currency

from ordermesh.contracts.orders import EMAIL_PATTERN
from ordermesh.errors import DomainError, FieldViolation, ValidationError
from ordermesh.eventstore.aggregate import DomainEvent, EventMeta
from ordermesh.services.orders.events import (
    OrderCancelled,
    OrderCreated,
    OrderLine,
    OrderRefunded,
    OrderShipped,
    PaymentFailed,
    PaymentProcessed,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)

Status = Literal["pending", "paid", "stock_reserved", "shipped", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"shipped", "cancelled"})

MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE = 1_000_000_000  # keeps every total below 2**53, exact in any JSON reader
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_EMAIL = re.compile(EMAIL_PATTERN)
# ISO 4217's active codes (the `iso4217` package's table), less XTS (for testing) and XXX (no
# currency): the codes money can be in.
CURRENCIES: frozenset[str] = frozenset(c.code for c in Currency) - {"XTS", "XXX"}
_SKU = re.compile(SKU_PATTERN)


def validate_new_order(user_id: str, user_email: str, currency: str, items: Sequence[OrderLine]) -> None:
    """Raise ``ValidationError`` listing every offending field."""
    bad: list[FieldViolation] = []
    if not user_id or len(user_id) > 128:
        bad.append(FieldViolation("user_id", "must be 1 to 128 characters"))
    if len(user_email) > 254 or not _EMAIL.fullmatch(user_email):
        bad.append(FieldViolation("user_email", "must be an email address like name@example.com"))
    if currency not in CURRENCIES:
        bad.append(FieldViolation("currency", "must be an ISO 4217 currency code such as EUR"))
    if not items:
        bad.append(FieldViolation("items", "an order needs at least one item"))
    if len(items) > MAX_ITEMS:
        bad.append(FieldViolation("items", f"at most {MAX_ITEMS} items per order"))
    for i, line in enumerate(items):
        if not _SKU.fullmatch(line.sku):
            bad.append(FieldViolation(f"items[{i}].sku", "1 to 64 letters, digits, '.', '_' or '-'"))
        if isinstance(line.quantity, bool) or not 1 <= line.quantity <= MAX_QUANTITY:
            bad.append(FieldViolation(f"items[{i}].quantity", f"must be from 1 to {MAX_QUANTITY}"))
        if isinstance(line.unit_price, bool) or not 1 <= line.unit_price <= MAX_UNIT_PRICE:
            bad.append(
                FieldViolation(f"items[{i}].unit_price", f"must be from 1 to {MAX_UNIT_PRICE} minor units")
            )
    if bad:
        raise ValidationError("invalid order: " + "; ".join(f"{v.field} {v.description}" for v in bad), bad)


class OrderAggregate:
    SNAPSHOT_TYPE: ClassVar[str] = "Order.v1"

    def __init__(self, order_id: str) -> None:
        self.id = order_id
        self.version = 0
        self.user_id = ""
        self.user_email = ""
        self.items: tuple[OrderLine, ...] = ()
        self.currency = ""
        self.total = 0
        self.status: Status = "pending"
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.payment_id: str | None = None
        self.reservation_id: str | None = None
        self.stock_released = False
        self.refunded_amount = 0
        self.tracking_id: str | None = None
        self.cancel_reason: str | None = None
        self.failure_reason: str | None = None
        self._pending: list[tuple[DomainEvent, datetime]] = []

    # --- commands -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        order_id: str,
        user_id: str,
        user_email: str,
        currency: str,
        items: Sequence[OrderLine],
        now: datetime,
    ) -> OrderAggregate:
        validate_new_order(user_id, user_email, currency, items)
        order = cls(order_id)
        total = sum(line.subtotal for line in items)
        order._record(OrderCreated(order_id, user_id, user_email, tuple(items), currency, total), now)
        return order

    def record_payment(self, payment_id: str, amount: int, currency: str, now: datetime) -> None:
        if self.payment_id is not None:
            raise DomainError(f"order {self.id} is already paid (payment {self.payment_id})")
        self._require("pending", "record a payment for")
        if currency != self.currency:
            raise DomainError(f"payment currency {currency} differs from the order's {self.currency}")
        if amount != self.total:
            raise DomainError(f"payment of {amount} does not match the order total {self.total}")
        self._record(PaymentProcessed(payment_id, amount, currency), now)

    def record_payment_failure(self, reason: str, now: datetime) -> None:
        self._require("pending", "record a payment failure for")
        self._record(PaymentFailed(reason), now)

    def reserve_stock(self, reservation_id: str, now: datetime) -> None:
        self._require("paid", "reserve stock for")
        self._record(StockReserved(reservation_id), now)

    def record_reservation_failure(self, reason: str, now: datetime) -> None:
        self._require("paid", "record a stock reservation failure for")
        self._record(StockReservationFailed(reason), now)

    def release_stock(self, now: datetime) -> None:
        if self.reservation_id is None or self.stock_released:
            raise DomainError(f"order {self.id} holds no stock reservation to release")
        if self.status == "shipped":
            raise DomainError(f"order {self.id} has shipped; its stock can no longer be released")
        self._record(StockReleased(self.reservation_id), now)

    def ship(self, tracking_id: str, now: datetime) -> None:
        if self.status == "cancelled":
            raise DomainError(f"cannot ship order {self.id}: it is cancelled")
        if self.payment_id is None:
            raise DomainError(f"cannot ship order {self.id}: it is not paid")
        self._require("stock_reserved", "ship")
        if not tracking_id:
            raise ValidationError(
                "a shipment needs a tracking id", [FieldViolation("tracking_id", "required")]
            )
        self._record(OrderShipped(tracking_id), now)

    def cancel(self, reason: str, now: datetime) -> None:
        if self.status in TERMINAL:
            raise DomainError(f"cannot cancel order {self.id}: it is already {self.status}")
        self._record(OrderCancelled(reason or "no reason given"), now)

    def refund(self, now: datetime) -> None:
        if self.payment_id is None:
            raise DomainError(f"order {self.id} has no payment to refund")
        if self.refunded_amount:
            raise DomainError(f"order {self.id} is already refunded")
        if self.status == "shipped":
            raise DomainError(f"order {self.id} has shipped; refunds go through a return")
        self._record(OrderRefunded(self.payment_id, self.total, self.currency), now)

    # --- event application ----------------------------------------------------------------

    def apply(self, event: DomainEvent, meta: EventMeta) -> None:
        match event:
            case OrderCreated():
                self.user_id, self.user_email = event.user_id, event.user_email
                self.items, self.currency, self.total = event.items, event.currency, event.total
                self.created_at = meta.occurred_at
            case PaymentProcessed():
                self.payment_id, self.status = event.payment_id, "paid"
            case PaymentFailed() | StockReservationFailed():
                self.failure_reason = event.reason
            case StockReserved():
                self.reservation_id, self.status = event.reservation_id, "stock_reserved"
            case StockReleased():
                self.stock_released = True
            case OrderShipped():
                self.tracking_id, self.status = event.tracking_id, "shipped"
            case OrderCancelled():
                self.cancel_reason, self.status = event.reason, "cancelled"
            case OrderRefunded():
                self.refunded_amount = event.amount
            case _:
                raise TypeError(f"OrderAggregate cannot apply {type(event).__name__}")
        self.updated_at = meta.occurred_at

    def pending(self) -> list[tuple[DomainEvent, datetime]]:
        return list(self._pending)

    def mark_saved(self, version: int) -> None:
        self._pending.clear()
        self.version = version

    def _record(self, event: DomainEvent, now: datetime) -> None:
        self.version += 1
        self.apply(event, EventMeta(self.version, now))
        self._pending.append((event, now))

    def _require(self, status: Status, action: str) -> None:
        if self.status != status:
            raise DomainError(f"cannot {action} order {self.id}: it is {self.status}, not {status}")

    # --- snapshots: the snapshot is also the public order resource ----------------------------

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "user_email": self.user_email,
            "items": [{"sku": i.sku, "quantity": i.quantity, "unit_price": i.unit_price} for i in self.items],
            "currency": self.currency,
            "total": self.total,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "version": self.version,
            "payment_id": self.payment_id,
            "reservation_id": self.reservation_id,
            "stock_released": self.stock_released,
            "refunded_amount": self.refunded_amount,
            "tracking_id": self.tracking_id,
            "cancel_reason": self.cancel_reason,
            "failure_reason": self.failure_reason,
        }

    @classmethod
    def blank(cls, aggregate_id: str) -> Self:
        return cls(aggregate_id)

    @classmethod
    def from_snapshot(cls, state: Mapping[str, Any]) -> Self:
        order = cls(state["id"])
        order.version = state["version"]
        order.user_id, order.user_email = state["user_id"], state["user_email"]
        order.items = tuple(OrderLine(**i) for i in state["items"])
        order.currency, order.total, order.status = state["currency"], state["total"], state["status"]
        order.created_at = _parse(state["created_at"])
        order.updated_at = _parse(state["updated_at"])
        order.payment_id, order.reservation_id = state["payment_id"], state["reservation_id"]
        order.stock_released, order.refunded_amount = state["stock_released"], state["refunded_amount"]
        order.tracking_id, order.cancel_reason = state["tracking_id"], state["cancel_reason"]
        order.failure_reason = state["failure_reason"]
        return order


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None

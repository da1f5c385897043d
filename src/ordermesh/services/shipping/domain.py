"""The shipping domain: at most one shipment per order, scheduled or cancelled. No transport types.

Rules (the REST API and the client document the same):

- Scheduling is idempotent by order id: the same order with the same items (and address) gets
  the same shipment back. Items are compared per SKU, whatever their order or splitting into lines.
- The same order with other items or another address is refused (``DomainError``, 409).
- A cancellation always wins: cancelling an order that has no shipment yet (a saga compensation
  overtaking its step) leaves a cancelled tombstone, and a later schedule for it is refused.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import uuid_utils

from ordermesh.errors import DomainError, FieldViolation, ValidationError

ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
TRACKING_PATTERN = r"^OM[A-Z2-7]{12}$"
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_TEXT = 200  # address lines, names, cities
MAX_POSTAL_CODE = 20

_ID = re.compile(ID_PATTERN)
_SKU = re.compile(SKU_PATTERN)
_COUNTRY = re.compile(COUNTRY_PATTERN)
# Control characters (NUL above all, which PostgreSQL's text refuses) and lone surrogates (which
# JSON can spell but UTF-8 cannot store) have no place on a label.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f\ud800-\udfff]*$"
_TEXT = re.compile(TEXT_PATTERN)

Status = Literal["scheduled", "cancelled"]


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Address:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2
    line2: str | None = None


@dataclass(frozen=True, slots=True)
class Shipment:
    shipment_id: str
    order_id: str
    tracking_id: str | None  # None only for a tombstone (cancelled before it was scheduled)
    status: Status
    items: tuple[Item, ...]
    address: Address | None
    scheduled_at: datetime | None
    cancelled_at: datetime | None

    @property
    def is_tombstone(self) -> bool:
        return self.scheduled_at is None


@dataclass(frozen=True, slots=True)
class ShipmentRequest:
    """A validated request to ship an order: items merged per SKU and sorted by SKU."""

    order_id: str
    items: tuple[Item, ...]
    address: Address | None = None


def new_tracking_id() -> str:
    """``OM`` and 12 base32 characters: 60 random bits, unique enough that a collision (which
    the store detects and retries) is a once-in-a-billion event at a million shipments."""
    return "OM" + base64.b32encode(secrets.token_bytes(8)).decode("ascii")[:12]


def new_shipment_id() -> str:
    """A UUIDv7: time-ordered, so the table's index stays append-mostly."""
    return str(uuid_utils.uuid7())


def check_order_id(order_id: str) -> str:
    if not _ID.fullmatch(order_id):
        why = "1 to 128 letters, digits or . _ : @ -"
        raise ValidationError(f"invalid order id {order_id!r}: {why}", [FieldViolation("order_id", why)])
    return order_id


def shipment_request(order_id: str, items: Iterable[Item], address: Address | None = None) -> ShipmentRequest:
    """The request validated (``ValidationError`` listing every offending field) and normalised."""
    lines = list(items)
    bad: list[FieldViolation] = []
    if not _ID.fullmatch(order_id):
        bad.append(FieldViolation("order_id", "1 to 128 letters, digits or . _ : @ -"))
    if not lines:
        bad.append(FieldViolation("items", "a shipment needs at least one item"))
    if len(lines) > MAX_ITEMS:
        bad.append(FieldViolation("items", f"at most {MAX_ITEMS} items per shipment"))
    for i, line in enumerate(lines):
        if not _SKU.fullmatch(line.sku):
            bad.append(FieldViolation(f"items[{i}].sku", "1 to 64 letters, digits, '.', '_' or '-'"))
        if isinstance(line.quantity, bool) or not 1 <= line.quantity <= MAX_QUANTITY:
            bad.append(FieldViolation(f"items[{i}].quantity", f"must be from 1 to {MAX_QUANTITY}"))
    if address is not None:
        bad += _address_violations(address)
    if bad:
        raise ValidationError(
            "invalid shipment: " + "; ".join(f"{v.field} {v.description}" for v in bad), bad
        )
    return ShipmentRequest(order_id, merge_items(lines), address)


def _address_violations(address: Address) -> list[FieldViolation]:
    bad = []
    for name, limit in (
        ("name", MAX_TEXT),
        ("line1", MAX_TEXT),
        ("city", MAX_TEXT),
        ("postal_code", MAX_POSTAL_CODE),
    ):
        value: str = getattr(address, name)
        if not value.strip() or len(value) > limit or not _TEXT.fullmatch(value):
            bad.append(FieldViolation(f"address.{name}", f"1 to {limit} characters, no control characters"))
    line2 = address.line2
    if line2 is not None and (len(line2) > MAX_TEXT or not _TEXT.fullmatch(line2)):
        bad.append(FieldViolation("address.line2", f"at most {MAX_TEXT} characters, no control characters"))
    if not _COUNTRY.fullmatch(address.country):
        bad.append(FieldViolation("address.country", "an ISO 3166-1 alpha-2 code such as DE"))
    return bad


def merge_items(items: Iterable[Item]) -> tuple[Item, ...]:
    """One item per SKU (quantities summed), sorted by SKU: an order may list a SKU on two lines
    (two prices), and what ships is the total."""
    totals: dict[str, int] = {}
    for item in items:
        totals[item.sku] = totals.get(item.sku, 0) + item.quantity
    return tuple(Item(sku, totals[sku]) for sku in sorted(totals))


def check_repeat(existing: Shipment, request: ShipmentRequest) -> None:
    """A schedule for an order that already has a shipment: fine if it asks for the same
    shipment, else ``DomainError`` saying why."""
    order = request.order_id
    if existing.status == "cancelled":
        raise DomainError(f"order {order} has a cancelled shipment: a cancelled order is not shipped")
    if existing.items != request.items:
        raise DomainError(f"order {order} already has a shipment with other items")
    if existing.address != request.address:
        raise DomainError(f"order {order} already has a shipment to another address")


__all__ = [
    "Address",
    "Item",
    "Shipment",
    "ShipmentRequest",
    "Status",
    "check_order_id",
    "check_repeat",
    "merge_items",
    "new_shipment_id",
    "new_tracking_id",
    "shipment_request",
]

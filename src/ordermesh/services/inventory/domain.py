"""The inventory's rules, free of SQL and transports: input validation, what a reservation is, and
which lines of an order the stock cannot cover.

Decisions (where the contract left room):

- Lines of the same SKU are merged (quantities added): the order service allows them (the same
  SKU at two prices), and an inventory that refused them would fail those orders' sagas.
- An unknown SKU is a business "no" (REJECTED, named in ``short_skus``), not NOT_FOUND: the
  catalog may simply not carry it yet. A malformed one is INVALID_ARGUMENT.
- Stock is counted in three columns per SKU; ``available + reserved + shipped`` only changes when
  an operator sets ``available`` (``set``), so that sum is "the stock that was set".
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ordermesh.errors import FieldViolation, ValidationError

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the order service's, so every order's SKUs pass
ORDER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
MAX_LINES = 1_000
MAX_QUANTITY = 1_000_000  # per line as given; merged lines may add up to more
MAX_STOCK = 2**53 - 1  # exact in every JSON reader
MAX_REASON = 500
MAX_SKUS_PER_QUERY = 1_000
DEMO_CATALOG: tuple[tuple[str, int], ...] = tuple((f"SKU-{n}", 1_000) for n in range(1, 10))
RELEASED_BEFORE_RESERVE = "released before reserve"

_SKU = re.compile(SKU_PATTERN)
_ORDER_ID = re.compile(ORDER_ID_PATTERN)
_RESERVATION_IDS = uuid.UUID("0b6f6f0e-63c4-4b8e-9a57-3f1d2c9e7a10")


class Status(StrEnum):
    RESERVED = "reserved"
    REJECTED = "rejected"
    RELEASED = "released"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True, order=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """An order's reservation as stored now. ``items`` is empty only for an order released before
    it was ever reserved (a tombstone that makes its later Reserve REJECTED)."""

    reservation_id: str
    order_id: str
    status: Status
    reason: str
    items: tuple[Line, ...]
    short_skus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    available: int
    reserved: int
    shipped: int

    @property
    def total(self) -> int:
        return self.available + self.reserved + self.shipped


def reservation_id(order_id: str) -> str:
    """One id per order, derived from it: a retry, a tombstone and its later Reserve agree."""
    return f"rsv-{uuid.uuid5(_RESERVATION_IDS, order_id)}"


def _raise(message: str, bad: Sequence[FieldViolation]) -> None:
    if bad:
        raise ValidationError(f"{message}: " + "; ".join(f"{v.field} {v.description}" for v in bad), bad)


def _order_id_violations(order_id: str) -> list[FieldViolation]:
    if not _ORDER_ID.fullmatch(order_id):
        return [FieldViolation("order_id", "must be 1 to 128 letters, digits or . _ : @ -")]
    return []


def check_order_id(order_id: str) -> str:
    _raise("invalid order id", _order_id_violations(order_id))
    return order_id


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason):
        _raise("invalid reason", [FieldViolation("reason", f"at most {MAX_REASON} printable characters")])
    return reason


def check_sku(sku: str, field: str = "sku") -> str:
    if not _SKU.fullmatch(sku):
        _raise("invalid SKU", [FieldViolation(field, "1 to 64 letters, digits, '.', '_' or '-'")])
    return sku


def check_stock(quantity: int, field: str = "quantity") -> int:
    if isinstance(quantity, bool) or not 0 <= quantity <= MAX_STOCK:
        _raise("invalid quantity", [FieldViolation(field, f"must be from 0 to {MAX_STOCK}")])
    return quantity


def check_skus(skus: Sequence[str]) -> list[str]:
    """The distinct SKUs of a stock query, sorted; every malformed one is a violation."""
    bad = [
        FieldViolation(f"skus[{i}]", "1 to 64 letters, digits, '.', '_' or '-'")
        for i, sku in enumerate(skus)
        if not _SKU.fullmatch(sku)
    ]
    if len(skus) > MAX_SKUS_PER_QUERY:
        bad.append(FieldViolation("skus", f"at most {MAX_SKUS_PER_QUERY} per query"))
    _raise("invalid stock query", bad)
    return sorted(set(skus))


def check_reserve(order_id: str, items: Sequence[Line]) -> tuple[Line, ...]:
    """The order's lines merged by SKU and sorted by SKU (the order rows are locked in), or a
    ``ValidationError`` naming every offending field."""
    bad = _order_id_violations(order_id)
    if not items:
        bad.append(FieldViolation("items", "a reservation needs at least one item"))
    if len(items) > MAX_LINES:
        bad.append(FieldViolation("items", f"at most {MAX_LINES} items"))
    merged: dict[str, int] = {}
    for i, line in enumerate(items):
        if not _SKU.fullmatch(line.sku):
            bad.append(FieldViolation(f"items[{i}].sku", "1 to 64 letters, digits, '.', '_' or '-'"))
        if isinstance(line.quantity, bool) or not 1 <= line.quantity <= MAX_QUANTITY:
            bad.append(FieldViolation(f"items[{i}].quantity", f"must be from 1 to {MAX_QUANTITY}"))
        else:
            merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    _raise("invalid reservation", bad)
    return tuple(Line(sku, qty) for sku, qty in sorted(merged.items()))


def shortages(lines: Iterable[Line], available: Mapping[str, int]) -> tuple[str, ...]:
    """SKUs whose available units (absent: unknown SKU) do not cover their line, sorted."""
    return tuple(sorted(line.sku for line in lines if available.get(line.sku, -1) < line.quantity))


def rejection_reason(lines: Iterable[Line], available: Mapping[str, int]) -> str:
    parts = []
    for line in sorted(lines):
        have = available.get(line.sku)
        if have is None:
            parts.append(f"{line.sku} (unknown SKU)")
        elif have < line.quantity:
            parts.append(f"{line.sku} ({line.quantity} asked, {have} available)")
    return "insufficient stock: " + ", ".join(parts)

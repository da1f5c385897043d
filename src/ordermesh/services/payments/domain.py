"""Payments as the service sees them: statuses, records, results and input rules (no transport)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ordermesh.errors import FieldViolation, ValidationError

CURRENCY = re.compile(r"[A-Z]{3}")
MAX_ORDER_ID = 128
MAX_REASON = 500
MAX_AMOUNT = 2**63 - 1  # int64: what the wire and both databases carry
CANCELLED_BEFORE_CHARGE = "refunded/cancelled before charge"

_PAYMENT_IDS = uuid.UUID("1d7c0b5e-2b7e-4f0e-8f61-3c6a9a2f4e90")


class Status(StrEnum):
    PENDING = "pending"  # a charge is at the provider; its outcome is not recorded yet
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"  # refunded before any charge: later charges are declined


def payment_id_for(order_id: str) -> str:
    """One payment per order, so its id follows from the order's: a charge retried after a crash
    reaches the provider under the same id, which a real provider uses to charge once."""
    return f"pay_{uuid.uuid5(_PAYMENT_IDS, order_id).hex}"


@dataclass(frozen=True, slots=True)
class Payment:
    """An order's payment row; ``charged - refunded >= 0`` always."""

    order_id: str
    payment_id: str
    status: Status
    amount: int
    currency: str
    charged: int
    refunded: int
    decline_reason: str
    refund_reason: str
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None = None  # while PENDING: when the charge in flight was sent


@dataclass(frozen=True, slots=True)
class ChargeResult:
    payment_id: str
    order_id: str
    succeeded: bool
    decline_reason: str
    amount: int
    currency: str

    @classmethod
    def of(cls, payment: Payment) -> ChargeResult:
        return cls(
            payment.payment_id,
            payment.order_id,
            payment.status in (Status.SUCCEEDED, Status.REFUNDED),
            payment.decline_reason,
            payment.amount,
            payment.currency,
        )


@dataclass(frozen=True, slots=True)
class RefundResult:
    order_id: str
    payment_id: str
    refunded_now: int
    refunded_total: int
    currency: str
    status: Status


def _order_id_violation(order_id: str) -> FieldViolation | None:
    if not order_id:
        return FieldViolation("order_id", "is required")
    if len(order_id) > MAX_ORDER_ID or not order_id.isprintable() or order_id.strip() != order_id:
        return FieldViolation("order_id", f"must be 1 to {MAX_ORDER_ID} printable characters, no edge spaces")
    return None


def _raise(violations: list[FieldViolation | None]) -> None:
    found = [v for v in violations if v is not None]
    if found:
        raise ValidationError("; ".join(f"{v.field}: {v.description}" for v in found), found)


def check_charge(order_id: str, amount: int, currency: str) -> None:
    """``ValidationError`` naming every bad field of a charge request."""
    amount_violation = None
    if amount <= 0:
        amount_violation = FieldViolation("amount", "must be more than 0 (minor units)")
    elif amount > MAX_AMOUNT:
        amount_violation = FieldViolation("amount", f"must be at most {MAX_AMOUNT}")
    currency_violation = None
    if not CURRENCY.fullmatch(currency):
        currency_violation = FieldViolation("currency", "must be an ISO 4217 code: three upper-case letters")
    _raise([_order_id_violation(order_id), amount_violation, currency_violation])


def check_refund(order_id: str, reason: str) -> None:
    reason_violation = None
    if len(reason) > MAX_REASON:
        reason_violation = FieldViolation("reason", f"must be at most {MAX_REASON} characters")
    _raise([_order_id_violation(order_id), reason_violation])


def check_order_id(order_id: str) -> None:
    _raise([_order_id_violation(order_id)])

"""The payment service's published messages: exchange, routing keys and body schemas.

Published on the durable topic exchange ``payments`` through the service's outbox, in the same
transaction as the ledger change they report. Every message carries the order id as its
correlation id, the routing key as its type, and an id derived from the order and the event
(:func:`message_id`): one order has at most one charge outcome and one refund, so a message
published twice (an outbox publisher killed before its delete) has the same id both times and
consumers' inboxes drop the copy.
"""

from __future__ import annotations

import uuid
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

EXCHANGE: Final = "payments"
PAYMENT_PROCESSED: Final = "payment.processed"
PAYMENT_FAILED: Final = "payment.failed"
PAYMENT_REFUNDED: Final = "payment.refunded"
ROUTING_KEYS: Final = (PAYMENT_PROCESSED, PAYMENT_FAILED, PAYMENT_REFUNDED)
SCHEMA_VERSION: Final = 1

_NAMESPACE = uuid.UUID("6f1b3c1e-6d0a-4c59-9a3e-0d2f5a4b7c11")


def message_id(routing_key: str, order_id: str) -> str:
    """The id of the one ``routing_key`` message an order can cause (a UUIDv5)."""
    return str(uuid.uuid5(_NAMESPACE, f"{routing_key}/{order_id}"))


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # extra: newer producers may add fields

    order_id: str
    payment_id: str
    amount: int = Field(description="minor units of `currency`")
    currency: str = Field(description="ISO 4217 code")


class PaymentProcessed(_Body):
    """``payment.processed``: the order was charged ``amount``."""


class PaymentFailed(_Body):
    """``payment.failed``: the charge was declined (``amount`` is what was asked, nothing was charged)."""

    reason: str


class PaymentRefunded(_Body):
    """``payment.refunded``: ``amount`` was refunded (the whole charge)."""

    reason: str = ""


BODIES: Final[dict[str, type[_Body]]] = {
    PAYMENT_PROCESSED: PaymentProcessed,
    PAYMENT_FAILED: PaymentFailed,
    PAYMENT_REFUNDED: PaymentRefunded,
}

__all__ = [
    "BODIES",
    "EXCHANGE",
    "PAYMENT_FAILED",
    "PAYMENT_PROCESSED",
    "PAYMENT_REFUNDED",
    "ROUTING_KEYS",
    "SCHEMA_VERSION",
    "PaymentFailed",
    "PaymentProcessed",
    "PaymentRefunded",
    "message_id",
]

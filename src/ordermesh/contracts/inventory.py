"""What the inventory service publishes: the ``inventory`` topic exchange, its routing keys and the
JSON bodies (schema version 1).

Every message carries ``correlation_id`` = the order id and a message id derived from the order id
and the routing key (each happens at most once per order), so a message published twice - a
relay killed between the broker's confirm and its delete - has the same id both times and a
consumer's inbox drops the second one.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

EXCHANGE = "inventory"
SCHEMA_VERSION = 1

STOCK_RESERVED = "stock.reserved"
STOCK_RESERVATION_FAILED = "stock.reservation_failed"
STOCK_RELEASED = "stock.released"
STOCK_COMMITTED = "stock.committed"
ROUTING_KEYS = (STOCK_RESERVED, STOCK_RESERVATION_FAILED, STOCK_RELEASED, STOCK_COMMITTED)

_IDS = uuid.UUID("5f0c3b1e-8d7a-4c42-9a51-2b6f0e9d4c17")  # namespace of inventory message ids


def message_id(routing_key: str, order_id: str) -> str:
    """The id of the one ``routing_key`` message about ``order_id`` (a UUIDv5: stable across retries)."""
    return str(uuid.uuid5(_IDS, f"{routing_key}\n{order_id}"))


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class StockLine(_Body):
    sku: str
    quantity: int = Field(ge=1)


class StockReserved(_Body):
    """``stock.reserved``: every line is held for the order."""

    order_id: str
    reservation_id: str
    items: list[StockLine]


class StockReservationFailed(_Body):
    """``stock.reservation_failed``: nothing is held. ``short_skus`` lacked units or are unknown;
    empty when the order had been released before it was reserved."""

    order_id: str
    reservation_id: str
    reason: str
    short_skus: list[str]
    items: list[StockLine]


class StockReleased(_Body):
    """``stock.released``: the order's held units are available again."""

    order_id: str
    reservation_id: str
    reason: str
    items: list[StockLine]


class StockCommitted(_Body):
    """``stock.committed``: the order's held units were shipped (reserved -> shipped)."""

    order_id: str
    reservation_id: str
    items: list[StockLine]


BODIES: dict[str, type[_Body]] = {
    STOCK_RESERVED: StockReserved,
    STOCK_RESERVATION_FAILED: StockReservationFailed,
    STOCK_RELEASED: StockReleased,
    STOCK_COMMITTED: StockCommitted,
}

__all__ = [
    "BODIES",
    "EXCHANGE",
    "ROUTING_KEYS",
    "SCHEMA_VERSION",
    "STOCK_COMMITTED",
    "STOCK_RELEASED",
    "STOCK_RESERVATION_FAILED",
    "STOCK_RESERVED",
    "StockCommitted",
    "StockLine",
    "StockReleased",
    "StockReservationFailed",
    "StockReserved",
    "message_id",
]

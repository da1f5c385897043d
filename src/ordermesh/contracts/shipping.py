"""What the shipping service publishes: one message per shipment change on the ``shipping`` topic
exchange. The body is JSON of the models below; the envelope (message id, correlation id = the
order id, occurred-at) travels as message properties (``ordermesh.messaging.port.Message``).

- ``shipment.scheduled``: a shipment was scheduled for an order (once per order).
- ``shipment.cancelled``: a scheduled shipment was cancelled (once per order). Cancelling an
  order that had no shipment yet publishes nothing: nothing was scheduled.

Consumers should ignore fields they do not know (the models do): fields may be added.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

EXCHANGE = "shipping"
SHIPMENT_SCHEDULED = "shipment.scheduled"
SHIPMENT_CANCELLED = "shipment.cancelled"
ROUTING_KEYS = (SHIPMENT_SCHEDULED, SHIPMENT_CANCELLED)
SCHEMA_VERSION = 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ShipmentItem(_Body):
    sku: str
    quantity: int


class ShippingAddress(_Body):
    name: str
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2


class ShipmentScheduled(_Body):
    """Body of ``shipment.scheduled``."""

    shipment_id: str
    order_id: str
    tracking_id: str
    items: list[ShipmentItem]  # one per SKU, sorted by SKU
    address: ShippingAddress | None = None
    scheduled_at: datetime


class ShipmentCancelled(_Body):
    """Body of ``shipment.cancelled``."""

    shipment_id: str
    order_id: str
    tracking_id: str
    cancelled_at: datetime


BODIES: dict[str, type[BaseModel]] = {
    SHIPMENT_SCHEDULED: ShipmentScheduled,
    SHIPMENT_CANCELLED: ShipmentCancelled,
}

__all__ = [
    "BODIES",
    "EXCHANGE",
    "ROUTING_KEYS",
    "SCHEMA_VERSION",
    "SHIPMENT_CANCELLED",
    "SHIPMENT_SCHEDULED",
    "ShipmentCancelled",
    "ShipmentItem",
    "ShipmentScheduled",
    "ShippingAddress",
]

"""The REST contract of the shipping service (pydantic models at the edge only) and the
conversions between them and the domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ordermesh.services.shipping.domain import (
    COUNTRY_PATTERN,
    ID_PATTERN,
    MAX_ITEMS,
    MAX_POSTAL_CODE,
    MAX_QUANTITY,
    MAX_TEXT,
    SKU_PATTERN,
    Address,
    Item,
    Shipment,
)


def _integral(value: object) -> object:
    """JSON has one number type: ``2.0`` is the integer 2, while ``2.5``, ``"2"`` and ``true``
    stay errors under strict validation (as the order API does)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Control characters and lone surrogates are refused by the domain, with a violation naming the field.
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sku: Annotated[str, Field(pattern=SKU_PATTERN, examples=["SKU-1"])]
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY), BeforeValidator(_integral)]


class AddressIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[Text, Field(examples=["Ada Lovelace"])]
    line1: Annotated[Text, Field(examples=["12 St James's Square"])]
    line2: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    city: Annotated[Text, Field(examples=["London"])]
    postal_code: Annotated[str, Field(min_length=1, max_length=MAX_POSTAL_CODE, examples=["SW1Y 4JH"])]
    country: Annotated[
        str, Field(pattern=COUNTRY_PATTERN, description="ISO 3166-1 alpha-2 code", examples=["GB"])
    ]


class ScheduleShipment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    order_id: Annotated[str, Field(pattern=ID_PATTERN, examples=["0b5c2a52-5a4e-4c55-8f6e-1b8f0d2f9a10"])]
    items: Annotated[
        list[ItemIn],
        Field(
            min_length=1,
            max_length=MAX_ITEMS,
            description="what to ship; lines of the same SKU are added up",
        ),
    ]
    address: AddressIn | None = Field(None, description="where to ship (optional)")

    def domain_items(self) -> list[Item]:
        return [Item(i.sku, i.quantity) for i in self.items]

    def domain_address(self) -> Address | None:
        a = self.address
        return None if a is None else Address(a.name, a.line1, a.city, a.postal_code, a.country, a.line2)


class ShipmentItemOut(BaseModel):
    sku: str
    quantity: int


class AddressOut(BaseModel):
    name: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str


class ShipmentOut(BaseModel):
    """A shipment. A cancellation that came before any shipment leaves one with no tracking id,
    no items and no ``scheduled_at``."""

    shipment_id: str
    order_id: str
    tracking_id: str | None = Field(description="`OM` and 12 base32 characters; null if never scheduled")
    status: Literal["scheduled", "cancelled"]
    items: list[ShipmentItemOut]
    address: AddressOut | None
    scheduled_at: datetime | None
    cancelled_at: datetime | None


def shipment_doc(s: Shipment) -> dict[str, Any]:
    """The JSON document of a shipment (the shape of ``ShipmentOut``)."""
    a = s.address
    return {
        "shipment_id": s.shipment_id,
        "order_id": s.order_id,
        "tracking_id": s.tracking_id,
        "status": s.status,
        "items": [{"sku": i.sku, "quantity": i.quantity} for i in s.items],
        "address": None
        if a is None
        else {
            "name": a.name,
            "line1": a.line1,
            "line2": a.line2,
            "city": a.city,
            "postal_code": a.postal_code,
            "country": a.country,
        },
        "scheduled_at": s.scheduled_at.isoformat() if s.scheduled_at else None,
        "cancelled_at": s.cancelled_at.isoformat() if s.cancelled_at else None,
    }


__all__ = ["AddressIn", "ItemIn", "ScheduleShipment", "ShipmentOut", "shipment_doc"]

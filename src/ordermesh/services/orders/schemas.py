"""The REST contract of the order service (pydantic models at the edge only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ordermesh.contracts.orders import EMAIL_PATTERN
from ordermesh.services.orders.domain import (
    CURRENCIES,
    MAX_ITEMS,
    MAX_QUANTITY,
    MAX_UNIT_PRICE,
    SKU_PATTERN,
)

ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


def documented(**schema: object) -> Any:
    """A constraint the OpenAPI document shows but pydantic does not check: the domain checks it
    (``validate_new_order``), so REST and gRPC refuse a bad value in the same human words
    ("must be an email address like name@example.com", not a quoted regex)."""
    return Field(json_schema_extra=schema)  # type: ignore[arg-type]


Sku = Annotated[str, Field(examples=["SKU-1"], json_schema_extra={"pattern": SKU_PATTERN})]


def _integral(value: object) -> object:
    """JSON has one number type: ``2.0`` is the integer 2 (as JSON Schema's ``integer`` says), while
    ``2.5``, ``"2"`` and ``true`` stay errors under strict validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# After the Field: placed before it, pydantic leaks `ge`/`le` into the JSON schema as unknown keys.
WholeNumber = BeforeValidator(_integral)


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sku: Sku
    quantity: Annotated[int, documented(minimum=1, maximum=MAX_QUANTITY), WholeNumber]
    unit_price: Annotated[
        int,
        Field(
            description="minor units, e.g. cents", json_schema_extra={"minimum": 1, "maximum": MAX_UNIT_PRICE}
        ),
        WholeNumber,
    ]


class CreateOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user_email: Annotated[
        str,
        Field(examples=["ada@example.com"], json_schema_extra={"pattern": EMAIL_PATTERN, "maxLength": 254}),
    ]
    currency: Annotated[
        str, Field(examples=["EUR"], json_schema_extra={"enum": sorted(CURRENCIES)}, description="ISO 4217")
    ]
    items: Annotated[list[ItemIn], documented(minItems=1, maxItems=MAX_ITEMS)]


class Item(BaseModel):
    sku: str
    quantity: int
    unit_price: int


class Order(BaseModel):
    id: str
    user_id: str
    user_email: str
    items: list[Item]
    currency: str
    total: int
    status: Literal["pending", "paid", "stock_reserved", "shipped", "cancelled"]
    created_at: datetime | None
    updated_at: datetime | None
    version: int
    payment_id: str | None
    reservation_id: str | None
    stock_released: bool
    refunded_amount: int
    tracking_id: str | None
    cancel_reason: str | None
    failure_reason: str | None


class OrderList(BaseModel):
    orders: list[Order]


class OrderEvent(BaseModel):
    type: str
    version: int
    position: int
    occurred_at: datetime
    schema_version: int
    data: dict[str, object]


class OrderHistory(BaseModel):
    events: list[OrderEvent]

"""``GET /api/orders/{id}/tracking``: what the order knows (its read model) and what shipping says
about its shipment, with an explicit fallback.

Shipping is asked with a short timeout (:func:`tracking_timeout`). When it cannot answer — down,
too slow, its circuit open, its bulkhead full (every ``InfrastructureError``), or it refuses the
order service's own call or answers what cannot be read — the answer is still 200: the order's
side alone, ``"degraded": true`` and a short ``reason``. Shipping answering 404 is not a failure:
nothing is scheduled yet, ``"shipment": null``. Whose order it is is checked first, as the order
detail does: another user's order and a missing one answer alike (404), and shipping is never
asked about either.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from ordermesh.client.shipping import Shipment
from ordermesh.config import Settings
from ordermesh.errors import InfrastructureError, NotFound, OrdermeshError
from ordermesh.http.bearer import SECURED
from ordermesh.http.problems import documented
from ordermesh.resilience import BulkheadFull, CircuitOpen, deadline
from ordermesh.services.orders.rest import OrderId, User
from ordermesh.services.orders.runtime import OrderSystem

log = logging.getLogger("ordermesh.orders.tracking")

#: The longest the route waits for shipping, whatever ``ORDERMESH_CALL_TIMEOUT`` allows: a user
#: looking at a tracking page is better served by the order's own answer now than a full one later.
MAX_SHIPPING_WAIT = 2.0


class Shipments(Protocol):
    """What the route needs of a shipping client (``client.shipping.ShippingClient``)."""

    async def get(self, order_id: str, *, timeout: float | None = None) -> Shipment: ...


@dataclass(frozen=True, slots=True)
class ShippingLookup:
    """The service's shipping client and how long one tracking request may wait for it."""

    client: Shipments
    timeout: float


def tracking_timeout(settings: Settings) -> float:
    """Shipping's call timeout (``ORDERMESH_CALL_TIMEOUT``, or its ``ORDERMESH_POLICIES`` override),
    at most :data:`MAX_SHIPPING_WAIT`."""
    return min(settings.policy("shipping")["call_timeout"], MAX_SHIPPING_WAIT)


def use_shipping(app: FastAPI, client: Shipments, timeout: float) -> None:
    """Let the tracking route ask ``client`` (the composition root owns and closes it). An app
    without one answers every tracking request degraded."""
    app.state.shipping = ShippingLookup(client, timeout)


class TrackedShipment(BaseModel):
    shipment_id: str
    status: Literal["scheduled", "cancelled"] = Field(
        description="`cancelled` also when the order was cancelled before anything was scheduled"
    )
    tracking_id: str | None = Field(description="null if the shipment was never scheduled")
    scheduled_at: datetime | None
    cancelled_at: datetime | None


class Tracking(BaseModel):
    order_id: str
    status: Literal["pending", "paid", "stock_reserved", "shipped", "cancelled"] = Field(
        description="the order's status, as its read model has it"
    )
    tracking_id: str | None = Field(description="the tracking id the order recorded once shipped")
    cancel_reason: str | None
    updated_at: datetime | None
    shipment: TrackedShipment | None = Field(
        description="the shipment as shipping knows it; null when nothing is scheduled yet, or when "
        "`degraded` (shipping gave no answer)"
    )
    degraded: bool = Field(
        description="true: shipping did not answer, the answer holds what the order knows alone"
    )
    reason: str | None = Field(description="why the answer is degraded; null when it is not")


router = APIRouter(prefix="/api", tags=["orders"], responses=documented(401, 404, 422, 503))


@router.get(
    "/orders/{order_id}/tracking",
    operation_id="getOrderTracking",
    response_model=Tracking,
    openapi_extra=SECURED,
    summary="The order's shipment tracking; degraded (still 200) while shipping is unavailable",
)
async def get_order_tracking(order_id: OrderId, request: Request, user: User) -> Response:
    system: OrderSystem = request.app.state.system
    order = await system.service.get_order(order_id, user)  # NotFound unless it is the caller's
    lookup: ShippingLookup | None = getattr(request.app.state, "shipping", None)
    shipment: dict[str, Any] | None = None
    reason: str | None = "shipping is not configured here"
    if lookup is not None:
        shipment, reason = await _ask_shipping(lookup, order_id)
    body = {
        "order_id": order_id,
        "status": order.get("status"),
        "tracking_id": order.get("tracking_id"),
        "cancel_reason": order.get("cancel_reason"),
        "updated_at": order.get("updated_at"),
        "shipment": shipment,
        "degraded": reason is not None,
        "reason": reason,
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def _ask_shipping(lookup: ShippingLookup, order_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """Shipping's shipment of the order (None: it has none) and None; or None and why not."""
    wait = deadline.budget(lookup.timeout)  # less if this request's caller has less time left
    if wait <= 0:
        return None, "no time was left to ask shipping"
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with deadline.within(wait):
            found = await lookup.client.get(order_id, timeout=wait)
    except NotFound:
        return None, None
    except (OrdermeshError, ValueError, KeyError, TypeError) as exc:  # the latter: an answer unread
        return None, _reason(order_id, exc, timed_out=loop.time() - started >= wait)
    shipment = {
        "shipment_id": found.shipment_id,
        "status": found.status,
        "tracking_id": found.tracking_id,
        "scheduled_at": found.scheduled_at,
        "cancelled_at": found.cancelled_at,
    }
    return shipment, None


def _reason(order_id: str, exc: Exception, *, timed_out: bool) -> str:
    """The answer's ``reason``: short, for the end user, naming no host or port (the log has the
    detail). ``timed_out``: the call took all the time it had."""
    if not isinstance(exc, InfrastructureError):
        # Shipping refused the order service itself (its token, a contract mismatch) or answered
        # what cannot be read: a fault of ours to fix, not an outage, so it is logged louder.
        log.warning("tracking %s: shipping's answer was unusable: %s: %s", order_id, type(exc).__name__, exc)
        return "shipping gave no usable answer"
    # Every request during an outage comes here: the breaker logs the outage itself, once.
    log.debug("tracking %s degraded: %s: %s", order_id, type(exc).__name__, exc)
    if isinstance(exc, CircuitOpen):
        return "shipping is unavailable (circuit open)"
    if isinstance(exc, BulkheadFull):
        return "shipping is busy"
    if timed_out or isinstance(exc.__cause__, TimeoutError):
        return "shipping did not answer in time"
    return "shipping is unavailable"


__all__ = [
    "MAX_SHIPPING_WAIT",
    "ShippingLookup",
    "TrackedShipment",
    "Tracking",
    "router",
    "tracking_timeout",
    "use_shipping",
]

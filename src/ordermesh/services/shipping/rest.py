"""REST routes of the shipping service: an internal API, for service callers only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from ordermesh.auth import Tokens
from ordermesh.http import bearer
from ordermesh.http.bearer import SECURED, bearer_scheme
from ordermesh.http.problems import documented
from ordermesh.services.shipping.domain import ID_PATTERN, Shipment
from ordermesh.services.shipping.schemas import ScheduleShipment, ShipmentOut, shipment_doc
from ordermesh.services.shipping.service import ShippingService

JSON = "application/json"

BEARER = bearer_scheme(
    "a service token (subject `service:NAME`, `Tokens.issue_service`); end users' tokens are refused with 403"
)
_SECURED = SECURED

OrderId = Annotated[str, Path(pattern=ID_PATTERN, description="the order id")]


def service_caller(tokens: Tokens) -> Callable[[Request], Awaitable[str]]:
    """A dependency: the calling service (``service:NAME``) from the bearer token; 401 without a
    valid token, 403 for an end user's."""

    async def caller(request: Request) -> str:
        return bearer.service_caller(tokens, request)

    return caller


def shipment_url(order_id: str) -> str:
    return f"/api/shipments/{quote(order_id, safe='')}"


def _answer(shipment: Shipment, status: int = 200) -> Response:
    headers = {"Location": shipment_url(shipment.order_id)}
    return Response(orjson.dumps(shipment_doc(shipment)), status, media_type=JSON, headers=headers)


_LOCATION = {"description": "the shipment's URL", "required": True, "schema": {"type": "string"}}
_LINKS = {
    "GetShipment": {"operationId": "getShipment", "parameters": {"order_id": "$response.body#/order_id"}},
    "CancelShipment": {
        "operationId": "cancelShipment",
        "parameters": {"order_id": "$response.body#/order_id"},
    },
}


def shipping_router(tokens: Tokens, service: Callable[[], ShippingService]) -> APIRouter:
    """The routes; ``service()`` gives the service at request time (the OpenAPI document is
    built from a router whose service is never asked for)."""
    router = APIRouter(
        prefix="/api",
        tags=["shipments"],
        dependencies=[Depends(service_caller(tokens))],
        responses=documented(401, 403, 422, 503),
    )

    @router.post(
        "/shipments",
        openapi_extra=_SECURED,
        status_code=201,
        operation_id="scheduleShipment",
        responses={
            201: {
                "model": ShipmentOut,
                "description": "the new shipment, status `scheduled`",
                "headers": {"Location": _LOCATION},
                "links": _LINKS,
            },
            200: {
                "model": ShipmentOut,
                "description": "the order already had this shipment (a retry): the same one",
                "headers": {"Location": _LOCATION},
            },
            409: {
                **documented(409)[409],
                "description": "the order already has a shipment with other items or another "
                "address, or its shipment was cancelled (also before it was scheduled)",
            },
        },
    )
    async def schedule_shipment(body: ScheduleShipment) -> Response:
        shipment, created = await service().schedule(
            body.order_id, body.domain_items(), body.domain_address()
        )
        return _answer(shipment, 201 if created else 200)

    @router.get(
        "/shipments/{order_id}",
        openapi_extra=_SECURED,
        operation_id="getShipment",
        responses={200: {"model": ShipmentOut, "description": "the order's shipment"}, **documented(404)},
    )
    async def get_shipment(order_id: OrderId) -> Response:
        return _answer(await service().get(order_id))

    @router.post(
        "/shipments/{order_id}/cancel",
        openapi_extra=_SECURED,
        operation_id="cancelShipment",
        responses={
            200: {
                "model": ShipmentOut,
                "description": "the shipment, cancelled (idempotent: cancelling again answers the "
                "same). Without a shipment yet, a cancelled one without tracking id is recorded, "
                "and a later schedule for the order is refused with 409",
            }
        },
    )
    async def cancel_shipment(order_id: OrderId) -> Response:
        shipment, _ = await service().cancel(order_id)
        return _answer(shipment)

    return router


__all__ = ["BEARER", "service_caller", "shipment_url", "shipping_router"]

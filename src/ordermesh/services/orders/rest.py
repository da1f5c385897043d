"""REST routes of the order service. Bodies are built from the read model's stored JSON bytes;
nothing is re-validated on the way out, which is why reads beat a bare FastAPI endpoint."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from ordermesh.errors import IdempotencyError, OrdermeshError, Unauthenticated, ValidationError
from ordermesh.http.auth import Tokens
from ordermesh.http.idempotency import SavedResponse
from ordermesh.http.problems import documented, error_response
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.schemas import ID_PATTERN, CreateOrder, Order, OrderHistory, OrderList

JSON = "application/json"
_bearer = HTTPBearer(auto_error=False, description="a token from `ordermesh token USER_ID`")

OrderId = Annotated[str, Path(pattern=ID_PATTERN, description="the order id")]
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="the user id")]


def _system(request: Request) -> OrderSystem:
    system: OrderSystem = request.app.state.system
    return system


def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    if credentials is None:
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    tokens: Tokens = request.app.state.tokens
    return tokens.verify(credentials.credentials)


User = Annotated[str, Depends(current_user)]

router = APIRouter(prefix="/api", tags=["orders"], responses=documented(401, 422, 503))


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=JSON)


@router.post(
    "/orders",
    status_code=201,
    responses={201: {"model": Order, "description": "the new order"}, **documented(409)},
)
async def create_order(
    body: CreateOrder,
    request: Request,
    user: User,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="retries with the same key and body replay the first response",
        ),
    ] = None,
) -> Response:
    system = _system(request)
    if idempotency_key is None:
        return await _create(system, body, user)
    fingerprint = hashlib.sha256(orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()
    saved = await system.idempotency.begin(user, idempotency_key, fingerprint)
    if saved is not None:
        return Response(saved.body, saved.status, media_type=JSON, headers={"Idempotent-Replayed": "true"})
    try:
        response = await _create(system, body, user)
    except IdempotencyError:
        raise
    except OrdermeshError as exc:
        response = error_response(exc)
        if response.status_code >= 500:
            await system.idempotency.release(user, idempotency_key)
            return response
    except BaseException:
        await system.idempotency.release(user, idempotency_key)
        raise
    await system.idempotency.complete(
        user, idempotency_key, SavedResponse(response.status_code, bytes(response.body))
    )
    return response


async def _create(system: OrderSystem, body: CreateOrder, user: str) -> Response:
    lines = [OrderLine(i.sku, i.quantity, i.unit_price) for i in body.items]
    order = await system.service.create_order(user, body.user_email, body.currency, lines)
    return Response(
        orjson.dumps(order), 201, media_type=JSON, headers={"Location": f"/api/orders/{order['id']}"}
    )


@router.get("/orders/{order_id}", responses={200: {"model": Order}, **documented(404)})
async def get_order(
    order_id: OrderId,
    request: Request,
    user: User,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="the order as of this version")
    ] = None,
    as_of: Annotated[datetime | None, Query(description="the order as it was at this ISO-8601 time")] = None,
) -> Response:
    service = _system(request).service
    if version is not None and as_of is not None:
        raise ValidationError("give either version or as_of, not both")
    if version is None and as_of is None:
        return _json(orjson.dumps(await service.get_order(order_id, user)))
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    doc = await service.get_order_at(order_id, user, version=version, as_of=as_of)
    return _json(orjson.dumps(doc))


@router.get("/orders/{order_id}/events", responses={200: {"model": OrderHistory}, **documented(404)})
async def get_order_events(order_id: OrderId, request: Request, user: User) -> Response:
    events = await _system(request).service.history(order_id, user)
    return _json(orjson.dumps({"events": events}))


@router.get("/users/{user_id}/orders", responses={200: {"model": OrderList}, **documented(403)})
async def get_user_orders(user_id: UserId, request: Request, user: User) -> Response:
    return _json(await _system(request).service.user_orders_json(user_id, user))

"""REST routes of the order service. Bodies are built from the read model's stored JSON bytes;
nothing is re-validated on the way out, which is why reads beat a bare FastAPI endpoint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import Field
from starlette.responses import Response

from ordermesh import logs
from ordermesh.auth import Tokens
from ordermesh.errors import (
    FieldViolation,
    ValidationError,
)
from ordermesh.http.bearer import SECURED, bearer_credentials, bearer_scheme
from ordermesh.http.problems import documented
from ordermesh.problems import PROBLEM, problem_for
from ordermesh.ratelimit import WRITE_BURST, WRITE_RATE, RateLimiter
from ordermesh.services.orders.commands import create_order_outcome
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.listing import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.schemas import ID_PATTERN, CreateOrder, Order, OrderHistory, OrderList

JSON = "application/json"

OrderId = Annotated[str, Path(pattern=ID_PATTERN, description="the order id")]
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="the user id")]


def _system(request: Request) -> OrderSystem:
    system: OrderSystem = request.app.state.system
    return system


async def current_user(request: Request) -> str:
    """The bearer token's subject (the scheme is documented by ``BEARER``)."""
    tokens: Tokens = request.app.state.tokens
    user = tokens.verify(bearer_credentials(request))
    logs.tag(user_id=user)  # the request's lines, its access line included, name the caller
    return user


def write_limiter(request: Request) -> RateLimiter:
    """The app's limit on writes per user (``app.state.write_limiter``, shared with gRPC by the
    service's composition); without one, the defaults on the system's clock."""
    limiter: RateLimiter | None = getattr(request.app.state, "write_limiter", None)
    if limiter is None:
        limiter = RateLimiter(WRITE_RATE, WRITE_BURST, _system(request).service.clock, "orders created")
        request.app.state.write_limiter = limiter
    return limiter


async def writing_user(request: Request, user: Annotated[str, Depends(current_user)]) -> str:
    """The caller, once the write limit lets them in: before the body's validation, so refused
    attempts count too (429 with ``Retry-After``)."""
    write_limiter(request).acquire(user)
    return user


BEARER = bearer_scheme("a token from `ordermesh token USER_ID`")
_SECURED = SECURED
User = Annotated[str, Depends(current_user)]
WritingUser = Annotated[str, Depends(writing_user)]

router = APIRouter(prefix="/api", tags=["orders"], responses=documented(401, 422, 503))


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=JSON)


# Where a new order can be followed (Schemathesis' stateful phase walks these links too).
_CREATED_LINKS = {
    "GetOrder": {"operationId": "getOrder", "parameters": {"order_id": "$response.body#/id"}},
    "GetOrderEvents": {"operationId": "getOrderEvents", "parameters": {"order_id": "$response.body#/id"}},
    "ListUserOrders": {"operationId": "listUserOrders", "parameters": {"user_id": "$response.body#/user_id"}},
}
_CREATED_HEADERS = {
    "Location": {"description": "the new order's URL", "required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this is the saved response of an earlier request with the same key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


@router.post(
    "/orders",
    openapi_extra=_SECURED,
    status_code=201,
    operation_id="createOrder",
    responses={
        201: {
            "model": Order,
            "description": "the new order",
            "headers": _CREATED_HEADERS,
            "links": _CREATED_LINKS,
        },
        **documented(409, 429),
        422: {
            **documented(422)[422],
            "description": "invalid input (every offending field is listed in `violations`), "
            "or an Idempotency-Key already used with a different request",
        },
    },
)
async def create_order(
    body: CreateOrder,
    request: Request,
    user: WritingUser,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="retries with the same key and body replay the first response; "
            "1 to 255 printable ASCII characters, no spaces",
        ),
    ] = None,
) -> Response:
    lines = [OrderLine(i.sku, i.quantity, i.unit_price) for i in body.items]
    outcome = await create_order_outcome(
        _system(request), user, body.user_email, body.currency, lines, idempotency_key
    )
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    if outcome.error is not None:
        problem = problem_for(outcome.error)
        return Response(problem.body, problem.status, media_type=PROBLEM, headers=problem.headers | headers)
    assert outcome.order is not None
    order_id = orjson.loads(outcome.order)["id"]
    logs.tag(order_id=order_id)
    headers["Location"] = _order_url(order_id)
    return Response(outcome.order, 201, media_type=JSON, headers=headers)


def _order_url(order_id: str) -> str:
    return f"/api/orders/{order_id}"


@router.get(
    "/orders/{order_id}",
    openapi_extra=_SECURED,
    operation_id="getOrder",
    responses={
        200: {"model": Order, "description": "the order, now or as it was"},
        **documented(404),
        422: {
            **documented(422)[422],
            "description": "invalid input, or both `version` and `as_of` given",
        },
    },
)
async def get_order(
    order_id: OrderId,
    request: Request,
    user: User,
    version: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="the order as of this version (not together with `as_of`)"),
    ] = None,
    as_of: Annotated[
        datetime | None,
        Query(
            description="the order as it was at this ISO-8601 time, UTC when no offset is given "
            "(not together with `version`)"
        ),
    ] = None,
) -> Response:
    logs.tag(order_id=order_id)
    service = _system(request).service
    if version is not None and as_of is not None:
        both = "give either version or as_of, not both"
        raise ValidationError(both, [FieldViolation("version", both), FieldViolation("as_of", both)])
    if version is None and as_of is None:
        return _json(orjson.dumps(await service.get_order(order_id, user)))
    at = _as_utc(as_of) if as_of is not None else None
    doc = await service.get_order_at(order_id, user, version=version, as_of=at)
    return _json(orjson.dumps(doc))


def _as_utc(moment: datetime) -> datetime:
    """``as_of`` in UTC (naive means UTC). A valid ISO-8601 time can fall outside Python's range
    once moved to UTC (0001-01-01T00:00+14:00); such times clamp to the range's ends, where the
    answer is the same: nothing existed yet, or everything has happened."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


@router.get(
    "/orders/{order_id}/events",
    openapi_extra=_SECURED,
    operation_id="getOrderEvents",
    responses={
        200: {"model": OrderHistory, "description": "the order's events, oldest first"},
        **documented(404),
    },
)
async def get_order_events(order_id: OrderId, request: Request, user: User) -> Response:
    logs.tag(order_id=order_id)
    events = await _system(request).service.history(order_id, user)
    return _json(orjson.dumps({"events": events}))


class OrderPage(OrderList):
    next: str | None = Field(
        description="the cursor of the next page (pass it as `after`), or null on the last page",
        pattern=CURSOR_PATTERN,
    )


@router.get(
    "/users/{user_id}/orders",
    openapi_extra=_SECURED,
    operation_id="listUserOrders",
    responses={
        200: {"model": OrderPage, "description": "one page of the user's orders, newest first"},
        **documented(403),
        # Only for a user id that is no path segment at all (say "a/b"): no such resource.
        **documented(404),
    },
)
async def get_user_orders(
    user_id: UserId,
    request: Request,
    user: User,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_LIMIT,
            description=f"orders per page ({DEFAULT_LIMIT} unless given, at most {MAX_LIMIT})",
        ),
    ] = DEFAULT_LIMIT,
    after: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="the `next` cursor of the previous page: the orders older than its last one "
            "(orders created meanwhile do not shift the walk)",
        ),
    ] = None,
) -> Response:
    return _json(await _system(request).service.user_orders_json(user_id, user, limit, after))

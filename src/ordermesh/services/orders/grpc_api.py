"""The order service over gRPC: protobuf at the edge, the same ``OrderService`` use cases inside.

Authentication, deadlines, error statuses, metrics and logging live in the interceptors
(``ordermesh.rpc``); handlers read the caller from ``current_principal()`` and raise
``OrdermeshError``s like any other use-case code. Input is checked here as REST's schemas check
it (ids, idempotency keys, timestamps), so a bad value is INVALID_ARGUMENT naming its field,
never INTERNAL, and no error quotes it back.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from ordermesh import logs
from ordermesh.errors import FieldViolation, ValidationError
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1 import orders_pb2_grpc as pb_grpc
from ordermesh.ratelimit import WRITE_BURST, WRITE_RATE, RateLimiter
from ordermesh.rpc.context import current_principal
from ordermesh.services.orders.commands import create_order_outcome
from ordermesh.services.orders.domain import MAX_ITEMS
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.listing import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.schemas import ID_PATTERN
from ordermesh.services.orders.updates import MAX_STREAMS_PER_USER, OrderFeed

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrderService"].full_name
_INT32_MAX = 2**31 - 1
# REST's patterns, matched whole (``$`` would let a trailing newline through).
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_ID_RULE = "1 to 128 letters, digits or . _ : @ -"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# What google.protobuf.Timestamp can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TS_SECONDS = (-62_135_596_800, 253_402_300_799)
_NANOS_MAX = 999_999_999


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: str | datetime | None) -> Timestamp | None:
    """An ISO-8601 string or aware datetime as a ``Timestamp`` (by arithmetic: ``FromDatetime``
    costs three times as much, and a streamed update carries three of them)."""
    if not moment:
        return None
    delta = (datetime.fromisoformat(moment) if isinstance(moment, str) else moment) - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def order_pb(doc: Mapping[str, Any]) -> pb.Order:
    """The REST order resource as a protobuf ``Order``, field for field."""
    optional = {
        k: doc[k]
        for k in ("payment_id", "reservation_id", "tracking_id", "cancel_reason", "failure_reason")
        if doc.get(k) is not None
    }
    return pb.Order(
        id=doc["id"],
        user_id=doc["user_id"],
        user_email=doc["user_email"],
        items=[
            pb.OrderItem(sku=i["sku"], quantity=i["quantity"], unit_price=i["unit_price"])
            for i in doc["items"]
        ],
        currency=doc["currency"],
        total=doc["total"],
        status=doc["status"],
        created_at=timestamp(doc.get("created_at")),
        updated_at=timestamp(doc.get("updated_at")),
        version=doc["version"],
        stock_released=doc["stock_released"],
        refunded_amount=doc["refunded_amount"],
        **optional,
    )


class _ListCache:
    """Page bodies already turned into responses: a page changes only when an event arrives,
    while it is read far more often. Keyed by the body's bytes, so never stale."""

    def __init__(self, size: int = 1024) -> None:
        self._entries: OrderedDict[bytes, pb.GetUserOrdersResponse] = OrderedDict()
        self._size = size

    def response(self, raw: bytes) -> pb.GetUserOrdersResponse:
        hit = self._entries.get(raw)
        if hit is not None:
            self._entries.move_to_end(raw)
            return hit
        page = orjson.loads(raw)
        response = pb.GetUserOrdersResponse(
            orders=[order_pb(d) for d in page["orders"]], next_page_token=page["next"] or ""
        )
        self._entries[raw] = response
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return response


class OrderGrpcService(pb_grpc.OrderServiceServicer):
    """``writes`` limits CreateOrder per user (share it with REST's ``app.state.write_limiter``;
    default: ``ratelimit.WRITE_RATE``/``WRITE_BURST`` on the system's clock); ``max_streams_per_user`` caps
    each user's open StreamOrderUpdates."""

    def __init__(
        self,
        system: OrderSystem,
        writes: RateLimiter | None = None,
        max_streams_per_user: int = MAX_STREAMS_PER_USER,
    ) -> None:
        self._system = system
        self._service = system.service
        self.stopping = asyncio.Event()
        self.writes = writes or RateLimiter(WRITE_RATE, WRITE_BURST, system.service.clock, "orders created")
        self._feed = OrderFeed(system.service, self.stopping, max_streams_per_user)
        self._lists = _ListCache()

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_OrderServiceServicer_to_server(self, server)

    def shutdown(self) -> None:
        """End every open stream with UNAVAILABLE (clients resume from their last position)."""
        self.stopping.set()

    async def GetUserOrders(
        self, request: pb.GetUserOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUserOrdersResponse:
        _require("user_id", request.user_id)
        if request.page_size < 0:
            raise _invalid("page_size", "must not be negative (0 means the default)")
        limit = min(request.page_size or DEFAULT_LIMIT, MAX_LIMIT)  # AIP-158: coerce to the maximum
        token = request.page_token or None
        if token is not None:
            decode_cursor(token, "page_token")
        raw = await self._service.user_orders_json(request.user_id, current_principal(), limit, token)
        return self._lists.response(raw)

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Order:
        _id("order_id", request.order_id)
        logs.tag(order_id=request.order_id)  # this call's lines, the interceptor's included
        user = current_principal()
        which = request.WhichOneof("at")
        if which is None:
            return order_pb(await self._service.get_order(request.order_id, user))
        if which == "version":
            if not 1 <= request.version <= _INT32_MAX:
                raise _invalid("version", "must be 1 or more")
            doc = await self._service.get_order_at(request.order_id, user, version=request.version)
        else:
            as_of = _moment("as_of", request.as_of)
            doc = await self._service.get_order_at(request.order_id, user, as_of=as_of)
        return order_pb(doc)

    async def GetOrderHistory(
        self, request: pb.GetOrderHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOrderHistoryResponse:
        _id("order_id", request.order_id)
        logs.tag(order_id=request.order_id)
        events = await self._service.history(request.order_id, current_principal())
        return pb.GetOrderHistoryResponse(
            events=[
                pb.OrderEvent(
                    type=e["type"],
                    version=e["version"],
                    position=e["position"],
                    occurred_at=timestamp(e["occurred_at"]),
                    schema_version=e["schema_version"],
                    data_json=orjson.dumps(e["data"]).decode(),
                )
                for e in events
            ]
        )

    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Order:
        self.writes.acquire(current_principal())
        if request.idempotency_key and not _KEY.fullmatch(request.idempotency_key):
            raise _invalid("idempotency_key", "1 to 255 printable ASCII characters, no spaces")
        if len(request.items) > MAX_ITEMS:  # before building them, and one violation, not thousands
            raise _invalid("items", f"at most {MAX_ITEMS} items per order")
        lines = [OrderLine(i.sku, i.quantity, i.unit_price) for i in request.items]
        outcome = await create_order_outcome(
            self._system,
            current_principal(),
            request.user_email,
            request.currency,
            lines,
            request.idempotency_key or None,
        )
        if outcome.error is not None:
            raise outcome.error
        assert outcome.order is not None
        doc = orjson.loads(outcome.order)
        logs.tag(order_id=doc["id"])
        return order_pb(doc)

    async def StreamOrderUpdates(
        self, request: pb.StreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.OrderUpdate]:
        target = request.WhichOneof("target")
        if target is None:
            raise _invalid("target", "give user_id or order_id")
        _id(target, getattr(request, target))
        logs.tag(order_id=request.order_id or None)
        updates = self._feed.updates(
            current_principal(),
            user_id=request.user_id if target == "user_id" else None,
            order_id=request.order_id if target == "order_id" else None,
            after_position=request.after_position,
        )
        async for event, order in updates:
            yield pb.OrderUpdate(
                position=event.position,
                order_id=order["id"],
                version=event.version,
                event_type=event.type,
                occurred_at=timestamp(event.occurred_at),
                data_json=orjson.dumps(self._service.repository.codec.upcast_data(event)[1]).decode(),
                order=order_pb(order),
            )


def _invalid(field: str, description: str) -> ValidationError:
    return ValidationError(f"{field}: {description}", [FieldViolation(field, description)])


def _require(field: str, value: str) -> None:
    if not value:
        raise _invalid(field, "is required")


def _id(field: str, value: str) -> None:
    _require(field, value)
    if not _ID.fullmatch(value):
        raise _invalid(field, _ID_RULE)


def _moment(field: str, value: Timestamp) -> datetime:
    """A ``Timestamp`` as an aware UTC datetime, if it is one (protobuf's own range and nanos)."""
    if not 0 <= value.nanos <= _NANOS_MAX:
        raise _invalid(f"{field}.nanos", f"must be from 0 to {_NANOS_MAX}")
    if not _TS_SECONDS[0] <= value.seconds <= _TS_SECONDS[1]:
        raise _invalid(
            f"{field}.seconds", f"must be from {_TS_SECONDS[0]} to {_TS_SECONDS[1]} (years 1 to 9999)"
        )
    return value.ToDatetime(tzinfo=UTC)

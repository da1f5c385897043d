"""gRPC clients for the order service.

``OrdersGrpcClient`` (grpc.aio) and ``SyncOrdersGrpcClient`` (grpc's blocking API) share request
building and conversion; answers are dicts shaped like the REST resources. Every call has a
deadline (5 s unless told otherwise); reads and ``create_order`` (always sent with an
idempotency key) are retried on UNAVAILABLE within that deadline. The async client calls through a
circuit breaker and a bulkhead too (``client.rpc``; pass ``guard`` to share or tune them). ``watch`` follows
``StreamOrderUpdates`` and, when the server goes away, reconnects and resumes after the last
position it delivered: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, get_args

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from ordermesh.client.guard import default_guard
from ordermesh.client.rpc import GrpcClient
from ordermesh.client.surface import AsyncPages, SyncPages
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1 import orders_pb2_grpc as pb_grpc
from ordermesh.resilience import Guard
from ordermesh.rpc.status import error_from_rpc

DEFAULT_TARGET = "127.0.0.1:50051"
_Optional = Literal["payment_id", "reservation_id", "tracking_id", "cancel_reason", "failure_reason"]
_OPTIONAL: tuple[_Optional, ...] = get_args(_Optional)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
T = TypeVar("T")


def _iso(ts: Timestamp, present: bool = True) -> str | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def order_dict(order: pb.Order) -> dict[str, Any]:
    """A protobuf ``Order`` as the REST resource, field for field."""
    return {
        "id": order.id,
        "user_id": order.user_id,
        "user_email": order.user_email,
        "items": [{"sku": i.sku, "quantity": i.quantity, "unit_price": i.unit_price} for i in order.items],
        "currency": order.currency,
        "total": order.total,
        "status": order.status,
        "created_at": _iso(order.created_at, order.HasField("created_at")),
        "updated_at": _iso(order.updated_at, order.HasField("updated_at")),
        "version": order.version,
        **{k: getattr(order, k) if order.HasField(k) else None for k in _OPTIONAL},
        "stock_released": order.stock_released,
        "refunded_amount": order.refunded_amount,
    }


def update_dict(update: pb.OrderUpdate) -> dict[str, Any]:
    return {
        "position": update.position,
        "order_id": update.order_id,
        "version": update.version,
        "event_type": update.event_type,
        "occurred_at": _iso(update.occurred_at),
        "data": orjson.loads(update.data_json or "{}"),
        "order": order_dict(update.order),
    }


def _history(response: pb.GetOrderHistoryResponse) -> list[dict[str, Any]]:
    return [
        {
            "type": e.type,
            "version": e.version,
            "position": e.position,
            "occurred_at": _iso(e.occurred_at),
            "schema_version": e.schema_version,
            "data": orjson.loads(e.data_json or "{}"),
        }
        for e in response.events
    ]


def _list_request(user_id: str, page_size: int | None, page_token: str | None) -> pb.GetUserOrdersRequest:
    return pb.GetUserOrdersRequest(user_id=user_id, page_size=page_size or 0, page_token=page_token or "")


def _page(response: pb.GetUserOrdersResponse) -> dict[str, Any]:
    return {"orders": [order_dict(o) for o in response.orders], "next": response.next_page_token or None}


def _get_order_request(order_id: str, version: int | None, as_of: datetime | None) -> pb.GetOrderRequest:
    request = pb.GetOrderRequest(order_id=order_id)
    if version is not None:
        request.version = version
    elif as_of is not None:
        request.as_of.FromDatetime(as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC))
    return request


def _create_request(
    user_email: str, currency: str, items: Sequence[Mapping[str, Any]], key: str | None
) -> pb.CreateOrderRequest:
    return pb.CreateOrderRequest(
        user_email=user_email,
        currency=currency,
        items=[pb.OrderItem(sku=i["sku"], quantity=i["quantity"], unit_price=i["unit_price"]) for i in items],
        idempotency_key=key or str(uuid.uuid4()),
    )


class OrdersGrpcClient(GrpcClient, AsyncPages):
    """Async client. The seed's ``OrderServiceStub`` is there too, as ``.stub``."""

    downstream = "orders"

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        *,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(target, token, timeout, retries, guard)
        self.stub = pb_grpc.OrderServiceStub(self.channel)

    async def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"orders": [...], "next": CURSOR|None}`` (``next_page_token``, None on the last page)."""
        request = _list_request(user_id, limit, after)
        return _page(await self._call(self.stub.GetUserOrders, request, timeout))

    async def get_order(
        self,
        order_id: str,
        *,
        version: int | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        request = _get_order_request(order_id, version, as_of)
        return order_dict(await self._call(self.stub.GetOrder, request, timeout))

    async def get_order_history(self, order_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        request = pb.GetOrderHistoryRequest(order_id=order_id)
        return _history(await self._call(self.stub.GetOrderHistory, request, timeout))

    async def create_order(
        self,
        user_email: str,
        currency: str,
        items: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        request = _create_request(user_email, currency, items, idempotency_key)
        return order_dict(await self._call(self.stub.CreateOrder, request, timeout))

    async def watch(
        self,
        *,
        user_id: str | None = None,
        order_id: str | None = None,
        after_position: int = 0,
        reconnect: bool = True,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Updates after ``after_position``, live, across server restarts when ``reconnect``."""
        position, backoff = after_position, 0.1
        while True:
            request = pb.StreamRequest(after_position=position)
            if user_id is not None:
                request.user_id = user_id
            else:
                request.order_id = order_id or ""
            call = self.stub.StreamOrderUpdates(request, metadata=self._metadata, wait_for_ready=True)
            try:
                async for update in call:
                    position, backoff = update.position, 0.1
                    yield update_dict(update)
                return
            except grpc.aio.AioRpcError as exc:
                if not reconnect or exc.code() not in _RETRYABLE:
                    raise error_from_rpc(exc) from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)


class SyncOrdersGrpcClient(SyncPages):
    """The blocking twin of ``OrdersGrpcClient`` (grpc's sync channel, the same conversions, the
    same guard through ``Guard.call_blocking``); safe to share between threads."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        *,
        guard: Guard | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get("ORDERMESH_TOKEN")  # as the README's shell
        self.timeout = timeout
        self.retries = retries
        self.guard = guard or default_guard("orders", timeout, retries)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.OrderServiceStub(self.channel)

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        def attempt(left: float) -> T:
            try:
                return method(request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc) from exc  # type: ignore[arg-type]

        return self.guard.call_blocking(attempt, timeout=timeout or self.timeout)

    def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"orders": [...], "next": CURSOR|None}`` (``next_page_token``, None on the last page)."""
        return _page(self._call(self.stub.GetUserOrders, _list_request(user_id, limit, after), timeout))

    def get_order(
        self,
        order_id: str,
        *,
        version: int | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return order_dict(
            self._call(self.stub.GetOrder, _get_order_request(order_id, version, as_of), timeout)
        )

    def get_order_history(self, order_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        return _history(
            self._call(self.stub.GetOrderHistory, pb.GetOrderHistoryRequest(order_id=order_id), timeout)
        )

    def create_order(
        self,
        user_email: str,
        currency: str,
        items: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        request = _create_request(user_email, currency, items, idempotency_key)
        return order_dict(self._call(self.stub.CreateOrder, request, timeout))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SyncOrdersGrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

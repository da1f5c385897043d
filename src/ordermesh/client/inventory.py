"""Async gRPC client for the inventory service (``ordermesh.inventory.v1.InventoryService``).

Answers are plain dataclasses; failures are ``ordermesh.errors`` classes (``error_from_rpc``):
``ValidationError`` with field violations, ``DomainError`` for FAILED_PRECONDITION, ``NotFound``,
``PermissionDenied`` for a token that is not a service's, ``InfrastructureError`` when the
service cannot be reached. Every call has a deadline (``timeout`` seconds unless told otherwise);
every method is idempotent by order id, so each is retried on UNAVAILABLE within that deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ordermesh.client.rpc import GrpcClient
from ordermesh.inventory.v1 import inventory_pb2 as pb
from ordermesh.inventory.v1 import inventory_pb2_grpc as pb_grpc
from ordermesh.resilience import Guard

DEFAULT_TARGET = "127.0.0.1:50053"
Status = Literal["unspecified", "reserved", "rejected", "released", "committed"]
_STATUS: dict[int, Status] = {
    pb.RESERVATION_STATUS_RESERVED: "reserved",
    pb.RESERVATION_STATUS_REJECTED: "rejected",
    pb.RESERVATION_STATUS_RELEASED: "released",
    pb.RESERVATION_STATUS_COMMITTED: "committed",
}


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """An order's reservation as the service has it now (a retried call sees where it went)."""

    reservation_id: str
    order_id: str
    status: Status
    reason: str = ""
    items: tuple[Item, ...] = ()
    short_skus: tuple[str, ...] = ()

    @property
    def reserved(self) -> bool:
        return self.status == "reserved"


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    available: int
    reserved: int
    shipped: int


def _reservation(message: pb.Reservation) -> Reservation:
    return Reservation(
        reservation_id=message.reservation_id,
        order_id=message.order_id,
        status=_STATUS.get(message.status, "unspecified"),
        reason=message.reason,
        items=tuple(Item(i.sku, i.quantity) for i in message.items),
        short_skus=tuple(message.short_skus),
    )


class InventoryClient(GrpcClient):
    """``async with InventoryClient(target, token) as inventory: await inventory.reserve(...)``;
    ``token`` must be a service token (``Tokens.issue_service``). Retries UNAVAILABLE until the
    deadline: a service that is still starting is waited for."""

    downstream = "inventory"

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | Callable[[], str] | None = None,
        *,
        timeout: float = 5.0,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(target, token, timeout, None, guard)
        self.stub = pb_grpc.InventoryServiceStub(self.channel)

    async def reserve(
        self, order_id: str, items: Iterable[Item | tuple[str, int]], *, timeout: float | None = None
    ) -> Reservation:
        """All of ``items`` held for ``order_id``, or none (``status == "rejected"``, with a
        ``reason`` and the ``short_skus``)."""
        lines = [i if isinstance(i, Item) else Item(*i) for i in items]
        request = pb.ReserveRequest(
            order_id=order_id, items=[pb.Item(sku=i.sku, quantity=i.quantity) for i in lines]
        )
        return _reservation(await self._call(self.stub.Reserve, request, timeout))

    async def release(self, order_id: str, reason: str = "", *, timeout: float | None = None) -> Reservation:
        request = pb.ReleaseRequest(order_id=order_id, reason=reason)
        return _reservation(await self._call(self.stub.Release, request, timeout))

    async def commit(self, order_id: str, *, timeout: float | None = None) -> Reservation:
        request = pb.CommitRequest(order_id=order_id)
        return _reservation(await self._call(self.stub.Commit, request, timeout))

    async def stock(self, skus: Sequence[str] = (), *, timeout: float | None = None) -> list[StockLevel]:
        """Levels of ``skus`` (every SKU when empty), ordered by SKU."""
        response = await self._call(self.stub.GetStock, pb.GetStockRequest(skus=list(skus)), timeout)
        return [StockLevel(s.sku, s.available, s.reserved, s.shipped) for s in response.levels]


__all__ = ["DEFAULT_TARGET", "InventoryClient", "Item", "Reservation", "StockLevel"]

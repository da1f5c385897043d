"""The inventory over gRPC: protobuf at the edge, the ``InventoryStore`` inside.

Every method takes service tokens only (``require_service``): stock levels and reservations are
internal (an end user's token is PERMISSION_DENIED, GetStock included; operators use the CLI).
Authentication, deadlines and error statuses are the interceptors' (``ordermesh.rpc``).
"""

from __future__ import annotations

from typing import Any

import grpc

from ordermesh.auth import require_service
from ordermesh.inventory.v1 import inventory_pb2 as pb
from ordermesh.inventory.v1 import inventory_pb2_grpc as pb_grpc
from ordermesh.rpc.context import current_principal
from ordermesh.services.inventory.domain import Line, Reservation, Status
from ordermesh.services.inventory.store import InventoryStore

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["InventoryService"].full_name

_STATUS = {
    Status.RESERVED: pb.RESERVATION_STATUS_RESERVED,
    Status.REJECTED: pb.RESERVATION_STATUS_REJECTED,
    Status.RELEASED: pb.RESERVATION_STATUS_RELEASED,
    Status.COMMITTED: pb.RESERVATION_STATUS_COMMITTED,
}


def reservation_pb(reservation: Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=reservation.reservation_id,
        order_id=reservation.order_id,
        status=_STATUS[reservation.status],
        reason=reservation.reason,
        items=[pb.Item(sku=line.sku, quantity=line.quantity) for line in reservation.items],
        short_skus=list(reservation.short_skus),
    )


Context = grpc.aio.ServicerContext[Any, Any]


class InventoryGrpcService(pb_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_InventoryServiceServicer_to_server(self, server)

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.Reservation:
        require_service(current_principal())
        lines = [Line(item.sku, item.quantity) for item in request.items]
        return reservation_pb(await self._store.reserve(request.order_id, lines))

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.Reservation:
        require_service(current_principal())
        return reservation_pb(await self._store.release(request.order_id, request.reason))

    async def Commit(self, request: pb.CommitRequest, context: Context) -> pb.Reservation:
        require_service(current_principal())
        return reservation_pb(await self._store.commit(request.order_id))

    async def GetStock(self, request: pb.GetStockRequest, context: Context) -> pb.GetStockResponse:
        require_service(current_principal())
        levels = await self._store.stock(list(request.skus))
        return pb.GetStockResponse(
            levels=[
                pb.StockLevel(sku=s.sku, available=s.available, reserved=s.reserved, shipped=s.shipped)
                for s in levels
            ]
        )

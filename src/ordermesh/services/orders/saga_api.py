"""``GET /api/orders/{id}/saga``: one view of an order's saga, whichever style ran it — the
style, the state, each step (service, outcome, attempts, start and end) and each compensation."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from ordermesh.errors import NotFound
from ordermesh.http.bearer import SECURED
from ordermesh.http.problems import documented
from ordermesh.saga import SagaStore
from ordermesh.services.orders.rest import OrderId, User
from ordermesh.services.orders.runtime import OrderSystem


class SagaStep(BaseModel):
    name: str
    service: str
    kind: str
    outcome: str
    attempts: int
    started_at: str | None
    ended_at: str | None
    detail: str


class SagaView(BaseModel):
    saga_id: str
    name: str
    style: str
    state: str
    reason: str
    started_at: str
    deadline_at: str
    updated_at: str
    steps: list[SagaStep]
    compensations: list[SagaStep]


router = APIRouter(prefix="/api", tags=["orders"], responses=documented(401, 404, 422, 503))


@router.get(
    "/orders/{order_id}/saga",
    operation_id="getOrderSaga",
    response_model=SagaView,
    openapi_extra=SECURED,
    summary="The order's saga: its state, steps and compensations",
)
async def get_order_saga(order_id: OrderId, request: Request, user: User) -> Response:
    system: OrderSystem = request.app.state.system
    await system.service.get_order(order_id, user)  # NotFound unless it is the caller's
    sagas: SagaStore | None = getattr(request.app.state, "sagas", None)
    record = await sagas.get(order_id) if sagas is not None else None
    if record is None:
        raise NotFound(f"order {order_id} has no saga (yet)")
    body: dict[str, Any] = record.to_json()
    return Response(orjson.dumps(body), media_type="application/json")

"""``GET /api/orders/{id}/saga``: one view of an order's saga, whichever style ran it — the
style, the state, each step (service, outcome, attempts, start and end) and each compensation."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from ordermesh.http.bearer import SECURED
from ordermesh.http.problems import documented
from ordermesh.saga import SagaStore
from ordermesh.services.orders.rest import OrderId, User
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.saga import SAGA


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
    state: Literal["pending", "running", "compensating", "completed", "compensated", "failed"] = Field(
        description="`pending`: the order exists and its saga has not begun yet"
    )
    reason: str
    started_at: str | None
    deadline_at: str | None
    updated_at: str | None
    steps: list[SagaStep]
    compensations: list[SagaStep]


def _pending(order_id: str) -> dict[str, Any]:
    return {
        "saga_id": order_id,
        "name": SAGA,
        "style": "",
        "state": "pending",
        "reason": "",
        "started_at": None,
        "deadline_at": None,
        "updated_at": None,
        "steps": [],
        "compensations": [],
    }


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
    # The order exists (it is the caller's): a saga that has not begun yet is pending, not missing.
    body: dict[str, Any] = record.to_json() if record is not None else _pending(order_id)
    return Response(orjson.dumps(body), media_type="application/json")

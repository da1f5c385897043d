"""The admin surface every service's HTTP port carries, installed by the kit: fault injection.

    GET    /admin/faults   the process's faults (``resilience.faults.Faults.snapshot``)
    PUT    /admin/faults   make the JSON body the whole plan: ``{"link": {...}, "queues": {...}}``
    DELETE /admin/faults   clear them

Every route takes a service token only (``auth.require_service``): an end user's token is
answered 403, none 401. A plan that faults anything is refused with 403 where injection is off
(``ORDERMESH_FAULTS``); a malformed one with 422 naming the field. The routes are left out of
the service's OpenAPI document: they are an operator's surface, not the service's API.

The current plan is exported in ``/metrics`` (:class:`FaultsCollector`), read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from ordermesh.auth import Tokens
from ordermesh.errors import FieldViolation, ValidationError
from ordermesh.http import faults as http_faults
from ordermesh.http.bearer import service_caller
from ordermesh.resilience.faults import TERMINAL, FaultPlan, Faults, LinkFaults

PATH = "/admin/faults"


def install_faults(app: FastAPI, faults: Faults, tokens: Tokens, registry: CollectorRegistry) -> None:
    """``faults`` applied on ``app``'s requests, set through its admin routes, shown in its metrics."""
    http_faults.install(app, faults)
    app.include_router(_router(faults, tokens))
    registry.register(FaultsCollector(faults))


def _router(faults: Faults, tokens: Tokens) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def caller(request: Request) -> str:
        return service_caller(tokens, request)

    @router.get(PATH)
    async def show_faults(request: Request) -> Response:
        caller(request)
        return _json(faults)

    @router.put(PATH)
    async def set_faults(request: Request) -> Response:
        who = caller(request)
        faults.set(_plan(await request.body()), by=who)
        return _json(faults)

    @router.delete(PATH)
    async def clear_faults(request: Request) -> Response:
        faults.clear(by=caller(request))
        return _json(faults)

    return router


def _plan(body: bytes) -> FaultPlan:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(
            f"the body must be a JSON plan ({exc})", [FieldViolation("body", "not JSON")]
        ) from None
    return FaultPlan.from_dict(doc)


def _json(faults: Faults) -> Response:
    return Response(orjson.dumps(faults.snapshot()), media_type="application/json")


class FaultsCollector(Collector):
    """The current plan as gauges: the link's error rate and delay, which of hang, reset and
    blackhole is on, and each faulted queue's rates and delay."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def collect(self) -> Iterator[Metric]:
        link = self._faults.link or LinkFaults()
        yield GaugeMetricFamily(
            "ordermesh_fault_error_rate",
            "share of calls into this service answered with an injected error",
            value=link.error_rate,
        )
        yield GaugeMetricFamily(
            "ordermesh_fault_delay_seconds",
            "latency injected into every call to this service",
            value=link.delay_ms / 1000,
        )
        mode = GaugeMetricFamily(
            "ordermesh_fault_mode",
            "1: every call into this service meets this injected fault",
            labels=["mode"],
        )
        for name in TERMINAL:
            mode.add_metric([name], float(getattr(link, name)))
        yield mode
        rates = GaugeMetricFamily(
            "ordermesh_fault_queue_rate",
            "share of a queue's deliveries duplicated, dropped before ack or poisoned (injected)",
            labels=["queue", "fault"],
        )
        delays = GaugeMetricFamily(
            "ordermesh_fault_queue_delay_seconds", "delay injected before a queue's handler", labels=["queue"]
        )
        for queue, plan in sorted(self._faults.queues.items()):
            for name in ("duplicate", "drop", "poison"):
                rates.add_metric([queue, name], getattr(plan, name))
            delays.add_metric([queue], plan.delay_ms / 1000)
        yield rates
        yield delays


__all__ = ["PATH", "FaultsCollector", "install_faults"]

"""A REST request is one access line (method, path, status, duration, caller), in the request's
trace and with the order it touched; probes stay below INFO; the gRPC call line names its order.
The order service on real sockets (``kit.testing.running``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh import logs
from ordermesh.client import OrdersGrpcClient
from ordermesh.config import Settings
from ordermesh.kit.runtime import Runtime
from ordermesh.kit.testing import running
from ordermesh.services.orders.spec import SPEC as ORDERS
from tests.helpers import order_body


class Records(logging.Handler):
    """Keeps what it is given, with the fields ``logs`` puts on every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(logs.ContextFilter("orders"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, logger: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == logger]


@pytest.fixture
def records() -> Iterator[Records]:
    handler, top, access = Records(), logging.getLogger("ordermesh"), logging.getLogger("ordermesh.http")
    levels = top.level, access.level
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        top.removeHandler(handler)
        top.setLevel(levels[0])
        access.setLevel(levels[1])


@dataclass
class Served:
    rt: Runtime
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, user: str | None = "alice", **kw: Any
    ) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {self.rt.tokens.issue(user)}"} if user else {}
        headers.update(kw.pop("headers", {}))
        async with self.http.request(method, self.rt.http_url + path, headers=headers, **kw) as r:
            await r.read()
            return r


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(
        data_dir=tmp_path, broker_url="memory://", orders_database_url="memory://", saga="choreographed"
    )
    async with running(ORDERS, settings) as rt, aiohttp.ClientSession() as http:
        yield Served(rt, http)


async def test_a_rest_request_is_one_access_line_with_status_duration_caller_and_order(
    served: Served, records: Records
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}  # the request continues it
    created = await served.call("POST", "/api/orders", json=order_body(), headers=caller)
    assert created.status == 201
    order_id = created.headers["Location"].rsplit("/", 1)[-1]

    (line,) = [r for r in records.named("ordermesh.http") if r.http_method == "POST"]  # type: ignore[attr-defined]
    assert line.levelno == logging.INFO
    assert line.http_path == "/api/orders" and line.http_route == "/api/orders"  # type: ignore[attr-defined]
    assert line.http_status == 201 and line.http_user == "alice"  # type: ignore[attr-defined]
    assert 0 < line.http_duration_ms < 10_000  # type: ignore[attr-defined]
    message = line.getMessage()
    assert message.startswith("http method=POST path=/api/orders status=201 duration_ms=")
    assert message.endswith(" user=alice")
    # What the route tagged, and the request's trace: the line leads to the rest of the order.
    assert line.order_id == order_id and line.trace_id == trace_id  # type: ignore[attr-defined]
    (creation,) = records.named("ordermesh.orders")
    assert creation.getMessage() == "order created: 2599 EUR for alice"
    assert creation.order_id == order_id and creation.trace_id == trace_id  # type: ignore[attr-defined]


async def test_a_refused_request_is_logged_with_its_status_and_no_caller(
    served: Served, records: Records
) -> None:
    await served.call("GET", "/api/orders/o-1")  # alice's, and no such order: 404
    assert (await served.call("GET", "/api/orders/o-1", user=None)).status == 401
    too_large = await served.call("POST", "/api/orders", data=b"x" * (2 * 1024 * 1024))
    assert too_large.status == 413

    lines = records.named("ordermesh.http")
    assert [(r.http_status, r.http_user) for r in lines] == [  # type: ignore[attr-defined]
        (404, "alice"),
        (401, None),  # the previous request's caller does not leak into this one
        (413, None),  # cut by the body limit before any route: still one line
    ]
    assert [r.order_id for r in lines] == ["o-1", "", ""]  # type: ignore[attr-defined]
    assert lines[1].getMessage().endswith(" user=-")


async def test_probes_are_debug_and_the_logger_level_quiets_every_line(
    served: Served, records: Records
) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert (await served.call("GET", path, user=None)).status == 200
    assert records.named("ordermesh.http") == []

    logging.getLogger("ordermesh.http").setLevel(logging.DEBUG)
    await served.call("GET", "/livez", user=None)
    (probe,) = records.named("ordermesh.http")
    assert probe.levelno == logging.DEBUG and probe.http_path == "/livez"  # type: ignore[attr-defined]

    logging.getLogger("ordermesh.http").setLevel(logging.WARNING)
    await served.call("GET", "/api/orders/o-1")
    await served.call("GET", "/livez", user=None)
    assert len(records.named("ordermesh.http")) == 1


async def test_the_grpc_call_line_names_the_order(served: Served, records: Records) -> None:
    async with OrdersGrpcClient(served.rt.grpc_target, served.rt.tokens.issue("alice")) as client:
        order = await client.create_order(
            "alice@example.com", "EUR", [{"sku": "SKU-1", "quantity": 1, "unit_price": 100}]
        )
        await client.get_order(order["id"])
    calls = [r for r in records.named("ordermesh.rpc") if r.rpc_method.endswith(("CreateOrder", "GetOrder"))]  # type: ignore[attr-defined]
    assert [r.order_id for r in calls] == [order["id"], order["id"]]  # type: ignore[attr-defined]

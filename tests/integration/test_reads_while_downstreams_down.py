"""Reads are unharmed by outages: with payments, inventory and shipping all down (nothing listening
at their addresses, or listening and never answering) and the orchestrated saga retrying every new
order against them, the read side still answers at once from the read model — REST list and
detail, gRPC ``GetUserOrders``, ``GetOrder`` and the first message of ``StreamOrderUpdates`` —
and ``/tracking`` answers degraded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh.client import OrdersGrpcClient
from ordermesh.config import Settings
from ordermesh.kit import Runtime
from ordermesh.kit.testing import running
from ordermesh.services.orders.spec import SPEC as ORDERS
from ordermesh.services.orders.tracking import MAX_SHIPPING_WAIT
from tests.helpers import Silent, eventually, free_port, order_body, promptly, take

PROMPT = 1.0  # seconds a read may take; a saga step may wait STEP_TIMEOUT on a hung downstream
STEP_TIMEOUT = 3.0


@contextlib.asynccontextmanager
async def unreachable(how: str) -> AsyncIterator[tuple[str, str, str]]:
    """Payments, inventory (gRPC ``host:port``) and shipping (a URL), all out of service."""
    if how == "refused":
        yield f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        return
    async with Silent() as payments, Silent() as inventory, Silent() as shipping:
        yield payments.url.removeprefix("http://"), inventory.url.removeprefix("http://"), shipping.url


@pytest.fixture(params=["refused", "hanging"])
async def orders(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with unreachable(request.param) as (payments, inventory, shipping):
        settings = Settings(
            data_dir=tmp_path,
            broker_url="memory://",
            saga="orchestrated",
            payments_target=payments,
            inventory_target=inventory,
            shipping_url=shipping,
            saga_step_timeout=STEP_TIMEOUT,
            saga_deadline=300.0,  # no compensating during the test: the sagas keep retrying
            write_rate=0,
        )
        async with running(ORDERS, settings) as rt:
            yield rt


async def test_reads_answer_from_the_read_model_while_every_saga_retries(orders: Runtime) -> None:
    headers = {"Authorization": f"Bearer {orders.tokens.issue('alice')}"}
    async with aiohttp.ClientSession(orders.http_url, headers=headers) as http:

        async def get(path: str) -> tuple[int, Any]:
            async with http.get(path) as r:
                return r.status, await r.json(content_type=None)

        ids = []
        for _ in range(3):  # writes need no downstream either: the saga runs after the answer
            async with http.post("/api/orders", json=order_body()) as r:
                assert r.status == 201, await r.text()
                ids.append((await r.json())["id"])

        async def retrying(order_id: str) -> Any:
            status, saga = await get(f"/api/orders/{order_id}/saga")
            assert status == 200 and (saga.get("steps") or [{}])[0].get("attempts", 0) >= 2, saga
            return saga

        # Every saga has begun, failed its payment step and is trying it again (the saga runs in
        # the service: polled through its API).
        for order_id in ids:
            saga = await eventually(lambda: retrying(order_id), 4 * STEP_TIMEOUT, interval=0.05)  # noqa: B023
            steps = saga["steps"]
            assert saga["state"] not in ("completed", "compensated", "failed"), saga
            assert steps[0]["name"] == "payment" and steps[0]["outcome"] != "succeeded", saga

        status, page = await promptly(get("/api/users/alice/orders"), PROMPT)
        assert status == 200 and [o["id"] for o in page["orders"]] == ids[::-1]
        assert {o["status"] for o in page["orders"]} == {"pending"}
        for order_id in ids:
            status, order = await promptly(get(f"/api/orders/{order_id}"), PROMPT)
            assert status == 200 and order["id"] == order_id and order["status"] == "pending"
            # Tracking asks shipping, so it may wait for it, but no longer than its bound.
            status, tracking = await promptly(
                get(f"/api/orders/{order_id}/tracking"), MAX_SHIPPING_WAIT + PROMPT
            )
            assert status == 200 and tracking["degraded"] is True and tracking["status"] == "pending"

    async with OrdersGrpcClient(orders.grpc_target, orders.tokens.issue("alice"), timeout=5.0) as grpc:
        listed = await promptly(grpc.get_user_orders("alice"), PROMPT)
        assert [o["id"] for o in listed] == ids[::-1] and {o["status"] for o in listed} == {"pending"}
        one = await promptly(grpc.get_order(ids[1]), PROMPT)
        assert one["id"] == ids[1] and one["status"] == "pending"
        async with contextlib.aclosing(grpc.watch(user_id="alice", reconnect=False)) as updates:
            (first,) = await promptly(take(updates, 1), PROMPT)
        assert first["order_id"] == ids[0] and first["event_type"] == "OrderCreated"
        assert first["order"]["status"] == "pending"

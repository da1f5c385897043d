"""``GET /api/orders/{id}/tracking`` on real sockets: the shipment as the real shipping service
has it; and, with shipping not running or hanging, still 200 within the wait's bound, with what
the order knows and ``"degraded": true``. Whose order it is is checked before shipping is asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh.client.shipping import ShippingClient
from ordermesh.config import Settings
from ordermesh.kit import Runtime
from ordermesh.kit.testing import running
from ordermesh.services.orders.spec import SPEC as ORDERS
from ordermesh.services.orders.tracking import MAX_SHIPPING_WAIT
from ordermesh.services.shipping.spec import SPEC as SHIPPING
from tests.helpers import Silent, free_port, fulfilment, order_body


@dataclass
class Orders:
    rt: Runtime
    http: aiohttp.ClientSession

    async def place(self, user: str = "alice") -> str:
        status, body, _ = await self.get(
            "/api/orders", user, method="POST", json=order_body(f"{user}@example.com")
        )
        assert status == 201, body
        return str(body["id"])

    async def get(
        self, path: str, user: str | None = "alice", *, method: str = "GET", **kw: Any
    ) -> tuple[int, Any, float]:
        """Status, JSON body and the seconds the answer took (by the loop's clock)."""
        headers = {"Authorization": f"Bearer {self.rt.tokens.issue(user)}"} if user else {}
        headers |= kw.pop("headers", {})
        clock = asyncio.get_running_loop().time
        started = clock()
        async with self.http.request(method, self.rt.http_url + path, headers=headers, **kw) as r:
            body = await r.json(content_type=None)
            return r.status, body, clock() - started


@contextlib.asynccontextmanager
async def orders_calling(shipping_url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Orders]:
    """The order service alone, calling shipping at ``shipping_url``. Choreographed on a broker of
    its own, so no saga calls shipping: every call shipping gets is a tracking request's."""
    base = Settings(
        data_dir=tmp_path,
        broker_url="memory://",
        saga="choreographed",
        shipping_url=shipping_url,
        write_rate=0,
    )
    async with running(ORDERS, base.model_copy(update=settings)) as rt, aiohttp.ClientSession() as http:
        yield Orders(rt, http)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def test_the_shipment_is_shippings_from_nothing_to_scheduled_to_cancelled(tmp_path: Path) -> None:
    shipping_settings = Settings(data_dir=tmp_path, broker_url="memory://")
    async with (
        running(SHIPPING, shipping_settings) as shipping,
        orders_calling(shipping.http_url, tmp_path) as orders,
    ):
        order_id = await orders.place()
        _, order, _ = await orders.get(f"/api/orders/{order_id}")
        path = f"/api/orders/{order_id}/tracking"
        status, tracking, _ = await orders.get(path)
        # Shipping answers 404 for it: nothing scheduled yet, which is no failure.
        assert status == 200 and tracking == {
            "order_id": order_id,
            "status": "pending",
            "tracking_id": None,
            "cancel_reason": None,
            "updated_at": order["updated_at"],
            "shipment": None,
            "degraded": False,
            "reason": None,
        }

        async with ShippingClient(shipping.http_url, orders.rt.tokens.issue_service("test")) as client:
            scheduled = await client.schedule(order_id, [("SKU-1", 2)])
            status, tracking, _ = await orders.get(path)
            assert status == 200 and tracking["degraded"] is False and tracking["reason"] is None
            shipment = tracking["shipment"]
            assert shipment["shipment_id"] == scheduled.shipment_id and shipment["status"] == "scheduled"
            assert shipment["tracking_id"] == scheduled.tracking_id and shipment["tracking_id"].startswith(
                "OM"
            )
            assert (
                _time(shipment["scheduled_at"]) == scheduled.scheduled_at and shipment["cancelled_at"] is None
            )

            cancelled = await client.cancel(order_id)
            status, tracking, _ = await orders.get(path)
            shipment = tracking["shipment"]
            assert status == 200 and tracking["degraded"] is False
            assert shipment["status"] == "cancelled" and shipment["tracking_id"] == scheduled.tracking_id
            assert (
                cancelled.cancelled_at is not None
                and _time(shipment["cancelled_at"]) == cancelled.cancelled_at
            )


async def test_a_shipped_orders_tracking_agrees_with_its_shipment(tmp_path: Path) -> None:
    async with fulfilment("orchestrated", tmp_path) as system:
        order_id = await system.place([{"sku": "SKU-1", "quantity": 1, "unit_price": 500}])
        order = (await system.settled(order_id))["order"]
        status, tracking = await system.get(f"/api/orders/{order_id}/tracking")
        assert status == 200 and tracking["degraded"] is False and tracking["status"] == "shipped"
        assert tracking["tracking_id"] == order["tracking_id"] == tracking["shipment"]["tracking_id"]
        assert tracking["shipment"]["status"] == "scheduled"


async def test_shipping_not_running_answers_degraded_at_once(tmp_path: Path) -> None:
    async with orders_calling(f"http://127.0.0.1:{free_port()}", tmp_path) as orders:
        order_id = await orders.place()
        status, tracking, took = await orders.get(f"/api/orders/{order_id}/tracking")
        assert status == 200, tracking
        assert tracking["degraded"] is True and tracking["reason"].startswith("shipping is unavailable")
        assert "127.0.0.1" not in tracking["reason"]  # no internals for the end user
        assert tracking["order_id"] == order_id and tracking["status"] == "pending"
        assert tracking["shipment"] is None
        # A refused connection is known at once: no waiting out the timeout.
        assert took < MAX_SHIPPING_WAIT * 0.75, took


@pytest.mark.parametrize(
    ("settings", "bound"),
    [
        ({}, MAX_SHIPPING_WAIT),  # the default call timeout (5 s) is capped
        ({"policies": {"shipping": {"call_timeout": 0.3}}}, 0.3),  # shipping's own, shorter
    ],
    ids=["capped", "shipping-policy"],
)
async def test_shipping_hanging_answers_degraded_within_the_bound(
    tmp_path: Path, settings: dict[str, Any], bound: float
) -> None:
    async with Silent() as shipping, orders_calling(shipping.url, tmp_path, **settings) as orders:
        order_id = await orders.place()
        path = f"/api/orders/{order_id}/tracking"
        asked = [orders.get(path) for _ in range(3)]
        *answers, detail = await asyncio.gather(*asked, orders.get(f"/api/orders/{order_id}"))
        for status, tracking, took in answers:
            assert status == 200 and tracking["degraded"] is True and tracking["shipment"] is None
            assert tracking["reason"] == "shipping did not answer in time"
            assert bound * 0.95 <= took < bound + 1.0, took
        assert shipping.connections >= 1  # shipping was asked, and kept quiet
        # Meanwhile the order itself answers at once.
        assert detail[0] == 200 and detail[1]["id"] == order_id and detail[2] < 1.0


async def test_an_open_breaker_answers_degraded_without_asking_shipping(tmp_path: Path) -> None:
    # One failure opens shipping's breaker, for longer than the test.
    policy = {"shipping": {"call_timeout": 0.3, "breaker_failures": 1, "breaker_open_seconds": 60}}
    async with Silent() as shipping, orders_calling(shipping.url, tmp_path, policies=policy) as orders:
        order_id = await orders.place()
        path = f"/api/orders/{order_id}/tracking"
        status, tracking, _ = await orders.get(path)
        assert status == 200 and tracking["degraded"] is True
        asked = shipping.connections
        assert asked >= 1
        status, tracking, took = await orders.get(path)
        assert status == 200 and tracking["degraded"] is True and tracking["shipment"] is None
        assert tracking["reason"] == "shipping is unavailable (circuit open)"
        # Refused at once: shipping not called (so no 0.3 s to wait out; the bound only allows for
        # a loaded machine).
        assert shipping.connections == asked and took < 1.0


async def test_unknown_and_other_users_orders_are_not_found_and_shipping_is_not_asked(
    tmp_path: Path,
) -> None:
    async with Silent() as shipping, orders_calling(shipping.url, tmp_path) as orders:
        order_id = await orders.place("alice")
        theirs = await orders.get(f"/api/orders/{order_id}/tracking", "mallory")
        missing = await orders.get("/api/orders/no-such-order/tracking", "mallory")
        assert theirs[0] == missing[0] == 404
        # Word for word alike, but for the id asked about.
        assert theirs[1]["detail"].replace(order_id, "ID") == missing[1]["detail"].replace(
            "no-such-order", "ID"
        )
        assert {k: v for k, v in theirs[1].items() if k not in ("detail", "instance")} == {
            k: v for k, v in missing[1].items() if k not in ("detail", "instance")
        }
        assert theirs[2] < 1.0 and missing[2] < 1.0
        assert shipping.connections == 0


async def test_without_a_valid_token_it_is_unauthenticated(tmp_path: Path) -> None:
    async with Silent() as shipping, orders_calling(shipping.url, tmp_path) as orders:
        order_id = await orders.place()
        path = f"/api/orders/{order_id}/tracking"
        assert (await orders.get(path, None))[0] == 401
        assert (await orders.get(path, None, headers={"Authorization": "Bearer not-a-token"}))[0] == 401
        assert shipping.connections == 0

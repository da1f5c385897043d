"""Issue 10: a crash between storing an order and completing its Idempotency-Key must not let a
retry make a second order. The failpoint ``orders.after_append`` fails the request right there,
leaving what a kill -9 leaves (the order committed, the key in flight); retries then go through
real HTTP and a real gRPC socket, on every backend. The real kill is in
tests/e2e/test_idempotency_crash_process.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from ordermesh import errors, failpoints
from ordermesh.client import OrdersGrpcClient
from ordermesh.clock import FakeClock
from ordermesh.rpc.server import build_server, stop_server
from ordermesh.services.orders.commands import AFTER_APPEND, fingerprint, keyed_order_id
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
from tests.helpers import Api, order_body, running_api

LAPSE = 61  # seconds: past the 60 s in-flight claim


@dataclass
class Rig:
    api: Api
    grpc: OrdersGrpcClient
    clock: FakeClock

    async def post(
        self, key: str, body: dict[str, Any] | None = None, http: aiohttp.ClientSession | None = None
    ) -> tuple[int, Mapping[str, str], Any]:
        headers = {**self.api.auth("alice"), "Idempotency-Key": key}
        url = self.api.url + "/api/orders"
        async with (http or self.api.http).post(url, json=body or order_body(), headers=headers) as r:
            return r.status, r.headers.copy(), await r.json(content_type=None)

    async def created(self) -> list[str]:
        """The order ids of every OrderCreated event in the store (one per order.created message)."""
        events = await self.api.system.store.read_all()
        return [e.data["order_id"] for e in events if e.type == "OrderCreated"]

    async def listed(self) -> list[str]:
        _, listing = await self.api.call("GET", "/api/users/alice/orders")
        return [o["id"] for o in listing["orders"]]


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    clock = FakeClock()
    async with running_api(database_url, clock) as api:
        servicer = OrderGrpcService(api.system)
        server = build_server(
            registrations=[servicer.register], service_names=[SERVICE_NAME], tokens=api.tokens
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with OrdersGrpcClient(f"127.0.0.1:{port}", api.tokens.issue("alice"), retries=0) as client:
            yield Rig(api, client, clock)
        servicer.shutdown()
        await stop_server(server, 0)


async def _crash_rest(rig: Rig, key: str, body: dict[str, Any] | None = None) -> str:
    """POST under ``key`` failing between the append and the key's completion; the order's id."""
    # A connection of its own: the server drops it after an unhandled error.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        with failpoints.armed(AFTER_APPEND, "raise"):
            status, _, _ = await rig.post(key, body, http)
    assert status == 500
    return (await rig.created())[-1]


async def test_a_rest_retry_after_the_crash_replays_the_one_order(rig: Rig) -> None:
    order_id = await _crash_rest(rig, "crash-1")
    assert order_id == keyed_order_id("alice", "crash-1")
    # what the kill leaves: the order committed and the key still claimed
    with pytest.raises(errors.IdempotencyKeyInUse):
        await rig.api.system.idempotency.begin("alice", "crash-1", "-")
    _, detail = await rig.api.call("GET", f"/api/orders/{order_id}")

    # at once (the claim has not lapsed): the committed order is the outcome
    status, headers, body = await rig.post("crash-1")
    assert (status, headers["Idempotent-Replayed"], headers["Location"]) == (
        201,
        "true",
        f"/api/orders/{order_id}",
    )
    assert body == detail and body["version"] == 1

    # after the lapse: the claim is taken over, the append meets the order, the key is completed
    rig.clock.advance(LAPSE)
    status, headers, again = await rig.post("crash-1")
    assert (status, headers["Idempotent-Replayed"], again) == (201, "true", body)
    saved = await rig.api.system.idempotency.begin("alice", "crash-1", _fingerprint())
    assert saved is not None and saved.kind == "ok"

    status, headers, replay = await rig.post("crash-1")
    assert (status, headers["Idempotent-Replayed"], replay) == (201, "true", body)
    assert await rig.created() == [order_id] and await rig.listed() == [order_id]

    # another request under the key is still refused, in flight or not
    status, _, problem = await rig.post("crash-1", order_body(currency="USD"))
    assert status == 422 and "different request" in problem["detail"]


async def test_the_order_decides_even_when_the_key_row_is_lost(rig: Rig) -> None:
    order_id = await _crash_rest(rig, "lost")
    await rig.api.system.idempotency.release("alice", "lost")  # no trace of the key left in its table

    status, _, problem = await rig.post("lost", order_body(currency="USD"))
    assert status == 422 and problem["type"].endswith("idempotency-key-reused")
    status, headers, body = await rig.post("lost")
    assert (status, headers["Idempotent-Replayed"], body["id"]) == (201, "true", order_id)
    assert await rig.created() == [order_id]


async def test_a_grpc_retry_after_the_crash_replays_the_one_order(rig: Rig) -> None:
    body = order_body()
    with failpoints.armed(AFTER_APPEND, "raise"), pytest.raises(errors.InfrastructureError):
        await rig.grpc.create_order(body["user_email"], "EUR", body["items"], idempotency_key="g-crash")
    [order_id] = await rig.created()
    assert order_id == keyed_order_id("alice", "g-crash")
    _, detail = await rig.api.call("GET", f"/api/orders/{order_id}")

    made = await rig.grpc.create_order(body["user_email"], "EUR", body["items"], idempotency_key="g-crash")
    assert made == detail
    rig.clock.advance(LAPSE)
    again = await rig.grpc.create_order(body["user_email"], "EUR", body["items"], idempotency_key="g-crash")
    assert again == made
    status, headers, over_rest = await rig.post("g-crash", body)
    assert (status, headers["Idempotent-Replayed"], over_rest) == (201, "true", made)
    with pytest.raises(errors.IdempotencyKeyReused):
        await rig.grpc.create_order(body["user_email"], "USD", body["items"], idempotency_key="g-crash")
    assert await rig.created() == [order_id] and await rig.listed() == [order_id]


async def test_concurrent_retries_after_the_crash_all_get_the_one_order(rig: Rig) -> None:
    order_id = await _crash_rest(rig, "burst")
    for _ in range(2):  # with the claim in flight, then lapsed (one retry takes it over)
        results = await asyncio.gather(*(rig.post("burst") for _ in range(8)))
        assert {(status, body["id"]) for status, _, body in results} == {(201, order_id)}
        rig.clock.advance(LAPSE)
    assert await rig.created() == [order_id] and await rig.listed() == [order_id]


async def test_a_key_reused_after_it_expired_makes_a_new_order_and_survives_a_crash(rig: Rig) -> None:
    status, _, first = await rig.post("daily")
    assert status == 201 and first["id"] == keyed_order_id("alice", "daily")
    rig.clock.advance(25 * 3600)  # the key is kept 24 h: then it may name a new request
    status, headers, second = await rig.post("daily", order_body(currency="USD"))
    assert status == 201 and "Idempotent-Replayed" not in headers
    assert second["id"] == keyed_order_id("alice", "daily", 1) and second["currency"] == "USD"
    status, headers, replay = await rig.post("daily", order_body(currency="USD"))
    assert (status, headers["Idempotent-Replayed"], replay) == (201, "true", second)

    rig.clock.advance(25 * 3600)
    third = await _crash_rest(rig, "daily")
    assert third == keyed_order_id("alice", "daily", 2)
    status, headers, replay = await rig.post("daily")
    assert (status, headers["Idempotent-Replayed"], replay["id"]) == (201, "true", third)
    assert await rig.created() == [first["id"], second["id"], third]


async def test_orders_without_a_key_are_untouched(rig: Rig) -> None:
    with failpoints.armed(AFTER_APPEND, "raise"):
        status, made = await rig.api.call("POST", "/api/orders", json=order_body())
        assert status == 201, "the failpoint sits on the keyed path only"
    status, other = await rig.api.call("POST", "/api/orders", json=order_body())
    assert status == 201 and other["id"] != made["id"]
    assert len(await rig.created()) == 2


def _fingerprint() -> str:
    body = order_body()
    lines = [OrderLine(i["sku"], i["quantity"], i["unit_price"]) for i in body["items"]]
    return fingerprint(body["user_email"], body["currency"], lines)

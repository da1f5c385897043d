"""A user's orders page by page, over REST and gRPC on real sockets, on SQLite and PostgreSQL; and
the cost of a new order that no longer grows with the user's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from ordermesh.client import AsyncOrdermeshClient, OrdersGrpcClient
from ordermesh.clock import FakeClock
from ordermesh.config import Settings
from ordermesh.errors import PermissionDenied, ValidationError
from ordermesh.kit.runtime import Runtime
from ordermesh.kit.testing import running
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1 import orders_pb2_grpc as pb_grpc
from ordermesh.readmodel.port import DocStore
from ordermesh.readmodel.projection import Projector
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.listing import encode_cursor
from ordermesh.services.orders.projections import order_projections
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.spec import SPEC as ORDERS

ITEMS = [{"sku": "SKU-1", "quantity": 1, "unit_price": 100}]


@dataclass
class Served:
    rt: Runtime
    http: aiohttp.ClientSession

    @property
    def system(self) -> OrderSystem:
        system: OrderSystem = self.rt.app.state.system
        return system

    def rest(self, user: str = "alice") -> AsyncOrdermeshClient:
        return AsyncOrdermeshClient(self.rt.http_url, token=self.rt.tokens.issue(user))

    def grpc(self, user: str = "alice") -> OrdersGrpcClient:
        return OrdersGrpcClient(self.rt.grpc_target, self.rt.tokens.issue(user))

    async def get(self, path: str, user: str = "alice", **params: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.rt.tokens.issue(user)}"}
        async with self.http.get(self.rt.http_url + path, params=params, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def create(self, n: int, user: str = "alice") -> list[str]:
        """``n`` orders, one after the other: their ids, oldest first."""
        async with self.rest(user) as client:
            return [(await client.create_order(f"{user}@example.com", "EUR", ITEMS))["id"] for _ in range(n)]


@pytest.fixture
async def served(sql_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    # Many orders in a moment from one user: no write limit here (test_limits_grpc.py tests it).
    settings = Settings(data_dir=tmp_path, broker_url="memory://", orders_database_url=sql_url, write_rate=0)
    async with running(ORDERS, settings) as rt, aiohttp.ClientSession() as http:
        yield Served(rt, http)


async def test_rest_pages_walk_every_order_once_newest_first(served: Served) -> None:
    ids = await served.create(7)
    status, first = await served.get("/api/users/alice/orders", limit="3")
    assert status == 200 and [o["id"] for o in first["orders"]] == ids[::-1][:3]
    assert isinstance(first["next"], str) and len(first["next"]) == 11
    status, second = await served.get("/api/users/alice/orders", limit="3", after=first["next"])
    assert status == 200 and [o["id"] for o in second["orders"]] == ids[::-1][3:6]
    status, last = await served.get("/api/users/alice/orders", limit="3", after=second["next"])
    assert status == 200 and [o["id"] for o in last["orders"]] == ids[:1] and last["next"] is None
    # A page that ends exactly at the last order says so: no empty page to fetch after it.
    status, exact = await served.get("/api/users/alice/orders", limit="7")
    assert len(exact["orders"]) == 7 and exact["next"] is None
    status, full = await served.get("/api/users/alice/orders")
    assert full["orders"] == exact["orders"], "pages carry the whole order resources"
    async with served.rest() as client:
        assert [o["id"] async for o in client.iter_user_orders("alice", page_size=2)] == ids[::-1]
        assert [o["id"] for o in await client.get_user_orders("alice", limit=2)] == ids[::-1][:2]


async def test_grpc_pages_walk_every_order_once_and_match_rest(served: Served) -> None:
    ids = await served.create(5)
    async with served.grpc() as client, served.rest() as rest:
        page = await client.get_user_orders_page("alice", limit=2)
        assert [o["id"] for o in page["orders"]] == ids[::-1][:2]
        rest_page = await rest.get_user_orders_page("alice", limit=2)
        assert page == rest_page, "same orders, same cursor over both transports"
        walked = [o async for o in client.iter_user_orders("alice", page_size=2)]
        assert walked == [o async for o in rest.iter_user_orders("alice", page_size=3)]
        assert [o["id"] for o in walked] == ids[::-1]
        tail = await client.get_user_orders_page("alice", limit=2, after=page["next"])
        assert [o["id"] for o in tail["orders"]] == ids[::-1][2:4] and tail["next"]
        last = await client.get_user_orders_page("alice", limit=2, after=tail["next"])
        assert [o["id"] for o in last["orders"]] == ids[:1] and last["next"] is None


@pytest.mark.parametrize("transport", ["rest", "grpc"])
async def test_orders_created_during_a_walk_neither_repeat_nor_skip_older_ones(
    served: Served, transport: str
) -> None:
    before = await served.create(13)  # five pages of 3: four inserts
    created_meanwhile: list[str] = []
    seen: list[str] = []
    async with served.rest() if transport == "rest" else served.grpc() as client, served.rest() as writer:

        async def insert() -> None:
            order = await writer.create_order("alice@example.com", "EUR", ITEMS)
            created_meanwhile.append(order["id"])

        page = await client.get_user_orders_page("alice", limit=3)
        while True:
            seen += [o["id"] for o in page["orders"]]
            if page["next"] is None:
                break
            # The next page is read while a new order is being created.
            page, _ = await asyncio.gather(
                client.get_user_orders_page("alice", limit=3, after=page["next"]), insert()
            )
    assert len(seen) == len(set(seen)), "an order came twice"
    older = [i for i in seen if i not in created_meanwhile]
    assert older == before[::-1], "the orders there when the walk began, each once, newest first"
    assert len(created_meanwhile) == 4
    async with served.rest() as client:
        everything = [o["id"] async for o in client.iter_user_orders("alice", page_size=4)]
    assert everything == (before + created_meanwhile)[::-1]


async def test_limits_default_maximum_and_refusals(served: Served) -> None:
    await asyncio.gather(*(served.create(13) for _ in range(4)))  # 52 orders
    status, page = await served.get("/api/users/alice/orders")
    assert status == 200 and len(page["orders"]) == 50 and page["next"]
    status, page = await served.get("/api/users/alice/orders", limit="200")
    assert status == 200 and len(page["orders"]) == 52 and page["next"] is None
    for bad in ("0", "201", "-1", "abc", "2.5"):
        status, problem = await served.get("/api/users/alice/orders", limit=bad)
        assert status == 422, (bad, problem)
        assert [v["field"] for v in problem["violations"]] == ["limit"], problem
    async with served.grpc() as client:
        assert len(await client.get_user_orders("alice")) == 50, "page_size 0: the default"
        assert len(await client.get_user_orders("alice", limit=500)) == 52, "above the maximum: coerced"
        with pytest.raises(ValidationError) as refused:
            await client.get_user_orders("alice", limit=-1)
        assert [v.field for v in refused.value.violations] == ["page_size"]


@pytest.mark.parametrize(
    "cursor", ["x", "not a cursor", "AAAAAAAAAA=", "AAAAAAAAAAAA", "AAAAAAAAAA+", "AAAAAAAAAA/", "é" * 11]
)
async def test_a_malformed_cursor_is_refused_on_its_field(served: Served, cursor: str) -> None:
    status, problem = await served.get("/api/users/alice/orders", after=cursor)
    assert status == 422, problem
    assert [v["field"] for v in problem["violations"]] == ["after"], problem
    async with grpc.aio.insecure_channel(served.rt.grpc_target) as channel:
        stub = pb_grpc.OrderServiceStub(channel)
        metadata = (("authorization", f"Bearer {served.rt.tokens.issue('alice')}"),)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.GetUserOrders(
                pb.GetUserOrdersRequest(user_id="alice", page_token=cursor), metadata=metadata, timeout=5
            )
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with served.grpc() as client:
        with pytest.raises(ValidationError) as refused:
            await client.get_user_orders("alice", after=cursor)
        assert [v.field for v in refused.value.violations] == ["page_token"]


async def test_every_cursor_of_the_documented_shape_is_accepted(served: Served) -> None:
    """The OpenAPI pattern is the whole rule (what Schemathesis checks): no well-formed cursor
    is refused, whatever position it names."""
    ids = await served.create(2)
    for cursor in ("AAAAAAAAAAA", "___________", "__________-", encode_cursor(2**63)):
        status, page = await served.get("/api/users/alice/orders", after=cursor)
        assert status == 200, page
    status, page = await served.get("/api/users/alice/orders", after="AAAAAAAAAAA")
    assert page == {"orders": [], "next": None}, "nothing is older than position 0"
    status, page = await served.get("/api/users/alice/orders", after="___________")
    assert [o["id"] for o in page["orders"]] == ids[::-1]


async def test_other_users_lists_stay_closed_with_or_without_a_cursor(served: Served) -> None:
    await served.create(3)
    status, page = await served.get("/api/users/alice/orders", limit="1")
    for params in ({}, {"limit": "1"}, {"after": page["next"]}):
        status, problem = await served.get("/api/users/alice/orders", user="mallory", **params)
        assert status == 403 and "alice@example.com" not in str(problem)
    async with served.grpc("mallory") as client:
        for after in (None, page["next"]):
            with pytest.raises(PermissionDenied):
                await client.get_user_orders("alice", limit=1, after=after)
    status, own = await served.get("/api/users/mallory/orders", user="mallory", after=page["next"])
    assert status == 200 and own == {"orders": [], "next": None}, "a cursor opens no one else's rows"


async def test_user_ids_that_prefix_each_other_have_separate_lists(served: Served) -> None:
    a = await served.create(2, user="a")
    ab = await served.create(2, user="a.b")
    async with served.grpc("a") as client:
        assert [o["id"] async for o in client.iter_user_orders("a")] == a[::-1]
    async with served.grpc("a.b") as client:
        assert [o["id"] async for o in client.iter_user_orders("a.b")] == ab[::-1]


async def test_rebuild_gives_the_same_pages_and_cursors_survive_it(served: Served) -> None:
    ids = await served.create(5)
    system = served.system
    await system.service.change(ids[1], lambda o, now: o.cancel("changed my mind", now))
    status, first = await served.get("/api/users/alice/orders", limit="2")
    status, before = await served.get("/api/users/alice/orders", limit="50")
    assert before["orders"][3]["status"] == "cancelled"
    await system.projector("user_orders").rebuild()
    status, after_rebuild = await served.get("/api/users/alice/orders", limit="50")
    assert after_rebuild == before
    status, rest = await served.get("/api/users/alice/orders", limit="50", after=first["next"])
    assert [o["id"] for o in rest["orders"]] == ids[::-1][2:], "a cursor from before the rebuild"
    # The live projector carries on in the new generation.
    [newest] = await served.create(1)
    status, page = await served.get("/api/users/alice/orders", limit="1")
    assert status == 200 and [o["id"] for o in page["orders"]] == [newest]


# -- the cost of a new order -----------------------------------------------------------------------


class CountingDocs:
    """A document store that counts the bytes committed per model."""

    def __init__(self, inner: DocStore) -> None:
        self.inner = inner
        self.written: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit(
        self, model: str, generation: int, expected: int, new: int, docs: Mapping[str, bytes | None]
    ) -> bool:
        self.written[model] = self.written.get(model, 0) + sum(
            len(k) + len(v or b"") for k, v in docs.items()
        )
        return await self.inner.commit(model, generation, expected, new, docs)


async def test_bytes_written_per_new_order_do_not_grow_with_the_users_history(database_url: str) -> None:
    """Deterministic, not timed: the read models take the same bytes for a user's 11th order as
    for their 1,001st (one list document per user took ~800 bytes more per order already there)."""
    system = await build_order_system(database_url, FakeClock())  # timestamps of one length
    try:
        counting = CountingDocs(system.docs)
        projectors = [Projector(system.store, counting, p) for p in order_projections()]  # type: ignore[arg-type]
        repo = system.service.repository
        lines = [OrderLine("SKU-1", 1, 100)]
        for user, orders in (("user-a", 10), ("user-b", 1000)):
            for i in range(orders):
                when = system.service.clock.now()
                await repo.save(
                    OrderAggregate.create(f"{user}-{i:06d}", user, "x@example.com", "EUR", lines, when)
                )
        for projector in projectors:
            await projector.catch_up()

        async def cost(user: str, order_id: str) -> tuple[dict[str, int], dict[str, int]]:
            when = system.service.clock.now()
            await repo.save(OrderAggregate.create(order_id, user, "x@example.com", "EUR", lines, when))
            counting.written.clear()
            for projector in projectors:
                await projector.catch_up()
            created = dict(counting.written)
            order = await repo.load(order_id)
            order.record_payment("pay-1", order.total, "EUR", system.service.clock.now())
            await repo.save(order)
            counting.written.clear()
            for projector in projectors:
                await projector.catch_up()
            return created, dict(counting.written)

        small = await cost("user-a", "user-a-new")
        big = await cost("user-b", "user-b-new")
        assert small == big, f"10 orders: {small}; 1,000 orders: {big}"
        assert 0 < small[0]["user_orders"] < 2_000
    finally:
        await system.close()

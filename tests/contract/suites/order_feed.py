"""The order update feed behind StreamOrderUpdates, on every backend, without gRPC.

To check an adapter, subclass ``OrderFeedContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``build_order_system`` opens it). ``OnMemory``,
``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names
overrides the ``system`` fixture instead, to hand each test an ``OrderSystem``.

    class TestSqliteOrderFeed(OnSqlite, OrderFeedContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ordermesh.errors import InfrastructureError, NotFound, PermissionDenied, ValidationError
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.updates import OrderFeed
from tests.helpers import take, within

LINES = [OrderLine("A", 1, 100)]


class OrderFeedContract:
    """Every test an OrderFeed adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def system(self, database_url: str) -> AsyncIterator[OrderSystem]:
        s = await build_order_system(database_url)
        yield s
        await s.close()

    async def test_a_users_feed_replays_resumes_and_goes_live(self, system: OrderSystem) -> None:
        service, stopping = system.service, asyncio.Event()
        feed = OrderFeed(service, stopping)
        a1 = await service.create_order("alice", "a@example.com", "EUR", LINES)
        await service.create_order("bob", "b@example.com", "EUR", LINES)
        await service.change(a1["id"], lambda o, now: o.record_payment("p", 100, "EUR", now))

        updates = await within(take(feed.updates("alice", user_id="alice"), 2))
        assert [(e.type, o["status"]) for e, o in updates] == [
            ("OrderCreated", "pending"),
            ("PaymentProcessed", "paid"),
        ]
        assert all(o["user_id"] == "alice" for _, o in updates)

        # Resuming after the first update starts mid-stream: the order's state is rebuilt, not guessed.
        resumed = feed.updates("alice", user_id="alice", after_position=updates[0][0].position)
        later = asyncio.ensure_future(take(resumed, 2))
        a2 = await service.create_order("alice", "a@example.com", "USD", LINES)
        (paid, _), (created, order) = await within(later)
        assert (paid.type, created.type, order["id"], order["currency"]) == (
            "PaymentProcessed",
            "OrderCreated",
            a2["id"],
            "USD",
        )

        stopping.set()
        with pytest.raises(InfrastructureError, match="resume after position"):
            await take(feed.updates("alice", user_id="alice", after_position=created.position), 1)

    async def test_one_orders_feed_and_who_may_follow_what(self, system: OrderSystem) -> None:
        service = system.service
        feed = OrderFeed(service, asyncio.Event())
        order = await service.create_order("alice", "a@example.com", "EUR", LINES)
        await service.create_order("alice", "a@example.com", "EUR", LINES)
        await service.change(order["id"], lambda o, now: o.cancel("no", now))
        updates = await within(take(feed.updates("alice", order_id=order["id"]), 2))
        assert [o["status"] for _, o in updates] == ["pending", "cancelled"]
        with pytest.raises(PermissionDenied):
            await take(feed.updates("bob", user_id="alice"), 1)
        with pytest.raises(NotFound):
            await take(feed.updates("bob", order_id=order["id"]), 1)
        with pytest.raises(ValidationError):
            await take(feed.updates("alice"), 1)
        with pytest.raises(ValidationError):
            await take(feed.updates("alice", user_id="alice", after_position=-1), 1)

"""Issue 10, live streams on a SQL database: idle feeds share one wake-up (no per-stream polling),
and a write by another process reaches every one of them.

To check an adapter, subclass ``FeedWakeUpContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``build_order_system`` opens it, and another order system
writes to it). ``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An
adapter no URL names overrides the ``sql_system`` fixture instead, to hand each test an
``OrderSystem``.

    class TestSqliteFeedWakeUp(OnSqlite, FeedWakeUpContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ordermesh.eventstore.sql import SqlEventStore
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.updates import OrderFeed
from tests.helpers import eventually, within

LINES = [OrderLine("A", 1, 100)]


async def _first(updates: AsyncIterator[Any]) -> Any:
    return await updates.__anext__()


class FeedWakeUpContract:
    """Every test a SQL event store under the order feed must pass; a subclass gives
    ``database_url``."""

    @pytest.fixture
    async def sql_system(self, database_url: str) -> AsyncIterator[OrderSystem]:
        s = await build_order_system(database_url)
        yield s
        await s.close()

    async def test_idle_feeds_share_one_wake_up_and_all_see_another_process_write(
        self, sql_system: OrderSystem, database_url: str
    ) -> None:
        feed = OrderFeed(sql_system.service, asyncio.Event(), max_per_user=1)
        store = sql_system.store
        assert isinstance(store, SqlEventStore)
        reads = 0
        read_all = store.read_all

        async def counted(after: int = 0, limit: int = 1000) -> list[Any]:
            nonlocal reads
            reads += 1
            return await read_all(after, limit)

        store.read_all = counted  # type: ignore[method-assign]
        users = [f"user-{i}" for i in range(50)]
        streams = [feed.updates(u, user_id=u) for u in users]
        firsts = [asyncio.ensure_future(_first(s)) for s in streams]
        await eventually(lambda: reads >= len(users), what="every feed read the head")
        assert reads == len(users)  # each read the head once, and now waits
        await asyncio.sleep(1.0)  # four poll intervals of the store (0.25 s)
        assert reads == len(users), "idle feeds must not poll the store"
        assert store._signal.waiters == len(users) and store._signal.polling

        # Another process (its own store on the same database) appends: one poll wakes every feed.
        other = await build_order_system(database_url)
        try:
            for user in users:
                await other.service.create_order(user, "u@example.com", "EUR", LINES)
        finally:
            await other.close()
        got = await within(asyncio.gather(*firsts), what="every feed woken")
        assert [order["user_id"] for _, order in got] == users
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
        assert store._signal.waiters == 0

"""Aggregates over every event store: snapshots, upcasting, temporal loads.

To check an adapter, subclass ``RepositoryContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``open_event_store`` opens it). ``OnMemory``, ``OnSqlite``
and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names overrides the
``store`` fixture instead, to hand each test an ``EventStore``.

    class TestSqliteRepository(OnSqlite, RepositoryContract):
        pass
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from ordermesh.clock import FakeClock
from ordermesh.errors import NotFound
from ordermesh.eventstore import NO_STREAM, EventStore, NewEvent, StoredEvent, open_event_store
from ordermesh.eventstore.aggregate import Repository
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine, codec


class CountingStore:
    """Wraps a store and counts the events handed out by read_stream."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.events_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_stream(self, *args: Any, **kwargs: Any) -> list[StoredEvent]:
        events = await self.inner.read_stream(*args, **kwargs)
        self.events_read += len(events)
        return events


def repo(store: Any, clock: FakeClock, snapshot_every: int = 100) -> Repository[OrderAggregate]:
    return Repository(store, OrderAggregate, codec, "order-", snapshot_every, clock)


async def make_order(r: Repository[OrderAggregate], clock: FakeClock, order_id: str = "o1") -> OrderAggregate:
    order = OrderAggregate.create(
        order_id, "u1", "u1@example.com", "EUR", [OrderLine("A", 1, 100)], clock.now()
    )
    await r.save(order)
    return order


class RepositoryContract:
    """Every test a Repository adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[EventStore]:
        s = await open_event_store(database_url)
        yield s
        await s.close()

    async def test_loading_reads_at_most_one_snapshot_interval_of_events(self, store: EventStore) -> None:
        clock = FakeClock()
        counting = CountingStore(store)
        r = repo(counting, clock, snapshot_every=50)
        await make_order(r, clock)
        # Grow a long stream the cheap way: many refund-free payment failures on a pending order.
        for batch in range(10):
            order = await r.load("o1")
            for _ in range(100):
                order.record_payment_failure(f"declined {batch}", clock.now())
            await r.save(order)
        counting.events_read = 0
        order = await r.load("o1")
        assert order.version == 1001
        assert counting.events_read <= 50, f"read {counting.events_read} events despite snapshots"
        assert order.failure_reason == "declined 9"

    async def test_temporal_loads_by_version_and_by_time(self, store: EventStore) -> None:
        clock = FakeClock()
        r = repo(store, clock, snapshot_every=2)  # snapshots must not leak into temporal loads
        await make_order(r, clock)
        created: datetime = clock.now()
        clock.advance(60)
        order = await r.load("o1")
        order.record_payment("p1", 100, "EUR", clock.now())
        await r.save(order)
        clock.advance(60)
        order = await r.load("o1")
        order.cancel("late", clock.now())
        await r.save(order)

        assert (await r.load("o1")).status == "cancelled"
        assert (await r.load("o1", version=1)).status == "pending"
        assert (await r.load("o1", version=2)).status == "paid"
        assert (await r.load("o1", as_of=created)).status == "pending"
        assert (await r.load("o1", as_of=created.replace(second=30))).status == "pending"
        assert (await r.load("o1", as_of=clock.now())).status == "cancelled"
        with pytest.raises(NotFound):
            await r.load("o1", as_of=datetime(2000, 1, 1, tzinfo=created.tzinfo))
        with pytest.raises(NotFound):
            await r.load("nope")

    async def test_an_old_event_loads_in_the_new_shape(self, store: EventStore) -> None:
        # OrderCreated v1 had `email` and `price` and no total; the stored row is never rewritten.
        v1 = {
            "order_id": "old",
            "user_id": "u1",
            "email": "old@example.com",
            "items": [{"sku": "A", "quantity": 3, "price": 200}],
            "currency": "EUR",
        }
        await store.append("order-old", [NewEvent("OrderCreated", v1, schema_version=1)], NO_STREAM)
        order = await repo(store, FakeClock()).load("old")
        assert order.user_email == "old@example.com"
        assert order.items == (OrderLine("A", 3, 200),)
        assert order.total == 600
        (stored,) = await store.read_stream("order-old")
        assert stored.schema_version == 1 and "email" in stored.data

    async def test_a_snapshot_of_another_shape_is_ignored(self, store: EventStore) -> None:
        clock = FakeClock()
        r = repo(store, clock, snapshot_every=1)
        await make_order(r, clock)
        snap = await store.load_snapshot("order-o1")
        assert snap is not None and snap.type == OrderAggregate.SNAPSHOT_TYPE
        from ordermesh.eventstore import Snapshot

        await store.save_snapshot(Snapshot("order-o1", 99, "Order.v0", {"garbage": True}, clock.now()))
        assert (await r.load("o1")).user_email == "u1@example.com"

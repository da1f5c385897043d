"""Issue 10, live streams: idle feeds share one wake-up (no per-stream polling: the contract in
``tests/contract/suites/limits_feed.py``, on SQLite and PostgreSQL), a replay from 0 keeps bounded
memory and lets it go, and a user's open feeds are capped."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from ordermesh.errors import RateLimited
from ordermesh.eventstore.model import NewEvent
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.updates import OrderFeed
from tests.contract.suites.limits_feed import LINES, FeedWakeUpContract
from tests.helpers import OnPostgres, OnSqlite, take


class TestSqliteFeedWakeUp(OnSqlite, FeedWakeUpContract):
    pass


class TestPostgresFeedWakeUp(OnPostgres, FeedWakeUpContract):
    pass


@pytest.fixture
async def memory_system() -> AsyncIterator[OrderSystem]:
    s = await build_order_system("memory://")
    yield s
    await s.close()


async def _fill(system: OrderSystem, others: int, own: int) -> int:
    """``others`` orders of other users and ``own`` of ``reader``'s, appended straight to the store
    (an order's first event, copied from one made the normal way); how many are ``reader``'s."""
    store = system.store
    made = await system.service.create_order("reader", "r@example.com", "EUR", LINES)
    created = (await store.read_stream("order-" + made["id"]))[0]
    readers = 1
    for i in range(1, others + own):
        user = "reader" if i % (others // own) == 0 else f"user-{i}"
        readers += user == "reader"
        data = {**created.data, "order_id": f"o-{i}", "user_id": user}
        await store.append(f"order-o-{i}", [NewEvent(created.type, data, created.schema_version)], 0)
    return readers


async def test_a_replay_from_zero_holds_bounded_memory_and_frees_it(memory_system: OrderSystem) -> None:
    own = await _fill(memory_system, 30_000, 600)
    await memory_system.service.create_order("reader", "r@example.com", "EUR", LINES)  # the head
    own += 1
    head = await memory_system.store.head_position()
    feed = OrderFeed(memory_system.service, asyncio.Event())
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        seen = 0
        async with aclosing(feed.updates("reader", user_id="reader")) as updates:
            async for event, order in updates:
                assert order["user_id"] == "reader"
                seen += 1
                if event.position == head:
                    break
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base  # at the head, the stream still open
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert seen == own
    # Remembering every other user's order id (30,000) and every own order took > 3 MB here.
    print(f"held {held / 2**20:.2f} MB, after {after / 2**20:.2f} MB")
    assert held < 1.5 * 2**20, f"{held / 2**20:.1f} MB held by one feed at the head"
    assert after < 0.3 * 2**20, f"{after / 2**20:.2f} MB left after the stream ended"


async def test_a_feed_forgets_what_it_cannot_keep_and_still_answers_right(memory_system: OrderSystem) -> None:
    service = memory_system.service
    feed = OrderFeed(service, asyncio.Event())
    mine = [await service.create_order("alice", "a@example.com", "EUR", LINES) for _ in range(300)]
    await _fill(memory_system, 5000, 1)  # pushes alice's orders out of what a feed remembers
    for order in mine[:3]:
        await service.change(order["id"], lambda o, now: o.record_payment("p", 100, "EUR", now))
    updates = await asyncio.wait_for(take(feed.updates("alice", user_id="alice"), 303), 30)
    paid = [(e.type, o["id"], o["status"]) for e, o in updates[-3:]]
    assert paid == [("PaymentProcessed", o["id"], "paid") for o in mine[:3]]


async def test_a_user_may_hold_so_many_feeds_open(memory_system: OrderSystem) -> None:
    feed = OrderFeed(memory_system.service, asyncio.Event(), max_per_user=2)
    await memory_system.service.create_order("alice", "a@example.com", "EUR", LINES)
    one, two = feed.updates("alice", user_id="alice"), feed.updates("alice", user_id="alice")
    await anext(one)
    await anext(two)
    third = feed.updates("alice", user_id="alice")
    with pytest.raises(RateLimited, match="at most 2"):
        await anext(third)
    assert feed.open_streams("alice") == 2
    await memory_system.service.create_order("bob", "b@example.com", "EUR", LINES)
    bobs = feed.updates("bob", user_id="bob")
    await anext(bobs)  # the cap is per user
    await bobs.aclose()  # type: ignore[attr-defined]
    await one.aclose()  # type: ignore[attr-defined]
    assert feed.open_streams("alice") == 1
    again = feed.updates("alice", user_id="alice")
    await anext(again)
    for stream in (two, again):
        await stream.aclose()  # type: ignore[attr-defined]
    assert feed.open_streams("alice") == 0

"""The event store contract: every adapter must pass every test here.

To check an adapter, subclass ``EventStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``open_event_store`` opens it). ``OnMemory``, ``OnSqlite``
and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names overrides the
``store`` fixture instead, to hand each test an ``EventStore``.

    class TestSqliteEventStore(OnSqlite, EventStoreContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ordermesh.clock import SystemClock
from ordermesh.errors import ConcurrencyConflict
from ordermesh.eventstore import NO_STREAM, EventStore, NewEvent, Snapshot, open_event_store
from tests.helpers import within


def ev(n: int, kind: str = "Thing") -> NewEvent:
    return NewEvent(type=kind, data={"n": n, "nested": {"list": [n, "x"]}}, metadata={"m": n})


class EventStoreContract:
    """Every test an EventStore adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[EventStore]:
        s = await open_event_store(database_url)
        yield s
        await s.close()

    async def test_append_then_read_stream_round_trips(self, store: EventStore) -> None:
        result = await store.append("s-1", [ev(1), ev(2)], NO_STREAM)
        assert (result.version, result.position) == (2, 2)
        events = await store.read_stream("s-1")
        assert [(e.version, e.position, e.data["n"]) for e in events] == [(1, 1, 1), (2, 2, 2)]
        assert events[0].data == {"n": 1, "nested": {"list": [1, "x"]}}
        assert events[0].metadata == {"m": 1}
        assert events[0].type == "Thing" and events[0].schema_version == 1
        assert events[0].occurred_at.tzinfo is not None

    async def test_stale_expected_version_conflicts_and_writes_nothing(self, store: EventStore) -> None:
        await store.append("s-1", [ev(1)], NO_STREAM)
        with pytest.raises(ConcurrencyConflict):
            await store.append("s-1", [ev(2)], NO_STREAM)
        with pytest.raises(ConcurrencyConflict):
            await store.append("s-1", [ev(2)], 5)  # ahead of the stream is as wrong as behind it
        assert await store.stream_version("s-1") == 1
        assert await store.head_position() == 1
        assert [e.data["n"] for e in await store.read_all()] == [1]

    async def test_concurrent_appends_to_one_stream_let_exactly_one_win(self, store: EventStore) -> None:
        await store.append("s", [ev(0)], NO_STREAM)
        results = await asyncio.gather(
            *(store.append("s", [ev(i)], 1) for i in range(8)), return_exceptions=True
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        assert len(wins) == 1
        assert all(isinstance(r, ConcurrencyConflict) for r in results if r not in wins)
        assert await store.stream_version("s") == 2

    async def test_read_stream_ranges(self, store: EventStore) -> None:
        await store.append("s", [ev(i) for i in range(1, 6)], NO_STREAM)
        assert [e.version for e in await store.read_stream("s", from_version=3)] == [3, 4, 5]
        assert [e.version for e in await store.read_stream("s", to_version=2)] == [1, 2]
        assert [e.version for e in await store.read_stream("s", 2, 4)] == [2, 3, 4]
        assert await store.read_stream("missing") == []

    async def test_read_stream_until_a_timestamp(self, store: EventStore) -> None:
        await store.append("s", [ev(1)], NO_STREAM)
        first = (await store.read_stream("s"))[0].occurred_at
        await asyncio.sleep(0.002)  # the real clock must move between the two appends
        await store.append("s", [ev(2)], 1)
        assert [e.version for e in await store.read_stream("s", until=first)] == [1]
        assert await store.read_stream("s", until=first - timedelta(seconds=1)) == []
        assert len(await store.read_stream("s", until=SystemClock().now())) == 2

    async def test_read_all_pages_in_position_order_across_streams(self, store: EventStore) -> None:
        await store.append("a", [ev(1)], NO_STREAM)
        await store.append("b", [ev(2), ev(3)], NO_STREAM)
        await store.append("a", [ev(4)], 1)
        page1 = await store.read_all(0, limit=2)
        page2 = await store.read_all(page1[-1].position, limit=10)
        assert [(e.stream_id, e.data["n"]) for e in page1 + page2] == [("a", 1), ("b", 2), ("b", 3), ("a", 4)]
        assert [e.position for e in page1 + page2] == [1, 2, 3, 4]
        assert await store.head_position() == 4

    async def test_empty_append_checks_the_version_only(self, store: EventStore) -> None:
        await store.append("s", [ev(1)], NO_STREAM)
        assert (await store.append("s", [], 1)).version == 1
        with pytest.raises(ConcurrencyConflict):
            await store.append("s", [], 0)

    async def test_stored_events_cannot_be_changed_through_returned_objects(self, store: EventStore) -> None:
        await store.append("s", [ev(1)], NO_STREAM)
        (first,) = await store.read_stream("s")
        first.data["n"] = 999
        assert (await store.read_stream("s"))[0].data["n"] == 1

    async def test_concurrent_writers_and_a_tailing_reader_see_every_event_once_in_order(
        self,
        store: EventStore,
    ) -> None:
        writers, appends_each = 6, 25
        seen: list[int] = []
        done = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(appends_each):
                await store.append(f"w{w}", [ev(i), ev(i), ev(i)], i * 3)

        async def reader() -> None:
            position = 0
            total = writers * appends_each * 3
            while len(seen) < total:
                batch = await store.read_all(position, limit=50)
                for e in batch:
                    seen.append(e.position)
                    position = e.position
                if not batch:
                    await store.wait_for_events(position, timeout=0.05)
            done.set()

        read_task = asyncio.create_task(reader())
        await asyncio.gather(*(writer(w) for w in range(writers)))
        await within(done.wait(), 20)
        await read_task
        assert seen == list(range(1, writers * appends_each * 3 + 1))

    async def test_wait_for_events_wakes_on_append(self, store: EventStore) -> None:
        waiter = asyncio.create_task(store.wait_for_events(0, timeout=30))
        await asyncio.sleep(0)
        await store.append("s", [ev(1)], NO_STREAM)
        await within(waiter, 5)

    async def test_snapshots_keep_the_newest(self, store: EventStore) -> None:
        assert await store.load_snapshot("s") is None
        now = SystemClock().now()
        await store.save_snapshot(Snapshot("s", 10, "Order", {"v": 10}, now))
        await store.save_snapshot(Snapshot("s", 5, "Order", {"v": 5}, now))
        snap = await store.load_snapshot("s")
        assert snap is not None and (snap.version, snap.state) == (10, {"v": 10})
        await store.save_snapshot(Snapshot("s", 20, "Order", {"v": 20}, now))
        snap = await store.load_snapshot("s")
        assert snap is not None and snap.version == 20

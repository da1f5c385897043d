"""Catch-up subscriptions over every backend: history, then live, resumable from a checkpoint.

To check an adapter, subclass ``SubscriptionContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``open_event_store`` opens it, and the checkpoints are kept
there (in memory for ``memory://``)). ``OnMemory``, ``OnSqlite`` and ``OnPostgres``
(``tests.helpers``) give the built-in ones. An adapter no URL names overrides the ``backend``
fixture instead, to hand each test an ``EventStore`` and a ``CheckpointStore``.

    class TestSqliteSubscription(OnSqlite, SubscriptionContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ordermesh.db import connect
from ordermesh.eventstore import NewEvent, open_event_store
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.subscription import CheckpointStore, MemoryCheckpoints, SqlCheckpoints, subscribe
from tests.helpers import take, within


async def append(store: EventStore, stream: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.append(stream, [NewEvent("E", {"i": i})], i)


class SubscriptionContract:
    """Every test a Subscription adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def backend(self, database_url: str) -> AsyncIterator[tuple[EventStore, CheckpointStore]]:
        store = await open_event_store(database_url)
        if database_url.startswith("memory://"):
            yield store, MemoryCheckpoints()
            await store.close()
            return
        db = await connect(database_url)
        yield store, await SqlCheckpoints.open(db)
        await db.close()
        await store.close()

    async def test_history_then_live_then_resume_from_the_durable_checkpoint(
        self,
        backend: tuple[EventStore, CheckpointStore],
    ) -> None:
        store, checkpoints = backend
        await append(store, "s", 5)
        async with subscribe(store, checkpoints, "reader", page_size=2) as sub:
            events = sub.__aiter__()
            history = await within(take(events, 5))
            assert [e.data["i"] for e in history] == [0, 1, 2, 3, 4]
            await sub.commit(history[2].position)

            async def later() -> None:
                await asyncio.sleep(0.05)
                await append(store, "s", 2, start=5)

            writer = asyncio.create_task(later())
            live = await within(take(events, 2))
            await writer
            assert sub.live
            assert [e.data["i"] for e in live] == [5, 6]

        # A restart resumes after the last commit (at-least-once for what was not committed).
        async with subscribe(store, checkpoints, "reader") as sub:
            again = await within(take(sub.__aiter__(), 4))
            assert [e.data["i"] for e in again] == [3, 4, 5, 6]

    async def test_checkpoints_never_move_backwards(
        self, backend: tuple[EventStore, CheckpointStore]
    ) -> None:
        _, checkpoints = backend
        await checkpoints.save("x", 10)
        await checkpoints.save("x", 4)
        assert await checkpoints.load("x") == 10
        assert await checkpoints.load("unknown") == 0

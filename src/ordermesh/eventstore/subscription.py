"""Catch-up subscriptions: read history from a durable checkpoint, then switch to live.

    async with subscribe(store, checkpoints, "mailer") as events:
        async for event in events:
            await handle(event)
            await events.commit(event.position)   # durable; a restart resumes after it

The subscription reads pages from the store until it reaches the head, then waits for the
store's wake-up (in-process signal, PostgreSQL NOTIFY, SQLite polling) and carries on: callers
see one ordered stream either way. Delivery is at-least-once across crashes (what was handled but
not committed comes again); handlers that must be exactly-once keep their effect and checkpoint
in one transaction, as read-model projectors do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from ordermesh.db import SqlDb, migrate
from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.port import EventStore


class CheckpointStore(Protocol):
    async def load(self, name: str) -> int: ...

    async def save(self, name: str, position: int) -> None: ...


class MemoryCheckpoints:
    def __init__(self) -> None:
        self._positions: dict[str, int] = {}

    async def load(self, name: str) -> int:
        return self._positions.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        self._positions[name] = max(position, self._positions.get(name, 0))


class SqlCheckpoints:
    def __init__(self, db: SqlDb) -> None:
        self.db = db

    @classmethod
    async def open(cls, db: SqlDb) -> SqlCheckpoints:
        ddl = (
            "CREATE TABLE IF NOT EXISTS subscription_checkpoints "
            "(name text PRIMARY KEY, position bigint NOT NULL)"
        )
        await migrate(db, {"postgres": [ddl], "sqlite": [ddl]})
        return cls(db)

    async def load(self, name: str) -> int:
        row = await self.db.fetchrow("SELECT position FROM subscription_checkpoints WHERE name = $1", name)
        return int(row[0]) if row else 0

    async def save(self, name: str, position: int) -> None:
        # Never moves backwards: a late commit from a slow handler cannot rewind the checkpoint.
        await self.db.execute(
            "INSERT INTO subscription_checkpoints (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
            "WHERE subscription_checkpoints.position < excluded.position",
            name,
            position,
        )


class CatchUpSubscription:
    def __init__(
        self,
        store: EventStore,
        checkpoints: CheckpointStore,
        name: str,
        page_size: int = 500,
        idle_timeout: float = 1.0,
    ) -> None:
        self.store, self.checkpoints, self.name = store, checkpoints, name
        self.page_size, self.idle_timeout = page_size, idle_timeout
        self.position = 0
        self.live = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self.position = await self.checkpoints.load(self.name)

    def stop(self) -> None:
        self._stopped.set()

    async def commit(self, position: int) -> None:
        await self.checkpoints.save(self.name, position)

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StoredEvent]:
        while not self._stopped.is_set():
            page = await self.store.read_all(self.position, self.page_size)
            if not page:
                self.live = True
                await self.store.wait_for_events(self.position, self.idle_timeout)
                continue
            for event in page:
                self.position = event.position
                yield event
                if self._stopped.is_set():
                    return


@asynccontextmanager
async def subscribe(
    store: EventStore, checkpoints: CheckpointStore, name: str, page_size: int = 500
) -> AsyncIterator[CatchUpSubscription]:
    sub = CatchUpSubscription(store, checkpoints, name, page_size)
    await sub.start()
    try:
        yield sub
    finally:
        sub.stop()

"""The inbox: a consumer's record of the messages it has handled, written in the same
transaction as the handler's effect, so a redelivered or duplicated message has no second effect.

    inbox = await SqlInbox.open(db, consumer="payments")
    async def handle(delivery):
        async def effect(tx):
            await tx.execute("UPDATE accounts …", …)
        await inbox.once(delivery.message.message_id, effect)

``once`` returns False (and runs nothing) when the message was handled before. The broker acks
only after ``once`` returns, so a crash before the commit redelivers and the effect runs then,
exactly once. Effects outside the database (an email) cannot join the transaction: they run
first and are recorded after, which makes them at-least-once, so they must carry the message
id for the receiver to deduplicate (the notification service sets it as the mail's Message-ID).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb, Tx, migrate
from ordermesh.db.port import ts_param

Effect = Callable[[Tx | None], Awaitable[None]]


class Inbox(Protocol):
    async def once(self, message_id: str, effect: Effect) -> bool:
        """Run ``effect`` and record ``message_id`` atomically, unless it is recorded already."""
        ...

    async def seen(self, message_id: str) -> bool: ...


class MemoryInbox:
    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._seen: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def once(self, message_id: str, effect: Effect) -> bool:
        # A duplicate waits for the first to finish, as it would on the SQL primary key.
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        async with lock:
            if message_id in self._seen:
                return False
            await effect(None)  # an exception leaves the id unrecorded, as a rollback would
            self._seen.add(message_id)
        self._locks.pop(message_id, None)
        return True

    async def seen(self, message_id: str) -> bool:
        return message_id in self._seen


_DDL = """CREATE TABLE IF NOT EXISTS inbox (
    consumer text NOT NULL, message_id text NOT NULL, processed_at {ts} NOT NULL,
    PRIMARY KEY (consumer, message_id))"""


class SqlInbox:
    def __init__(self, db: SqlDb, consumer: str, clock: Clock | None = None) -> None:
        self.db, self.consumer = db, consumer
        self._clock = clock or SystemClock()

    @classmethod
    async def open(cls, db: SqlDb, consumer: str, clock: Clock | None = None) -> SqlInbox:
        await migrate(
            db, {"postgres": [_DDL.format(ts="timestamptz")], "sqlite": [_DDL.format(ts="INTEGER")]}
        )
        return cls(db, consumer, clock)

    async def once(self, message_id: str, effect: Effect) -> bool:
        async with self.db.transaction() as tx:
            # Claim first: a concurrent duplicate blocks on the key until this one commits,
            # then finds it taken.
            claimed = await tx.fetch(
                "INSERT INTO inbox (consumer, message_id, processed_at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING message_id",
                self.consumer,
                message_id,
                ts_param(self.db.dialect, self._clock.now()),
            )
            if not claimed:
                return False
            await effect(tx)
        return True

    async def seen(self, message_id: str) -> bool:
        row = await self.db.fetchrow(
            "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2", self.consumer, message_id
        )
        return row is not None

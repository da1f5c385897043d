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
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb, Tx, migrate
from ordermesh.db.port import Row, ts_param

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


@dataclass(slots=True)
class _Claim:
    message_id: str
    effect: Effect
    context: contextvars.Context
    result: asyncio.Future[bool]


async def _run(effect: Effect, tx: Tx) -> None:
    await effect(tx)


class _Savepoint:
    """The ``Tx`` one effect sees inside a shared batch transaction. The savepoint is taken on
    its first statement, so an effect that writes nothing (a mail recorded after sending) costs
    no round trip; a failing effect is rolled back to it without touching its neighbours."""

    def __init__(self, tx: Tx, name: str) -> None:
        self._tx, self.name, self.started = tx, name, False

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            await self._tx.execute(f"SAVEPOINT {self.name}")

    async def execute(self, sql: str, *args: Any) -> None:
        await self._start()
        await self._tx.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._start()
        await self._tx.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        await self._start()
        return await self._tx.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        await self._start()
        return await self._tx.fetchrow(sql, *args)


class SqlInbox:
    """The inbox in the consumer's database, with group commit.

    A consumer with a prefetch of hundreds calls ``once`` concurrently; one transaction per
    message would make the database's commit the consumer's speed limit (on SQLite, three
    round trips to the writer thread each). So concurrent calls are gathered into one
    transaction: the ids are claimed in one statement, each claimed effect runs in order
    under its own savepoint, and one commit answers them all. Every caller still gets its own
    outcome (True, False or its effect's exception), and the broker acks none of them before
    that commit. An effect runs in its caller's context (contextvars: trace, principal).
    A failed commit fails the whole batch; each message is then retried on its own terms.
    """

    def __init__(self, db: SqlDb, consumer: str, clock: Clock | None = None, max_batch: int = 0) -> None:
        self.db, self.consumer = db, consumer
        self._clock = clock or SystemClock()
        # PostgreSQL keeps 64 subtransactions per transaction cached; past that every
        # snapshot in the server gets slower, so batches there stay below it.
        self.max_batch = max_batch or (256 if db.dialect == "sqlite" else 60)
        self._pending: list[_Claim] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db: SqlDb, consumer: str, clock: Clock | None = None, max_batch: int = 0) -> SqlInbox:
        await migrate(
            db, {"postgres": [_DDL.format(ts="timestamptz")], "sqlite": [_DDL.format(ts="INTEGER")]}
        )
        return cls(db, consumer, clock, max_batch)

    async def once(self, message_id: str, effect: Effect) -> bool:
        loop = asyncio.get_running_loop()
        claim = _Claim(message_id, effect, contextvars.copy_context(), loop.create_future())
        self._pending.append(claim)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        # Awaited directly, not shielded: a cancelled caller cancels its outcome, and the
        # committer skips it (not started) or drops the result (committed: the broker redelivers
        # and the inbox says "seen").
        return await claim.result

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, later = self._next_batch()
            self._pending = later + self._pending
            try:
                async with self.db.transaction() as tx:
                    outcomes = await self._apply(tx, batch)
            except Exception as exc:
                for claim in batch:
                    if not claim.result.done():
                        claim.result.set_exception(exc)
                continue
            except BaseException:
                for claim in batch + self._pending:
                    claim.result.cancel()
                self._pending = []
                raise
            for claim, outcome in zip(batch, outcomes, strict=True):
                if claim.result.done():
                    continue
                if isinstance(outcome, BaseException):
                    claim.result.set_exception(outcome)
                else:
                    claim.result.set_result(outcome)

    def _next_batch(self) -> tuple[list[_Claim], list[_Claim]]:
        """Up to ``max_batch`` claims with distinct ids; a repeated id waits for the next batch
        (it must see the first one's outcome: False if it committed, a fresh try if it failed)."""
        batch: list[_Claim] = []
        later: list[_Claim] = []
        ids: set[str] = set()
        for claim in self._pending:
            if claim.result.done():  # its caller was cancelled before its turn
                continue
            if len(batch) < self.max_batch and claim.message_id not in ids:
                ids.add(claim.message_id)
                batch.append(claim)
            else:
                later.append(claim)
        self._pending = []
        return batch, later

    async def _apply(self, tx: Tx, batch: list[_Claim]) -> list[bool | BaseException]:
        now = ts_param(self.db.dialect, self._clock.now())
        values = ", ".join(f"($1, ${i + 3}, $2)" for i in range(len(batch)))
        rows = await tx.fetch(
            f"INSERT INTO inbox (consumer, message_id, processed_at) VALUES {values} "
            "ON CONFLICT DO NOTHING RETURNING message_id",
            self.consumer,
            now,
            *(claim.message_id for claim in batch),
        )
        claimed = {str(row[0]) for row in rows}
        outcomes: list[bool | BaseException] = []
        for n, claim in enumerate(batch):
            if claim.message_id not in claimed:
                outcomes.append(False)
                continue
            savepoint = _Savepoint(tx, f"inbox_{n}")
            try:
                await asyncio.get_running_loop().create_task(
                    _run(claim.effect, savepoint), context=claim.context
                )
            except Exception as exc:
                if savepoint.started:
                    await tx.execute(f"ROLLBACK TO SAVEPOINT {savepoint.name}")
                await tx.execute(
                    "DELETE FROM inbox WHERE consumer = $1 AND message_id = $2",
                    self.consumer,
                    claim.message_id,
                )
                outcomes.append(exc)
                continue
            if savepoint.started:
                await tx.execute(f"RELEASE SAVEPOINT {savepoint.name}")
            outcomes.append(True)
        return outcomes

    async def seen(self, message_id: str) -> bool:
        row = await self.db.fetchrow(
            "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2", self.consumer, message_id
        )
        return row is not None

"""A transactional outbox table, for services whose state is rows rather than events.

An event-sourced service needs none (``relay.OutboxRelay``: its event store is the outbox). A
service that keeps plain tables writes the messages it owes in the *same transaction* as its
state change::

    async with db.transaction() as tx:
        await tx.execute("UPDATE stock SET reserved = reserved + $2 WHERE sku = $1", sku, qty)
        await outbox.add(tx, "inventory", [Message.json("stock.reserved", {...})])
    outbox.wake()  # optional: publish now rather than at the publisher's next poll

and an ``OutboxPublisher`` publishes what is pending, oldest first, with the broker's confirms,
then deletes it. Killed between the confirm and the delete, it publishes those messages again
(at-least-once, same message ids: consumers' inboxes absorb them). Messages no queue takes
(``Unroutable`` naming them) are parked in their row with the reason, not lost and not in the
way of the rest; ``replay_parked`` (and ``run``, every few seconds while idle) offers them again.

Order: one transaction's messages go out in the order they were added, and transactions that
commit one after another (the same aggregate's, say) in commit order. Ids come from a sequence,
which concurrent transactions may commit out of order; only such unrelated messages can swap.
One publisher per table: two would both publish a message before either deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ordermesh.db import SqlDb, Tx, migrate
from ordermesh.messaging import envelope
from ordermesh.messaging.context import published, with_current_trace
from ordermesh.messaging.port import Broker, Message, Unroutable
from ordermesh.messaging.relay import retry_later

_DDL = (
    "CREATE TABLE IF NOT EXISTS outbox_messages "
    "(id {id} PRIMARY KEY, exchange text NOT NULL, envelope text NOT NULL, parked text)"
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: int
    exchange: str
    message: Message
    parked: str | None = None  # why no queue took it, while it waits for a replay


class SqlOutbox:
    def __init__(self, db: SqlDb) -> None:
        self.db = db
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, db: SqlDb) -> SqlOutbox:
        await migrate(
            db,
            {
                "postgres": [_DDL.format(id="bigserial")],
                "sqlite": [_DDL.format(id="INTEGER")],  # the rowid: always above every row left
            },
        )
        return cls(db)

    async def add(self, tx: Tx, exchange: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for ``exchange`` inside the caller's transaction ``tx``; each keeps
        the trace context it was written in (``traceparent`` header), unless it has one."""
        await tx.executemany(
            "INSERT INTO outbox_messages (exchange, envelope) VALUES ($1, $2)",
            [(exchange, envelope.dumps(m)) for m in with_current_trace(messages)],
        )

    def wake(self) -> None:
        """Tell this process's publisher that something was committed (it polls otherwise)."""
        self._wake.set()

    async def pending(self, limit: int) -> list[Outgoing]:
        rows = await self.db.fetch(
            "SELECT id, exchange, envelope FROM outbox_messages WHERE parked IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [Outgoing(int(r[0]), str(r[1]), envelope.loads(str(r[2]))[0]) for r in rows]

    async def parked(self) -> list[Outgoing]:
        rows = await self.db.fetch(
            "SELECT id, exchange, envelope, parked FROM outbox_messages WHERE parked IS NOT NULL ORDER BY id"
        )
        return [Outgoing(int(r[0]), str(r[1]), envelope.loads(str(r[2]))[0], str(r[3])) for r in rows]

    async def count(self) -> int:
        row = await self.db.fetchrow("SELECT count(*) FROM outbox_messages WHERE parked IS NULL")
        return int(row[0]) if row else 0

    async def sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self.db.executemany("DELETE FROM outbox_messages WHERE id = $1", [(i,) for i in ids])

    async def park(self, ids: Sequence[int], reason: str) -> None:
        if ids:
            await self.db.executemany(
                "UPDATE outbox_messages SET parked = $2 WHERE id = $1", [(i, reason) for i in ids]
            )

    async def unpark(self) -> int:
        """Make every parked message pending again; how many there were."""
        row = await self.db.fetchrow("SELECT count(*) FROM outbox_messages WHERE parked IS NOT NULL")
        count = int(row[0]) if row else 0
        if count:
            await self.db.execute("UPDATE outbox_messages SET parked = NULL WHERE parked IS NOT NULL")
        return count

    async def wait(self, timeout: float) -> None:
        """Until ``wake()`` or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()


class OutboxPublisher:
    """Publishes an ``SqlOutbox``; ``failures``/``last_error``/``published``/``parked`` for metrics."""

    def __init__(self, outbox: SqlOutbox, broker: Broker, batch: int = 500) -> None:
        self.outbox, self.broker, self.batch = outbox, broker, batch
        self.failures = 0
        self.last_error: str | None = None
        self.published = 0
        self.parked = 0

    async def step(self) -> int:
        """Publish the oldest pending batch; how many messages it covered (0: nothing pending)."""
        batch = await self.outbox.pending(self.batch)
        done: list[int] = []
        try:
            # Runs of the same exchange, in id order: one publish call each.
            for exchange, run in itertools.groupby(batch, key=lambda o: o.exchange):
                group = list(run)
                try:
                    with published(exchange, [o.message for o in group]) as messages:
                        await self.broker.publish(exchange, messages)
                except Unroutable as exc:
                    if not exc.message_ids:
                        raise  # nothing was published (the exchange is gone): retry it all
                    unroutable = set(exc.message_ids)
                    stuck = [o.id for o in group if o.message.message_id in unroutable]
                    await self.outbox.park(stuck, str(exc))
                    self.parked += len(stuck)
                    done += [o.id for o in group if o.message.message_id not in unroutable]
                else:
                    done += [o.id for o in group]
        finally:
            # What the broker confirmed is deleted even if a later run failed.
            await self.outbox.sent(done)
            self.published += len(done)
        return len(batch)

    async def replay_parked(self) -> int:
        replayed = await self.outbox.unpark()
        self.parked = max(self.parked - replayed, 0)
        return replayed

    async def run(self, stop: asyncio.Event, poll_interval: float = 0.1, replay_every: float = 5.0) -> None:
        """Publish until ``stop``; poll every ``poll_interval`` seconds when idle (or on ``wake``),
        offer parked messages again every ``replay_every`` seconds; retry any failure."""
        loop = asyncio.get_running_loop()
        backoff, next_replay = 0.1, loop.time() + replay_every
        while not stop.is_set():
            try:
                if await self.step() == 0:
                    if loop.time() >= next_replay:
                        next_replay = loop.time() + replay_every
                        await self.replay_parked()
                    await self.outbox.wait(poll_interval)
                backoff, self.last_error = 0.1, None
            except Exception as exc:  # nothing is deleted unconfirmed: retrying is always safe
                backoff = await retry_later(self, exc, backoff, "outbox publisher")


__all__ = ["OutboxPublisher", "Outgoing", "SqlOutbox"]

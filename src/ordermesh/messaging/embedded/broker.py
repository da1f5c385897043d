"""``EmbeddedBroker``: the broker port on a SQLite file (``sqlite:///PATH``): opening it, the
topology, publishing, dead letters and replay, closing. Its consumers are ``EmbeddedSubscription``
(``subscription``); the tables and the envelope's columns are in ``schema``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ordermesh.db.port import SqlDb, Tx
from ordermesh.errors import NotFound
from ordermesh.messaging.embedded.schema import ENVELOPE, SCHEMA, envelope_params, row_message
from ordermesh.messaging.embedded.subscription import Clock, EmbeddedSubscription
from ordermesh.messaging.embedded.wakers import file_key, wake
from ordermesh.messaging.port import DeadLetter, Handler, Message, RetryPolicy, Unroutable
from ordermesh.messaging.topics import matches


def _seconds(url: str, query: dict[str, str], name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{url}: {name} must be a positive number of seconds, not {raw!r}")
    return value


class EmbeddedBroker:
    """``Broker`` on a SQLite file; see the package docstring. Open with :meth:`open`."""

    def __init__(
        self,
        db: SqlDb,
        path: str,
        *,
        lease: float = 30.0,
        poll_interval: float = 0.05,
        close_grace: float = 10.0,
        clock: Clock = time.time,
        delivery_limit: int = 20,
    ) -> None:
        _check_delivery_limit(delivery_limit)
        self.db = db
        self.path = path
        self.lease = lease
        self.poll_interval = poll_interval
        self.close_grace = close_grace
        self.clock = clock
        self.delivery_limit = delivery_limit
        self._exchanges: set[str] = set()  # declared by this object (for delete_topology)
        self._queues: set[str] = set()
        self._subscriptions: list[EmbeddedSubscription] = []
        self._closed = False

    @property
    def connected(self) -> bool:
        """A file, not a server: reachable until closed."""
        return not self._closed

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        lease: float = 30.0,
        poll_interval: float = 0.05,
        close_grace: float = 10.0,
        clock: Clock = time.time,
        delivery_limit: int = 20,
    ) -> EmbeddedBroker:
        from ordermesh.db.sqlite import SqliteDb

        _check_delivery_limit(delivery_limit)  # before opening: a bad value leaks no connection
        db = await SqliteDb.open(path)
        try:
            async with db.transaction() as tx:
                for statement in SCHEMA:
                    await tx.execute(statement)
        except BaseException:
            await db.close()
            raise
        return cls(
            db,
            file_key(path),
            lease=lease,
            poll_interval=poll_interval,
            close_grace=close_grace,
            clock=clock,
            delivery_limit=delivery_limit,
        )

    @classmethod
    async def open_url(cls, url: str) -> EmbeddedBroker:
        """``sqlite:///PATH[?lease=SECONDS&poll=SECONDS&delivery_limit=N]`` (``sqlite:////abs/path``
        absolute)."""
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = url.split("?", 1)[0].removeprefix("sqlite:///")
        limit = query.get("delivery_limit", "20")
        if not limit.isdecimal() or int(limit) < 1:  # int() alone would take " 3" or "1_0"
            raise ValueError(f"{url}: delivery_limit must be a positive integer, not {limit!r}")
        return await cls.open(
            path,
            lease=_seconds(url, query, "lease", 30.0),
            poll_interval=_seconds(url, query, "poll", 0.05),
            delivery_limit=int(limit),
        )

    # --- topology ---------------------------------------------------------------------------

    async def declare_exchange(self, exchange: str) -> None:
        await self.db.execute("INSERT INTO mq_exchanges (name) VALUES ($1) ON CONFLICT DO NOTHING", exchange)
        self._exchanges.add(exchange)

    async def subscribe(
        self,
        queue: str,
        exchange: str,
        binding_keys: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        retry: RetryPolicy = RetryPolicy(),
    ) -> EmbeddedSubscription:
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO mq_exchanges (name) VALUES ($1) ON CONFLICT DO NOTHING", exchange)
            await tx.execute("INSERT INTO mq_queues (name) VALUES ($1) ON CONFLICT DO NOTHING", queue)
            await tx.executemany(
                "INSERT INTO mq_bindings (exchange, binding_key, queue) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                [(exchange, key, queue) for key in binding_keys],
            )
        self._exchanges.add(exchange)
        self._queues.add(queue)
        sub = EmbeddedSubscription(self, queue, handler, prefetch, retry)
        self._subscriptions.append(sub)
        sub.start()
        return sub

    def _forget(self, sub: EmbeddedSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        async with self.db.transaction() as tx:
            # One read: the exchange's bindings, plus a (NULL, NULL) row if the exchange exists.
            found = await tx.fetch(
                "SELECT NULL, NULL FROM mq_exchanges WHERE name = $1 UNION ALL "
                "SELECT binding_key, queue FROM mq_bindings WHERE exchange = $1",
                exchange,
            )
            if not found or found[0][0] is not None:
                raise Unroutable(f"exchange {exchange!r} does not exist", [m.message_id for m in messages])
            bindings = [(str(row[0]), str(row[1])) for row in found[1:]]
            rows: list[tuple[Any, ...]] = []
            unroutable: list[Message] = []
            for message in messages:
                targets = sorted({q for key, q in bindings if matches(key, message.routing_key)})
                if not targets:
                    unroutable.append(message)
                    continue
                envelope = envelope_params(exchange, message)
                rows.extend((queue, *envelope) for queue in targets)
            if rows:
                await tx.executemany(
                    f"INSERT INTO mq_messages (queue, {ENVELOPE}) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    rows,
                )
        if rows:
            wake(self.path)
        if unroutable:
            keys = sorted({m.routing_key for m in unroutable})
            raise Unroutable(
                f"{exchange}: {len(unroutable)} message(s) reached no queue (routing keys {keys})",
                [m.message_id for m in unroutable],
            )

    # --- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue`` (default: every queue in the file), oldest first."""
        sql = f"SELECT queue, error, attempts, {ENVELOPE} FROM mq_dead"
        if queue is None:
            rows = await self.db.fetch(f"{sql} ORDER BY seq")
        else:
            rows = await self.db.fetch(f"{sql} WHERE queue = $1 ORDER BY seq", queue)
        return [
            DeadLetter(
                id=row[3],
                queue=row[0],
                message=(message := row_message(row, 3)),
                error=row[1],
                attempts=int(row[2]),
                original_exchange=row[4],
                original_routing_key=message.routing_key,
            )
            for row in rows
        ]

    async def replay(self, queue: str, message_id: str) -> None:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "SELECT seq FROM mq_dead WHERE queue = $1 AND message_id = $2 ORDER BY seq LIMIT 1",
                queue,
                message_id,
            )
            if row is None:
                raise NotFound(f"no dead letter {message_id} in {queue}.dlq")
            await tx.execute(
                f"INSERT INTO mq_messages (queue, {ENVELOPE}) "
                f"SELECT queue, {ENVELOPE} FROM mq_dead WHERE seq = $1",
                row[0],
            )
            await tx.execute("DELETE FROM mq_dead WHERE seq = $1", row[0])
        wake(self.path)

    # --- lifecycle --------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for sub in list(self._subscriptions):
            await sub.stop(self.close_grace)

    async def delete_topology(self) -> None:
        """Stop consuming, then delete the exchanges and queues this object declared, with
        their bindings, messages and dead letters."""
        await self._stop_all()
        async with self.db.transaction() as tx:
            await _delete_in(tx, "mq_bindings", "queue", self._queues)
            await _delete_in(tx, "mq_bindings", "exchange", self._exchanges)
            await _delete_in(tx, "mq_messages", "queue", self._queues)
            await _delete_in(tx, "mq_dead", "queue", self._queues)
            await _delete_in(tx, "mq_queues", "name", self._queues)
            await _delete_in(tx, "mq_exchanges", "name", self._exchanges)
        self._queues.clear()
        self._exchanges.clear()

    async def close(self) -> None:
        self._closed = True
        await self._stop_all()
        await self.db.close()


def _check_delivery_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"delivery_limit must be a positive integer, not {limit!r}")


async def _delete_in(tx: Tx, table: str, column: str, values: set[str]) -> None:
    await tx.executemany(f"DELETE FROM {table} WHERE {column} = $1", [(v,) for v in sorted(values)])

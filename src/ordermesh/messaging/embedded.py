"""The embedded broker: the broker port on a SQLite file, no server (``sqlite:///PATH``).

Tables (all durable, shared by every process that opens the file)::

    mq_exchanges  (name)                            declared topic exchanges
    mq_bindings   (exchange, binding_key, queue)    topic bindings
    mq_queues     (name)                            consumer queues
    mq_messages   one row per (message, queue): the envelope, ``attempt``, ``deliveries`` (claims
                  since it was last enqueued or retried) and ``visible_at``: the time from which
                  it may be claimed. Publishing sets it to 0; a claim to now + lease; a retry to
                  now + the policy's delay; an ack deletes the row.
    mq_dead       dead letters: the envelope, the queue it died in, error, attempts, dead_at

``publish`` routes every message through the bindings and inserts its rows in one
``BEGIN IMMEDIATE`` transaction: all or nothing, ``Unroutable`` (and nothing written) if any
message reaches no queue, and durable ("confirmed") when it returns.

A subscription claims up to ``prefetch`` minus its in-flight count with one ``UPDATE …
RETURNING`` inside ``BEGIN IMMEDIATE`` (SQLite's write lock makes the claim atomic across
processes), oldest first, stamping a lease token of its own. While handlers run, a heartbeat
extends the leases of its rows; if the process dies, the leases expire and another consumer
claims the rows again with ``redelivered=True``. Ack, retry and dead-lettering only touch a row
that still carries the subscription's token, so a consumer that lost its lease cannot ack
someone else's claim (delivery stays at-least-once).

A poison message that kills its consumer before the ack would come back forever. As a quorum
queue's ``x-delivery-limit`` does on RabbitMQ, a row delivered more than ``delivery_limit``
times (20 by default) without an ack, each consumer having died or lost its lease, is not
handed out again: the claim that finds it moves it to ``mq_dead`` instead, in the claim's
transaction ("delivered past the queue's delivery limit without an ack"). With a limit of 2
the third unacked delivery is the last, as on RabbitMQ. Only claims count: a retry (the
handler raised) resets ``deliveries``, and ``replay`` re-enqueues as a first attempt.

Consumers peek (a cheap read, no write lock) and sleep until the next row is due, at most
``poll_interval``; a publish in the same process wakes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ordermesh.db.port import Row, SqlDb, Tx, ts_param, ts_value
from ordermesh.errors import NotFound
from ordermesh.messaging.port import (
    DeadLetter,
    Delivery,
    Handler,
    Message,
    PermanentError,
    RetryPolicy,
    Unroutable,
)
from ordermesh.messaging.topics import matches

log = logging.getLogger("ordermesh.messaging.embedded")

Clock = Callable[[], float]
_MAX_ERROR = 2000
# printf() format, filled in by SQL with the row's deliveries and the limit; the phrase is the
# RabbitMQ adapter's too, so one search finds poison messages on either broker.
_OVER_LIMIT = (
    "the embedded broker dead-lettered it: delivered past the queue's delivery limit without an ack "
    "(%d deliveries, limit %d)"
)

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS mq_exchanges (name text PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS mq_bindings (
         exchange text NOT NULL, binding_key text NOT NULL, queue text NOT NULL,
         PRIMARY KEY (exchange, binding_key, queue))""",
    "CREATE TABLE IF NOT EXISTS mq_queues (name text PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS mq_messages (
         seq integer PRIMARY KEY AUTOINCREMENT,
         queue text NOT NULL,
         message_id text NOT NULL, exchange text NOT NULL, routing_key text NOT NULL,
         body blob NOT NULL, type text NOT NULL, schema_version integer NOT NULL,
         occurred_at integer NOT NULL, correlation_id text, causation_id text,
         headers blob NOT NULL,
         attempt integer NOT NULL DEFAULT 1,
         deliveries integer NOT NULL DEFAULT 0,
         visible_at real NOT NULL DEFAULT 0,
         lease_token text)""",
    "CREATE INDEX IF NOT EXISTS mq_messages_queue_seq ON mq_messages (queue, seq)",
    "CREATE INDEX IF NOT EXISTS mq_messages_queue_visible ON mq_messages (queue, visible_at)",
    "CREATE INDEX IF NOT EXISTS mq_messages_lease ON mq_messages (lease_token)",
    """CREATE TABLE IF NOT EXISTS mq_dead (
         seq integer PRIMARY KEY AUTOINCREMENT,
         queue text NOT NULL,
         message_id text NOT NULL, exchange text NOT NULL, routing_key text NOT NULL,
         body blob NOT NULL, type text NOT NULL, schema_version integer NOT NULL,
         occurred_at integer NOT NULL, correlation_id text, causation_id text,
         headers blob NOT NULL,
         attempts integer NOT NULL, error text NOT NULL, dead_at real NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS mq_dead_queue ON mq_dead (queue, message_id)",
]

_ENVELOPE = (
    "message_id, exchange, routing_key, body, type, schema_version, occurred_at, "
    "correlation_id, causation_id, headers"
)

# Processes share the file; within this process, publishes wake consumers of the same file.
_WAKERS: dict[str, set[asyncio.Event]] = {}


def _file_key(path: str) -> str:
    return os.path.realpath(path)


def _wake(path: str) -> None:
    for event in list(_WAKERS.get(path, ())):
        event.set()


def _message(row: Row, at: int) -> Message:
    """The envelope from ``row[at:at+10]`` (the columns of ``_ENVELOPE``), exchange excluded."""
    headers = orjson.loads(row[at + 9])
    return Message(
        routing_key=row[at + 2],
        body=bytes(row[at + 3]),
        type=row[at + 4],
        message_id=row[at],
        schema_version=int(row[at + 5]),
        occurred_at=ts_value("sqlite", row[at + 6]),
        correlation_id=row[at + 7],
        causation_id=row[at + 8],
        headers={str(k): str(v) for k, v in headers.items()},
    )


def _dead_lettered(queue: str, message: Message, attempts: int, error: str) -> None:
    """The line every adapter writes for a dead letter, in the RabbitMQ adapter's words (one search
    finds them on any broker); its order is the message's correlation id, as ordermesh sets it."""
    log.warning(
        "queue %s: dead-lettered %s after %d attempt(s): %s",
        queue,
        message.message_id,
        attempts,
        error,
        extra={
            "order_id": message.correlation_id or "",
            "message_id": message.message_id,
            "routing_key": message.routing_key,
            "queue": queue,
            "attempts": attempts,
        },
    )


def _envelope(exchange: str, message: Message) -> tuple[Any, ...]:
    return (
        message.message_id,
        exchange,
        message.routing_key,
        message.body,
        message.type or message.routing_key,
        message.schema_version,
        ts_param("sqlite", message.occurred_at),
        message.correlation_id,
        message.causation_id,
        orjson.dumps(dict(message.headers)),
    )


class EmbeddedSubscription:
    """One consumer of one queue: a claim loop, handler tasks, a lease heartbeat."""

    def __init__(
        self, broker: EmbeddedBroker, queue: str, handler: Handler, prefetch: int, retry: RetryPolicy
    ) -> None:
        self._broker = broker
        self._db = broker.db
        self.queue = queue
        self._handler = handler
        self._prefetch = max(prefetch, 1)
        self._retry = retry
        self._token = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], int] = {}  # handler task -> row seq
        self._acks: list[tuple[int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._pump: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        _WAKERS.setdefault(self._broker.path, set()).add(self._wake)
        self._pump = asyncio.create_task(self._run(), name=f"embedded-consumer:{self.queue}")
        self._heartbeat = asyncio.create_task(self._renew(), name=f"embedded-lease:{self.queue}")

    # --- claiming ---------------------------------------------------------------------------

    async def _run(self) -> None:
        broker = self._broker
        while not self._stopping:
            self._wake.clear()
            room = self._prefetch - len(self._inflight)
            due: float | None = None
            if room > 0:
                try:
                    row = await self._db.fetchrow(
                        "SELECT MIN(visible_at) FROM mq_messages WHERE queue = $1", self.queue
                    )
                    due = None if row is None or row[0] is None else float(row[0])
                    if due is not None and due <= broker.clock() and await self._claim(room):
                        continue
                except Exception:  # the loop must survive a busy database; try again later
                    log.exception("embedded broker: claiming from %s failed", self.queue)
            wait = broker.poll_interval
            if due is not None:
                wait = max(0.0, min(wait, due - broker.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _claim(self, room: int) -> int:
        """Claim up to ``room`` due rows, oldest first; dead-letter those past the delivery limit.
        Returns how many rows it took off the queue (nonzero: look again at once)."""
        broker = self._broker
        now = broker.clock()
        limit = broker.delivery_limit
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"""UPDATE mq_messages
                    SET visible_at = $1, lease_token = $2, deliveries = deliveries + 1
                    WHERE seq IN (SELECT seq FROM mq_messages
                                  WHERE queue = $3 AND visible_at <= $4 ORDER BY seq LIMIT $5)
                    RETURNING seq, attempt, deliveries, {_ENVELOPE}""",
                now + broker.lease,
                self._token,
                self.queue,
                now,
                room,
            )
            # Claimed, then buried before the commit: no other process ever sees these rows
            # claimable, and the hot path stays one statement (the check is on rows in hand).
            poison = [row for row in rows if int(row[2]) > limit + 1]
            if poison:
                seqs = orjson.dumps([int(row[0]) for row in poison]).decode()
                await tx.execute(
                    f"""INSERT INTO mq_dead (queue, {_ENVELOPE}, attempts, error, dead_at)
                        SELECT queue, {_ENVELOPE}, attempt, printf($1, deliveries - 1, $2), $3
                        FROM mq_messages WHERE seq IN (SELECT value FROM json_each($4)) ORDER BY seq""",
                    _OVER_LIMIT,
                    limit,
                    now,
                    seqs,
                )
                await tx.execute(
                    "DELETE FROM mq_messages WHERE seq IN (SELECT value FROM json_each($1))", seqs
                )
        for row in sorted(rows, key=lambda r: int(r[0])):
            if int(row[2]) > limit + 1:
                why = f"delivered {int(row[2]) - 1} times without an ack (delivery limit {limit})"
                _dead_lettered(self.queue, _message(row, 3), int(row[1]), why)
                continue
            delivery = Delivery(
                _message(row, 3),
                exchange=row[4],
                queue=self.queue,
                attempt=int(row[1]),
                redelivered=int(row[2]) > 1,
            )
            task = asyncio.create_task(self._handle(int(row[0]), delivery))
            self._inflight[task] = int(row[0])
            self._idle.clear()
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not self._inflight:
            self._idle.set()
        self._wake.set()

    async def _renew(self) -> None:
        """Keep the leases of in-flight rows alive while their handlers run."""
        while True:
            await asyncio.sleep(self._broker.lease / 3)
            if self._inflight:
                try:
                    await self._db.execute(
                        "UPDATE mq_messages SET visible_at = $1 WHERE lease_token = $2",
                        self._broker.clock() + self._broker.lease,
                        self._token,
                    )
                except Exception:
                    log.exception("embedded broker: renewing leases on %s failed", self.queue)

    # --- settling ---------------------------------------------------------------------------

    async def _handle(self, seq: int, delivery: Delivery) -> None:
        try:
            await self._settle(seq, delivery)
        except asyncio.CancelledError:
            raise  # unacked: released by stop(), or its lease expires
        except Exception:  # unacked: the lease expires and the message comes again
            log.exception(
                "embedded broker: settling %s on %s failed", delivery.message.message_id, self.queue
            )

    async def _settle(self, seq: int, delivery: Delivery) -> None:
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            raise
        except PermanentError as exc:
            await self._dead(seq, delivery, exc)
        except Exception as exc:
            if delivery.attempt >= self._retry.max_attempts:
                await self._dead(seq, delivery, exc)
            else:
                await self._db.execute(
                    """UPDATE mq_messages
                       SET attempt = attempt + 1, deliveries = 0, lease_token = NULL, visible_at = $1
                       WHERE seq = $2 AND lease_token = $3""",
                    self._broker.clock() + self._retry.delay(delivery.attempt),
                    seq,
                    self._token,
                )
        else:
            await self._ack(seq)

    async def _ack(self, seq: int) -> None:
        """Delete the row; acks that arrive while one is being written go together in the next
        statement (one commit for many), and each waits for its own."""
        done = asyncio.get_running_loop().create_future()
        self._acks.append((seq, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_acks())
        await done

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                await self._db.execute(
                    "DELETE FROM mq_messages WHERE lease_token = $1 "
                    "AND seq IN (SELECT value FROM json_each($2))",
                    self._token,
                    orjson.dumps([seq for seq, _ in batch]).decode(),
                )
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _dead(self, seq: int, delivery: Delivery, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        async with self._db.transaction() as tx:
            await tx.execute(
                f"""INSERT INTO mq_dead (queue, {_ENVELOPE}, attempts, error, dead_at)
                    SELECT queue, {_ENVELOPE}, attempt, $1, $2 FROM mq_messages
                    WHERE seq = $3 AND lease_token = $4""",
                error,
                self._broker.clock(),
                seq,
                self._token,
            )
            await tx.execute("DELETE FROM mq_messages WHERE seq = $1 AND lease_token = $2", seq, self._token)
        _dead_lettered(self.queue, delivery.message, delivery.attempt, error)

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming and let in-flight handlers finish and ack. After ``grace`` seconds
        (default: wait for them) the rest are cancelled and their messages released at once,
        to be redelivered (``redelivered=True``)."""
        if not self._stopping:
            self._stopping = True
            self._wake.set()
        try:
            if self._pump is not None:
                await self._pump
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
            if self._inflight:
                cancelled = dict(self._inflight)
                for task in cancelled:
                    task.cancel()
                await asyncio.gather(*cancelled, return_exceptions=True)
                await self._db.executemany(
                    "UPDATE mq_messages SET visible_at = 0, lease_token = NULL "
                    "WHERE seq = $1 AND lease_token = $2",
                    [(seq, self._token) for seq in cancelled.values()],
                )
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._heartbeat
            _WAKERS.get(self._broker.path, set()).discard(self._wake)
            self._broker._forget(self)


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
    """``Broker`` on a SQLite file; see the module docstring. Open with :meth:`open`."""

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
                for statement in _SCHEMA:
                    await tx.execute(statement)
        except BaseException:
            await db.close()
            raise
        return cls(
            db,
            _file_key(path),
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
                envelope = _envelope(exchange, message)
                rows.extend((queue, *envelope) for queue in targets)
            if rows:
                await tx.executemany(
                    f"INSERT INTO mq_messages (queue, {_ENVELOPE}) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    rows,
                )
        if rows:
            _wake(self.path)
        if unroutable:
            keys = sorted({m.routing_key for m in unroutable})
            raise Unroutable(
                f"{exchange}: {len(unroutable)} message(s) reached no queue (routing keys {keys})",
                [m.message_id for m in unroutable],
            )

    # --- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue`` (default: every queue in the file), oldest first."""
        sql = f"SELECT queue, error, attempts, {_ENVELOPE} FROM mq_dead"
        if queue is None:
            rows = await self.db.fetch(f"{sql} ORDER BY seq")
        else:
            rows = await self.db.fetch(f"{sql} WHERE queue = $1 ORDER BY seq", queue)
        return [
            DeadLetter(
                id=row[3],
                queue=row[0],
                message=(message := _message(row, 3)),
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
                f"INSERT INTO mq_messages (queue, {_ENVELOPE}) "
                f"SELECT queue, {_ENVELOPE} FROM mq_dead WHERE seq = $1",
                row[0],
            )
            await tx.execute("DELETE FROM mq_dead WHERE seq = $1", row[0])
        _wake(self.path)

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


__all__ = ["EmbeddedBroker", "EmbeddedSubscription"]

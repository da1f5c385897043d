"""One consumer of one embedded queue: the claim loop, its handler tasks, the lease heartbeat,
and what happens to each delivery (ack, retry, dead letter). See the package docstring for the
claim, lease and delivery-limit rules it follows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

import orjson

from ordermesh.db.port import SqlDb
from ordermesh.messaging.embedded.schema import ENVELOPE, OVER_LIMIT, row_message
from ordermesh.messaging.embedded.wakers import WAKERS
from ordermesh.messaging.port import Delivery, Handler, Message, PermanentError, RetryPolicy

# The package's name, not this module's: tests and docs/logging.md rely on the log lines' logger.
log = logging.getLogger("ordermesh.messaging.embedded")

Clock = Callable[[], float]
_MAX_ERROR = 2000


class Owner(Protocol):
    """What a subscription reads of its broker (``EmbeddedBroker``), each time it needs it; a
    protocol so this module never imports the broker that imports it."""

    db: SqlDb
    path: str
    lease: float
    poll_interval: float
    clock: Clock
    delivery_limit: int

    def _forget(self, sub: EmbeddedSubscription) -> None: ...


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


class EmbeddedSubscription:
    """One consumer of one queue: a claim loop, handler tasks, a lease heartbeat."""

    def __init__(
        self, broker: Owner, queue: str, handler: Handler, prefetch: int, retry: RetryPolicy
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
        WAKERS.setdefault(self._broker.path, set()).add(self._wake)
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
                    RETURNING seq, attempt, deliveries, {ENVELOPE}""",
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
                    f"""INSERT INTO mq_dead (queue, {ENVELOPE}, attempts, error, dead_at)
                        SELECT queue, {ENVELOPE}, attempt, printf($1, deliveries - 1, $2), $3
                        FROM mq_messages WHERE seq IN (SELECT value FROM json_each($4)) ORDER BY seq""",
                    OVER_LIMIT,
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
                _dead_lettered(self.queue, row_message(row, 3), int(row[1]), why)
                continue
            delivery = Delivery(
                row_message(row, 3),
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
                f"""INSERT INTO mq_dead (queue, {ENVELOPE}, attempts, error, dead_at)
                    SELECT queue, {ENVELOPE}, attempt, $1, $2 FROM mq_messages
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
            WAKERS.get(self._broker.path, set()).discard(self._wake)
            self._broker._forget(self)

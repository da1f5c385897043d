"""The outbox relay: the event store is the outbox.

An event-sourced service's state change *is* its events, committed in one transaction; the
messages it owes the world are derived from them. The relay reads the store from a durable
checkpoint, translates each event into zero or one message, publishes a batch in position order,
waits for the broker's confirms, and only then moves the checkpoint. Killed mid-batch, it
publishes the batch again on restart: at-least-once, same message ids (the event ids), in order
per stream, so consumers' inboxes make it effectively once.

An ``Unroutable`` message is an error, never a silent loss. The broker publishes the rest of
the batch and names the messages no queue wanted; with a ``ParkingLot`` (what ``ordermesh up``
uses) the relay parks those, with the reason and their event position, and carries on: one
event nobody subscribes to yet (``order.paid`` before the payment service exists) must not hold
back every later message. ``ordermesh outbox status`` shows parked messages and ``ordermesh
outbox replay`` sends them, in event order, once a consumer is bound (``run`` also offers them
again every few seconds while idle). Without a parking lot, or when the broker names no
message (the exchange itself is gone), the relay stops at the batch, backs off and tries again,
and ``status()`` says what it is stuck on.

``run`` keeps two batches in flight: it reads and sends batch k+1 while batch k's confirms are
on their way, and moves the checkpoint strictly in order. Brokers enqueue concurrent
``publish`` calls in call order, so the stream of messages is the same as one batch at a time;
after a failure the relay starts again from the last checkpoint (at-least-once, as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ordermesh.db import SqlDb, migrate
from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.subscription import CheckpointStore
from ordermesh.messaging import envelope
from ordermesh.messaging.context import published
from ordermesh.messaging.port import Broker, Message, MessagingError, Unroutable

log = logging.getLogger(__name__)

Translate = Callable[[StoredEvent], Awaitable[Message | None]]


@dataclass(frozen=True, slots=True)
class RelayStatus:
    name: str
    position: int
    head: int
    failures: int
    last_error: str | None

    @property
    def pending(self) -> int:
        return max(self.head - self.position, 0)


@dataclass(frozen=True, slots=True)
class Parked:
    message: Message
    reason: str
    position: int = 0  # of the event it was made from: replays go in event order


class ParkingLot:
    """Unroutable messages, kept (in memory, or in the service's database) until replayed."""

    def __init__(self, db: SqlDb | None = None) -> None:
        self.db = db
        self._memory: dict[str, Parked] = {}

    @classmethod
    async def open(cls, db: SqlDb | None) -> ParkingLot:
        if db is not None:
            ddl = (
                "CREATE TABLE IF NOT EXISTS outbox_parked "
                "(message_id text PRIMARY KEY, envelope text NOT NULL)"
            )
            await migrate(db, {"postgres": [ddl], "sqlite": [ddl]})
        return cls(db)

    async def park(self, message: Message, reason: str, position: int = 0) -> None:
        if self.db is None:
            self._memory.setdefault(message.message_id, Parked(message, reason, position))
            return
        await self.db.execute(
            "INSERT INTO outbox_parked (message_id, envelope) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            message.message_id,
            _envelope(message, reason, position),
        )

    async def all(self) -> list[Parked]:
        """Parked messages in the order of the events they were made from."""
        if self.db is None:
            parked = list(self._memory.values())
        else:
            rows = await self.db.fetch("SELECT envelope FROM outbox_parked")
            parked = [_parked(str(r[0])) for r in rows]
        return sorted(parked, key=lambda p: (p.position, p.message.occurred_at))

    async def remove(self, message_id: str) -> None:
        if self.db is None:
            self._memory.pop(message_id, None)
            return
        await self.db.execute("DELETE FROM outbox_parked WHERE message_id = $1", message_id)


def _envelope(message: Message, reason: str, position: int) -> str:
    return envelope.dumps(message, {"reason": reason, "position": position})


def _parked(text: str) -> Parked:
    message, extra = envelope.loads(text)
    return Parked(message, extra["reason"], int(extra.get("position", 0)))


class Retrying(Protocol):
    failures: int
    last_error: str | None


async def retry_later(worker: Retrying, exc: Exception, backoff: float, what: str) -> float:
    """Count and log ``worker``'s failure, wait ``backoff`` seconds; the next, doubled backoff.
    The traceback is logged only for errors that are not the broker's or the network's."""
    worker.failures += 1
    worker.last_error = f"{type(exc).__name__}: {exc}"
    expected = isinstance(exc, MessagingError | OSError)
    log.warning(
        "%s: %s; retrying in %.1fs", what, worker.last_error, backoff, exc_info=None if expected else exc
    )
    await asyncio.sleep(backoff)
    return min(backoff * 2, 10.0)


class OutboxRelay:
    def __init__(
        self,
        store: EventStore,
        checkpoints: CheckpointStore,
        broker: Broker,
        exchange: str,
        translate: Translate,
        name: str = "outbox",
        batch: int = 500,
        parking: ParkingLot | None = None,
        must_arrive: Callable[[Message], bool] = lambda _message: True,
    ) -> None:
        self.store, self.checkpoints, self.broker = store, checkpoints, broker
        self.parking = parking
        # Which messages are parked when no queue takes them; the others (facts nobody has asked
        # for) are dropped from the bus: the event store keeps them, and parking every one of
        # them would grow a replay set without end.
        self.must_arrive = must_arrive
        self.dropped = 0
        self.exchange, self.translate, self.name, self.batch = exchange, translate, name, batch
        self.failures = 0
        self.last_error: str | None = None
        # In-memory figures for /metrics (read at scrape time; the checkpoint is the truth).
        self.position = 0
        self.published = 0
        self.parked = 0  # as far as this relay knows: what it parked, less what it replayed

    async def step(self) -> int:
        """Publish the next batch; returns how many events it covered (0 at the head)."""
        position = await self.checkpoints.load(self.name)
        events = await self.store.read_all(position, self.batch)
        if not events:
            return 0
        await self._publish(await self._messages(events))
        await self._saved(events[-1].position)
        return len(events)

    async def _saved(self, position: int) -> None:
        await self.checkpoints.save(self.name, position)
        self.position = position

    async def _messages(self, events: list[StoredEvent]) -> list[tuple[Message, int]]:
        pairs = [(await self.translate(e), e.position) for e in events]
        return [(m, position) for m, position in pairs if m is not None]

    async def _publish(self, batch: list[tuple[Message, int]]) -> None:
        if not batch:
            return
        try:
            with published(self.exchange, [m for m, _ in batch]) as messages:
                await self.broker.publish(self.exchange, messages)
        except Unroutable as exc:
            if self.parking is None or not exc.message_ids:
                raise
            # The broker published the rest of the batch; only the named messages wait here.
            for message, position in batch:
                if message.message_id not in exc.message_ids:
                    continue
                if not self.must_arrive(message):
                    self.dropped += 1
                    continue
                log.warning("outbox relay %s: parked %s: %s", self.name, message.routing_key, exc)
                await self.parking.park(message, str(exc), position)
                self.parked += 1
            self.published += len(batch) - len(exc.message_ids)
        else:
            self.published += len(batch)
            if log.isEnabledFor(logging.DEBUG):  # a line per message: off unless asked for
                for message, _ in batch:
                    log.debug(
                        "outbox relay %s: published %s %s",
                        self.name,
                        message.routing_key,
                        message.message_id,
                        extra={"order_id": message.correlation_id or ""},
                    )

    async def _pump(self) -> int:
        """Publish everything up to the head with two batches in flight; returns the events
        covered. The checkpoint moves after each batch's confirms, in order; on a failure the
        later batch is cancelled (or finishes: duplicates are fine) and the error raised."""
        position = self.position = await self.checkpoints.load(self.name)
        inflight: deque[tuple[asyncio.Task[None], int]] = deque()
        covered = 0
        try:
            while True:
                events = await self.store.read_all(position, self.batch) if len(inflight) < 2 else []
                if events:
                    task = asyncio.create_task(self._publish(await self._messages(events)))
                    position = events[-1].position
                    inflight.append((task, position))
                    covered += len(events)
                    if len(inflight) < 2:
                        continue
                if not inflight:
                    return covered
                task, done_position = inflight.popleft()
                await task
                await self._saved(done_position)
        finally:
            for task, _ in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*(t for t, _ in inflight), return_exceptions=True)

    async def replay_parked(self) -> tuple[int, int]:
        """Publish parked messages again; returns (sent, still parked)."""
        if self.parking is None:
            return 0, 0
        sent = 0
        for parked in await self.parking.all():
            try:
                with published(self.exchange, [parked.message]) as messages:
                    await self.broker.publish(self.exchange, messages)
            except Unroutable:
                continue
            await self.parking.remove(parked.message.message_id)
            sent += 1
        self.published += sent
        still = len(await self.parking.all())
        self.parked = still
        return sent, still

    async def run(self, stop: asyncio.Event, idle_timeout: float = 1.0, replay_every: float = 5.0) -> None:
        """Relay until ``stop``; parked messages are offered again every ``replay_every`` seconds
        while idle (a consumer that binds late, e.g. a service starting after this one, gets
        them without anyone typing ``ordermesh outbox replay``)."""
        await self.broker.declare_exchange(self.exchange)
        loop = asyncio.get_running_loop()
        backoff, next_replay = 0.1, loop.time() + replay_every
        while not stop.is_set():
            try:
                if await self._pump() == 0:
                    if self.parking is not None and loop.time() >= next_replay:
                        next_replay = loop.time() + replay_every
                        await self.replay_parked()
                    await self.store.wait_for_events(await self.checkpoints.load(self.name), idle_timeout)
                backoff, self.last_error = 0.1, None
            except Exception as exc:
                # Whatever failed, the checkpoint did not move: retrying publishes the same
                # events again, so a relay never stops relaying (it is nobody's task to restart it).
                backoff = await retry_later(self, exc, backoff, f"outbox relay {self.name}")

    async def status(self) -> RelayStatus:
        return RelayStatus(
            self.name,
            await self.checkpoints.load(self.name),
            await self.store.head_position(),
            self.failures,
            self.last_error,
        )

"""The outbox relay: the event store is the outbox.

An event-sourced service's state change *is* its events, committed in one transaction; the
messages it owes the world are derived from them. The relay reads the store from a durable
checkpoint, translates each event into zero or one message, publishes a batch in position order,
waits for the broker's confirms, and only then moves the checkpoint. Killed mid-batch, it
publishes the batch again on restart: at-least-once, same message ids (the event ids), in order
per stream, so consumers' inboxes make it effectively once.

An ``Unroutable`` batch is an error, not a loss: the relay logs it, counts it, backs off and
tries again, and ``status()`` says what it is stuck on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.subscription import CheckpointStore
from ordermesh.messaging.port import Broker, Message, MessagingError

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
    ) -> None:
        self.store, self.checkpoints, self.broker = store, checkpoints, broker
        self.exchange, self.translate, self.name, self.batch = exchange, translate, name, batch
        self.failures = 0
        self.last_error: str | None = None

    async def step(self) -> int:
        """Publish the next batch; returns how many events it covered (0 at the head)."""
        position = await self.checkpoints.load(self.name)
        events = await self.store.read_all(position, self.batch)
        if not events:
            return 0
        messages = [m for m in [await self.translate(e) for e in events] if m is not None]
        if messages:
            await self.broker.publish(self.exchange, messages)
        await self.checkpoints.save(self.name, events[-1].position)
        return len(events)

    async def run(self, stop: asyncio.Event, idle_timeout: float = 1.0) -> None:
        await self.broker.declare_exchange(self.exchange)
        backoff = 0.1
        while not stop.is_set():
            try:
                if await self.step() == 0:
                    await self.store.wait_for_events(await self.checkpoints.load(self.name), idle_timeout)
                backoff, self.last_error = 0.1, None
            except (MessagingError, OSError) as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox relay %s: %s; retrying in %.1fs", self.name, self.last_error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def status(self) -> RelayStatus:
        return RelayStatus(
            self.name,
            await self.checkpoints.load(self.name),
            await self.store.head_position(),
            self.failures,
            self.last_error,
        )

"""Wires the order service from settings: store, read models, projectors, idempotency."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb, connect
from ordermesh.eventstore.aggregate import Repository
from ordermesh.eventstore.memory import MemoryEventStore
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.sql import SqlEventStore
from ordermesh.idempotency import IdempotencyStore, MemoryIdempotencyStore, SqlIdempotencyStore
from ordermesh.readmodel.memory import MemoryDocStore
from ordermesh.readmodel.port import DocStore
from ordermesh.readmodel.projection import Projector
from ordermesh.readmodel.sql import SqlDocStore
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import codec
from ordermesh.services.orders.projections import STREAM_PREFIX, order_projections
from ordermesh.services.orders.service import OrderService


@dataclass
class OrderSystem:
    store: EventStore
    docs: DocStore
    idempotency: IdempotencyStore
    projectors: list[Projector]
    service: OrderService
    db: SqlDb | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def projector(self, name: str) -> Projector:
        for p in self.projectors:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.projectors)
        raise KeyError(f"no projection named {name!r}; known: {names}")

    async def start(self) -> None:
        """Catch the read models up, then follow the store in the background."""
        for p in self.projectors:
            await p.catch_up()
        self._tasks = [
            asyncio.create_task(p.run(self._stop), name=f"projector:{p.name}") for p in self.projectors
        ]

    async def ready(self) -> None:
        if self.db is not None:
            await self.db.ping()

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()


async def build_order_system(
    database_url: str, clock: Clock | None = None, snapshot_every: int = 100
) -> OrderSystem:
    clock = clock or SystemClock()
    store: EventStore
    docs: DocStore
    idempotency: IdempotencyStore
    db: SqlDb | None = None
    if database_url.startswith("memory://"):
        store, docs, idempotency = MemoryEventStore(clock), MemoryDocStore(), MemoryIdempotencyStore(clock)
    else:
        db = await connect(database_url)
        store = await SqlEventStore.open(db, clock)
        docs = await SqlDocStore.open(db)
        idempotency = await SqlIdempotencyStore.open(db, clock)
    repository = Repository(store, OrderAggregate, codec, STREAM_PREFIX, snapshot_every, clock)
    projectors = [Projector(store, docs, p) for p in order_projections()]
    service = OrderService(repository, docs, projectors, clock)
    return OrderSystem(store, docs, idempotency, projectors, service, db)

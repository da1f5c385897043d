"""The order service's use cases: commands on the aggregate, queries on the read models.

Transports (REST, gRPC, CLI) call these with plain Python values and an authenticated user id;
every refusal is an ``OrdermeshError``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from ordermesh import tracing
from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import ConcurrencyConflict, NotFound, PermissionDenied
from ordermesh.eventstore.aggregate import Repository
from ordermesh.eventstore.model import NO_STREAM, StoredEvent
from ordermesh.readmodel.port import DocStore
from ordermesh.readmodel.projection import Projector
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.listing import DEFAULT_LIMIT, user_orders_page
from ordermesh.services.orders.projections import ORDER_DETAIL

log = logging.getLogger("ordermesh.orders")

# How long a command waits for the read models to show its own write before answering anyway.
READ_YOUR_WRITES_TIMEOUT = 2.0


class OrderService:
    def __init__(
        self,
        repository: Repository[OrderAggregate],
        docs: DocStore,
        projectors: Sequence[Projector],
        clock: Clock | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.repository = repository
        self.docs = docs
        self.projectors = list(projectors)
        self.clock = clock or SystemClock()
        self._new_id = new_id

    async def create_order(
        self,
        user_id: str,
        user_email: str,
        currency: str,
        items: Sequence[OrderLine],
        *,
        order_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new order (a fresh id unless given); ``metadata`` joins the ``OrderCreated`` event's.
        ``ConcurrencyConflict`` when an order with the given id exists."""
        order_id = order_id or self._new_id()
        tracing.tag(order_id=order_id)  # on the REST or gRPC server span that creates it
        order = OrderAggregate.create(order_id, user_id, user_email, currency, items, self.clock.now())
        result = await self.repository.save(order, {**tracing.event_metadata(), **(metadata or {})})
        log.info("order created: %d %s for %s", order.total, currency, user_id, extra={"order_id": order_id})
        await self._await_projections(result.position)
        return order.to_snapshot()

    async def _await_projections(self, position: int) -> None:
        for projector in self.projectors:
            await projector.wait_until(position, READ_YOUR_WRITES_TIMEOUT)

    async def get_order(self, order_id: str, requester: str | None) -> dict[str, Any]:
        raw = await self.docs.get(ORDER_DETAIL, order_id)
        if raw is None:
            raise NotFound(f"order {order_id} not found")
        doc: dict[str, Any] = orjson.loads(raw)
        _check_owner(doc, order_id, requester)
        return doc

    async def get_order_at(
        self,
        order_id: str,
        requester: str | None,
        *,
        version: int | None = None,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        # Whose it is, before anything about its past: a missing order and another user's must
        # answer alike, and "not found at that time" would let a stranger bisect its creation.
        if requester is not None:
            _check_owner({"user_id": await self._owner(order_id)}, order_id, requester)
        order = await self.repository.load(order_id, version=version, as_of=as_of)
        doc = order.to_snapshot()
        if version is not None and order.version < version:
            raise NotFound(f"order {order_id} has no version {version}; its latest is {order.version}")
        return doc

    async def history(self, order_id: str, requester: str | None) -> list[dict[str, Any]]:
        stream = await self.repository.store.read_stream(self.repository.stream_id(order_id))
        _check_owner({"user_id": self._first_owner(stream)}, order_id, requester)
        out = []
        for e in stream:
            schema_version, data = self.repository.codec.upcast_data(e)
            out.append(
                {
                    "type": e.type,
                    "version": e.version,
                    "position": e.position,
                    "occurred_at": e.occurred_at.isoformat().replace("+00:00", "Z"),
                    "schema_version": schema_version,
                    "data": data,
                }
            )
        return out

    async def _owner(self, order_id: str) -> str | None:
        """The user the order belongs to (from its first event), None if there is no such order."""
        return self._first_owner(await self.repository.store.read_stream(self.repository.stream_id(order_id)))

    def _first_owner(self, stream: Sequence[StoredEvent]) -> str | None:
        if not stream:
            return None
        owner = getattr(self.repository.codec.decode(stream[0]), "user_id", None)
        return owner if isinstance(owner, str) else None

    async def user_orders_json(
        self, user_id: str, requester: str | None, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> bytes:
        """One page of the user's orders, newest first, as the exact JSON body
        ``{"orders": [...], "next": CURSOR|null}``; ``after`` is the previous page's ``next``."""
        if requester is not None and user_id != requester:
            raise PermissionDenied("you may only list your own orders")
        return await user_orders_page(self.docs, user_id, limit, after)

    async def change(
        self, order_id: str, command: Callable[[OrderAggregate, datetime], None]
    ) -> dict[str, Any]:
        """Run a lifecycle command (used by sagas), retrying once per concurrent writer."""
        for _ in range(5):
            order = await self.repository.load(order_id)
            command(order, self.clock.now())
            try:
                result = await self.repository.save(order, tracing.event_metadata())
            except ConcurrencyConflict:
                continue
            await self._await_projections(result.position)
            return order.to_snapshot()
        raise ConcurrencyConflict(self.repository.stream_id(order_id), NO_STREAM)


def _check_owner(doc: dict[str, Any], order_id: str, requester: str | None) -> None:
    # Someone else's order is "not found", word for word as a missing one: its existence is not
    # the requester's business. ``requester=None`` is the local operator (the CLI on the
    # service's own database), who still learns when there is no such order.
    if doc.get("user_id") is None or (requester is not None and doc.get("user_id") != requester):
        raise NotFound(f"order {order_id} not found")

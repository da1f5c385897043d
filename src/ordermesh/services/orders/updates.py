"""The live feed of order changes behind ``StreamOrderUpdates``, free of transport types.

A feed reads the event store from a position, keeps what it needs per order (the order as of
the last event it saw, or "not the caller's"), and yields ``(event, order)`` pairs for the
caller's orders. It pulls one page at a time and only when its consumer asks for the next item,
so a slow client holds back the reads (backpressure) instead of growing server memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ordermesh.auth import check_user_id
from ordermesh.errors import InfrastructureError, PermissionDenied, ValidationError
from ordermesh.eventstore.model import StoredEvent
from ordermesh.services.orders.projections import STREAM_PREFIX, OrderStates
from ordermesh.services.orders.service import OrderService

PAGE = 256


class OrderFeed:
    def __init__(self, service: OrderService, stopping: asyncio.Event) -> None:
        self._service = service
        self._store = service.repository.store
        self._stopping = stopping

    async def updates(
        self,
        requester: str,
        *,
        user_id: str | None = None,
        order_id: str | None = None,
        after_position: int = 0,
    ) -> AsyncIterator[tuple[StoredEvent, dict[str, Any]]]:
        if (user_id is None) == (order_id is None):
            raise ValidationError("give exactly one of user_id or order_id")
        if after_position < 0:
            raise ValidationError("after_position must be 0 or more")
        if user_id is not None and check_user_id(user_id) != requester:
            raise PermissionDenied("you may only follow your own orders")
        if order_id is not None:
            await self._service.get_order_at(order_id, requester)  # NotFound unless the caller's
        states = OrderStates(self._service.repository)
        foreign: set[str] = set()  # orders seen to be someone else's: skipped without work
        position = after_position
        while True:
            page = await self._next_page(position)
            for event in page:
                position = event.position
                oid = event.stream_id.removeprefix(STREAM_PREFIX)
                if not event.stream_id.startswith(STREAM_PREFIX) or (order_id and oid != order_id):
                    continue
                if oid in foreign:
                    continue
                if event.version == 1 and event.data.get("user_id") != requester:
                    foreign.add(oid)
                    continue
                order = await states.after(event)
                if order["user_id"] != requester:
                    foreign.add(oid)
                    continue
                yield event, order

    async def _next_page(self, position: int) -> list[StoredEvent]:
        while True:
            if self._stopping.is_set():
                raise InfrastructureError(
                    f"server shutting down; reconnect and resume after position {position}"
                )
            page = await self._store.read_all(position, PAGE)
            if page:
                return page
            waiter = asyncio.ensure_future(self._store.wait_for_events(position, 5.0))
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

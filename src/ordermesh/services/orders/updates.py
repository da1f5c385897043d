"""The live feed of order changes behind ``StreamOrderUpdates``, free of transport types.

A feed reads the event store from a position, keeps what it needs per order (the order as of
the last event it saw, or "not the caller's"), and yields ``(event, order)`` pairs for the
caller's orders. It pulls one page at a time and only when its consumer asks for the next item,
so a slow client holds back the reads (backpressure) instead of growing server memory.

What a feed remembers is bounded (``STATES_KEPT`` orders, ``FOREIGN_KEPT`` ids of other users'
orders; a forgotten order is loaded again if it shows up), so a replay from position 0 over a
long history holds the same memory as one over a short history, and lets it all go when it
ends. At the head, a feed waits on the store's one shared wake-up with no timer of its own:
idle feeds cost nothing until something is appended. Each user may hold ``max_per_user`` feeds
open at once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ordermesh.auth import check_user_id
from ordermesh.errors import InfrastructureError, PermissionDenied, ValidationError
from ordermesh.eventstore.model import StoredEvent
from ordermesh.ratelimit import ConcurrencyLimit
from ordermesh.services.orders.projections import STREAM_PREFIX, evolve
from ordermesh.services.orders.service import OrderService

PAGE = 256
STATES_KEPT = 256  # the caller's orders kept as of their last event (the ones changing now)
FOREIGN_KEPT = 4096  # ids of other users' orders remembered as such
MAX_STREAMS_PER_USER = 16  # ORDERMESH_MAX_STREAMS_PER_USER's default


class _Seen:
    """What one feed knows per order, oldest forgotten first."""

    def __init__(self, service: OrderService) -> None:
        self._repository = service.repository
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._foreign: OrderedDict[str, None] = OrderedDict()

    def is_foreign(self, order_id: str) -> bool:
        return order_id in self._foreign

    def foreign(self, order_id: str) -> None:
        self._states.pop(order_id, None)
        self._foreign[order_id] = None
        if len(self._foreign) > FOREIGN_KEPT:
            self._foreign.popitem(last=False)

    async def after(self, order_id: str, event: StoredEvent) -> dict[str, Any]:
        """The order's resource after ``event``; an order first seen mid-stream (or forgotten) is
        loaded as it was just before it."""
        before = self._states.pop(order_id, None)
        if before is None and event.version > 1:
            before = (await self._repository.load(order_id, version=event.version - 1)).to_snapshot()
        order = self._states[order_id] = evolve(before, event)
        if len(self._states) > STATES_KEPT:
            self._states.popitem(last=False)
        return order

    def clear(self) -> None:
        self._states.clear()
        self._foreign.clear()


class OrderFeed:
    def __init__(
        self, service: OrderService, stopping: asyncio.Event, max_per_user: int = MAX_STREAMS_PER_USER
    ) -> None:
        self._service = service
        self._store = service.repository.store
        self._stopping = stopping
        self._open = ConcurrencyLimit(max_per_user, "open order update streams")

    def open_streams(self, user: str) -> int:
        return self._open.held(user)

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
        with self._open.hold(requester):
            seen = _Seen(self._service)
            try:
                async with contextlib.aclosing(
                    self._follow(seen, requester, order_id, after_position)
                ) as items:
                    async for item in items:
                        yield item
            finally:
                seen.clear()  # at once, whoever still holds this generator

    async def _follow(
        self, seen: _Seen, requester: str, order_id: str | None, position: int
    ) -> AsyncGenerator[tuple[StoredEvent, dict[str, Any]], None]:
        while True:
            page = await self._next_page(position)
            for event in page:
                position = event.position
                oid = event.stream_id.removeprefix(STREAM_PREFIX)
                if not event.stream_id.startswith(STREAM_PREFIX) or (order_id and oid != order_id):
                    continue
                if seen.is_foreign(oid):
                    continue
                if event.version == 1 and event.data.get("user_id") != requester:
                    seen.foreign(oid)
                    continue
                order = await seen.after(oid, event)
                if order["user_id"] != requester:
                    seen.foreign(oid)
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
            # No timeout: the store's shared wake-up (appends here, NOTIFY, its one poller) says
            # when to read again.
            waiter = asyncio.ensure_future(self._store.wait_for_events(position, math.inf))
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

"""The order service's read models: one document per order, and each user's orders as an index."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ordermesh.eventstore.aggregate import EventMeta, Repository
from ordermesh.eventstore.model import StoredEvent
from ordermesh.readmodel.projection import DocBatch
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import codec

STREAM_PREFIX = "order-"
ORDER_DETAIL = "order_detail"
USER_ORDERS = "user_orders"


def evolve(resource: dict[str, Any] | None, event: StoredEvent) -> dict[str, Any]:
    """The order resource after ``event``: the aggregate's own rules, applied to its snapshot."""
    order_id = event.stream_id.removeprefix(STREAM_PREFIX)
    order = OrderAggregate.blank(order_id) if resource is None else OrderAggregate.from_snapshot(resource)
    order.apply(codec.decode(event), EventMeta(event.version, event.occurred_at))
    order.version = event.version
    return order.to_snapshot()


class OrderStates:
    """Each order's resource as of the last event seen, for readers that walk the store in order
    (the update feed, the outbox relay). An order first seen mid-stream (after a restart, or a
    feed resumed from a position) is loaded as it was just before that event."""

    def __init__(self, repository: Repository[OrderAggregate], limit: int = 10_000) -> None:
        self._repository = repository
        self._orders: dict[str, dict[str, Any]] = {}
        self._limit = limit

    async def after(self, event: StoredEvent) -> dict[str, Any]:
        order_id = event.stream_id.removeprefix(STREAM_PREFIX)
        before = self._orders.get(order_id)
        if before is None and event.version > 1:
            before = (await self._repository.load(order_id, version=event.version - 1)).to_snapshot()
        if len(self._orders) >= self._limit:
            self._orders.clear()  # rebuilt lazily: bounds memory on very long walks
        order = self._orders[order_id] = evolve(before, event)
        return order


def _is_order_event(event: StoredEvent) -> bool:
    return event.stream_id.startswith(STREAM_PREFIX) and codec.knows(event.type)


class OrderDetailProjection:
    name = ORDER_DETAIL

    async def apply(self, event: StoredEvent, docs: DocBatch) -> None:
        if not _is_order_event(event):
            return
        key = event.stream_id.removeprefix(STREAM_PREFIX)
        docs.put(key, evolve(await docs.get(key), event))


# A user's list is an index: one row per order under the user's prefix, keyed so that key order
# is newest first (the inverted position of the order's first event: unique, and the same after a
# rebuild, so cursors outlive one). Writing an order touches its own row and pointer, never the
# rest of the list: the cost of a change does not grow with the user's history.
_NEWEST = 2**64 - 1
_SORT_DIGITS = 20


def user_prefix(user_id: str) -> str:
    """The prefix of a user's rows (the id escaped, so no id's prefix is another's)."""
    return f"u/{quote(user_id, safe='')}/"


def row_key(user_id: str, position: int) -> str:
    return user_prefix(user_id) + f"{_NEWEST - position:0{_SORT_DIGITS}d}"


def row_position(key: str) -> int:
    """The position of the order's first event, from its row key."""
    return _NEWEST - int(key[-_SORT_DIGITS:])


def _pointer_key(order_id: str) -> str:
    return f"o:{order_id}"


class UserOrdersProjection:
    """Per order, its resource in the owner's list (``user_prefix`` + newest first), and a pointer
    from the order id to that row for the events that follow."""

    name = USER_ORDERS
    version = 2  # 1 kept the whole list in one document per user

    async def apply(self, event: StoredEvent, docs: DocBatch) -> None:
        if not _is_order_event(event):
            return
        pointer_key = _pointer_key(event.stream_id.removeprefix(STREAM_PREFIX))
        if event.version == 1:
            resource = evolve(None, event)
            key = row_key(resource["user_id"], event.position)
            docs.put(pointer_key, {"row": key})
            docs.put(key, resource)
            return
        pointer = await docs.get(pointer_key)
        row = await docs.get(pointer["row"]) if pointer is not None and "row" in pointer else None
        if pointer is not None and row is not None:
            docs.put(pointer["row"], evolve(row, event))


def order_projections() -> list[OrderDetailProjection | UserOrdersProjection]:
    return [OrderDetailProjection(), UserOrdersProjection()]

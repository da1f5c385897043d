"""The order service's read models: one document per order, and each user's order list."""

from __future__ import annotations

from typing import Any

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


def user_key(user_id: str) -> str:
    return f"u:{user_id}"


class UserOrdersProjection:
    """Per user, ``{"orders": [...]}`` newest first: the exact body of the list endpoint."""

    name = USER_ORDERS

    async def apply(self, event: StoredEvent, docs: DocBatch) -> None:
        if not _is_order_event(event):
            return
        order_id = event.stream_id.removeprefix(STREAM_PREFIX)
        index_key = f"o:{order_id}"
        if event.version == 1:
            resource = evolve(None, event)
            docs.put(index_key, {"user_id": resource["user_id"]})
            listing = await docs.get(user_key(resource["user_id"])) or {"orders": []}
            listing["orders"].insert(0, resource)
            docs.put(user_key(resource["user_id"]), listing)
            return
        index = await docs.get(index_key)
        if index is None:
            return
        key = user_key(index["user_id"])
        listing = await docs.get(key) or {"orders": []}
        for i, resource in enumerate(listing["orders"]):
            if resource["id"] == order_id:
                listing["orders"][i] = evolve(resource, event)
                docs.put(key, listing)
                return


def order_projections() -> list[OrderDetailProjection | UserOrdersProjection]:
    return [OrderDetailProjection(), UserOrdersProjection()]

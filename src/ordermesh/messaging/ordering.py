"""Per-key order for a concurrent consumer: ``broker.subscribe(..., in_order(handler))``.

A subscription with a prefetch of N runs up to N handlers at once, so two messages about the same
order (``order.paid``, then ``order.shipped`` on a queue bound to ``order.#``) may be handled
side by side, or the second first. ``in_order`` keeps deliveries with the same key (by default
the correlation id, which the order service sets to the order id) one after another, in delivery
order, while deliveries with different keys still run concurrently.

It relies on what every adapter guarantees: handlers are *started* in delivery order (each
delivery's task takes its first step in the order the deliveries arrived), and the wrapper takes
its key's lock (FIFO) before it awaits anything. Put it innermost of the wrappers that await
before calling through (``traced`` and ``ConsumerMetrics.consumed`` do not await first, so any
nesting works).

What it cannot do: a delivery that fails goes through a delay queue and comes back *after* the
key's later messages (retry order is the broker's); and a key with many messages waiting holds
that many prefetch slots while it waits. Messages without a key are not ordered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ordermesh.messaging.port import Delivery, Handler

Key = Callable[[Delivery], "str | None"]


def by_correlation_id(delivery: Delivery) -> str | None:
    return delivery.message.correlation_id


def in_order(handler: Handler, key: Key = by_correlation_id) -> Handler:
    """``handler``, run for one delivery per key at a time, in delivery order."""
    locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> (lock, [holders and waiters])

    async def ordered(delivery: Delivery) -> None:
        k = key(delivery)
        if k is None:
            await handler(delivery)
            return
        entry = locks.get(k)
        if entry is None:
            entry = locks[k] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                await handler(delivery)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del locks[k]  # nobody holds or waits: keys do not pile up

    return ordered


__all__ = ["by_correlation_id", "in_order"]

"""Consumers and brokers for tests: one ``Collector`` for deliveries, one dead-letter poller,
retry policies fast enough for a test, and the payload of an order message.

``Collector`` is a handler that keeps what it is given and wakes ``wait_for`` on each delivery,
so a test waits for deliveries without polling; ``fail`` lets it raise (a handler that fails,
retried or dead-lettered by the broker, every attempt kept), ``decode`` lets it refuse a body
that is not JSON as ordermesh's consumers do (the poison is not kept). A dead-letter queue has no
notification, so ``dead_letters`` polls it with the suite's timeout policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Broker, DeadLetter, Delivery, Message, RetryPolicy
from tests.helpers.timing import TIMEOUT, eventually, within

T = TypeVar("T")

# Retries 50 ms apart, then 100, capped at 200: a dead letter after three attempts, well within
# a second.
FAST = RetryPolicy(max_attempts=3, initial=0.05, multiplier=2.0, maximum=0.2)
# The same pace for twenty attempts (about 3.5 s): long enough for a server a test starts late.
FAST_LONG = RetryPolicy(max_attempts=20, initial=0.05, multiplier=2.0, maximum=0.2)


class Collector:
    """A handler that keeps its deliveries (``got``, and ``at``: when each came, by the loop's
    clock); ``wait_for(n)`` waits for n of them without polling."""

    def __init__(self, fail: Callable[[Delivery], object] | None = None, *, decode: bool = False) -> None:
        self.got: list[Delivery] = []
        self.at: list[float] = []
        self._fail = fail
        self._decode = decode
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        if self._decode:
            delivery.message.payload()  # PermanentError for a body that is not JSON
        self.got.append(delivery)
        self.at.append(asyncio.get_running_loop().time())
        self._changed.set()
        if self._fail is not None:
            self._fail(delivery)

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Delivery]:
        """The deliveries so far, once there are at least ``count``."""

        async def enough() -> None:
            while len(self.got) < count:
                self._changed.clear()
                await self._changed.wait()

        await within(enough(), timeout, what=f"{count} deliveries (got {len(self.got)})")
        return self.got


async def dead_letters(
    broker: Broker, queue: str | None, count: int, timeout: float = TIMEOUT
) -> list[DeadLetter]:
    """``queue``'s dead letters (every queue's for None), once there are at least ``count``."""

    async def enough() -> list[DeadLetter] | None:
        letters = await broker.dead_letters(queue)
        return list(letters) if len(letters) >= count else None

    return await eventually(enough, timeout, what=f"{count} dead letter(s) in {queue or 'any queue'}")


async def take(items: AsyncIterator[T], n: int) -> list[T]:
    """The first ``n`` items of an async iterator (which may be endless)."""
    out: list[T] = []
    async for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out


class FailsOnce(MemoryBroker):
    """A memory broker whose first ``publish`` raises ``error`` and publishes nothing."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self._error: Exception | None = error

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        await super().publish(exchange, messages)


def order_payload(order_id: str = "o-1", **extra: Any) -> dict[str, Any]:
    """An ``order.*`` message's payload, as the order service publishes it (ada's two lines)."""
    return {
        "id": order_id,
        "user_id": "u-1",
        "user_email": "ada@example.com",
        "items": [
            {"sku": "SKU-1", "quantity": 2, "unit_price": 1250},
            {"sku": "B", "quantity": 1, "unit_price": 5},
        ],
        "currency": "EUR",
        "total": 2505,
        "status": "pending",
        **extra,
    }


__all__ = ["FAST", "FAST_LONG", "Collector", "FailsOnce", "dead_letters", "order_payload", "take"]

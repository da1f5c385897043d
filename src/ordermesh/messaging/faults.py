"""The queue faults (``resilience.faults``) on the consumer side of any broker adapter.

:func:`with_faults` wraps a broker: everything passes through, and every handler given to
``subscribe`` is wrapped once, so the faults apply alike on the memory, embedded and RabbitMQ
adapters, through each adapter's own settling (ack, retry, dead letter). With no queue fault set a
delivery costs one check. For a queue with a plan, each delivery meets, in order:

- delay: ``delay_ms`` before anything else;
- drop before ack: the handler does not run and nothing is acknowledged; after
  ``REDELIVERY_PAUSE`` the same delivery is handed out again with ``redelivered=True`` (and meets
  the faults again), as the broker would once it notices a dead consumer. The broker's message
  stays unacknowledged meanwhile, so a real crash then gets the broker's own redelivery. It is
  emulated in the wrapper because the port has no "leave it unacknowledged" for a handler, and
  therefore does not count towards a queue's delivery limit. A consumer that stops hands its held
  deliveries to the handler at once (none is lost, none holds the shutdown);
- poison: the body replaced by undecodable bytes. Every ordermesh consumer refuses those with a
  ``PermanentError``, so the adapter dead-letters the message (its original body) at once, with
  the reason in its headers, marked "poisoned by an injected fault";
- duplicate: the handler runs twice, the second time with ``redelivered=True``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ordermesh.messaging.port import (
    Broker,
    DeadLetter,
    Delivery,
    Handler,
    Message,
    PermanentError,
    RetryPolicy,
    Subscription,
)
from ordermesh.resilience.faults import POISON, REDELIVERY_PAUSE, Faults


class FaultySubscription:
    """A subscription whose held deliveries are let go when it stops."""

    def __init__(self, inner: Subscription, stopping: asyncio.Event) -> None:
        self._inner = inner
        self._stopping = stopping

    async def stop(self) -> None:
        self._stopping.set()
        await self._inner.stop()


class FaultyBroker:
    """``broker`` with ``faults``' queue plans applied to what it delivers (see the module doc).
    Adapter-specific attributes pass through too."""

    def __init__(self, broker: Broker, faults: Faults) -> None:
        self._broker = broker
        self.faults = faults

    @property
    def connected(self) -> bool:
        return self._broker.connected

    async def declare_exchange(self, exchange: str) -> None:
        await self._broker.declare_exchange(exchange)

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        await self._broker.publish(exchange, messages)

    async def subscribe(
        self,
        queue: str,
        exchange: str,
        binding_keys: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        retry: RetryPolicy = RetryPolicy(),
    ) -> Subscription:
        stopping = asyncio.Event()
        faulted = _faulted(self.faults, queue, handler, stopping)
        inner = await self._broker.subscribe(
            queue, exchange, binding_keys, faulted, prefetch=prefetch, retry=retry
        )
        self.faults.consumed.add(queue)
        return FaultySubscription(inner, stopping)

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        return await self._broker.dead_letters(queue)

    async def replay(self, queue: str, message_id: str) -> None:
        await self._broker.replay(queue, message_id)

    async def delete_topology(self) -> None:
        await self._broker.delete_topology()

    async def close(self) -> None:
        await self._broker.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)


def with_faults(broker: Broker, faults: Faults) -> Broker:
    """``broker``, its consumers subject to ``faults``' queue plans."""
    return FaultyBroker(broker, faults)


def _faulted(faults: Faults, queue: str, handler: Handler, stopping: asyncio.Event) -> Handler:
    async def handle(delivery: Delivery) -> None:
        if not faults.queues:
            await handler(delivery)
            return
        while not stopping.is_set():
            plan = faults.queues.get(queue)
            if plan is None:
                break
            decided = faults.decide_delivery(plan)
            if decided.delay:
                await _pause(faults, decided.delay, stopping)
            if not decided.drop:
                if decided.poison:
                    await _poisoned(handler, delivery)
                else:
                    await handler(delivery)
                if decided.duplicate:
                    await handler(replace(delivery, redelivered=True))
                return
            await _pause(faults, REDELIVERY_PAUSE, stopping)
            delivery = replace(delivery, redelivered=True)
        await handler(delivery)

    return handle


async def _poisoned(handler: Handler, delivery: Delivery) -> None:
    poisoned = replace(delivery, message=replace(delivery.message, body=POISON))
    try:
        await handler(poisoned)
    except PermanentError as exc:
        raise PermanentError(f"{exc} (poisoned by an injected fault)") from exc


async def _pause(faults: Faults, seconds: float, stopping: asyncio.Event) -> None:
    """``faults.sleep(seconds)``, cut short when the subscription stops."""
    if stopping.is_set():
        return
    stopped = asyncio.ensure_future(stopping.wait())
    slept = asyncio.ensure_future(faults.sleep(seconds))
    try:
        await asyncio.wait((stopped, slept), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, slept):
            task.cancel()
        await asyncio.gather(stopped, slept, return_exceptions=True)


__all__ = ["FaultyBroker", "FaultySubscription", "with_faults"]

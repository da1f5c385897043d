"""In-memory broker for fast tests, with RabbitMQ's behaviour: topic routing, mandatory
publishing, prefetch, ack after the handler, retries through delays, dead-lettering, replay —
and, on request, duplicate deliveries, so idempotent consumers can be tested."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ordermesh.errors import NotFound
from ordermesh.messaging.port import (
    DeadLetter,
    Delivery,
    Handler,
    Message,
    PermanentError,
    RetryPolicy,
    Unroutable,
)
from ordermesh.messaging.topics import matches

log = logging.getLogger("ordermesh.messaging.memory")


@dataclass
class _Queue:
    name: str
    items: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    dead: list[DeadLetter] = field(default_factory=list)


class _MemorySubscription:
    def __init__(self, workers: list[asyncio.Task[None]]) -> None:
        self._workers = workers

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MemoryBroker:
    def __init__(self, duplicate_every: int = 0) -> None:
        """``duplicate_every=N`` delivers every N-th published message twice (the second time
        with ``redelivered=True``), as a broker does after a lost ack."""
        self._exchanges: set[str] = set()
        self._bindings: dict[str, list[tuple[str, str]]] = {}
        self._queues: dict[str, _Queue] = {}
        self._duplicate_every = duplicate_every
        self._published = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._subscriptions: list[_MemorySubscription] = []
        self._closed = False

    @property
    def connected(self) -> bool:
        return not self._closed

    async def declare_exchange(self, exchange: str) -> None:
        self._exchanges.add(exchange)
        self._bindings.setdefault(exchange, [])

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        if exchange not in self._exchanges:
            raise Unroutable(f"exchange {exchange!r} does not exist", [m.message_id for m in messages])
        unroutable: list[Message] = []
        for message in messages:
            targets = {q for key, q in self._bindings[exchange] if matches(key, message.routing_key)}
            if not targets:
                unroutable.append(message)
                continue
            self._published += 1
            twice = self._duplicate_every and self._published % self._duplicate_every == 0
            for name in sorted(targets):
                delivery = Delivery(message, exchange, name)
                self._queues[name].items.put_nowait(delivery)
                if twice:
                    self._queues[name].items.put_nowait(replace(delivery, redelivered=True))
        if unroutable:
            keys = sorted({m.routing_key for m in unroutable})
            raise Unroutable(
                f"{exchange}: {len(unroutable)} message(s) reached no queue (routing keys {keys})",
                [m.message_id for m in unroutable],
            )

    def _queue(self, name: str) -> _Queue:
        if name not in self._queues:
            self._queues[name] = _Queue(name)
        return self._queues[name]

    async def subscribe(
        self,
        queue: str,
        exchange: str,
        binding_keys: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        retry: RetryPolicy = RetryPolicy(),
    ) -> _MemorySubscription:
        await self.declare_exchange(exchange)
        q = self._queue(queue)
        for key in binding_keys:
            if (key, queue) not in self._bindings[exchange]:
                self._bindings[exchange].append((key, queue))
        workers = [
            asyncio.create_task(self._work(q, handler, retry), name=f"consumer:{queue}:{i}")
            for i in range(max(prefetch, 1))
        ]
        sub = _MemorySubscription(workers)
        self._subscriptions.append(sub)
        return sub

    async def _work(self, q: _Queue, handler: Handler, retry: RetryPolicy) -> None:
        while True:
            delivery = await q.items.get()
            try:
                await handler(delivery)
            except asyncio.CancelledError:
                q.items.put_nowait(replace(delivery, redelivered=True))  # unacked: back it goes
                raise
            except PermanentError as exc:
                self._dead(q, delivery, exc)
            except Exception as exc:
                if delivery.attempt >= retry.max_attempts:
                    self._dead(q, delivery, exc)
                else:
                    again = replace(delivery, attempt=delivery.attempt + 1, redelivered=False)
                    timer = asyncio.get_running_loop().call_later(
                        retry.delay(delivery.attempt), q.items.put_nowait, again
                    )
                    self._timers.add(timer)

    def _dead(self, q: _Queue, delivery: Delivery, exc: BaseException) -> None:
        message, error = delivery.message, f"{type(exc).__name__}: {exc}"
        q.dead.append(
            DeadLetter(
                id=message.message_id,
                queue=q.name,
                message=message,
                error=error,
                attempts=delivery.attempt,
                original_exchange=delivery.exchange,
                original_routing_key=message.routing_key,
            )
        )
        # The other adapters' line and fields (messaging.embedded), so tests see what production logs.
        log.warning(
            "queue %s: dead-lettered %s after %d attempt(s): %s",
            q.name,
            message.message_id,
            delivery.attempt,
            error,
            extra={
                "order_id": message.correlation_id or "",
                "message_id": message.message_id,
                "routing_key": message.routing_key,
                "queue": q.name,
                "attempts": delivery.attempt,
            },
        )

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        names = [queue] if queue is not None else sorted(self._queues)
        return [d for name in names if name in self._queues for d in self._queues[name].dead]

    async def replay(self, queue: str, message_id: str) -> None:
        q = self._queues.get(queue)
        letter = next((d for d in (q.dead if q else []) if d.id == message_id), None)
        if q is None or letter is None:
            raise NotFound(f"no dead letter {message_id} in {queue}.dlq")
        q.dead.remove(letter)
        q.items.put_nowait(Delivery(letter.message, letter.original_exchange, queue))

    async def delete_topology(self) -> None:
        await self.close()
        self._exchanges.clear()
        self._bindings.clear()
        self._queues.clear()

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        for sub in self._subscriptions:
            await sub.stop()
        self._subscriptions.clear()

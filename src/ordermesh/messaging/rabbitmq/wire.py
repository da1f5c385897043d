"""How a broker talks to aiormq: the ``Wire`` it is opened with, and the stock one.

A wire makes four choices on the hot path: the reader of a connection's frames
(``connecting``), the class of the properties a publish writes (``properties``), how a run of
messages is published with confirms (``publisher``) and how a consumer's deliveries reach it
(``consume``). ``StockWire`` makes each with aiormq's and pamqp's public API alone (aiormq's
frame reader, one ``basic_publish`` per message, ``basic_consume`` with aiormq's task per
delivery, pamqp's ``Basic.Properties``) and patches nothing, so it works on any aiormq 7 and
pamqp 4. ``fastpath.install`` hands out the hand-written wire instead on the versions it was
verified on; both settle the same futures the same way, so the broker cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import aiormq
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

Item = tuple[bytes, Basic.Properties, str]  # body, properties, routing key
# A publish's confirmation (settles with the broker's ack; fails with aiormq's PublishError when
# returned, DeliveryError when nacked, or the channel's closing error) and its routing key.
Confirmation = tuple[asyncio.Future[object], str]
ChannelOf = Callable[[], Awaitable[aiormq.Channel]]
Consumer = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]


class Publisher(Protocol):
    async def publish(
        self, channel_of: ChannelOf, exchange: str, items: Sequence[Item]
    ) -> list[Confirmation]:
        """Write every item, in order, on the channel ``channel_of`` gives (asked in call order;
        concurrent calls are written one after another); return each one's confirmation."""
        ...


class Wire(Protocol):
    @property
    def fast(self) -> bool: ...

    @property
    def properties(self) -> type[Basic.Properties]: ...

    def connecting(self) -> AbstractContextManager[None]:
        """The context a broker opens its connection in (aio-pika's reconnects inherit it)."""
        ...

    def publisher(self, window: int) -> Publisher:
        """A publisher with at most ``window`` confirms outstanding over all of its calls."""
        ...

    async def consume(self, channel: RawChannel, queue: str, consumer_tag: str, consumer: Consumer) -> None:
        """Start consuming ``queue``: ``consumer`` runs once per delivery, each in its own task,
        the tasks created in delivery order (coalesced acks rely on it)."""
        ...


class StockPublisher:
    """aiormq's ``basic_publish`` (mandatory, confirmed), one task per message so that many are
    in flight. Messages are written in call order, then list order: each task reaches the
    channel's (FIFO) lock in its first step, in the order the tasks were created. A message whose
    id is still in flight waits for it, as in the fast pipeline: aiormq matches a returned
    message to its publish by message id."""

    def __init__(self, window: int) -> None:
        self._window = asyncio.Semaphore(max(1, window))
        self._calls = asyncio.Lock()
        self._inflight: dict[str, asyncio.Future[object]] = {}  # message id -> its confirmation

    async def publish(
        self, channel_of: ChannelOf, exchange: str, items: Sequence[Item]
    ) -> list[Confirmation]:
        confirmations: list[Confirmation] = []
        async with self._calls:
            channel = await channel_of()
            for body, properties, key in items:
                message_id = str(properties.message_id)
                previous = self._inflight.get(message_id)
                if previous is not None:
                    await asyncio.wait([previous])
                await self._window.acquire()
                sent = asyncio.ensure_future(_publish(channel, exchange, key, properties, body))
                self._inflight[message_id] = sent
                sent.add_done_callback(functools.partial(self._settled, message_id))
                confirmations.append((sent, key))
        return confirmations

    def _settled(self, message_id: str, future: asyncio.Future[object]) -> None:
        self._window.release()
        if self._inflight.get(message_id) is future:
            del self._inflight[message_id]


async def _publish(
    channel: aiormq.Channel, exchange: str, routing_key: str, properties: Basic.Properties, body: bytes
) -> object:
    return await channel.basic_publish(
        body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True
    )


class StockWire:
    """aiormq's and pamqp's own path, public API only."""

    fast = False
    properties: type[Basic.Properties] = Basic.Properties

    def connecting(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def publisher(self, window: int) -> Publisher:
        return StockPublisher(window)

    async def consume(self, channel: RawChannel, queue: str, consumer_tag: str, consumer: Consumer) -> None:
        # aiormq reads each delivery whole, then runs the callback in a task of its own.
        await channel.basic_consume(queue, consumer, consumer_tag=consumer_tag)


__all__ = [
    "ChannelOf",
    "Confirmation",
    "Consumer",
    "Item",
    "Publisher",
    "StockPublisher",
    "StockWire",
    "Wire",
]

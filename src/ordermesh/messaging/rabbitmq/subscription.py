"""One RabbitMQ consumer on its own channel (the prefetch is per channel).

Deliveries come through the channel's ``DeliveryTap`` (``tap``) in delivery order; each runs
in a task that registers it with the channel's coalesced ``Acks`` first thing, then hands it to
the broker's ``_handle`` (decode, handler, retry or dead letter, ack). When aio-pika reopens the
channel after a lost connection, the subscription consumes again on the new one (the old
channel's unacknowledged messages are redelivered by the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from ordermesh.messaging.port import Handler, RetryPolicy
from ordermesh.messaging.rabbitmq.acks import Acks
from ordermesh.messaging.rabbitmq.tap import DeliveryTap

if TYPE_CHECKING:
    from ordermesh.messaging.rabbitmq.broker import RabbitBroker

log = logging.getLogger("ordermesh.messaging.rabbitmq")

# What a lost connection or channel raises (the robust connection reconnects by itself).
CONNECTION_ERRORS = (
    ConnectionError,
    OSError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
)


class RabbitSubscription:
    """One consumer on its own channel (the prefetch is per channel)."""

    def __init__(
        self,
        broker: RabbitBroker,
        channel: AbstractChannel,
        queue: str,
        handler: Handler,
        retry: RetryPolicy,
    ) -> None:
        self._broker = broker
        self._channel = channel
        self.name = queue  # unprefixed
        self._handler = handler
        self._retry = retry
        self.consumer_tag: str | None = None
        self.stopping = False
        self._acks: Acks | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    async def start(self) -> None:
        raw = await self._channel.get_underlay_channel()
        acks = self._acks = Acks(raw)  # delivery tags belong to this channel
        # The tap takes this consumer's deliveries past aiormq's channel queue (``tap``); it is
        # in place, under a tag chosen here, before the first delivery can arrive.
        tag = f"ordermesh.{self.name}.{uuid.uuid4().hex[:12]}"
        DeliveryTap.on(raw).add(tag, functools.partial(self._spawn, acks))
        await raw.basic_consume(
            self._broker._name(self.name), functools.partial(self._on_delivered, acks), consumer_tag=tag
        )
        self.consumer_tag = tag
        reopen = getattr(self._channel, "reopen_callbacks", None)
        if reopen is not None and self._reopened not in reopen:
            reopen.add(self._reopened)

    async def _reopened(self, _channel: object) -> None:
        """aio-pika reopened the channel after a lost connection: consume on the new one (the
        old one's unacked messages are redelivered by the broker)."""
        if not self.stopping:
            log.info("queue %s: channel reopened, consuming again", self.name)
            await self.start()

    def _spawn(self, acks: Acks, delivered: DeliveredMessage) -> None:
        # Called by the tap in delivery order; each task's first step (``acks.delivered``) runs
        # in the order the tasks were created, which the coalesced acks rely on.
        task = asyncio.get_running_loop().create_task(self._on_delivered(acks, delivered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_delivered(self, acks: Acks, delivered: DeliveredMessage) -> None:
        tag = delivered.delivery_tag
        if tag is None or self.stopping:
            return  # left unacked: the broker requeues it when the channel closes
        acks.delivered(tag)
        self._inflight += 1
        self._idle.clear()
        try:
            await self._broker._handle(self.name, delivered, acks, self._handler, self._retry)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def stop(self) -> None:
        """Cancel the consumer, let in-flight handlers finish (and ack), close the channel."""
        if self.stopping:
            await self._idle.wait()
            return
        self.stopping = True
        reopen = getattr(self._channel, "reopen_callbacks", None)
        if reopen is not None:
            reopen.discard(self._reopened)
        try:
            if self.consumer_tag is not None and self._acks is not None and not self._channel.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await self._acks.channel.basic_cancel(self.consumer_tag)
            await self._idle.wait()
            if self._acks is not None:
                await self._acks.drain()
        finally:
            self._broker._forget(self)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._channel.close()


__all__ = ["CONNECTION_ERRORS", "RabbitSubscription"]

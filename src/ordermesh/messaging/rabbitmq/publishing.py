"""Confirmed publishing on a broker's one publishing channel: its ``publish`` and the retry,
dead-letter and replay copies its subscriptions send straight to a queue.

Every publish of a broker object goes through one ``Publisher`` (the wire's), so the confirm
window is the channel's, not a call's. Failures come out as the port's errors:
``BrokerUnavailable`` when the broker did not confirm (the caller must publish again), the
routing keys of returned messages for the caller to turn into ``Unroutable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiormq
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from ordermesh.messaging.port import BrokerUnavailable, Unroutable
from ordermesh.messaging.rabbitmq.wire import Item, Publisher

# What a lost connection or channel raises (the robust connection reconnects by itself).
CONNECTION_ERRORS = (
    ConnectionError,
    OSError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
)


class Publishing:
    """Publishes on ``channel`` (aio-pika's, opened with confirms and ``on_return_raises``)."""

    def __init__(self, channel: AbstractChannel, publisher: Publisher) -> None:
        self.channel = channel
        self._publisher = publisher

    async def _underlay(self) -> aiormq.Channel:
        channel = await self.channel.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)  # the concrete one: publishers use its bookkeeping
        return channel

    async def publish(self, exchange: str, items: Sequence[Item]) -> list[str]:
        """Publish in order and wait for every confirm; return the routing keys of returned
        (unroutable) messages, raise ``BrokerUnavailable`` on failures."""
        try:
            confirmations = await self._publisher.publish(self._underlay, exchange, items)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"publishing to RabbitMQ failed: {exc!r}") from exc
        results = await asyncio.gather(*(future for future, _key in confirmations), return_exceptions=True)
        returned: list[str] = []
        for result, (_future, key) in zip(results, confirmations, strict=True):
            if isinstance(result, aiormq.exceptions.PublishError):
                returned.append(key)
            elif isinstance(result, aiormq.exceptions.DeliveryError):  # nack: the broker could not take it
                raise BrokerUnavailable(f"RabbitMQ refused a message for {key!r}: {result}") from result
            elif isinstance(result, asyncio.CancelledError):
                raise result
            elif isinstance(result, BaseException):
                # Not confirmed, whatever the reason (a connection lost without a reason fails
                # aiormq's futures with a bare ``Exception``): the caller must publish it again.
                raise BrokerUnavailable(f"publishing to RabbitMQ failed: {result!r}") from result
        return returned

    async def to_queue(self, queue_name: str, body: bytes, properties: Basic.Properties) -> None:
        """Publish to one queue (full name) through the default exchange; wait for the confirm."""
        if await self.publish("", [(body, properties, queue_name)]):
            raise Unroutable(f"queue {queue_name!r} does not exist")


__all__ = ["CONNECTION_ERRORS", "Publishing"]

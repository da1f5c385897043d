"""One RabbitMQ consumer on its own channel (the prefetch is per channel), and what happens to
each of its deliveries.

The wire (``Wire.consume``) runs ``_on_delivered`` once per delivery, in a task of its own,
the tasks created in delivery order; each registers its delivery with the channel's coalesced
``Acks`` first thing (the order they rely on), decodes it, runs the handler and acks. A failed
handler's message is retried through the delay queue of its attempt or, past the last attempt
(at once for ``PermanentError`` and a malformed envelope), dead-lettered: either way as a
*copy* published with a confirm (``Publishing.to_queue``) before the original is acked, so a
crash in between duplicates, never loses. A copy that cannot be published leaves the original
with the broker (nack), which delivers it again.

When aio-pika reopens the channel after a lost connection, the subscription consumes again on
the new one (the old channel's unacknowledged messages are redelivered by the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from datetime import UTC, datetime

from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldValue

from ordermesh.messaging.port import (
    H_ATTEMPT,
    H_DEAD_AT,
    H_ERROR,
    Delivery,
    Handler,
    PermanentError,
    RetryPolicy,
)
from ordermesh.messaging.rabbitmq import codec
from ordermesh.messaging.rabbitmq.acks import Acks
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.rabbitmq.publishing import CONNECTION_ERRORS, Publishing
from ordermesh.messaging.rabbitmq.wire import Wire

log = logging.getLogger("ordermesh.messaging.rabbitmq")


class RabbitSubscription:
    """One consumer of ``queue`` (unprefixed) on ``channel``, its own."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: str,
        handler: Handler,
        retry: RetryPolicy,
        *,
        names: Names,
        wire: Wire,
        publishing: Publishing,
    ) -> None:
        self._channel = channel
        self.name = queue
        self._handler = handler
        self._retry = retry
        self._names = names
        self._wire = wire
        self._publishing = publishing
        self.consumer_tag: str | None = None
        self.stopping = False
        self._acks: Acks | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        raw = await self._channel.get_underlay_channel()
        acks = self._acks = Acks(raw)  # delivery tags belong to this channel
        # Chosen here, not by the server: the fast wire taps the tag before consuming.
        tag = f"ordermesh.{self.name}.{uuid.uuid4().hex[:12]}"
        consumer = functools.partial(self._on_delivered, acks)
        await self._wire.consume(raw, self._names.full(self.name), tag, consumer)
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

    async def _on_delivered(self, acks: Acks, delivered: DeliveredMessage) -> None:
        tag = delivered.delivery_tag
        if tag is None or self.stopping:
            return  # left unacked: the broker requeues it when the channel closes
        acks.delivered(tag)
        self._inflight += 1
        self._idle.clear()
        try:
            await self._handle(delivered, tag, acks)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _handle(self, delivered: DeliveredMessage, tag: int, acks: Acks) -> None:
        queue = self.name
        try:
            try:
                decoded = codec.decode(delivered, self._names.unprefixed)
            except codec.Malformed as exc:
                lenient = codec.decode(delivered, self._names.unprefixed, strict=False)
                await self._dead_letter(delivered, lenient, f"malformed envelope: {exc}")
                acks.ack(tag)
                return
            delivery = Delivery(
                decoded.message, decoded.exchange, queue, decoded.attempt, bool(delivered.redelivered)
            )
            try:
                await self._handler(delivery)
            except PermanentError as exc:
                await self._dead_letter(delivered, decoded, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if decoded.attempt >= self._retry.max_attempts:
                    await self._dead_letter(delivered, decoded, error)
                else:
                    await self._retry_later(delivered, decoded, error)
            acks.ack(tag)
        except Exception:
            # The retry or dead-letter copy could not be published: leave the original with the
            # broker, which delivers it again.
            log.exception(
                "queue %s: message %s left unacknowledged", queue, delivered.header.properties.message_id
            )
            await acks.nack(tag)

    async def _retry_later(self, delivered: DeliveredMessage, decoded: codec.Decoded, error: str) -> None:
        delay_ms = self._names.delay_ms(self._retry, decoded.attempt)
        extra: dict[str, FieldValue] = {H_ATTEMPT: decoded.attempt + 1, H_ERROR: error[: codec.MAX_ERROR]}
        copy = codec.copy(delivered, decoded, extra, properties=self._wire.properties)
        await self._publishing.to_queue(self._names.delay_queue(self.name, delay_ms), delivered.body, copy)

    async def _dead_letter(self, delivered: DeliveredMessage, decoded: codec.Decoded, error: str) -> None:
        extra: dict[str, FieldValue] = {
            H_ERROR: error[: codec.MAX_ERROR],
            H_ATTEMPT: decoded.attempt,
            H_DEAD_AT: datetime.now(UTC).isoformat(),
        }
        copy = codec.copy(delivered, decoded, extra, properties=self._wire.properties)
        await self._publishing.to_queue(self._names.dlq(self.name), delivered.body, copy)
        log.warning(
            "queue %s: dead-lettered %s after %d attempt(s): %s",
            self.name,
            copy.message_id,
            decoded.attempt,
            error,
        )

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
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._channel.close()


__all__ = ["RabbitSubscription"]

"""Reading and replaying the dead letters in a broker's ``{queue}.dlq`` queues.

AMQP cannot peek, so both take the DLQ's messages with basic.get without acknowledging them
and give back what they do not keep; a replay's copy is confirmed before its dead letter is
acknowledged: a crash in between duplicates, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ordermesh.errors import NotFound
from ordermesh.messaging.port import H_ATTEMPT, H_DEAD_AT, H_ERROR, DeadLetter
from ordermesh.messaging.rabbitmq import codec
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.rabbitmq.publishing import CONNECTION_ERRORS as _CONNECTION_ERRORS
from ordermesh.messaging.rabbitmq.publishing import Publishing
from ordermesh.messaging.rabbitmq.wire import Wire


async def _requeue(channel: RawChannel, taken: Sequence[DeliveredMessage]) -> None:
    """Give back messages taken with basic.get (one nack covering every delivery tag up to
    the highest; tags acknowledged already are not affected)."""
    tags = [m.delivery_tag for m in taken if m.delivery_tag is not None]
    if tags:
        await channel.basic_nack(max(tags), multiple=True, requeue=True)


def _broker_reason(delivered: DeliveredMessage) -> str:
    """Why RabbitMQ itself dead-lettered a message (no error header of ours), e.g. a quorum
    queue's delivery limit: the consumer died before acking it that many times."""
    reason = codec.str_header(codec.headers_of(delivered), "x-first-death-reason")
    if reason is None:
        return ""
    if reason == "delivery_limit":
        return "RabbitMQ dead-lettered it: delivered past the queue's delivery limit without an ack"
    return f"RabbitMQ dead-lettered it: {reason}"


class DeadLetters:
    """The dead letters of one broker object: each call on its own channel of ``connection``,
    replays published through the broker's ``publishing``."""

    def __init__(
        self, connection: AbstractRobustConnection, names: Names, publishing: Publishing, wire: Wire
    ) -> None:
        self._connection = connection
        self._names = names
        self._publishing = publishing
        self._wire = wire
        self._lock = asyncio.Lock()

    async def _drain(self, channel: AbstractChannel, queue: str) -> list[DeliveredMessage]:
        """Take every message of ``queue``'s DLQ without acknowledging it (the caller returns
        them). Empty if the DLQ does not exist."""
        try:
            await channel.declare_queue(self._names.dlq(queue), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        raw = await channel.get_underlay_channel()
        taken: list[DeliveredMessage] = []
        while isinstance(
            (got := await raw.basic_get(self._names.dlq(queue), no_ack=False)).delivery, Basic.GetOk
        ):
            taken.append(got)
        return taken

    def _letter(self, queue: str, delivered: DeliveredMessage) -> DeadLetter:
        decoded = codec.decode(delivered, self._names.unprefixed, strict=False)
        return DeadLetter(
            id=decoded.message.message_id,
            queue=queue,
            message=decoded.message,
            error=codec.str_header(codec.headers_of(delivered), H_ERROR) or _broker_reason(delivered),
            attempts=decoded.attempt,
            original_exchange=decoded.exchange,
            original_routing_key=decoded.message.routing_key,
        )

    async def read(self, queues: Sequence[str]) -> list[DeadLetter]:
        """The dead letters of ``queues``, in the order they died.

        AMQP cannot peek: every message is taken with basic.get *without* ack, then all are
        returned at once with nack(multiple, requeue). Nothing is lost: an unacknowledged
        message goes back to the queue even if this process dies mid-read (the channel closes).
        A classic queue puts them back in place; a quorum queue (RabbitMQ 3.x) puts them at the
        back, behind any letter that died during the read, so the list is sorted by the
        dead-lettered-at header (queue order breaks ties) rather than trusted to queue order.
        Calls on one broker object are serialised; a concurrent reader elsewhere would see the
        DLQ partly empty while a read is in progress."""
        letters: list[DeadLetter] = []
        async with self._lock:
            for name in queues:
                channel = await self._connection.channel(publisher_confirms=False)
                try:
                    taken = await self._drain(channel, name)
                    letters += [self._letter(name, d) for d in sorted(taken, key=codec.dead_at)]
                    if taken:
                        await _requeue(await channel.get_underlay_channel(), taken)
                finally:
                    with contextlib.suppress(*_CONNECTION_ERRORS):
                        await channel.close()  # would requeue anything still unacknowledged
        return letters

    async def replay(self, queue: str, message_id: str) -> None:
        """Move one dead letter back to ``queue`` (through the default exchange, so only that
        queue gets it) as a first attempt, keeping its original exchange and routing key. The
        copy is confirmed before the dead letter is acknowledged."""
        found: DeliveredMessage | None = None
        async with self._lock:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                taken = await self._drain(channel, queue)
                found = next((d for d in taken if self._letter(queue, d).id == message_id), None)
                if taken:
                    raw = await channel.get_underlay_channel()
                    if found is not None and found.delivery_tag is not None:
                        decoded = codec.decode(found, self._names.unprefixed, strict=False)
                        copy = codec.copy(
                            found, decoded, {H_ATTEMPT: 1}, (H_ERROR, H_DEAD_AT), self._wire.properties
                        )
                        await self._publishing.to_queue(self._names.full(queue), found.body, copy)
                        await raw.basic_ack(found.delivery_tag)
                    await _requeue(raw, [d for d in taken if d is not found])
            finally:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await channel.close()
        if found is None:
            raise NotFound(f"no dead letter {message_id} in {queue}.dlq")


__all__ = ["DeadLetters"]

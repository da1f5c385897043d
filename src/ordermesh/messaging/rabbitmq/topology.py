"""The exchanges and queues one ``RabbitBroker`` declares on the server, and their deletion.

Topology, all names prefixed with ``prefix`` (a namespace: tests, tenants; the names are in
``naming``)::

    exchange  {exchange}                  durable topic exchange
    queue     {queue}                     durable, bound with each binding key; the consumer's
    queue     {queue}.retry.{delay_ms}    one per distinct retry delay: x-message-ttl = delay,
                                          dead-lettered (on expiry) through the default exchange
                                          back to {queue}
    queue     {queue}.dlq                 dead letters, read by ``dead_letters`` and ``replay``

``quorum=True`` makes every queue a quorum queue (the delay queues then dead-letter
at-least-once). Quorum queues count deliveries: a consumer queue gets an explicit
``x-delivery-limit`` (``delivery_limit``, 20 by default as on RabbitMQ 4) and dead-letters a
message past it into ``{queue}.dlq`` (at-least-once) — a message that keeps killing its consumer
before the ack ends there instead of looping forever or, on RabbitMQ 4 without a dead-letter
target, being dropped. The DLQ itself gets a limit no reader reaches: listing dead letters
returns them with a requeue, which counts as a delivery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection
from pamqp.common import Arguments, FieldValue

from ordermesh.messaging.port import BrokerUnavailable, RetryPolicy, Unroutable
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.rabbitmq.publishing import CONNECTION_ERRORS as _CONNECTION_ERRORS

_UNREACHABLE = 2**31 - 1  # a delivery limit for dead-letter queues, read with requeues


@dataclass
class _Declared:
    exchanges: set[str] = field(default_factory=set)  # prefixed names
    queues: dict[str, None] = field(default_factory=dict)  # prefixed names, declaration order
    consumer_queues: set[str] = field(default_factory=set)  # unprefixed: those with a DLQ


class Topology:
    """Declares on ``channel`` (the broker's publishing channel) or a consumer's own, and
    remembers what it declared so :meth:`delete` can remove exactly that."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        names: Names,
        *,
        quorum: bool,
        delivery_limit: int,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._names = names
        self._quorum = quorum
        self._delivery_limit = delivery_limit
        self._declared = _Declared()
        self._exchanges: dict[str, AbstractExchange] = {}  # declared by this object
        self._known_exchanges: set[str] = set()  # full names checked to exist

    @property
    def consumer_queues(self) -> set[str]:
        """The queues (unprefixed) declared for a consumer, each with its DLQ."""
        return self._declared.consumer_queues

    def _queue_arguments(self, extra: Arguments = None) -> Arguments:
        arguments: dict[str, FieldValue] = {"x-queue-type": "quorum"} if self._quorum else {}
        arguments.update(extra or {})
        return arguments or None

    def _consumer_arguments(self, queue: str) -> Arguments:
        if not self._quorum:
            return None
        return {
            "x-delivery-limit": self._delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self._names.dlq(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering requires
        }

    async def declared_exchange(self, exchange: str) -> AbstractExchange:
        found = self._exchanges.get(exchange)
        if found is None:
            name = self._names.full(exchange)
            try:
                found = await self._channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            except _CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"declaring exchange {name!r}: {exc}") from exc
            self._exchanges[exchange] = found
            self._declared.exchanges.add(name)
        return found

    async def _declare_queue(
        self, channel: AbstractChannel, name: str, arguments: Arguments = None
    ) -> AbstractQueue:
        queue = await channel.declare_queue(name, durable=True, arguments=self._queue_arguments(arguments))
        self._declared.queues[name] = None
        return queue

    async def existing_exchange(self, exchange: str) -> str:
        """An exchange someone else declared: checked passively (a missing one is Unroutable).
        Returns its full name."""
        name = self._names.full(exchange)
        if exchange in self._exchanges or name in self._known_exchanges:
            return name
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            await probe.declare_exchange(name, aio_pika.ExchangeType.TOPIC, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise Unroutable(f"exchange {exchange!r} does not exist") from exc
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await probe.close()
        self._known_exchanges.add(name)
        return name

    async def declare_side_queues(self, queue: str, retry: RetryPolicy) -> None:
        """``queue``'s DLQ and one delay queue per distinct delay of ``retry``, on the
        publishing channel (the consumer queue comes after: :meth:`declare_consumer_queue`)."""
        await self._declare_queue(
            self._channel,
            self._names.dlq(queue),
            {"x-delivery-limit": _UNREACHABLE} if self._quorum else None,
        )
        for delay_ms in sorted({self._names.delay_ms(retry, n) for n in range(1, retry.max_attempts)}):
            arguments: dict[str, FieldValue] = {
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self._names.full(queue),
            }
            if self._quorum:  # quorum queues dead-letter at-most-once unless told otherwise
                arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            await self._declare_queue(self._channel, self._names.delay_queue(queue, delay_ms), arguments)

    async def declare_consumer_queue(
        self, channel: AbstractChannel, queue: str, source: AbstractExchange, binding_keys: Sequence[str]
    ) -> None:
        """Declare ``queue`` on the consumer's ``channel`` and bind it to ``source``."""
        consumer_queue = await self._declare_queue(
            channel, self._names.full(queue), self._consumer_arguments(queue)
        )
        for key in binding_keys:
            await consumer_queue.bind(source, routing_key=key)
        self._declared.consumer_queues.add(queue)

    async def delete(self) -> None:
        """Delete every queue and exchange this object declared (the consumers stopped first)."""
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            for name in reversed(self._declared.queues):
                await channel.queue_delete(name)
            for name in sorted(self._declared.exchanges):
                await channel.exchange_delete(name)
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await channel.close()
        self._declared = _Declared()
        self._exchanges.clear()
        self._known_exchanges.clear()


__all__ = ["Topology"]

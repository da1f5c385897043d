"""The RabbitMQ adapter of the broker port (aio-pika's robust connection, aiormq on the hot path).

Topology, all names prefixed with ``prefix`` (a namespace: tests, tenants)::

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
returns them with a requeue, which counts as a delivery. Messages are persistent (delivery
mode 2); the envelope is in ``codec``.

aio-pika owns the connection, the channels and the topology, and restores them after a lost
connection. Publishing, consuming and acknowledging go one layer down, to the aiormq channel
under aio-pika's: aio-pika wraps every message in objects of its own and runs every delivery
in a second task, which measured as a third of the CPU per message. A consumer re-registers
itself on the new channel when aio-pika reopens one (``reopen_callbacks``). How the broker
talks to aiormq is its ``Wire``, chosen at ``open`` by ``fastpath.install``: the fast path
(``frames``, ``tap``, ``publisher``: aiormq's frame reading, its channel queue for deliveries
and its ``basic_publish`` taken over, each measured) on the aiormq and pamqp versions it was
verified on, aiormq's stock path otherwise or when switched off (``?fast_path=0``).

Each subscription handles its own deliveries (``subscription``); retries and dead letters are
*copies* published (with confirms) to the delay or dead-letter queue before the original is
acknowledged: a crash in between duplicates, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.common import Arguments, FieldValue

from ordermesh.errors import NotFound
from ordermesh.messaging.port import (
    H_ATTEMPT,
    H_DEAD_AT,
    H_ERROR,
    BrokerUnavailable,
    DeadLetter,
    Handler,
    Message,
    RetryPolicy,
    Unroutable,
)
from ordermesh.messaging.rabbitmq import codec, fastpath
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.rabbitmq.publishing import CONNECTION_ERRORS as _CONNECTION_ERRORS
from ordermesh.messaging.rabbitmq.publishing import Publishing
from ordermesh.messaging.rabbitmq.subscription import RabbitSubscription
from ordermesh.messaging.rabbitmq.wire import Wire

log = logging.getLogger("ordermesh.messaging.rabbitmq")

HOW_TO_START = (
    "RabbitMQ is not reachable at {url} ({error}). Start it with `rabbitmq-server -detached` "
    "(or `docker run -d -p 5672:5672 rabbitmq:3`) or point the broker URL at a running server."
)
_UNREACHABLE = 2**31 - 1  # a delivery limit for dead-letter queues, read with requeues


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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


@dataclass
class _Topology:
    exchanges: set[str] = field(default_factory=set)  # prefixed names
    queues: dict[str, None] = field(default_factory=dict)  # prefixed names, declaration order
    consumer_queues: set[str] = field(default_factory=set)  # unprefixed: those with a DLQ


class RabbitBroker:
    """``Broker`` on RabbitMQ. Open with :meth:`open`; see the module docstring for topology."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        *,
        url: str,
        prefix: str,
        prefetch: int,
        quorum: bool,
        confirm_window: int,
        delivery_limit: int = 20,
        wire: Wire = fastpath.STOCK,
    ) -> None:
        self._connection = connection
        self._channel = channel  # publishing: publisher confirms, returns raise
        self._url = url
        self.prefix = prefix
        self._names = Names(prefix)
        self._prefetch = prefetch
        self._quorum = quorum
        self._delivery_limit = delivery_limit
        self._confirm_window = max(1, confirm_window)
        self._wire = wire
        self._topology = _Topology()
        self._exchanges: dict[str, AbstractExchange] = {}  # declared by this object
        self._known_exchanges: set[str] = set()  # full names checked to exist
        self._subscriptions: list[RabbitSubscription] = []
        self._dlq_lock = asyncio.Lock()
        # Confirms outstanding across every publish of this object (the channel's, not a call's).
        self._publishing = Publishing(channel, wire.publisher(self._confirm_window))

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "",
        prefetch: int = 64,
        quorum: bool = False,
        confirm_window: int = 500,
        delivery_limit: int = 20,
        fast_path: bool = True,
    ) -> RabbitBroker:
        """Connect. ``fast_path`` asks for the fast path (``fastpath``); ``?fast_path=0|1`` on
        ``url`` overrides it."""
        url, chosen = fastpath.from_url(url)
        wire = fastpath.install(fast_path if chosen is None else chosen)
        try:
            # Named, so operators (and tests) can tell our connections apart in RabbitMQ.
            name = f"ordermesh {prefix}".strip()
            with wire.connecting():  # also for the reconnect loop this starts (it copies the context)
                connection = await aio_pika.connect_robust(
                    url, timeout=5, client_properties={"connection_name": name}
                )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            # The server is up and said no: starting one would not help.
            raise BrokerUnavailable(
                f"RabbitMQ at {_redact(url)} refused the login ({exc.args[0] if exc.args else exc}): "
                "check the user and password in the broker URL (ORDERMESH_BROKER_URL)"
            ) from exc
        except (*_CONNECTION_ERRORS, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise BrokerUnavailable(HOW_TO_START.format(url=_redact(url), error=error)) from exc
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return cls(
            connection,
            channel,
            url=url,
            prefix=prefix,
            prefetch=prefetch,
            quorum=quorum,
            confirm_window=confirm_window,
            delivery_limit=delivery_limit,
            wire=wire,
        )

    @property
    def fast_path(self) -> bool:
        """Whether this broker runs on the fast path (else on aiormq's stock path)."""
        return self._wire.fast

    # --- names and declarations -------------------------------------------------------------

    def _name(self, name: str) -> str:
        return self._names.full(name)

    def _unprefixed(self, name: str) -> str:
        return self._names.unprefixed(name)

    def _dlq(self, queue: str) -> str:
        return self._names.dlq(queue)

    def _delay_queue(self, queue: str, delay_ms: int) -> str:
        return self._names.delay_queue(queue, delay_ms)

    _delay_ms = staticmethod(Names.delay_ms)  # asyncapi.py lists the delay queues with it

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
            "x-dead-letter-routing-key": self._dlq(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering requires
        }

    async def declare_exchange(self, exchange: str) -> None:
        await self._declared_exchange(exchange)

    async def _declared_exchange(self, exchange: str) -> AbstractExchange:
        found = self._exchanges.get(exchange)
        if found is None:
            name = self._name(exchange)
            try:
                found = await self._channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            except _CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"declaring exchange {name!r}: {exc}") from exc
            self._exchanges[exchange] = found
            self._topology.exchanges.add(name)
        return found

    async def _declare_queue(
        self, channel: AbstractChannel, name: str, arguments: Arguments = None
    ) -> AbstractQueue:
        queue = await channel.declare_queue(name, durable=True, arguments=self._queue_arguments(arguments))
        self._topology.queues[name] = None
        return queue

    async def _existing_exchange(self, exchange: str) -> str:
        """An exchange someone else declared: checked passively (a missing one is Unroutable).
        Returns its full name."""
        name = self._name(exchange)
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

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish in order, pipelined (``confirm_window`` confirms in flight), and wait for every
        confirm. ``Unroutable`` names the messages no queue took; the others were published."""
        if not messages:
            return
        target = await self._existing_exchange(exchange)
        properties = self._wire.properties
        returned = await self._publishing.publish(
            target, [(m.body, codec.encode(m, properties), m.routing_key) for m in messages]
        )
        if returned:
            # On a topic exchange routability depends on the routing key alone.
            keys = set(returned)
            raise Unroutable(
                f"{exchange}: {len(returned)} of {len(messages)} message(s) reached no queue "
                f"(routing keys {sorted(keys)})",
                [m.message_id for m in messages if m.routing_key in keys],
            )

    # --- consuming --------------------------------------------------------------------------

    async def subscribe(
        self,
        queue: str,
        exchange: str,
        binding_keys: Sequence[str],
        handler: Handler,
        *,
        prefetch: int | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> RabbitSubscription:
        """Declare ``queue``, its delay queues and its DLQ, bind it, and consume with ``prefetch``
        (default: the broker's) unacknowledged messages at most."""
        source = await self._declared_exchange(exchange)
        try:
            await self._declare_queue(
                self._channel, self._dlq(queue), {"x-delivery-limit": _UNREACHABLE} if self._quorum else None
            )
            for delay_ms in sorted({self._delay_ms(retry, n) for n in range(1, retry.max_attempts)}):
                arguments: dict[str, FieldValue] = {
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self._name(queue),
                }
                if self._quorum:  # quorum queues dead-letter at-most-once unless told otherwise
                    arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
                await self._declare_queue(self._channel, self._delay_queue(queue, delay_ms), arguments)
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch if prefetch is not None else self._prefetch)
            consumer_queue = await self._declare_queue(
                channel, self._name(queue), self._consumer_arguments(queue)
            )
            for key in binding_keys:
                await consumer_queue.bind(source, routing_key=key)
            self._topology.consumer_queues.add(queue)
            sub = RabbitSubscription(
                channel,
                queue,
                handler,
                retry,
                names=self._names,
                wire=self._wire,
                publishing=self._publishing,
            )
            await sub.start()
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"declaring queue {queue!r}: {exc}") from exc
        # Those stopped by their owners need no stopping at close.
        self._subscriptions = [s for s in self._subscriptions if not s.stopping]
        self._subscriptions.append(sub)
        return sub

    # --- dead letters -----------------------------------------------------------------------

    async def _drain_dlq(self, channel: AbstractChannel, queue: str) -> list[DeliveredMessage]:
        """Take every message of ``queue``'s DLQ without acknowledging it (the caller returns
        them). Empty if the DLQ does not exist."""
        try:
            await channel.declare_queue(self._dlq(queue), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        raw = await channel.get_underlay_channel()
        taken: list[DeliveredMessage] = []
        while isinstance((got := await raw.basic_get(self._dlq(queue), no_ack=False)).delivery, Basic.GetOk):
            taken.append(got)
        return taken

    def _letter(self, queue: str, delivered: DeliveredMessage) -> DeadLetter:
        decoded = codec.decode(delivered, self._unprefixed, strict=False)
        return DeadLetter(
            id=decoded.message.message_id,
            queue=queue,
            message=decoded.message,
            error=codec.str_header(codec.headers_of(delivered), H_ERROR) or _broker_reason(delivered),
            attempts=decoded.attempt,
            original_exchange=decoded.exchange,
            original_routing_key=decoded.message.routing_key,
        )

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue`` (default: every queue this object subscribed), in the
        order they died.

        AMQP cannot peek: every message is taken with basic.get *without* ack, then all are
        returned at once with nack(multiple, requeue). Nothing is lost: an unacknowledged
        message goes back to the queue even if this process dies mid-read (the channel closes).
        A classic queue puts them back in place; a quorum queue (RabbitMQ 3.x) puts them at the
        back, behind any letter that died during the read, so the list is sorted by the
        dead-lettered-at header (queue order breaks ties) rather than trusted to queue order.
        Calls on one broker object are serialised; a concurrent reader elsewhere would see the
        DLQ partly empty while a read is in progress."""
        names = [queue] if queue is not None else sorted(self._topology.consumer_queues)
        letters: list[DeadLetter] = []
        async with self._dlq_lock:
            for name in names:
                channel = await self._connection.channel(publisher_confirms=False)
                try:
                    taken = await self._drain_dlq(channel, name)
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
        async with self._dlq_lock:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                taken = await self._drain_dlq(channel, queue)
                found = next((d for d in taken if self._letter(queue, d).id == message_id), None)
                if taken:
                    raw = await channel.get_underlay_channel()
                    if found is not None and found.delivery_tag is not None:
                        decoded = codec.decode(found, self._unprefixed, strict=False)
                        copy = codec.copy(
                            found, decoded, {H_ATTEMPT: 1}, (H_ERROR, H_DEAD_AT), self._wire.properties
                        )
                        await self._publishing.to_queue(self._name(queue), found.body, copy)
                        await raw.basic_ack(found.delivery_tag)
                    await _requeue(raw, [d for d in taken if d is not found])
            finally:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await channel.close()
        if found is None:
            raise NotFound(f"no dead letter {message_id} in {queue}.dlq")

    # --- lifecycle --------------------------------------------------------------------------

    async def delete_topology(self) -> None:
        """Stop consuming, then delete every queue and exchange this object declared."""
        for sub in list(self._subscriptions):
            await sub.stop()
        self._subscriptions.clear()
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            for name in reversed(self._topology.queues):
                await channel.queue_delete(name)
            for name in sorted(self._topology.exchanges):
                await channel.exchange_delete(name)
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await channel.close()
        self._topology = _Topology()
        self._exchanges.clear()
        self._known_exchanges.clear()

    @property
    def connected(self) -> bool:
        """False while aio-pika's robust connection is down (it reconnects) and once closed."""
        return not self._connection.is_closed and self._connection.connected.is_set()

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.stop()
        await self._connection.close()


__all__ = ["HOW_TO_START", "RabbitBroker", "RabbitSubscription"]

"""The RabbitMQ adapter of the broker port (aio-pika's robust connection, aiormq on the hot path).

``RabbitBroker`` composes the parts: its exchanges and queues (the topology, with ``quorum``
and ``delivery_limit``) are declared by ``topology``, its ``{queue}.dlq`` queues are read and
replayed by ``deadletters``, its publishes are confirmed by ``publishing``. Messages are
persistent (delivery mode 2); the envelope is in ``codec``.

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

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from ordermesh.messaging.port import (
    BrokerUnavailable,
    DeadLetter,
    Handler,
    Message,
    RetryPolicy,
    Unroutable,
)
from ordermesh.messaging.rabbitmq import codec, fastpath
from ordermesh.messaging.rabbitmq.deadletters import DeadLetters
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.rabbitmq.publishing import CONNECTION_ERRORS as _CONNECTION_ERRORS
from ordermesh.messaging.rabbitmq.publishing import Publishing
from ordermesh.messaging.rabbitmq.subscription import RabbitSubscription
from ordermesh.messaging.rabbitmq.topology import Topology
from ordermesh.messaging.rabbitmq.wire import Wire

log = logging.getLogger("ordermesh.messaging.rabbitmq")

HOW_TO_START = (
    "RabbitMQ is not reachable at {url} ({error}). Start it with `rabbitmq-server -detached` "
    "(or `docker run -d -p 5672:5672 rabbitmq:3`) or point the broker URL at a running server."
)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class RabbitBroker:
    """``Broker`` on RabbitMQ. Open with :meth:`open`; see ``topology`` for the topology."""

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
        self._topology = Topology(
            connection, channel, self._names, quorum=quorum, delivery_limit=delivery_limit
        )
        self._subscriptions: list[RabbitSubscription] = []
        # Confirms outstanding across every publish of this object (the channel's, not a call's).
        self._publishing = Publishing(channel, wire.publisher(self._confirm_window))
        self._dead_letters = DeadLetters(connection, self._names, self._publishing, wire)

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

    async def declare_exchange(self, exchange: str) -> None:
        await self._topology.declared_exchange(exchange)

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish in order, pipelined (``confirm_window`` confirms in flight), and wait for every
        confirm. ``Unroutable`` names the messages no queue took; the others were published."""
        if not messages:
            return
        target = await self._topology.existing_exchange(exchange)
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
        source = await self._topology.declared_exchange(exchange)
        try:
            await self._topology.declare_side_queues(queue, retry)
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch if prefetch is not None else self._prefetch)
            await self._topology.declare_consumer_queue(channel, queue, source, binding_keys)
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

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue`` (default: every queue this object subscribed), in the
        order they died (how they are read: ``DeadLetters.read``)."""
        names = [queue] if queue is not None else sorted(self._topology.consumer_queues)
        return await self._dead_letters.read(names)

    async def replay(self, queue: str, message_id: str) -> None:
        """Move one dead letter back to ``queue`` (through the default exchange, so only that
        queue gets it) as a first attempt, keeping its original exchange and routing key. The
        copy is confirmed before the dead letter is acknowledged."""
        await self._dead_letters.replay(queue, message_id)

    # --- lifecycle --------------------------------------------------------------------------

    async def delete_topology(self) -> None:
        """Stop consuming, then delete every queue and exchange this object declared."""
        for sub in list(self._subscriptions):
            await sub.stop()
        self._subscriptions.clear()
        await self._topology.delete()

    @property
    def connected(self) -> bool:
        """False while aio-pika's robust connection is down (it reconnects) and once closed."""
        return not self._connection.is_closed and self._connection.connected.is_set()

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.stop()
        await self._connection.close()


__all__ = ["HOW_TO_START", "RabbitBroker", "RabbitSubscription"]

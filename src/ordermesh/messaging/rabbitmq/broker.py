"""The RabbitMQ adapter of the broker port (aio-pika, robust connection).

Topology, all names prefixed with ``prefix`` (a namespace: tests, tenants)::

    exchange  {exchange}                  durable topic exchange
    queue     {queue}                     durable, bound with each binding key; the consumer's
    queue     {queue}.retry.{delay_ms}    one per distinct retry delay: x-message-ttl = delay,
                                          dead-lettered (on expiry) through the default exchange
                                          back to {queue}
    queue     {queue}.dlq                 dead letters, read by ``dead_letters`` and ``replay``

``quorum=True`` makes every queue a quorum queue (the delay queues then dead-letter
at-least-once). Messages are persistent (delivery mode 2).

The envelope travels in AMQP properties (message_id, type, correlation_id, timestamp,
content_type) and headers (``x-ordermesh-*``, traceparent…); the body is the plain JSON payload,
so a legacy publisher's bare ``basic_publish(json.dumps(order))`` is consumable. Missing
properties get defaults: type = routing key, schema version 1, occurred_at = the timestamp
property or now, and message_id = a UUID derived from the routing key and the body (not a
random one): a broker redelivery of the same id-less message must carry the same id, or the
consumer's inbox could not recognise the duplicate. Two legacy messages with the same routing
key and byte-identical body are, in turn, treated as one event.

Retries and dead letters are *copies* published (with confirms) to the delay or dead-letter
queue before the original is acknowledged: a crash in between duplicates, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from pamqp.common import Arguments, FieldValue

from ordermesh.errors import NotFound
from ordermesh.messaging.port import (
    H_ATTEMPT,
    H_CAUSATION,
    H_DEAD_AT,
    H_ERROR,
    H_OCCURRED,
    H_ORIGINAL_EXCHANGE,
    H_ORIGINAL_ROUTING_KEY,
    H_SCHEMA,
    H_TYPE,
    BrokerUnavailable,
    DeadLetter,
    Delivery,
    Handler,
    Message,
    PermanentError,
    RetryPolicy,
    Unroutable,
)

log = logging.getLogger("ordermesh.messaging.rabbitmq")

HOW_TO_START = (
    "RabbitMQ is not reachable at {url} ({error}). Start it with `rabbitmq-server -detached` "
    "(or `docker run -d -p 5672:5672 rabbitmq:3`) or point the broker URL at a running server."
)
CONTENT_TYPE = "application/json"
_MAX_ERROR = 2000  # characters of the error text kept in a dead letter's header
# Headers the broker adds while dead-lettering through the delay queues: dropped from copies.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
_CONNECTION_ERRORS = (
    ConnectionError,
    OSError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
)


class _Malformed(ValueError):
    """An envelope property or header that cannot be decoded."""


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def derived_message_id(routing_key: str, body: bytes) -> str:
    """The id given to a message published without one: stable across redeliveries."""
    digest = hashlib.sha256(routing_key.encode() + b"\n" + body).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def _is_broker_header(name: str) -> bool:
    return name.startswith(_BROKER_HEADERS)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | float | bool | datetime):
        return str(value)
    return None


def _int_header(headers: Mapping[str, Any], name: str, default: int, strict: bool) -> int:
    value = headers.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = int(value.decode() if isinstance(value, bytes) else value)
        if number < 1:
            raise ValueError(number)
        return number
    except (TypeError, ValueError):
        if strict:
            raise _Malformed(f"header {name}={value!r} is not a positive integer") from None
        return default


def _str_header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else _text(value)


_EPOCH = datetime.fromtimestamp(0, UTC)


def _dead_at(incoming: AbstractIncomingMessage) -> datetime:
    """When a dead letter died (from its header; the epoch if it has none)."""
    try:
        when = datetime.fromisoformat(_str_header(incoming.headers or {}, H_DEAD_AT) or "")
    except ValueError:
        return _EPOCH
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _requeue(taken: Sequence[AbstractIncomingMessage]) -> None:
    """Give back messages taken with basic.get (one nack covering every delivery tag up to
    the highest; tags acknowledged already are not affected)."""
    if taken:
        last = max(taken, key=lambda incoming: incoming.delivery_tag or 0)
        await last.nack(multiple=True, requeue=True)


@dataclass
class _Decoded:
    message: Message
    exchange: str
    attempt: int


@dataclass
class _Topology:
    exchanges: set[str] = field(default_factory=set)  # prefixed names
    queues: dict[str, None] = field(default_factory=dict)  # prefixed names, declaration order
    consumer_queues: set[str] = field(default_factory=set)  # unprefixed: those with a DLQ


class RabbitSubscription:
    def __init__(
        self, broker: RabbitBroker, channel: AbstractChannel, queue: AbstractQueue, name: str
    ) -> None:
        self._broker = broker
        self._channel = channel
        self._queue = queue
        self.name = name
        self.consumer_tag: str | None = None
        self.stopping = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> bool:
        if self.stopping:
            return False  # left unacked: the broker requeues it when the channel closes
        self._inflight += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def stop(self) -> None:
        """Cancel the consumer, let in-flight handlers finish (and ack), close the channel."""
        if self.stopping:
            await self._idle.wait()
            return
        self.stopping = True
        try:
            if self.consumer_tag is not None and not self._channel.is_closed:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await self._queue.cancel(self.consumer_tag)
            await self._idle.wait()
        finally:
            self._broker._forget(self)
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._channel.close()


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
    ) -> None:
        self._connection = connection
        self._channel = channel  # publishing: publisher confirms, returns raise
        self._url = url
        self.prefix = prefix
        self._prefetch = prefetch
        self._quorum = quorum
        self._confirm_window = max(1, confirm_window)
        self._topology = _Topology()
        self._exchanges: dict[str, AbstractExchange] = {}
        self._subscriptions: list[RabbitSubscription] = []
        # aiormq matches a returned message to its confirm by message_id: two publishes with the
        # same id must not be in flight on the channel at once.
        self._inflight_ids: dict[str, asyncio.Task[str | None]] = {}
        self._dlq_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "",
        prefetch: int = 64,
        quorum: bool = False,
        confirm_window: int = 500,
    ) -> RabbitBroker:
        try:
            connection = await aio_pika.connect_robust(url, timeout=5)
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
        )

    # --- names and declarations -------------------------------------------------------------

    def _name(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _unprefixed(self, name: str) -> str:
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def _dlq(self, queue: str) -> str:
        return self._name(f"{queue}.dlq")

    def _delay_queue(self, queue: str, delay_ms: int) -> str:
        return self._name(f"{queue}.retry.{delay_ms}")

    @staticmethod
    def _delay_ms(retry: RetryPolicy, attempt: int) -> int:
        return max(1, round(retry.delay(attempt) * 1000))

    def _queue_arguments(self, extra: Arguments = None) -> Arguments:
        arguments: dict[str, FieldValue] = {"x-queue-type": "quorum"} if self._quorum else {}
        arguments.update(extra or {})
        return arguments or None

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

    async def _existing_exchange(self, exchange: str) -> AbstractExchange:
        """An exchange someone else declared: checked passively (a missing one is Unroutable)."""
        found = self._exchanges.get(exchange)
        if found is not None:
            return found
        name = self._name(exchange)
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            await probe.declare_exchange(name, aio_pika.ExchangeType.TOPIC, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise Unroutable(f"exchange {exchange!r} does not exist") from exc
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await probe.close()
        found = await self._channel.get_exchange(name, ensure=False)
        self._exchanges[exchange] = found
        return found

    # --- publishing -------------------------------------------------------------------------

    def _encode(self, message: Message) -> aio_pika.Message:
        headers: dict[str, FieldValue] = dict(message.headers)
        headers[H_SCHEMA] = message.schema_version
        headers[H_OCCURRED] = message.occurred_at.isoformat()
        if message.causation_id is not None:
            headers[H_CAUSATION] = message.causation_id
        return aio_pika.Message(
            message.body,
            headers=headers,
            content_type=CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type or None,
            correlation_id=message.correlation_id,
            timestamp=message.occurred_at,
        )

    async def _publish_one(
        self, exchange: AbstractExchange, message: aio_pika.Message, key: str
    ) -> str | None:
        """Publish and wait for the confirm: None, or the routing key if it was returned."""
        try:
            await exchange.publish(message, key, mandatory=True)
        except aiormq.exceptions.PublishError:
            return key
        except aiormq.exceptions.DeliveryError as exc:  # nack: the broker could not take it
            raise BrokerUnavailable(f"RabbitMQ refused the message {message.message_id}: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"publishing to RabbitMQ failed: {exc!r}") from exc
        return None

    async def _publish_pipelined(
        self, exchange: AbstractExchange, items: Sequence[tuple[aio_pika.Message, str]]
    ) -> list[str]:
        """Publish in order with up to ``confirm_window`` confirms outstanding; return the routing
        keys of returned (unroutable) messages, raise ``BrokerUnavailable`` on failures."""
        window = asyncio.Semaphore(self._confirm_window)
        tasks: list[asyncio.Task[str | None]] = []

        def done(task: asyncio.Task[str | None], message_id: str) -> None:
            window.release()
            if self._inflight_ids.get(message_id) is task:
                del self._inflight_ids[message_id]

        try:
            for message, key in items:
                message_id = str(message.message_id)
                previous = self._inflight_ids.get(message_id)
                if previous is not None:
                    await asyncio.wait([previous])
                await window.acquire()
                # Tasks take the channel's lock in creation order (asyncio.Lock is FIFO), so
                # the frames leave in the order of ``items``.
                task = asyncio.create_task(self._publish_one(exchange, message, key))
                task.add_done_callback(functools.partial(done, message_id=message_id))
                self._inflight_ids[message_id] = task
                tasks.append(task)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        returned: list[str] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if result is not None:
                returned.append(result)
        return returned

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish in order, pipelined (``confirm_window`` confirms in flight), and wait for every
        confirm. ``Unroutable`` names the messages no queue took; the others were published."""
        if not messages:
            return
        target = await self._existing_exchange(exchange)
        returned = await self._publish_pipelined(target, [(self._encode(m), m.routing_key) for m in messages])
        if returned:
            # On a topic exchange routability depends on the routing key alone.
            keys = set(returned)
            raise Unroutable(
                f"{exchange}: {len(returned)} of {len(messages)} message(s) reached no queue "
                f"(routing keys {sorted(keys)})",
                [m.message_id for m in messages if m.routing_key in keys],
            )

    async def _publish_copy(self, queue_name: str, message: aio_pika.Message) -> None:
        """Publish to one queue through the default exchange and wait for the confirm."""
        returned = await self._publish_pipelined(self._channel.default_exchange, [(message, queue_name)])
        if returned:
            raise Unroutable(f"queue {queue_name!r} does not exist")

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, incoming: AbstractIncomingMessage, *, strict: bool = True) -> _Decoded:
        """The envelope of a delivery. ``strict`` raises ``_Malformed`` on a bad property;
        otherwise (reading dead letters) bad values fall back to defaults."""
        headers: Mapping[str, Any] = incoming.headers or {}
        exchange = _str_header(headers, H_ORIGINAL_EXCHANGE)
        if exchange is None:
            exchange = self._unprefixed(incoming.exchange or "")
        routing_key = _str_header(headers, H_ORIGINAL_ROUTING_KEY) or incoming.routing_key or ""
        attempt = _int_header(headers, H_ATTEMPT, 1, strict)
        schema_version = _int_header(headers, H_SCHEMA, 1, strict)
        occurred_at = self._occurred_at(incoming, headers, strict)
        type_ = incoming.type or _str_header(headers, H_TYPE) or routing_key
        message = Message(
            routing_key=routing_key,
            body=incoming.body,
            type=type_,
            message_id=incoming.message_id or derived_message_id(routing_key, incoming.body),
            schema_version=schema_version,
            occurred_at=occurred_at,
            correlation_id=incoming.correlation_id or None,
            causation_id=_str_header(headers, H_CAUSATION),
            headers={
                name: text
                for name, value in headers.items()
                if not name.startswith("x-ordermesh-") and not _is_broker_header(name)
                if (text := _text(value)) is not None
            },
        )
        return _Decoded(message, exchange, attempt)

    @staticmethod
    def _occurred_at(incoming: AbstractIncomingMessage, headers: Mapping[str, Any], strict: bool) -> datetime:
        raw = headers.get(H_OCCURRED)
        if raw is not None:
            try:
                text = raw.decode() if isinstance(raw, bytes) else raw
                when = datetime.fromisoformat(text)
                return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
            except (TypeError, ValueError, UnicodeDecodeError):
                if strict:
                    raise _Malformed(f"header {H_OCCURRED}={raw!r} is not an ISO 8601 time") from None
        stamp = incoming.timestamp
        if isinstance(stamp, datetime):
            return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
        return datetime.now(UTC)

    def _copy(
        self,
        incoming: AbstractIncomingMessage,
        message_id: str,
        extra: Mapping[str, FieldValue],
        drop: Sequence[str] = (),
    ) -> aio_pika.Message:
        """The delivery re-published (retry, dead letter, replay): same body and properties,
        the original exchange and routing key recorded, the broker's x-death bookkeeping dropped."""
        headers: dict[str, FieldValue] = {
            name: value for name, value in (incoming.headers or {}).items() if not _is_broker_header(name)
        }
        headers.setdefault(H_ORIGINAL_EXCHANGE, self._unprefixed(incoming.exchange or ""))
        headers.setdefault(H_ORIGINAL_ROUTING_KEY, incoming.routing_key or "")
        headers.update(extra)
        for name in drop:
            headers.pop(name, None)
        return aio_pika.Message(
            incoming.body,
            headers=headers,
            content_type=incoming.content_type or CONTENT_TYPE,
            content_encoding=incoming.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=incoming.type,
            correlation_id=incoming.correlation_id,
            timestamp=incoming.timestamp,
            app_id=incoming.app_id,
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
            await self._declare_queue(self._channel, self._dlq(queue))
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
            consumer_queue = await self._declare_queue(channel, self._name(queue))
            for key in binding_keys:
                await consumer_queue.bind(source, routing_key=key)
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"declaring queue {queue!r}: {exc}") from exc
        self._topology.consumer_queues.add(queue)
        sub = RabbitSubscription(self, channel, consumer_queue, queue)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            if not sub.enter():
                return
            try:
                await self._handle(sub.name, incoming, handler, retry)
            finally:
                sub.leave()

        sub.consumer_tag = await consumer_queue.consume(on_message)
        self._subscriptions.append(sub)
        return sub

    async def _handle(
        self, queue: str, incoming: AbstractIncomingMessage, handler: Handler, retry: RetryPolicy
    ) -> None:
        try:
            try:
                decoded = self._decode(incoming)
            except _Malformed as exc:
                lenient = self._decode(incoming, strict=False)
                await self._dead_letter(queue, incoming, lenient, f"malformed envelope: {exc}")
                return
            delivery = Delivery(
                decoded.message, decoded.exchange, queue, decoded.attempt, bool(incoming.redelivered)
            )
            try:
                await handler(delivery)
            except PermanentError as exc:
                await self._dead_letter(queue, incoming, decoded, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if decoded.attempt >= retry.max_attempts:
                    await self._dead_letter(queue, incoming, decoded, error)
                else:
                    delay_queue = self._delay_queue(queue, self._delay_ms(retry, decoded.attempt))
                    copy = self._copy(
                        incoming,
                        decoded.message.message_id,
                        {H_ATTEMPT: decoded.attempt + 1, H_ERROR: error[:_MAX_ERROR]},
                    )
                    await self._publish_copy(delay_queue, copy)
                    await incoming.ack()
            else:
                await incoming.ack()
        except Exception:
            # The retry or dead-letter copy could not be published (or the ack failed): leave
            # the original with the broker, which delivers it again.
            log.exception("queue %s: message %s left unacknowledged", queue, incoming.message_id)
            with contextlib.suppress(*_CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                await incoming.nack(requeue=True)

    async def _dead_letter(
        self, queue: str, incoming: AbstractIncomingMessage, decoded: _Decoded, error: str
    ) -> None:
        copy = self._copy(
            incoming,
            decoded.message.message_id,
            {
                H_ERROR: error[:_MAX_ERROR],
                H_ATTEMPT: decoded.attempt,
                H_DEAD_AT: datetime.now(UTC).isoformat(),
            },
        )
        await self._publish_copy(self._dlq(queue), copy)
        await incoming.ack()
        log.warning(
            "queue %s: dead-lettered %s after %d attempt(s): %s",
            queue,
            copy.message_id,
            decoded.attempt,
            error,
        )

    def _forget(self, sub: RabbitSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    # --- dead letters -----------------------------------------------------------------------

    async def _drain_dlq(self, channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
        """Take every message of ``queue``'s DLQ without acknowledging it (the caller returns
        them). Empty if the DLQ does not exist."""
        try:
            dlq = await channel.declare_queue(self._dlq(queue), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        taken: list[AbstractIncomingMessage] = []
        while (incoming := await dlq.get(no_ack=False, fail=False)) is not None:
            taken.append(incoming)
        return taken

    async def _letter(self, queue: str, incoming: AbstractIncomingMessage) -> DeadLetter:
        decoded = self._decode(incoming, strict=False)
        headers: Mapping[str, Any] = incoming.headers or {}
        return DeadLetter(
            id=decoded.message.message_id,
            queue=queue,
            message=decoded.message,
            error=_str_header(headers, H_ERROR) or "",
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
                    taken.sort(key=_dead_at)
                    letters += [await self._letter(name, incoming) for incoming in taken]
                    await _requeue(taken)
                finally:
                    with contextlib.suppress(*_CONNECTION_ERRORS):
                        await channel.close()  # would requeue anything still unacknowledged
        return letters

    async def replay(self, queue: str, message_id: str) -> None:
        """Move one dead letter back to ``queue`` (through the default exchange, so only that
        queue gets it) as a first attempt, keeping its original exchange and routing key. The
        copy is confirmed before the dead letter is acknowledged."""
        found: AbstractIncomingMessage | None = None
        async with self._dlq_lock:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                taken = await self._drain_dlq(channel, queue)
                for incoming in taken:
                    if (await self._letter(queue, incoming)).id == message_id:
                        found = incoming
                        break
                if found is not None:
                    copy = self._copy(found, message_id, {H_ATTEMPT: 1}, drop=(H_ERROR, H_DEAD_AT))
                    await self._publish_copy(self._name(queue), copy)
                    await found.ack()
                await _requeue([incoming for incoming in taken if incoming is not found])
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

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.stop()
        await self._connection.close()


__all__ = ["HOW_TO_START", "RabbitBroker", "RabbitSubscription", "derived_message_id"]

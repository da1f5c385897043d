"""The broker port. Every adapter passes ``tests/contract/test_broker_contract.py``.

Semantics, RabbitMQ's (the reference):

- Exchanges are durable *topic* exchanges (``orders``, ``payments``, …). Routing keys are
  dot-separated words (``order.created``); binding keys may use ``*`` (exactly one word) and
  ``#`` (zero or more words).
- ``publish`` returns once the broker has the message durably (publisher confirm). A message
  that no queue is bound to receive raises ``Unroutable`` (mandatory routing): nothing is lost
  silently.
- A consumer's queue is durable and belongs to it (``notifications.order_created``); its handler
  is called with a ``Delivery`` and the message is acknowledged only after the handler returns.
- A handler that raises is retried with exponential backoff (``RetryPolicy``): the message
  waits in a delay queue, then comes back with ``attempt`` + 1. After ``max_attempts`` it goes
  to the queue's dead-letter queue (``<queue>.dlq``) with the error, the attempt count and the
  original exchange and routing key in its headers. ``PermanentError`` (malformed body, unknown
  type, missing field) skips the retries: dead-lettered at once. The consumer keeps going.
- Delivery is at-least-once: handlers must be idempotent (the inbox in ``messaging.inbox``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from ordermesh.errors import InfrastructureError, OrdermeshError

# Header names: the envelope travels in AMQP properties/headers, the body is plain JSON.
H_TYPE = "x-ordermesh-type"
H_SCHEMA = "x-ordermesh-schema-version"
H_OCCURRED = "x-ordermesh-occurred-at"
H_CAUSATION = "x-ordermesh-causation-id"
H_ATTEMPT = "x-ordermesh-attempt"
H_ERROR = "x-ordermesh-error"
H_ORIGINAL_EXCHANGE = "x-ordermesh-original-exchange"
H_ORIGINAL_ROUTING_KEY = "x-ordermesh-original-routing-key"
H_DEAD_AT = "x-ordermesh-dead-lettered-at"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class MessagingError(OrdermeshError):
    """Base of broker errors."""


class Unroutable(MessagingError):
    """Mandatory messages reached no queue. ``message_ids`` names them; every other message of
    the same ``publish`` call was published (as RabbitMQ does: it returns only the unroutable)."""

    def __init__(self, message: str, message_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message_ids = tuple(message_ids)


class PermanentError(MessagingError):
    """The message can never be handled (bad JSON, unknown type, missing field): dead-letter it now."""


class BrokerUnavailable(InfrastructureError):
    """The broker cannot be reached or refused the message."""


@dataclass(frozen=True, slots=True)
class Message:
    """An envelope. ``body`` is the JSON payload; the rest travels as message properties."""

    routing_key: str
    body: bytes
    type: str = ""
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    schema_version: int = 1
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, routing_key: str, payload: Any, **kw: Any) -> Message:
        return cls(routing_key, orjson.dumps(payload), type=kw.pop("type", routing_key), **kw)

    def payload(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"message {self.message_id}: body is not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Delivery:
    message: Message
    exchange: str
    queue: str
    attempt: int = 1  # 1 for the first delivery; counts retries through the delay queues
    redelivered: bool = False  # the broker delivered it before and got no ack (crash, nack)


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` deliveries in all; the n-th retry waits ``initial * multiplier**(n-1)``
    seconds (capped at ``maximum``)."""

    max_attempts: int = 5
    initial: float = 1.0
    multiplier: float = 4.0
    maximum: float = 300.0

    def delay(self, attempt: int) -> float:
        """The wait before delivery number ``attempt + 1``."""
        return float(min(self.initial * self.multiplier ** (attempt - 1), self.maximum))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the message id
    queue: str  # the consumer queue it died in
    message: Message
    error: str
    attempts: int
    original_exchange: str
    original_routing_key: str


class Subscription(Protocol):
    async def stop(self) -> None:
        """Stop consuming; in-flight handlers finish and are acknowledged first."""
        ...


class Broker(Protocol):
    @property
    def connected(self) -> bool:
        """Whether the broker can be reached now: False once closed, and while a connection to a
        server is down (the adapter reconnects by itself). For readiness probes."""
        ...

    async def declare_exchange(self, exchange: str) -> None: ...

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publish in order and wait for every confirm; ``Unroutable`` if any reached no queue."""
        ...

    async def subscribe(
        self,
        queue: str,
        exchange: str,
        binding_keys: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        retry: RetryPolicy = RetryPolicy(),
    ) -> Subscription:
        """Declare ``queue`` (and its delay and dead-letter queues), bind it, and consume."""
        ...

    async def dead_letters(self, queue: str | None = None) -> list[DeadLetter]: ...

    async def replay(self, queue: str, message_id: str) -> None:
        """Send a dead letter back to the consumer queue it died in (not to every queue bound
        to its original routing key, which would hand it again to consumers that already
        handled it), as a first attempt, with its original exchange and routing key."""
        ...

    async def delete_topology(self) -> None:
        """Delete every exchange and queue this broker object declared (tests, namespaces)."""
        ...

    async def close(self) -> None: ...

"""A reaction to a message, effectively once, for a service whose effect cannot share the inbox's
transaction (it calls a payment provider, or its store opens transactions of its own).

    handler = react_once(inbox, reserve_stock, failpoint_name="inventory.choreography.reacted")
    await broker.subscribe("inventory.payment_processed", "payments", ["payment.processed"], handler)

The message is skipped if the inbox has it; otherwise the reaction runs, then the inbox records
it. A crash between the two runs the reaction again on redelivery, so the reaction itself must be
idempotent (every ordermesh service's use cases are, by order id): that, not the inbox alone, is
what makes it effectively once. A business refusal (``DomainError``, ``NotFound``) can never
succeed on a retry: it becomes a ``PermanentError``, dead-lettered at once with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import trace

from ordermesh.errors import DomainError, NotFound
from ordermesh.failpoints import failpoint
from ordermesh.messaging.context import traced
from ordermesh.messaging.inbox import Inbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Broker, Delivery, Handler, PermanentError, RetryPolicy, Subscription

Refusals = tuple[type[BaseException], ...]


async def _recorded_only(_: Any) -> None:
    """The inbox's own effect: the reaction has run already, only the message id is recorded."""


def react_once(
    inbox: Inbox,
    react: Callable[[Delivery], Awaitable[None]],
    *,
    failpoint_name: str = "",
    refusals: Refusals = (DomainError, NotFound),
) -> Handler:
    """A broker handler running ``react`` once per message id (see the module doc)."""

    async def handle(delivery: Delivery) -> None:
        message_id = delivery.message.message_id
        if await inbox.seen(message_id):
            trace.get_current_span().set_attribute("ordermesh.duplicate", True)  # the consumer's span
            return
        try:
            await react(delivery)
        except refusals as exc:
            raise PermanentError(f"{delivery.message.routing_key}: {exc}") from exc
        if failpoint_name:
            await failpoint(failpoint_name)  # a crash here: the effect done, its message not recorded
        await inbox.once(message_id, _recorded_only)

    return handle


def bound(
    queues: Mapping[str, tuple[str, str]], handlers: Mapping[str, Handler]
) -> dict[str, tuple[str, str, Handler]]:
    """``queue: (exchange, binding key)`` (a service's published list of what it consumes) with
    each queue's handler, found by its binding key: what ``subscribe_all`` takes."""
    return {queue: (exchange, key, handlers[key]) for queue, (exchange, key) in queues.items()}


async def subscribe_all(
    broker: Broker,
    queues: Mapping[str, tuple[str, str, Handler]],
    *,
    retry: RetryPolicy,
    metrics: ConsumerMetrics | None = None,
) -> list[Subscription]:
    """Subscribe every ``queue: (exchange, binding key, handler)``, each delivery in a span of
    its message's trace (``messaging.context.traced``) and, with ``metrics``, counted and timed;
    all or none (a failure half-way stops what was subscribed)."""
    subscriptions: list[Subscription] = []
    try:
        for queue, (exchange, key, react) in queues.items():
            handler = traced(react)
            measured = handler if metrics is None else metrics.consumed(queue, handler)
            subscriptions.append(await broker.subscribe(queue, exchange, [key], measured, retry=retry))
    except BaseException:
        for sub in subscriptions:
            await sub.stop()
        raise
    return subscriptions


__all__ = ["bound", "react_once", "subscribe_all"]

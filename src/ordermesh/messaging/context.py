"""Messages carry the trace they were written in; publishing and consuming are spans of it.

Publish (``published``, used by the outbox relay and the outbox publisher): with an SDK, each
message gets a PRODUCER span, a child of the context its headers carry (the request or delivery
that wrote it), lasting until the broker confirms; its ``traceparent`` replaces the message's, so
the consumer's span hangs under the publish. Without an SDK the messages go out as they are.

Consume (``traced``, around any broker handler): each delivery runs in a CONSUMER span, a child
of the message's ``traceparent`` header (read case-insensitively), with the message's
``tracestate`` kept (an invalid or unfit one is dropped, the trace kept); the previous context is
restored when the handler returns or raises, so a worker task that handles one message after
another never leaks one message's trace into the next. A retry (``attempt`` > 1) or a redelivered
duplicate is a sibling span in the same trace. Without a valid ``traceparent`` the delivery starts
a trace of its own (with an SDK) or runs outside any (without). Events and mails written in the
handler carry the consumer's context (``tracing.event_metadata``, ``tracing.current``).
Works with any adapter: it only reads ``Delivery.message.headers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ordermesh import logs, tracing
from ordermesh.messaging.port import TRACEPARENT, TRACESTATE, Delivery, Handler, Message, Unroutable


def _attributes(message: Message, destination: str, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation.type": operation,
        "messaging.destination.name": destination,
        "messaging.message.id": message.message_id,
        "messaging.rabbitmq.destination.routing_key": message.routing_key,
    }
    if message.correlation_id:  # the order id, on the order service's messages
        attributes["messaging.message.conversation_id"] = message.correlation_id
        attributes[tracing.ORDER_ID] = message.correlation_id
    return attributes


def traced(handler: Handler) -> Handler:
    """``handler`` run in a CONSUMER span of each delivery's trace (see the module doc)."""

    async def handle(delivery: Delivery) -> None:
        message = delivery.message
        with tracing.span(
            f"process {delivery.queue}", parent=tracing.extract(message.headers), kind=SpanKind.CONSUMER
        ) as span:
            if span.is_recording():
                span.set_attributes(_attributes(message, delivery.queue, "process"))
                span.set_attribute("ordermesh.delivery.attempt", delivery.attempt)
            # Every producer of ours sets the correlation id to the order id: the handler's log
            # lines name the order.
            with logs.bind(order_id=message.correlation_id or ""):
                await handler(delivery)

    return handle


@contextmanager
def published(exchange: str, messages: Sequence[Message]) -> Iterator[list[Message]]:
    """``messages`` to hand to ``broker.publish`` inside the block, each with a PRODUCER span
    that ends with the block (see the module doc); the same messages when no SDK is installed."""
    if not tracing.enabled():
        yield list(messages)
        return
    tracer = tracing.tracer()
    spans: list[Span] = []
    out: list[Message] = []
    for message in messages:
        span = tracer.start_span(
            f"publish {exchange}",
            context=tracing.extract(message.headers),
            kind=SpanKind.PRODUCER,
            attributes=_attributes(message, exchange, "send"),
        )
        spans.append(span)
        headers = {k: v for k, v in message.headers.items() if k.lower() not in (TRACEPARENT, TRACESTATE)}
        tracing.inject(headers, trace.set_span_in_context(span, Context()))
        out.append(dataclasses.replace(message, headers=headers))
    try:
        yield out
    except BaseException as exc:
        # Unroutable names the messages no queue took; the rest of the batch went out.
        failed = set(exc.message_ids) if isinstance(exc, Unroutable) and exc.message_ids else None
        for message, span in zip(out, spans, strict=True):
            if failed is None or message.message_id in failed:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for span in spans:
            span.end()


def with_current_trace(messages: Sequence[Message]) -> list[Message]:
    """``messages`` carrying the current trace context, unless they carry one already: what a
    service writes to its outbox belongs to the request or delivery that wrote it."""
    carrier = tracing.event_metadata()
    if not carrier:
        return list(messages)
    return [
        m if TRACEPARENT in m.headers else dataclasses.replace(m, headers={**m.headers, **carrier})
        for m in messages
    ]


__all__ = ["published", "traced", "with_current_trace"]

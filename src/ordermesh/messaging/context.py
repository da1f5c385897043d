"""Consumers continue the producer's trace: ``broker.subscribe(..., traced(handler))``.

For each delivery the handler runs with a *child span* of the message's ``traceparent`` header as
the current trace context (``ordermesh.tracing.current()``): same trace id, a new span id, the
parent's flags. Without a header, or with an invalid one, the delivery starts a new trace. Every
delivery gets its own span, so a retry (``attempt`` > 1) or a redelivered duplicate is a sibling
span in the same trace. The previous context is restored when the handler returns or raises, so a
worker task that handles one message after another never leaks one message's trace into the next.
Works with any adapter: it only reads ``Delivery.message.headers``.

``tracestate``: carried unchanged. We add no vendor entry of our own (we export no spans), so
the W3C rule for a participant that does not modify it applies: pass it on as received, next to
our child span (``tracing.current_state()``; events written in the handler and the notification
mail carry it). It is dropped when the ``traceparent`` is missing or invalid — its entries
describe a trace we do not continue — and when it is not one line of printable ASCII (it is copied
into headers such as a mail's, where a line break would be an injection).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ordermesh import tracing
from ordermesh.messaging.port import TRACEPARENT, TRACESTATE, Delivery, Handler

_PRINTABLE = re.compile(r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$")  # not blank either


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # AMQP header names are case-sensitive, but a publisher copying HTTP headers may capitalise.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value if isinstance(value, str) else None


def continue_trace(headers: Mapping[str, str]) -> tuple[str, str | None]:
    """The consumer's ``(traceparent, tracestate)`` for a message with these headers."""
    parent = _header(headers, TRACEPARENT)
    traceparent = tracing.child_of(parent)
    if tracing.trace_id(parent) is None:
        return traceparent, None
    state = _header(headers, TRACESTATE)
    return traceparent, state if state is not None and _PRINTABLE.fullmatch(state) else None


def traced(handler: Handler) -> Handler:
    """``handler`` run in a child span of each delivery's ``traceparent`` (see the module doc)."""

    async def handle(delivery: Delivery) -> None:
        scope = tracing.enter(*continue_trace(delivery.message.headers))
        try:
            await handler(delivery)
        finally:
            tracing.leave(scope)

    return handle


__all__ = ["continue_trace", "traced"]

"""W3C trace context (``traceparent``) carried from the edge into events and messages.

The REST edge continues the caller's trace (or starts one), the use cases store the current
``traceparent`` in every event's metadata, the outbox relay copies it into the message headers,
and consumers continue from there: one order is one trace from the REST call through the broker
to the notification. This is the propagation only (no exporter); an OpenTelemetry SDK can read
the same headers.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: ContextVar[str | None] = ContextVar("ordermesh_traceparent", default=None)


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match and set(match.group(1)) != {"0"} else None


def child_of(traceparent: str | None) -> str:
    """A new span in the caller's trace, or a new trace when there is no valid caller."""
    parent = _TRACEPARENT.match(traceparent or "")
    trace = parent.group(1) if parent and set(parent.group(1)) != {"0"} else os.urandom(16).hex()
    flags = parent.group(3) if parent else "01"
    return f"00-{trace}-{os.urandom(8).hex()}-{flags}"


def set_current(traceparent: str | None) -> None:
    _current.set(traceparent)


def current() -> str | None:
    return _current.get()


def event_metadata() -> dict[str, str]:
    """What every event written in this context carries."""
    tp = _current.get()
    return {"traceparent": tp} if tp else {}

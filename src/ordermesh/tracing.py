"""W3C trace context (``traceparent``) carried from the edge into events and messages.

The REST edge continues the caller's trace (or starts one), the use cases store the current
``traceparent`` in every event's metadata, the outbox relay copies it into the message headers,
and consumers continue from there: one order is one trace from the REST call through the broker
to the notification. This is the propagation only (no exporter); an OpenTelemetry SDK can read
the same headers.

A consumer continues the message's trace with ``enter``/``leave`` (``messaging.context.traced``),
which also make the message's ``tracestate`` current, unchanged; events written then carry it
too. ``TraceLogFilter`` puts the current trace and span ids on log records for a formatter.
"""

from __future__ import annotations

import logging
import random
import re
from contextvars import ContextVar, Token
from dataclasses import dataclass

from ordermesh.config import redact_urls

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: ContextVar[str | None] = ContextVar("ordermesh_traceparent", default=None)
_state: ContextVar[str | None] = ContextVar("ordermesh_tracestate", default=None)


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match and set(match.group(1)) != {"0"} else None


def span_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(2) if match else None


def child_of(traceparent: str | None) -> str:
    """A new span in the caller's trace, or a new trace when there is no valid caller."""
    parent = _TRACEPARENT.match(traceparent or "") if traceparent else None
    trace = parent.group(1) if parent and set(parent.group(1)) != {"0"} else f"{_random_id(128):032x}"
    flags = parent.group(3) if parent else "01"
    return f"00-{trace}-{_random_id(64):016x}-{flags}"


def _random_id(bits: int) -> int:
    # Random, not secret (as OpenTelemetry's own id generator): os.urandom costs ~10x more
    # here, on every request. Never all zeros, which W3C reserves for "invalid".
    return random.getrandbits(bits) or 1


def set_current(traceparent: str | None) -> None:
    _current.set(traceparent)


def current() -> str | None:
    return _current.get()


def current_state() -> str | None:
    return _state.get()


@dataclass(frozen=True, slots=True)
class Scope:
    """What ``enter`` replaced; ``leave`` puts it back."""

    traceparent: Token[str | None]
    tracestate: Token[str | None]


def enter(traceparent: str, tracestate: str | None = None) -> Scope:
    """Make ``traceparent`` (and ``tracestate``) current until ``leave``; unlike ``set_current``
    this can be undone, for a worker task that handles one message after another."""
    return Scope(_current.set(traceparent), _state.set(tracestate))


def leave(scope: Scope) -> None:
    _state.reset(scope.tracestate)
    _current.reset(scope.traceparent)


def event_metadata() -> dict[str, str]:
    """What every event written in this context carries."""
    tp = _current.get()
    if not tp:
        return {}
    state = _state.get()
    return {"traceparent": tp, "tracestate": state} if state else {"traceparent": tp}


def current_ids() -> tuple[str, str]:
    """The current trace id and span id, as hex ("", "" outside a trace): what log lines carry."""
    tp = _current.get()
    trace = trace_id(tp)
    return (trace, span_id(tp) or "") if trace else ("", "")


class TraceLogFilter(logging.Filter):
    """Sets ``record.trace_id`` and ``record.span_id`` from the current context ("" outside a
    trace). Add it to a *handler*: a logger's filters do not see records from its children."""

    def filter(self, record: logging.LogRecord) -> bool:
        tp = _current.get()
        trace = trace_id(tp)
        record.trace_id = trace or ""
        record.span_id = (span_id(tp) or "") if trace else ""
        return True


_LOG_FILTER = TraceLogFilter()


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add the trace filter to every handler of ``logger`` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(_LOG_FILTER)  # a no-op when it is there already


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s]: %(message)s"


# C0 controls, DEL and the Unicode line and paragraph separators: anything that could end a log
# line early or forge the start of another one.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\x0a``): a value in a log line
    (a message id, an order id) cannot split it or forge a line of its own."""
    return text if text.isprintable() else text.translate(_CONTROLS)


class SafeFormatter(logging.Formatter):
    """The message of a record on one line, with any URL's password redacted. A traceback
    (``exc_info``) still follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(redact_urls(record.message))
        return super().formatMessage(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Our processes' log setup: INFO lines with the trace id, each on one line with credentials
    redacted, unless the host application configured logging already (then only the filter is
    added, its format may use the field)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
        for handler in root.handlers:
            handler.setFormatter(SafeFormatter(LOG_FORMAT))
    install_log_filter()

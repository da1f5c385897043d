"""One log setup for every ordermesh process: each service (``kit.process``), the supervisor
(``ordermesh up``) and the CLI.

- ``ORDERMESH_LOG_FORMAT``: ``auto`` (the default) and ``text`` write a line a person reads
  (``auto`` colours the level on a terminal); ``json`` writes one JSON object per line, for a
  collector. ``docs/logging.md`` shows a line of each kind.
- Every record carries the trace and span ids (``tracing.current_ids()``) and the fields bound
  where an order is handled: ``order_id`` and ``saga_id`` ("" when unknown), and any other field
  bound (``user_id``: the REST caller). A record's own ``extra=`` wins over the context's.
- One line per record: control characters in the message and fields are escaped, so a value
  cannot end a line early or forge another; every URL's password is redacted. A text line's
  traceback follows on lines of its own; a JSON line holds it as a field.

Fields come from context variables, set with ``bind`` (a block) or ``tag`` (the rest of the
current request or gRPC call, each of which runs in a context of its own), so code in between
passes nothing down.

The standard library rather than structlog: everything we run (uvicorn, grpc, aio-pika, stamina)
logs through ``logging``, and structlog would reach those records only through its bridge to it,
adding a second logger API and a dependency for what a filter and two formatters do here. The
hot lines (a gRPC call's, a REST request's) pay one filter and one format, no processor chain.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import IO, Any, Literal, get_args

import orjson

from ordermesh import tracing
from ordermesh.config import redact_urls

Format = Literal["auto", "text", "json"]
FORMATS: tuple[str, ...] = get_args(Format)
#: The text layout, for a host application's own formatter (the filter supplies the fields).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s]: %(message)s"
#: On every record ("" when unknown), and appended to a text line when set.
CONTEXT = ("order_id", "saga_id")
_HANDLER = "ordermesh"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("ordermesh_log_fields", default=_EMPTY)


def _merged(new: Mapping[str, object]) -> Mapping[str, str]:
    # None and "" mean "not known here": they never hide a value bound further out.
    return {**_fields.get(), **{k: str(v) for k, v in new.items() if v is not None and v != ""}}


class _Bound:
    __slots__ = ("_new", "_token")

    def __init__(self, new: Mapping[str, object]) -> None:
        self._new = new
        self._token: Token[Mapping[str, str]] | None = None

    def __enter__(self) -> None:
        self._token = _fields.set(_merged(self._new))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _fields.reset(self._token)


def bind(**fields: object) -> _Bound:
    """``with logs.bind(order_id=..., saga_id=...):`` every record logged inside carries the
    fields; an inner block adds to (or overrides) the outer one's, and leaving it restores them.
    Values are logged as ``str``; None or "" leaves a field as it was."""
    return _Bound(fields)


def tag(**fields: object) -> None:
    """The fields for the rest of the current context: in a REST route or a gRPC handler, the
    request's (each runs in a context of its own, so they end with it, and its access line
    carries them). Not for a task that handles one thing after another: use ``bind`` there."""
    _fields.set(_merged(fields))


def fields() -> Mapping[str, str]:
    """The fields bound here."""
    return _fields.get()


# C0 controls, DEL and the Unicode line and paragraph separators: anything that could end a log
# line early or forge the start of another one.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\x0a``)."""
    return text if text.isprintable() else text.translate(_CONTROLS)


# What every LogRecord has: anything else on a record was given by its caller (``extra=``).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "service"}


class ContextFilter(logging.Filter):
    """Sets ``trace_id``, ``span_id``, ``order_id``, ``saga_id`` (and any other bound field) and
    ``service`` on each record, unless the record has them already. On a *handler*: a logger's
    filters do not see records from its children."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__
        if "trace_id" not in attrs:
            attrs["trace_id"], attrs["span_id"] = tracing.current_ids()
        bound = _fields.get()
        for name in CONTEXT:
            attrs.setdefault(name, "")
        for name, value in bound.items():
            # Never over a LogRecord attribute of the same name, nor the record's own extra=.
            if name not in _STANDARD and not attrs.get(name):
                attrs[name] = value
        attrs.setdefault("service", self.service)
        return True


_fill = ContextFilter().filter

_LEVEL_COLOURS = {"DEBUG": "2", "INFO": "32", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


class TextFormatter(logging.Formatter):
    """A line a person reads: ``LOG_FORMAT`` with the service after the level, then the order and
    saga ids when set. With ``colour``, the level is coloured (for a terminal)."""

    def __init__(self, service: str = "", colour: bool = False) -> None:
        shown = f" {service.replace('%', '%%')}" if service else ""
        self._line = LOG_FORMAT.replace("%(levelname)s", f"%(levelname)s{shown}")
        super().__init__(self._line)
        self.colour = colour

    def formatMessage(self, record: logging.LogRecord) -> str:
        if "trace_id" not in record.__dict__:  # a handler without the filter: the fields now
            _fill(record)
        record.message = one_line(redact_urls(record.message))
        if self.colour:
            level = record.levelname
            values = {**record.__dict__, "levelname": f"\x1b[{_LEVEL_COLOURS.get(level, '0')}m{level}\x1b[0m"}
            line = self._line % values
        else:
            line = super().formatMessage(record)
        for name in CONTEXT:
            value = getattr(record, name, "")
            if value:
                line += f" {name}={one_line(redact_urls(str(value)))}"
        return line

    def formatException(self, ei: Any) -> str:
        return redact_urls(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact_urls(stack_info)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value) if "://" in value else value
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``service``, ``trace_id``, ``span_id``, ``order_id``, ``saga_id``, then the record's other
    fields (``rpc_*``, ``http_*``, …) and ``exc_info`` when there is a traceback."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        if "trace_id" not in record.__dict__:  # a handler without the filter: the fields now
            _fill(record)
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact_urls(record.getMessage()),
            "service": self.service or getattr(record, "service", ""),  # the process's, when it says
        }
        attrs = record.__dict__
        for name in ("trace_id", "span_id", *CONTEXT):
            doc[name] = attrs.get(name, "")
        for name, value in attrs.items():
            if name not in _STANDARD and name not in doc:
                doc[name] = _plain(value)
        if record.exc_info:
            doc["exc_info"] = redact_urls(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc_info"] = redact_urls(record.exc_text)
        if record.stack_info:
            doc["stack_info"] = redact_urls(record.stack_info)
        # orjson escapes every C0 control; the line and paragraph separators are valid JSON as
        # they are, but some readers split lines on them.
        line = orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        if "\u2028" in line or "\u2029" in line:
            line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return line


def formatter(format: Format = "auto", service: str = "", stream: IO[str] | None = None) -> logging.Formatter:
    """The formatter for ``format``: ``auto`` is text, its level coloured when ``stream`` is a
    terminal (and ``NO_COLOR`` is not set)."""
    if format == "json":
        return JsonFormatter(service)
    colour = format == "auto" and _terminal(stream or sys.stderr) and not os.environ.get("NO_COLOR")
    return TextFormatter(service, colour)


def _terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def configure(
    format: Format = "auto",
    *,
    level: int = logging.INFO,
    service: str = "",
    stream: IO[str] | None = None,
    loggers: Mapping[str, int] | None = None,
) -> None:
    """This process's logging: records at ``level`` and above to ``stream`` (stderr) in
    ``format``, with the context fields. Called again, it replaces what it set up (the CLI sets
    WARNING, then ``up`` or ``run`` INFO). When the host application has handlers of its own on
    the root logger, they are kept and only get the filter (their format may use the fields).
    ``loggers``: levels of their own for some loggers (``ORDERMESH_LOG_LEVEL``'s ``name=level``)."""
    for name, own in (loggers or {}).items():
        logging.getLogger(name).setLevel(own)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(handler)
        handler.close()
    context = ContextFilter(service)
    if root.handlers:
        for handler in root.handlers:
            handler.filters = [f for f in handler.filters if not isinstance(f, ContextFilter)]
            handler.addFilter(context)
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER)
    handler.setFormatter(formatter(format, service, stream))
    handler.addFilter(context)
    root.addHandler(handler)
    root.setLevel(level)


def format_from(env: Mapping[str, str] | None = None) -> Format:
    """``ORDERMESH_LOG_FORMAT`` of ``env`` (default: the process's), or ``auto`` when unset or not
    a format: for the CLI, set up before a command reads (and checks) the settings."""
    value = (os.environ if env is None else env).get("ORDERMESH_LOG_FORMAT", "")
    return "json" if value == "json" else "text" if value == "text" else "auto"


__all__ = [
    "CONTEXT",
    "FORMATS",
    "LOG_FORMAT",
    "ContextFilter",
    "Format",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "configure",
    "fields",
    "format_from",
    "formatter",
    "one_line",
    "tag",
]

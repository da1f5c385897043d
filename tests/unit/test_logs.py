"""``ordermesh.logs``: the text and JSON lines, the fields every record carries, one line per
record whatever a value holds, no password, and the fields bound by context."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ordermesh import logs, tracing

PASSWORD = "s3cr3t-pw"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


class Pty(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger with no handler (as in a fresh process, not pytest's), put back as it was."""
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    logger.handlers.clear()
    try:
        yield logger
    finally:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
        logger.handlers.extend(handlers)
        logger.setLevel(level)


def emit(format: logs.Format, *records: tuple[int, str, tuple[Any, ...], dict[str, Any]]) -> list[str]:
    """What a handler set up as ``configure`` sets one up writes for each call ``(level, msg,
    args, extra)`` on a logger of our own."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter(format, "orders", out))
    handler.addFilter(logs.ContextFilter("orders"))
    logger = logging.getLogger("ordermesh.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for level, msg, args, extra in records:
            logger.log(level, msg, *args, extra=extra)
    finally:
        logger.removeHandler(handler)
    return out.getvalue().splitlines()


def test_a_text_line_has_time_level_service_logger_trace_message_and_the_order() -> None:
    with logs.bind(order_id="o-1", saga_id="o-1"):
        (line,) = emit("text", (logging.INFO, "order %s placed", ("o-1",), {}))
    head, message = line.split(": ", 1)
    assert head.split()[2:] == ["INFO", "orders", "ordermesh.test.logs", "[]"]
    assert message == "order o-1 placed order_id=o-1 saga_id=o-1"
    (quiet,) = emit("text", (logging.WARNING, "no order here", (), {}))
    assert quiet.endswith("]: no order here")  # nothing appended when nothing is known


def test_a_json_line_has_every_field_and_the_records_own() -> None:
    with logs.bind(order_id="o-1"):
        logs_line = emit("json", (logging.WARNING, "charged %d", (2599,), {"rpc_code": "OK", "attempts": 2}))
    (line,) = logs_line
    doc = json.loads(line)
    assert doc["time"].endswith("Z") and "T" in doc["time"]
    assert {k: doc[k] for k in ("level", "logger", "message", "service", "order_id", "saga_id")} == {
        "level": "WARNING",
        "logger": "ordermesh.test.logs",
        "message": "charged 2599",
        "service": "orders",
        "order_id": "o-1",
        "saga_id": "",
    }
    assert doc["trace_id"] == doc["span_id"] == ""  # outside a trace
    assert doc["rpc_code"] == "OK" and doc["attempts"] == 2


def test_records_carry_the_current_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever backs it (OpenTelemetry's current span), tracing.current_ids() is the source.
    monkeypatch.setattr(tracing, "current_ids", lambda: (TRACE, SPAN))
    (text,) = emit("text", (logging.INFO, "inside", (), {}))
    (line,) = emit("json", (logging.INFO, "inside", (), {}))
    assert f"[{TRACE}]: inside" in text
    doc = json.loads(line)
    assert doc["trace_id"] == TRACE and doc["span_id"] == SPAN


FORGED = "m-1\r\n2026-01-01 00:00:00,000 INFO orders ordermesh [] : forged\u2028line\x1b[31m"


@pytest.mark.parametrize("format", ["text", "json"])
def test_a_value_cannot_split_a_line_forge_one_or_leak_a_password(format: logs.Format) -> None:
    url = f"postgresql://app:{PASSWORD}@db/orders"
    with logs.bind(order_id=FORGED):
        lines = emit(format, (logging.ERROR, "message %s failed on %s", (FORGED, url), {"target": url}))
    assert len(lines) == 1
    (line,) = lines
    assert PASSWORD not in line and "app:***@db" in line
    assert "\u2028" not in line and "\r" not in line and "\x1b" not in line
    if format == "json":
        doc = json.loads(line)
        assert doc["message"] == f"message {FORGED} failed on postgresql://app:***@db/orders"
        assert doc["order_id"] == FORGED and doc["target"] == "postgresql://app:***@db/orders"
    else:
        assert "\\x0d\\x0a" in line and "\\u2028" in line
        assert line.count(" order_id=") == 1


@pytest.mark.parametrize("format", ["text", "json"])
def test_a_traceback_is_redacted_and_json_keeps_it_on_the_line(format: logs.Format) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter(format, "orders", out))
    logger = logging.getLogger("ordermesh.test.logs.tb")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ConnectionError(f"amqp://guest:{PASSWORD}@rabbit/ refused")
        except ConnectionError:
            logger.exception("broker down")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert PASSWORD not in text and "guest:***@rabbit" in text
    if format == "json":
        (line,) = text.splitlines()
        assert "Traceback (most recent call last)" in json.loads(line)["exc_info"]
    else:
        assert text.splitlines()[1] == "Traceback (most recent call last):"  # lines of its own


def test_bind_nests_and_restores_and_ignores_unknown_values() -> None:
    assert logs.fields() == {}
    with logs.bind(order_id="o-1"):
        with logs.bind(saga_id="s-1", order_id=None):  # None: not known here, the outer one stays
            assert logs.fields() == {"order_id": "o-1", "saga_id": "s-1"}
            with logs.bind(order_id="o-2"):
                assert logs.fields()["order_id"] == "o-2"
            assert logs.fields()["order_id"] == "o-1"
        assert logs.fields() == {"order_id": "o-1"}
    assert logs.fields() == {}


def test_a_bound_field_never_hides_a_record_attribute_or_its_own_extra() -> None:
    with logs.bind(order_id="bound", name="not-a-logger", user_id="alice"):
        (line,) = emit("json", (logging.INFO, "hi", (), {"order_id": "own"}))
    doc = json.loads(line)
    assert doc["order_id"] == "own" and doc["logger"] == "ordermesh.test.logs" and doc["user_id"] == "alice"


async def test_tag_lasts_for_its_task_only() -> None:
    seen: dict[str, dict[str, str]] = {}

    async def request(name: str, order: str) -> None:
        logs.tag(order_id=order)
        await asyncio.sleep(0)  # the other request runs meanwhile
        seen[name] = dict(logs.fields())

    await asyncio.gather(request("a", "o-a"), request("b", "o-b"))
    assert seen == {"a": {"order_id": "o-a"}, "b": {"order_id": "o-b"}}
    assert logs.fields() == {}  # each ran in a context of its own


def test_configure_writes_our_lines_and_replaces_itself() -> None:
    first, second = io.StringIO(), io.StringIO()
    with bare_root() as root:
        logs.configure("text", level=logging.WARNING, stream=first)
        logs.configure("json", service="payments", stream=second)  # the CLI, then `ordermesh run`
        logging.getLogger("ordermesh.test.configure").info("started")
        handlers, level = root.handlers[:], root.level
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert json.loads(line)["service"] == "payments" and json.loads(line)["message"] == "started"
    assert len(handlers) == 1 and level == logging.INFO


def test_configure_leaves_a_host_applications_handlers_and_gives_them_the_fields() -> None:
    out = io.StringIO()
    host = logging.StreamHandler(out)
    host.setFormatter(logging.Formatter(logs.LOG_FORMAT + " (%(order_id)s)"))
    with bare_root() as root:
        root.addHandler(host)
        root.setLevel(logging.INFO)
        logs.configure("json")
        logs.configure("json")  # one filter, however often
        with logs.bind(order_id="o-1"):
            logging.getLogger("ordermesh.test.host").info("theirs")
        handlers = root.handlers[:]
    assert handlers == [host] and len(host.filters) == 1
    assert out.getvalue().rstrip().endswith("[]: theirs (o-1)")


def test_auto_is_text_coloured_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    record = logging.makeLogRecord({"levelname": "WARNING", "levelno": 30, "msg": "careful"})
    logs.ContextFilter().filter(record)
    coloured = logs.formatter("auto", stream=Pty()).format(record)
    assert "\x1b[33mWARNING\x1b[0m" in coloured and coloured.endswith(": careful")
    assert "\x1b" not in logs.formatter("auto", stream=io.StringIO()).format(record)
    assert "\x1b" not in logs.formatter("text", stream=Pty()).format(record)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in logs.formatter("auto", stream=Pty()).format(record)


def test_the_cli_reads_the_format_leniently() -> None:
    assert logs.format_from({"ORDERMESH_LOG_FORMAT": "json"}) == "json"
    assert logs.format_from({"ORDERMESH_LOG_FORMAT": "text"}) == "text"
    assert logs.format_from({"ORDERMESH_LOG_FORMAT": "yaml"}) == "auto"  # the settings say why
    assert logs.format_from({}) == "auto"


def test_the_level_setting_sets_the_root_and_each_named_logger() -> None:
    from ordermesh.config import load

    level, loggers = load({"ORDERMESH_LOG_LEVEL": "warning, ordermesh.http=error,aiormq=debug"}).log_levels
    assert (level, loggers) == (logging.WARNING, {"ordermesh.http": logging.ERROR, "aiormq": logging.DEBUG})
    stream = io.StringIO()
    with bare_root():
        try:
            logs.configure("text", level=level, stream=stream, loggers=loggers)
            logging.getLogger("ordermesh.http").warning("quieted")
            logging.getLogger("ordermesh.kit").warning("kept")
            logging.getLogger("ordermesh.kit").info("below the root level")
        finally:
            for name in loggers:
                logging.getLogger(name).setLevel(logging.NOTSET)
    assert "kept" in stream.getvalue() and "quieted" not in stream.getvalue()
    assert "below the root level" not in stream.getvalue()


def test_a_malformed_level_setting_names_the_part() -> None:
    import pytest

    from ordermesh.config import load
    from ordermesh.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'ordermesh\.http=loud': expected LEVEL or LOGGER=LEVEL"):
        load({"ORDERMESH_LOG_LEVEL": "info,ordermesh.http=loud"})

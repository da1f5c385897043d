"""The notification service against the real aiosmtpd sink: the memory broker, and RabbitMQ with a
legacy pika publisher."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from ordermesh import logs, tracing
from ordermesh.messaging import Broker, open_broker
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Message
from ordermesh.messaging.rabbitmq import derived_message_id
from ordermesh.services.notifications import (
    MailSink,
    Notifications,
    SmtpMailer,
    list_mail,
    open_inbox,
    start_mail_sink,
    start_notifications,
)
from ordermesh.services.notifications.handler import mail_message_id, money
from ordermesh.services.notifications.service import LOG_FORMAT
from tests.helpers import (
    AMQP_URL,
    captured_spans,
    dead_letters,
    eventually,
    free_port,
    named,
    require_rabbitmq,
)
from tests.helpers import FAST_LONG as FAST
from tests.helpers import order_payload as order


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    s = await start_mail_sink("127.0.0.1", 0, tmp_path / "mail.jsonl")
    yield s
    await s.stop()


@asynccontextmanager
async def running(
    broker: Broker, smtp_port: int, data_dir: Path, prefetch: int = 4
) -> AsyncIterator[Notifications]:
    """The service on ``broker`` with its SQLite inbox in ``data_dir``; the broker is deleted after."""
    await broker.declare_exchange("orders")
    inbox, db = await open_inbox(data_dir)
    mailer = SmtpMailer(f"smtp://127.0.0.1:{smtp_port}", timeout=5)
    service = await start_notifications(broker, mailer, inbox, retry=FAST, prefetch=prefetch)
    try:
        yield service
    finally:
        await service.stop()
        await db.close()
        await broker.delete_topology()
        await broker.close()


async def test_order_created_sends_one_confirmation(sink: MailSink, tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with running(broker, sink.port, tmp_path):
        sent = Message.json("order.created", order("o-42"))
        await broker.publish("orders", [sent])
        (mail,) = await sink.wait_for(1)
        assert mail.rcpt_tos == ["ada@example.com"]
        assert mail.subject == "Order o-42 confirmed"
        assert mail.message_id == f"<{sent.message_id}@ordermesh>"
        assert "2 x SKU-1 at 12.50 EUR = 25.00 EUR" in mail.body
        assert "Total: 25.05 EUR" in mail.body
        assert list_mail(sink.store_path) == [mail]  # stored durably, readable by `mail list`


async def test_duplicate_deliveries_send_one_mail(sink: MailSink, tmp_path: Path) -> None:
    broker = MemoryBroker(duplicate_every=1)  # every message delivered twice
    async with running(broker, sink.port, tmp_path) as service:
        await broker.publish("orders", [Message.json("order.created", order("o-1"))])
        await broker.publish("orders", [Message.json("order.created", order("o-2"))])
        await eventually(lambda: service.handler.sent + service.handler.duplicates == 4)
        assert (service.handler.sent, service.handler.duplicates) == (2, 2)
        assert sorted(m.subject for m in sink.received) == ["Order o-1 confirmed", "Order o-2 confirmed"]


async def test_the_inbox_survives_a_restart(sink: MailSink, tmp_path: Path) -> None:
    sent = Message.json("order.created", order("o-7"))
    for _ in range(2):  # the same event after a restart of the service (same data dir)
        broker = MemoryBroker()
        async with running(broker, sink.port, tmp_path) as service:
            await broker.publish("orders", [sent])
            handler = service.handler
            await eventually(lambda: handler.sent + handler.duplicates == 1)  # noqa: B023
    assert len(sink.received) == 1


async def test_shipped_and_cancelled_mails_carry_tracking_and_reason(sink: MailSink, tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with running(broker, sink.port, tmp_path):
        await broker.publish("orders", [Message.json("order.shipped", order("o-1", tracking_id="TRK-123"))])
        await broker.publish(
            "orders", [Message.json("order.cancelled", order("o-2", cancel_reason="payment declined"))]
        )
        mails = {m.subject: m for m in await sink.wait_for(2)}
        assert "Tracking id: TRK-123" in mails["Order o-1 shipped"].body
        assert "Reason: payment declined" in mails["Order o-2 cancelled"].body


async def test_smtp_down_is_retried_until_the_sink_is_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    broker = MemoryBroker()
    async with running(broker, port, tmp_path) as service:
        await broker.publish("orders", [Message.json("order.created", order("o-9"))])
        await eventually(lambda: service.handler.failures >= 2)
        sink = await start_mail_sink("127.0.0.1", port, tmp_path / "late.jsonl")
        try:
            (mail,) = await sink.wait_for(1)
            assert mail.subject == "Order o-9 confirmed"
            assert await broker.dead_letters() == []
        finally:
            await sink.stop()


async def test_poison_is_dead_lettered_with_the_reason_and_the_consumer_goes_on(
    sink: MailSink, tmp_path: Path
) -> None:
    broker = MemoryBroker()
    async with running(broker, sink.port, tmp_path, prefetch=1):
        junk = Message("order.created", b"{not json", type="order.created")
        anonymous = Message.json("order.created", {"id": "o-3"})
        bad_address = Message.json("order.created", order("o-4", user_email="nobody"))
        await broker.publish("orders", [junk, anonymous, bad_address])
        await broker.publish("orders", [Message.json("order.created", order("o-5"))])
        letters = {d.id: d for d in await dead_letters(broker, "notifications.order_created", 3)}
        assert "not JSON" in letters[junk.message_id].error
        assert "user_email" in letters[anonymous.message_id].error
        assert "not a valid email address" in letters[bad_address.message_id].error
        assert all(d.attempts == 1 for d in letters.values())
        (mail,) = await sink.wait_for(1)
        assert mail.subject == "Order o-5 confirmed"


async def test_money_and_message_id_helpers() -> None:
    assert money(2505, "EUR") == "25.05 EUR" and money(500, "JPY") == "500 JPY"
    assert money(1234, "KWD") == "1.234 KWD"
    assert mail_message_id("abc-1") == "<abc-1@ordermesh>"
    odd = mail_message_id("has space <and> brackets")
    assert odd.startswith("<") and odd.endswith("@ordermesh>") and " " not in odd


class RawSmtp:
    """An SMTP server that keeps each mail as parsed, with all its headers (the sink keeps a few)."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self._changed = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        mail = message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=default)
        assert isinstance(mail, EmailMessage)
        self.mails.append(mail)
        self._changed.set()
        return "250 Message accepted for delivery"

    async def wait_for(self, count: int, timeout: float = 10) -> list[EmailMessage]:
        async def until() -> None:
            while len(self.mails) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.mails


@pytest.fixture
async def raw_smtp() -> AsyncIterator[tuple[RawSmtp, int]]:
    handler, loop = RawSmtp(), asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="test", loop=loop), "127.0.0.1", 0)
    yield handler, int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", ["memory", "embedded"])
async def test_the_mail_continues_the_messages_trace(
    kind: str, raw_smtp: tuple[RawSmtp, int], tmp_path: Path
) -> None:
    smtp, port = raw_smtp
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    broker = MemoryBroker() if kind == "memory" else await open_broker(f"sqlite:///{tmp_path / 'mq.db'}")
    with captured_spans() as spans:  # an OpenTelemetry SDK in this process
        async with running(broker, port, tmp_path):
            traced_order = Message.json(
                "order.created",
                order("o-1"),
                headers={"traceparent": parent, "tracestate": "rojo=00f067aa0ba902b7"},
            )
            await broker.publish("orders", [traced_order])
            await broker.publish("orders", [Message.json("order.shipped", order("o-2"))])  # no trace
            mails = {m["Subject"]: m for m in await smtp.wait_for(2)}
    confirmed = mails["Order o-1 confirmed"]["Traceparent"]
    assert tracing.trace_id(confirmed) == tracing.trace_id(parent)
    assert tracing.span_id(confirmed) != tracing.span_id(parent)  # the consumer's span
    assert mails["Order o-1 confirmed"]["Tracestate"] == "rojo=00f067aa0ba902b7"
    started = mails["Order o-2 shipped"]["Traceparent"]  # a new trace of its own
    assert tracing.trace_id(started) not in (None, tracing.trace_id(parent))
    assert mails["Order o-2 shipped"]["Tracestate"] is None
    # Each send to the mail server is a span under the delivery's, with the order id.
    consumed = {s.context.span_id: s for s in named(spans, "process notifications.")}
    sends = named(spans, "smtp send")
    assert sorted(dict(s.attributes or {})["ordermesh.order_id"] for s in sends) == ["o-1", "o-2"]
    for send in sends:
        assert send.parent is not None and send.parent.span_id in consumed
    (first,) = [s for s in sends if dict(s.attributes or {})["ordermesh.order_id"] == "o-1"]
    assert f"{first.context.trace_id:032x}" == tracing.trace_id(parent)


async def test_without_an_sdk_the_mail_carries_the_messages_trace_as_it_came(
    raw_smtp: tuple[RawSmtp, int], tmp_path: Path
) -> None:
    smtp, port = raw_smtp
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    broker = MemoryBroker()
    async with running(broker, port, tmp_path):
        await broker.publish(
            "orders", [Message.json("order.created", order("o-1"), headers={"traceparent": parent})]
        )
        await broker.publish("orders", [Message.json("order.shipped", order("o-2"))])  # no trace
        mails = {m["Subject"]: m for m in await smtp.wait_for(2)}
    assert mails["Order o-1 confirmed"]["Traceparent"] == parent
    assert mails["Order o-2 shipped"]["Traceparent"] is None


async def test_log_lines_name_the_trace(sink: MailSink, tmp_path: Path) -> None:
    """The "mailed" line names it in its text; with the standalone service's format, every line
    logged while a message is handled starts with it."""
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    logger, out = logging.getLogger("ordermesh.notifications"), io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    handler.addFilter(logs.ContextFilter())  # what main() puts on the root logger's handler
    broker = MemoryBroker()
    try:
        async with running(broker, sink.port, tmp_path) as service:
            await broker.publish(
                "orders", [Message.json("order.created", order("o-1"), headers={"traceparent": parent})]
            )
            await eventually(lambda: service.handler.sent == 1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (line,) = [line for line in out.getvalue().splitlines() if "mailed" in line]
    assert f"[{trace}]: message " in line and line.endswith(f"(trace {trace})")


@pytest.mark.rabbitmq
async def test_a_legacy_pika_publisher_gets_a_mail_sent(sink: MailSink, tmp_path: Path) -> None:
    require_rabbitmq()
    import pika

    prefix = f"t{uuid.uuid4().hex[:10]}."
    broker = await open_broker(f"{AMQP_URL}?prefix={prefix}")
    body = json.dumps({"id": "legacy-1", "user_email": "grace@example.com"})

    def publish() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            channel.exchange_declare(exchange=f"{prefix}orders", exchange_type="topic", durable=True)
            for _ in range(2):  # a legacy duplicate: the same bytes twice, no message id
                channel.basic_publish(exchange=f"{prefix}orders", routing_key="order.created", body=body)
        finally:
            connection.close()

    async with running(broker, sink.port, tmp_path) as service:
        await asyncio.to_thread(publish)
        (mail,) = await sink.wait_for(1, timeout=20)
        assert mail.rcpt_tos == ["grace@example.com"] and mail.subject == "Order legacy-1 confirmed"
        expected_id = derived_message_id("order.created", body.encode())
        assert mail.message_id == f"<{expected_id}@ordermesh>"
        await eventually(lambda: service.handler.duplicates == 1, timeout=20)
        assert len(sink.received) == 1


async def test_a_mail_that_cannot_be_written_is_dead_lettered_at_once_and_logged(
    sink: MailSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # U+2028 is a line separator to Python's email package, which refuses it in a header: no
    # retry could ever send it, so it must not ride the retry queues for twenty minutes.
    broker = MemoryBroker()
    async with running(broker, sink.port, tmp_path, prefetch=1):
        unwritable = Message.json("order.created", order("o\u20286"))
        await broker.publish("orders", [unwritable, Message.json("order.created", order("o-7"))])
        [letter] = await dead_letters(broker, "notifications.order_created", 1)
        assert letter.id == unwritable.message_id and letter.attempts == 1
        assert "cannot be rendered" in letter.error
        (mail,) = await sink.wait_for(1)
        assert mail.subject == "Order o-7 confirmed"
    assert any(
        "dead-lettered at once" in r.getMessage() and unwritable.message_id in r.getMessage()
        for r in caplog.records
    )

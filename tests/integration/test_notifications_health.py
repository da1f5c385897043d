"""The notification service's /livez, /readyz and /metrics, as the kit serves them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh.config import Settings
from ordermesh.kit.process import main
from ordermesh.kit.testing import running
from ordermesh.messaging import open_broker
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Message
from ordermesh.services.notifications import (
    MailSink,
    SmtpMailer,
    open_inbox,
    start_mail_sink,
    start_notifications,
)
from ordermesh.services.notifications.health import not_ready_reason
from ordermesh.services.notifications.spec import SPEC
from tests.helpers import FAST_LONG, eventually, order_payload

Answer = tuple[int, Any]  # status and parsed JSON, or (0, error) when nothing answers


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    s = await start_mail_sink("127.0.0.1", 0, tmp_path / "mail.jsonl")
    yield s
    await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: a probe is one request, and a pooled connection would outlive the server.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> Answer:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.content_type == "text/plain":
                return r.status, await r.text()
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientConnectionError as exc:
        return 0, exc


async def answered(http: aiohttp.ClientSession, url: str, accept: Callable[[Answer], bool]) -> Answer:
    """GET ``url`` until ``accept`` says yes (an endpoint has no notification to wait on); fail
    with the last answer at the kit's timeout."""

    async def accepted() -> Answer:
        answer = await get(http, url)
        assert accept(answer), f"GET {url}: {answer!r}"
        return answer

    return await eventually(accepted, interval=0.02)


def shows(*lines: str) -> Callable[[Answer], bool]:
    return lambda answer: answer[0] == 200 and all(line in answer[1].splitlines() for line in lines)


async def test_the_service_serves_probes_and_counts_mail(
    sink: MailSink, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    broker_url = f"sqlite:///{tmp_path / 'mq.db'}"
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=broker_url, smtp_url=f"smtp://127.0.0.1:{sink.port}"
    )
    publisher = await open_broker(broker_url)
    try:
        async with running(SPEC, settings) as service:
            url = service.http_url
            assert await get(http, f"{url}/readyz") == (200, {"status": "ok"})
            assert await get(http, f"{url}/livez") == (200, {"status": "ok"})

            created = Message.json("order.created", order_payload("o-1"))
            await publisher.publish("orders", [created])
            await answered(http, f"{url}/metrics", shows("ordermesh_notifications_sent_total 1.0"))
            await publisher.publish("orders", [created])  # the same message again, as after a lost ack
            _, metrics = await answered(
                http, f"{url}/metrics", shows("ordermesh_notifications_duplicates_total 1.0")
            )
            assert {
                "ordermesh_notifications_sent_total 1.0",
                "ordermesh_notifications_ignored_total 0.0",
                "ordermesh_notifications_smtp_failures_total 0.0",
            } <= set(metrics.splitlines())
            assert "# TYPE ordermesh_notifications_sent_total counter" in metrics
            # Every delivery counted and timed per queue (the duplicate too: the handler ran, fine).
            handled = 'ordermesh_messages_handled_total{outcome="ok",queue="notifications.order_created"} 2.0'
            timed = 'ordermesh_message_handling_seconds_count{queue="notifications.order_created"} 2.0'
            assert {handled, timed} <= set(metrics.splitlines())
            assert len(sink.received) == 1
            # The inbox is the service's own database, in the data dir.
            assert (tmp_path / "data" / "notifications.db").exists()
        # consumers drained, then the endpoint closed
        status, error = await get(http, f"{url}/livez")
        assert status == 0 and isinstance(error, aiohttp.ClientConnectorError)
    finally:
        await publisher.close()


async def test_readiness_follows_the_consumer_from_subscribing_to_stopping(
    sink: MailSink, tmp_path: Path
) -> None:
    broker = MemoryBroker(duplicate_every=1)  # every message delivered twice
    await broker.declare_exchange("orders")
    inbox, db = await open_inbox(tmp_path)
    mailer = SmtpMailer(f"smtp://127.0.0.1:{sink.port}", timeout=5)
    try:
        assert not_ready_reason(None) == "not consuming yet (connecting to the broker)"
        service = await start_notifications(broker, mailer, inbox, retry=FAST_LONG)
        assert not_ready_reason(service) is None
        await broker.publish("orders", [Message.json("order.created", order_payload("o-2"))])
        await eventually(
            lambda: (service.handler.sent, service.handler.duplicates) == (1, 1),
            what="the mail and its duplicate handled",
        )
        await service.stop()
        assert not_ready_reason(service) == "stopping, no longer consuming"
    finally:
        await db.close()
        await broker.close()


class Unplugged(MemoryBroker):
    """A broker whose connection a test can pull."""

    up = True

    @property
    def connected(self) -> bool:
        return self.up


async def test_not_ready_while_the_broker_connection_is_down(sink: MailSink, tmp_path: Path) -> None:
    broker = Unplugged()
    await broker.declare_exchange("orders")
    inbox, db = await open_inbox(tmp_path)
    mailer = SmtpMailer(f"smtp://127.0.0.1:{sink.port}", timeout=5)
    service = await start_notifications(broker, mailer, inbox, retry=FAST_LONG)
    try:
        assert not_ready_reason(service) is None
        broker.up = False
        reason = not_ready_reason(service)
        assert reason is not None and "broker connection is down" in reason
        broker.up = True
        assert not_ready_reason(service) is None
    finally:
        await service.stop()
        await db.close()
        await broker.close()


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        code = main(
            SPEC,
            {
                "ORDERMESH_BROKER_URL": f"sqlite:///{tmp_path / 'mq.db'}",
                "ORDERMESH_DATA_DIR": str(tmp_path / "data"),
                "ORDERMESH_NOTIFICATIONS_HTTP_PORT": str(port),
            },
        )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"notifications: cannot listen on 127.0.0.1:{port} ")
    assert "set ORDERMESH_NOTIFICATIONS_HTTP_PORT to a free port" in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()  # failed before it opened its inbox or consumed


@pytest.mark.parametrize("raw", ["http", "-1", "65536"])
def test_a_bad_port_setting_is_one_line_and_exit_1(raw: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"ORDERMESH_BROKER_URL": "memory://", "ORDERMESH_NOTIFICATIONS_HTTP_PORT": raw}
    assert main(SPEC, env) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"notifications: ORDERMESH_NOTIFICATIONS_HTTP_PORT={raw!r}: "), err
    assert err.count("\n") == 1


def test_the_port_setting_defaults_to_8001() -> None:
    assert Settings.from_env({}).notifications_http_port == 8001
    assert Settings.from_env({"ORDERMESH_NOTIFICATIONS_HTTP_PORT": ""}).notifications_http_port == 8001
    assert Settings.from_env({"ORDERMESH_NOTIFICATIONS_HTTP_PORT": "9101"}).notifications_http_port == 9101


async def test_the_endpoint_binds_the_host_it_is_given(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # 0.0.0.0, as in a container whose probes come from outside: reachable on the loopback too.
    settings = Settings(
        http_host="0.0.0.0", data_dir=tmp_path, broker_url="memory://", jwt_secret="s3cret-of-ours"
    )
    async with running(SPEC, settings) as service:
        assert service.http_url.startswith("http://127.0.0.1:")
        assert await get(http, f"{service.http_url}/livez") == (200, {"status": "ok"})

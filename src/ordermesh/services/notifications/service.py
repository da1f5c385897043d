"""The notification service: three queues on the ``orders`` exchange, one handler.

Embedded (``ordermesh up``, tests): ``start_notifications(broker, mailer, inbox)`` on a broker
you own. Standalone (``ordermesh run notifications``): ``main()`` or ``run_notifications``, which
also serve ``/livez``, ``/readyz`` and ``/metrics`` (``health``) on ORDERMESH_HTTP_HOST (127.0.0.1) at
ORDERMESH_NOTIFICATIONS_HTTP_PORT (default 8001; 0: none; a port in use: exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ordermesh import tracing, tuning
from ordermesh.config import Settings
from ordermesh.db import SqlDb, connect
from ordermesh.errors import InfrastructureError
from ordermesh.messaging import Broker, open_broker
from ordermesh.messaging.context import traced
from ordermesh.messaging.inbox import Inbox, SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import RetryPolicy, Subscription
from ordermesh.services.notifications.handler import NotificationHandler
from ordermesh.services.notifications.health import (
    HOST,
    PORT_VARIABLE,
    create_health_app,
    start_health_server,
)
from ordermesh.services.notifications.mailer import DEFAULT_SENDER, DEFAULT_SMTP_URL, Mailer, SmtpMailer

log = logging.getLogger("ordermesh.notifications")

EXCHANGE = "orders"
QUEUES = {
    "notifications.order_created": "order.created",
    "notifications.order_shipped": "order.shipped",
    "notifications.order_cancelled": "order.cancelled",
}
INBOX_CONSUMER = "notifications"
# A mail server outage of up to ~20 minutes is ridden out (1+3+9+27+81+243+600+600 s) before a
# message is dead-lettered (and then kept, replayable).
DEFAULT_RETRY = RetryPolicy(max_attempts=9, initial=1.0, multiplier=3.0, maximum=600.0)
DEFAULT_PREFETCH = 16
# The trace id is empty ("[]") outside a delivery: startup, shutdown.
LOG_FORMAT = tracing.LOG_FORMAT


def inbox_path(data_dir: Path) -> Path:
    return Path(data_dir) / "notifications.db"


async def open_inbox(data_dir: Path) -> tuple[SqlInbox, SqlDb]:
    """The service's inbox on a SQLite file in ``data_dir``; close the db when done."""
    path = inbox_path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await connect(f"sqlite:///{path}")
    try:
        return await SqlInbox.open(db, INBOX_CONSUMER), db
    except BaseException:
        await db.close()
        raise


@dataclass
class Notifications:
    handler: NotificationHandler
    subscriptions: list[Subscription] = field(default_factory=list)
    stopping: bool = False  # set for good by stop(): the service is not restarted
    broker: Broker | None = None  # what it consumes from: /readyz follows its connection

    @property
    def consuming(self) -> bool:
        """Every queue subscribed and not stopping: what ``/readyz`` reports."""
        return not self.stopping and len(self.subscriptions) == len(QUEUES)

    async def stop(self) -> None:
        """Stop consuming (in-flight mails finish and are acknowledged)."""
        self.stopping = True  # first: /readyz fails while in-flight mails drain
        for sub in self.subscriptions:
            await sub.stop()
        self.subscriptions.clear()


async def start_notifications(
    broker: Broker,
    mailer: Mailer,
    inbox: Inbox,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    prefetch: int = DEFAULT_PREFETCH,
    sender: str = DEFAULT_SENDER,
    metrics: ConsumerMetrics | None = None,
) -> Notifications:
    """Subscribe the three notification queues on ``broker``; returns at once. With ``metrics``,
    each queue's deliveries are counted and timed."""
    service = Notifications(NotificationHandler(mailer, inbox, sender=sender), broker=broker)
    handler = traced(service.handler)  # the mail and its log lines continue the order's trace
    try:
        for queue, key in QUEUES.items():
            measured = handler if metrics is None else metrics.consumed(queue, handler)
            service.subscriptions.append(
                await broker.subscribe(queue, EXCHANGE, [key], measured, prefetch=prefetch, retry=retry)
            )
    except BaseException:
        await service.stop()
        raise
    return service


async def run_notifications(
    broker_url: str,
    smtp_url: str,
    data_dir: Path,
    stop: asyncio.Event,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    prefetch: int = DEFAULT_PREFETCH,
    sender: str = DEFAULT_SENDER,
    http_port: int = 0,
    http_host: str = HOST,
) -> None:
    """Open the broker and the inbox, consume until ``stop`` is set, then shut down cleanly.

    ``http_port`` (0: none) serves ``health.create_health_app`` on ``http_host``. It is bound first:
    a port in use raises ``InfrastructureError`` before anything is consumed, and while the
    broker connects ``/livez`` answers and ``/readyz`` says why not yet. It closes last, so
    ``/readyz`` answers 503 while in-flight mails drain. Its ``/metrics`` also counts and times
    every queue's deliveries (``ConsumerMetrics``)."""
    service: Notifications | None = None
    metrics: ConsumerMetrics | None = None
    async with contextlib.AsyncExitStack() as cleanup:
        if http_port:
            app = create_health_app(lambda: service)
            metrics = ConsumerMetrics(app.state.metrics.registry)
            http = await start_health_server(app, http_port, http_host)
            cleanup.push_async_callback(http.stop)
        mailer = SmtpMailer(smtp_url)
        inbox, db = await open_inbox(data_dir)
        cleanup.push_async_callback(db.close)
        broker = await open_broker(broker_url)
        cleanup.push_async_callback(broker.close)
        service = await start_notifications(
            broker, mailer, inbox, retry=retry, prefetch=prefetch, sender=sender, metrics=metrics
        )
        cleanup.push_async_callback(service.stop)
        log.info("notifications: consuming %s, mailing through %s", ", ".join(QUEUES), mailer.url)
        await stop.wait()


def http_port_from(env: Mapping[str, str]) -> int:
    """ORDERMESH_NOTIFICATIONS_HTTP_PORT (unset or empty: the ``Settings`` default); ``ValueError``
    if it is not a port number."""
    raw = env.get(PORT_VARIABLE) or ""
    if not raw:
        return Settings().notifications_http_port
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_VARIABLE} must be a port number (0-65535; 0: no HTTP endpoint), not {raw!r}")
    return port


def main(env: Mapping[str, str] | None = None) -> int:
    """``ordermesh run notifications``: settings from the environment, SIGINT/SIGTERM stop it.
    Returns the process exit code."""
    e = dict(os.environ if env is None else env)
    broker_url = e.get("ORDERMESH_BROKER_URL", "")
    if not broker_url:
        print(
            "ORDERMESH_BROKER_URL is required, e.g. amqp://guest:guest@127.0.0.1:5672/ "
            "(memory:// runs, but nothing publishes into a private in-memory broker)",
            file=sys.stderr,
        )
        return 2
    smtp_url = e.get("ORDERMESH_SMTP_URL") or DEFAULT_SMTP_URL
    data_dir = Path(e.get("ORDERMESH_DATA_DIR") or ".ordermesh")
    sender = e.get("ORDERMESH_MAIL_FROM") or DEFAULT_SENDER
    http_host = e.get("ORDERMESH_HTTP_HOST") or HOST  # every listener of the system binds there
    try:
        http_port = http_port_from(e)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    tracing.configure_logging()

    parent = int(e.get("ORDERMESH_PARENT_PID") or 0)

    async def orphaned(stop: asyncio.Event) -> None:
        # Started by `ordermesh up`: stop when that process is gone (even after a kill -9).
        while not stop.is_set():
            if os.getppid() != parent:
                stop.set()
            await asyncio.sleep(1.0)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if parent:
            watchdog = asyncio.create_task(orphaned(stop))
        try:
            await run_notifications(
                broker_url, smtp_url, data_dir, stop, sender=sender, http_port=http_port, http_host=http_host
            )
        finally:
            if parent:
                watchdog.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        tuning.serve(serve())
    except (InfrastructureError, ValueError) as exc:
        print(f"notifications: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "DEFAULT_PREFETCH",
    "DEFAULT_RETRY",
    "EXCHANGE",
    "LOG_FORMAT",
    "QUEUES",
    "Notifications",
    "http_port_from",
    "main",
    "open_inbox",
    "run_notifications",
    "start_notifications",
]

"""The notification service: three queues on the ``orders`` exchange, one handler.

Embedded (tests): ``start_notifications(broker, mailer, inbox)`` on a broker you own. As a
process (``ordermesh run notifications``, under ``ordermesh up``): the kit builds it from
``spec.py``, with ``/livez``, ``/readyz`` and ``/metrics`` on ORDERMESH_NOTIFICATIONS_HTTP_PORT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ordermesh import logs
from ordermesh.db import SqlDb, connect
from ordermesh.messaging import Broker
from ordermesh.messaging.context import traced
from ordermesh.messaging.inbox import Inbox, SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import RetryPolicy, Subscription
from ordermesh.services.notifications.handler import NotificationHandler
from ordermesh.services.notifications.mailer import DEFAULT_SENDER, Mailer

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
LOG_FORMAT = logs.LOG_FORMAT


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


__all__ = [
    "DEFAULT_PREFETCH",
    "DEFAULT_RETRY",
    "EXCHANGE",
    "LOG_FORMAT",
    "QUEUES",
    "Notifications",
    "open_inbox",
    "start_notifications",
]

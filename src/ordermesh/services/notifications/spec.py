"""The notification service as the kit builds it: its inbox in its own database, the three
``orders`` queues consumed, mail out through ORDERMESH_SMTP_URL."""

from __future__ import annotations

import logging

from ordermesh.errors import InfrastructureError
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging.inbox import SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.services.notifications.health import NotificationsCollector, not_ready_reason
from ordermesh.services.notifications.mailer import SmtpMailer
from ordermesh.services.notifications.service import (
    INBOX_CONSUMER,
    QUEUES,
    Notifications,
    start_notifications,
)

log = logging.getLogger("ordermesh.notifications")


async def build(rt: Runtime) -> None:
    inbox = await SqlInbox.open(await rt.database(), INBOX_CONSUMER)
    mailer = SmtpMailer(rt.settings.effective_smtp_url)
    service: Notifications | None = None
    rt.metrics.register(NotificationsCollector(lambda: service))
    service = await start_notifications(
        await rt.broker(), mailer, inbox, sender=rt.settings.mail_from, metrics=ConsumerMetrics(rt.metrics)
    )
    running = service
    rt.on_drain(running.stop)  # in-flight mails finish and are acknowledged; /readyz says why

    async def consuming() -> None:
        reason = not_ready_reason(running)
        if reason is not None:
            raise InfrastructureError(f"notifications: {reason}")

    rt.ready_check(consuming)
    log.info("notifications: consuming %s, mailing through %s", ", ".join(QUEUES), mailer.url)


SPEC = ServiceSpec(
    name="notifications",
    title="ordermesh notifications",
    build=build,
    http_port="notifications_http_port",
    queues=tuple(QUEUES),
)

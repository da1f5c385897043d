"""The notification service: order events from the ``orders`` exchange become customer mail."""

from __future__ import annotations

from ordermesh.services.notifications.handler import NotificationHandler
from ordermesh.services.notifications.mailer import Mail, Mailer, MailUnavailable, MemoryMailer, SmtpMailer
from ordermesh.services.notifications.service import (
    QUEUES,
    Notifications,
    open_inbox,
    start_notifications,
)
from ordermesh.services.notifications.sink import MailSink, ReceivedMail, list_mail, start_mail_sink

__all__ = [
    "QUEUES",
    "Mail",
    "MailSink",
    "MailUnavailable",
    "Mailer",
    "MemoryMailer",
    "NotificationHandler",
    "Notifications",
    "ReceivedMail",
    "SmtpMailer",
    "list_mail",
    "open_inbox",
    "start_mail_sink",
    "start_notifications",
]

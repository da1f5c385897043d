"""The mailer port and its adapters: SMTP (aiosmtplib) and in-memory (tests).

``SmtpMailer("smtp://host:port")`` speaks plain SMTP (STARTTLS when the server offers it),
``smtps://`` implicit TLS; ``smtp://user:pass@host:port`` logs in. Failures are classified for
the broker: a recipient refused with a 5xx code can never succeed (``PermanentError``: dead
letter at once); anything else (connection refused, timeout, 4xx, other 5xx) raises
``MailUnavailable`` and the message is retried with backoff.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from ordermesh.errors import InfrastructureError
from ordermesh.messaging.port import PermanentError

DEFAULT_SMTP_URL = "smtp://127.0.0.1:8025"
DEFAULT_SENDER = "ordermesh <orders@ordermesh.local>"


class MailUnavailable(InfrastructureError):
    """The SMTP server could not take the mail now (down, timeout, 4xx): retry later."""


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    body: str
    message_id: str  # the Message-ID header, with its angle brackets: <id@ordermesh>
    sender: str = DEFAULT_SENDER
    headers: dict[str, str] = field(default_factory=dict)

    def to_email(self) -> EmailMessage:
        """The message as the mail server gets it; ``PermanentError`` when it cannot be written
        at all (the email package refuses, say, a subject with U+2028 in it): no retry would help."""
        try:
            msg = EmailMessage()
            msg["From"] = self.sender
            msg["To"] = self.to
            msg["Subject"] = self.subject
            msg["Message-ID"] = self.message_id
            msg["Date"] = format_datetime(datetime.now(UTC))
            for name, value in self.headers.items():
                msg[name] = value
            msg.set_content(self.body)
        except (ValueError, TypeError, UnicodeError, MessageError) as exc:
            raise PermanentError(f"the mail to {self.to!r} cannot be rendered: {exc}") from exc
        return msg


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None:
        """Hand the mail to the mail server; raise ``MailUnavailable`` or ``PermanentError``."""
        ...


class MemoryMailer:
    """Keeps sent mail in a list; ``fail`` makes the next sends raise ``MailUnavailable``."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []
        self.fail = 0
        self._changed = asyncio.Event()

    async def send(self, mail: Mail) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise MailUnavailable("memory mailer: told to fail")
        self.sent.append(mail)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10) -> list[Mail]:
        async def until() -> None:
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.sent


class SmtpMailer:
    def __init__(self, url: str = DEFAULT_SMTP_URL, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError(f"unsupported SMTP URL {self._redact(url)!r}: use smtp://host:port or smtps://…")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
        self.url = self._redact(url)

    @staticmethod
    def _redact(url: str) -> str:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        return url.replace(f":{parts.password}@", ":***@", 1)

    def __repr__(self) -> str:
        return f"SmtpMailer({self.url!r})"

    async def send(self, mail: Mail) -> None:
        try:
            await aiosmtplib.send(
                mail.to_email(),
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.implicit_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if exc.recipients and all(r.code >= 500 for r in exc.recipients):
                refused = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
                raise PermanentError(f"SMTP server {self.url} refused the recipient: {refused}") from exc
            raise MailUnavailable(f"SMTP server {self.url} refused the recipient for now: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailUnavailable(f"SMTP server {self.url}: {type(exc).__name__}: {exc}") from exc


__all__ = [
    "DEFAULT_SENDER",
    "DEFAULT_SMTP_URL",
    "Mail",
    "MailUnavailable",
    "Mailer",
    "MemoryMailer",
    "SmtpMailer",
]

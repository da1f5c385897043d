"""An embedded mail sink (aiosmtpd) for development: accepts every mail and keeps it.

Each mail is appended as one JSON line to ``store_path`` and fsynced *before* the server answers
``250``, so a mail the sender saw accepted is on disk. ``list_mail`` reads the file (a torn last
line from a crash is skipped). No relaying, no authentication: bind it to localhost.

The mail's ``Traceparent`` header is kept as received (``ReceivedMail.traceparent``), so a mail
can be matched to the trace of the request that caused it; lines written before it was kept load
with ``None``.

    sink = await start_mail_sink("127.0.0.1", 8025, data_dir / "mail.jsonl")
    ...
    await sink.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("ordermesh.mailsink")


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    received_at: str  # ISO 8601, UTC
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    message_id: str
    body: str
    # Last and defaulted: lines stored before the sink kept it must still load.
    traceparent: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _parse(envelope: Envelope) -> ReceivedMail:
    raw = envelope.original_content or envelope.content or b""
    data = raw if isinstance(raw, bytes) else raw.encode()
    msg = message_from_bytes(data, policy=default)
    part = msg.get_body(preferencelist=("plain",))
    body = part.get_content() if part is not None else ""
    return ReceivedMail(
        received_at=datetime.now(UTC).isoformat(),
        mail_from=str(envelope.mail_from or ""),
        rcpt_tos=[str(r) for r in envelope.rcpt_tos],
        subject=str(msg.get("Subject", "")),
        message_id=str(msg.get("Message-ID", "")),
        body=str(body).replace("\r\n", "\n"),
        traceparent=_header(msg.get("Traceparent")),
    )


def _header(value: object) -> str | None:
    # Stored as received, not validated: the sink records what was sent, a reader interprets it.
    return None if value is None else str(value).strip()


class _Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, mail: ReceivedMail) -> None:
        line = json.dumps(mail.to_json(), ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class _Handler:
    def __init__(self, store: _Store, sink: MailSink) -> None:
        self._store, self._sink = store, sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            mail = _parse(envelope)
            await asyncio.to_thread(self._store.append, mail)
        except Exception:
            log.exception("mail sink: could not store a mail")
            return "451 Requested action aborted: local error in processing"
        self._sink._received(mail)
        return "250 Message accepted for delivery"


class MailSink:
    """A running sink: ``.port`` (the bound port, useful with port 0), ``.received`` (this
    process's mail), ``await .wait_for(n)``, ``await .stop()``."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.host = ""
        self.port = 0
        self.received: list[ReceivedMail] = []
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    def _received(self, mail: ReceivedMail) -> None:
        self.received.append(mail)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMail]:
        async def until() -> None:
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.received

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


async def start_mail_sink(host: str, port: int, store_path: Path) -> MailSink:
    """Listen on ``host:port`` (0: any free port) and store every mail in ``store_path``."""
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    # aiosmtpd logs every SMTP command at INFO; the sink's own record is mail.jsonl.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = MailSink(store_path)
    handler = _Handler(_Store(store_path), sink)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="ordermesh-mail-sink", loop=loop), host, port
    )
    sink._server = server
    sink.host = host
    sink.port = int(server.sockets[0].getsockname()[1])
    log.info("mail sink listening on %s:%d, storing in %s", host, sink.port, store_path)
    return sink


def list_mail(store_path: Path) -> list[ReceivedMail]:
    """Every mail stored at ``store_path``, oldest first ([] if there is none)."""
    try:
        text = Path(store_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    mails: list[ReceivedMail] = []
    for line in text.splitlines():
        try:
            mails.append(ReceivedMail(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a torn line from a crash mid-write
    return mails


async def serve_mail_sink(host: str, port: int, store_path: Path, stop: asyncio.Event) -> None:
    """Run a sink until ``stop`` is set."""
    sink = await start_mail_sink(host, port, store_path)
    try:
        await stop.wait()
    finally:
        await sink.stop()


__all__ = ["MailSink", "ReceivedMail", "list_mail", "serve_mail_sink", "start_mail_sink"]

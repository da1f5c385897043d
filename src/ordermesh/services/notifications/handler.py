"""Order events in, customer mail out.

``order.created`` → "Order {id} confirmed", ``order.shipped`` → "Order {id} shipped" (with the
tracking id), ``order.cancelled`` → "Order {id} cancelled" (with the reason); other routing keys
are ignored. The mail's Message-ID is ``<{message id}@ordermesh>``.

Tracing: run under ``messaging.context.traced`` (as ``start_notifications`` does), the mail carries
the consumer's span as a ``Traceparent`` header (and the message's ``tracestate`` as
``Tracestate``), so one order is one trace from the REST call to the customer's inbox; each send
to the mail server is a CLIENT span of its own (``smtp send``, with the order id), and the
"mailed" log line names the trace id.

Idempotency: an email cannot join a database transaction, so the mail is sent first and the
message id recorded in the inbox after (at-least-once). Within one process a per-message lock
makes a concurrent duplicate wait and then find the id recorded; a crash between the send and
the record, or a second instance racing, can still send twice — with the same Message-ID, so the
receiver can deduplicate.

Bad input (not JSON, not an object, no ``id``, no valid ``user_email``) raises
``PermanentError``; mail server failures raise ``MailUnavailable`` (retried by the broker).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from ordermesh import tracing
from ordermesh.contracts.orders import EMAIL_PATTERN
from ordermesh.db import Tx
from ordermesh.messaging.inbox import Inbox
from ordermesh.messaging.port import Delivery, PermanentError
from ordermesh.services.notifications.mailer import DEFAULT_SENDER, Mail, Mailer

log = logging.getLogger("ordermesh.notifications")

SUBJECTS = {
    "order.created": "Order {id} confirmed",
    "order.shipped": "Order {id} shipped",
    "order.cancelled": "Order {id} cancelled",
}
_EMAIL = re.compile(EMAIL_PATTERN)
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}$")  # RFC 5322 dot-atom text
# ISO 4217 minor-unit exponents that are not 2.
_EXPONENT = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF"], 0),
    **dict.fromkeys(["UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


def mail_message_id(message_id: str) -> str:
    """The Message-ID header for a broker message id (hashed if it is not a valid dot-atom)."""
    local = message_id.strip(".")
    if not _MESSAGE_ID.fullmatch(local) or ".." in local:
        local = str(uuid.UUID(bytes=hashlib.sha256(message_id.encode()).digest()[:16], version=5))
    return f"<{local}@ordermesh>"


def money(minor: Any, currency: str) -> str:
    """``2550, "EUR"`` → ``25.50 EUR`` (``JPY`` has no minor unit, ``KWD`` three)."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        return f"{minor} {currency}".strip()
    exponent = _EXPONENT.get(currency.upper(), 2)
    sign, value = ("-" if minor < 0 else ""), abs(minor)
    if exponent == 0:
        return f"{sign}{value} {currency}".strip()
    major, rest = divmod(value, 10**exponent)
    return f"{sign}{major}.{rest:0{exponent}d} {currency}".strip()


@dataclass(frozen=True, slots=True)
class OrderMail:
    order_id: str
    user_email: str
    order: Mapping[str, Any]


def parse_order(delivery: Delivery) -> OrderMail:
    """The order in the message body; ``PermanentError`` when it cannot be mailed about."""
    message = delivery.message
    payload = message.payload()  # PermanentError if not JSON
    where = f"message {message.message_id} ({message.routing_key})"
    if not isinstance(payload, dict):
        raise PermanentError(f"{where}: body is not a JSON object")
    raw_id = payload.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not _ID.fullmatch(str(raw_id)):
        raise PermanentError(f"{where}: missing or invalid order 'id'")
    email = payload.get("user_email")
    if not isinstance(email, str) or not email:
        raise PermanentError(f"{where}: missing 'user_email'")
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise PermanentError(f"{where}: 'user_email' {email[:80]!r} is not a valid email address")
    return OrderMail(str(raw_id), email, payload)


def _text(value: Any) -> str:
    return " ".join(str(value).split())  # one line, no control characters


def render_body(routing_key: str, order: OrderMail) -> str:
    o = order.order
    currency = _text(o.get("currency") or "")
    lines = ["Hello,", ""]
    if routing_key == "order.created":
        lines.append(f"thank you for your order {order.order_id}. It is confirmed.")
    elif routing_key == "order.shipped":
        tracking = o.get("tracking_id")
        lines.append(f"your order {order.order_id} has shipped.")
        lines.append(f"Tracking id: {_text(tracking) if tracking else '(not available yet)'}")
    else:
        reason = o.get("cancel_reason")
        lines.append(f"your order {order.order_id} has been cancelled.")
        lines.append(f"Reason: {_text(reason) if reason else '(no reason given)'}")
    items = o.get("items")
    if isinstance(items, list) and items:
        lines += ["", "Items:"]
        for item in items:
            if not isinstance(item, dict):
                continue
            quantity, price = item.get("quantity", 1), item.get("unit_price")
            line = f"  {_text(quantity)} x {_text(item.get('sku', '?'))}"
            if price is not None:
                line += f" at {money(price, currency)}"
                if isinstance(quantity, int) and isinstance(price, int):
                    line += f" = {money(quantity * price, currency)}"
            lines.append(line)
    if o.get("total") is not None:
        lines += ["", f"Total: {money(o['total'], currency)}"]
    lines += ["", "-- ", "ordermesh"]
    return "\n".join(lines) + "\n"


class NotificationHandler:
    """The broker handler (``await handler(delivery)``). Counters for tests and metrics."""

    def __init__(self, mailer: Mailer, inbox: Inbox, *, sender: str = DEFAULT_SENDER) -> None:
        self.mailer, self.inbox, self.sender = mailer, inbox, sender
        self.sent = 0
        self.duplicates = 0
        self.ignored = 0
        self.failures = 0
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def build_mail(self, delivery: Delivery) -> Mail | None:
        """The mail for a delivery; None for a routing key notifications ignore."""
        built = self._build(delivery)
        return None if built is None else built[1]

    def _build(self, delivery: Delivery) -> tuple[str, Mail] | None:
        """The order id and the mail for a delivery (see ``build_mail``)."""
        subject = SUBJECTS.get(delivery.message.routing_key)
        if subject is None:
            return None
        order = parse_order(delivery)
        tracing.tag(order_id=order.order_id)  # the consumer's span
        headers = {"X-Ordermesh-Event": delivery.message.routing_key}
        if traceparent := tracing.current():
            headers["Traceparent"] = traceparent
            if tracestate := tracing.current_state():
                headers["Tracestate"] = tracestate
        mail = Mail(
            to=order.user_email,
            subject=subject.format(id=order.order_id),
            body=render_body(delivery.message.routing_key, order),
            message_id=mail_message_id(delivery.message.message_id),
            sender=self.sender,
            headers=headers,
        )
        try:
            mail.to_email()  # written once here: what cannot be written is no mail-server outage
        except PermanentError as exc:
            where = f"message {delivery.message.message_id} ({delivery.message.routing_key})"
            log.warning("%s: dead-lettered at once: %s", where, exc)
            raise PermanentError(f"{where}: {exc}") from exc
        return order.order_id, mail

    async def __call__(self, delivery: Delivery) -> None:
        built = self._build(delivery)
        if built is None:
            self.ignored += 1
            return
        order_id, mail = built
        message_id = delivery.message.message_id
        lock, users = self._locks.get(message_id, (asyncio.Lock(), 0))
        self._locks[message_id] = (lock, users + 1)
        try:
            async with lock:
                if await self.inbox.seen(message_id):
                    self.duplicates += 1
                    log.info("message %s: mail sent before, skipped", message_id)
                    return
                try:
                    attributes = {tracing.ORDER_ID: order_id, "ordermesh.mail.message_id": mail.message_id}
                    with tracing.span("smtp send", kind=SpanKind.CLIENT, attributes=attributes):
                        await self.mailer.send(mail)
                except Exception:
                    self.failures += 1
                    raise
                await self.inbox.once(message_id, _record_only)
                self.sent += 1
                trace = tracing.trace_id(mail.headers.get("Traceparent")) or "-"
                log.info("message %s: mailed %r to %s (trace %s)", message_id, mail.subject, mail.to, trace)
        finally:
            lock, users = self._locks[message_id]
            if users == 1:
                del self._locks[message_id]
            else:
                self._locks[message_id] = (lock, users - 1)
            _honour_swallowed_cancel()


def _honour_swallowed_cancel() -> None:
    """Python 3.11's ``asyncio.wait_for`` (used inside aiosmtplib) can swallow a cancellation
    that races with the reply it waits for; the task then goes on with ``cancelling() > 0`` and
    the consumer being stopped never ends. Honour it
    (the broker redelivers the message if it was not acknowledged)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _record_only(tx: Tx | None) -> None:
    """The inbox effect: the mail went out already, only the id is recorded."""


__all__ = ["SUBJECTS", "NotificationHandler", "mail_message_id", "money", "parse_order", "render_body"]

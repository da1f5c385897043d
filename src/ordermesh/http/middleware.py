"""Limits on what an HTTP client may send, applied before any route runs (so before a body is
parsed and before authentication): the body's size and how long the client takes to send it.

:class:`BodyLimits` is plain ASGI. A ``Content-Length`` over the cap is answered 413 at once,
without reading a byte of the body (when the body is far over the cap the connection is closed
after the answer; a little over, uvicorn reads and drops the rest so that the client, still
sending, sees the answer rather than a reset connection); a chunked body is counted as it is
read and cut with 413 once over the cap (the rest is drained, for at most the listener's head
timeout); a body that
is not complete ``body_timeout`` seconds after its headers arrived is cut with 408. Requests
without a body pass through untouched, so the read paths pay one header scan.

The header side (size, and a client that trickles its headers) is the listener's:
``kit.listeners`` configures uvicorn from the same :class:`HttpLimits`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordermesh.problems import PROBLEM, problem_body

if TYPE_CHECKING:
    from ordermesh.config import Settings

MAX_HEADER_BYTES = 16 * 1024  # h11's default, made explicit: request line and headers together
KEEP_ALIVE_TIMEOUT = 5.0  # uvicorn's default: an idle kept-alive connection is closed after it
# A body announced at most this far over the cap is drained (read and dropped) after the 413
# instead of closing on it: closing on unread data resets the connection, and a client still
# sending would lose the answer. Draining is bounded in time by the listener's head timeout.
DRAIN_ALLOWANCE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP listener accepts (``ORDERMESH_MAX_BODY_BYTES``, ``ORDERMESH_HTTP_*``)."""

    max_body_bytes: int = 1024 * 1024
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_bytes: int = MAX_HEADER_BYTES
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            body_timeout=settings.http_body_timeout,
            header_timeout=settings.http_header_timeout,
        )


class _Cut(Exception):
    """The body broke a limit; raised out of ``receive`` to stop the app reading it."""


class BodyLimits:
    """Pure ASGI middleware enforcing :class:`HttpLimits` on request bodies."""

    def __init__(self, app: ASGIApp, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        chunked = False
        size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if size > self.limits.max_header_bytes:
            # h11 caps a head that arrives in parts; one that arrives in a single read (up to
            # 256 KiB) is parsed whole, and stopped here.
            detail = (
                f"the request's headers are larger than the limit of {self.limits.max_header_bytes} bytes"
            )
            await refuse(send, 431, "headers-too-large", detail)
            return
        if length is None and not chunked:  # no body at all (h11 frames it so)
            await self.app(scope, receive, send)
            return
        cap = self.limits.max_body_bytes
        if length is not None and not chunked and length.isdigit() and int(length) > cap:
            close = int(length) > cap + DRAIN_ALLOWANCE
            await refuse(send, 413, "content-too-large", _too_large(cap), close=close)
            return
        guard = _Guard(receive, send, cap, asyncio.get_running_loop().time() + self.limits.body_timeout)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            # The app may turn our _Cut into an error of its own (FastAPI: a 400 "error parsing
            # the body"); once the body was cut that error is ours, answered below.
            if guard.failure is None:
                raise
        if guard.failure is not None and not guard.started:
            status, slug, detail, close = guard.failure
            await refuse(send, status, slug, detail, close)


class _Guard:
    """One request's body: counted and timed as the app reads it; once it broke a limit, what the
    app sends is dropped (the middleware answers instead)."""

    __slots__ = ("_cap", "_deadline", "_inner_receive", "_inner_send", "_read", "done", "failure", "started")

    def __init__(self, receive: Receive, send: Send, cap: int, deadline: float) -> None:
        self._inner_receive = receive
        self._inner_send = send
        self._cap = cap
        self._deadline = deadline
        self._read = 0
        self.done = False
        self.failure: tuple[int, str, str, bool] | None = None  # status, slug, detail, close
        self.started = False

    async def receive(self) -> Message:
        if self.done:  # the body is in: later calls wait for a disconnect, for as long as it takes
            return await self._inner_receive()
        if self.failure is not None:
            raise _Cut(self.failure[2])
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._inner_receive()
        except TimeoutError:
            self.failure = (408, "request-timeout", "the request body did not arrive in time", True)
            raise _Cut(self.failure[2]) from None
        if message["type"] == "http.request":
            self._read += len(message.get("body", b""))
            if self._read > self._cap:
                self.failure = (413, "content-too-large", _too_large(self._cap), False)
                raise _Cut(self.failure[2])
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    async def send(self, message: Message) -> None:
        if self.failure is not None:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._inner_send(message)


def _too_large(cap: int) -> str:
    return f"the request body is larger than the limit of {cap} bytes"


async def refuse(send: Send, status: int, slug: str, detail: str, close: bool = True) -> None:
    """A problem document; with ``close``, the connection is closed after it and what is left of
    the body is never read (uvicorn would otherwise read and drop it to reuse the connection)."""
    body = problem_body(status, slug, detail)
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["KEEP_ALIVE_TIMEOUT", "MAX_HEADER_BYTES", "BodyLimits", "HttpLimits", "refuse"]

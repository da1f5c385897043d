"""The caller's deadline on the REST edge: a request carrying ``X-Ordermesh-Deadline-Ms`` (the
caller's remaining time, ``resilience.deadline``) is served under that deadline — every call the
route makes gets at most what is left — and cut with 504 when it passes before an answer has
started, since nobody is waiting for it any more. A malformed value is a 422; a request without
the header pays one header scan.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordermesh.errors import ValidationError
from ordermesh.http.middleware import refuse
from ordermesh.resilience import deadline

_HEADER = deadline.DEADLINE_HEADER.lower().encode()


class CallerDeadline:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == _HEADER), None)
        if raw is None:
            await self.app(scope, receive, send)
            return
        try:
            seconds = deadline.from_header(raw.decode("latin-1"))
        except ValidationError as exc:
            await refuse(send, 422, "invalid-input", str(exc), close=False)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            with deadline.within(seconds):
                async with asyncio.timeout(seconds):
                    await self.app(scope, receive, sending)
        except TimeoutError:
            if started:
                raise  # half an answer: only closing the connection tells the caller
            detail = f"the caller's deadline ({deadline.DEADLINE_HEADER}: {int(seconds * 1000)}) passed"
            await refuse(send, 504, "deadline-exceeded", detail, close=False)


__all__ = ["CallerDeadline"]

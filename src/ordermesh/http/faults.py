"""The link faults (``resilience.faults``) on a service's HTTP edge, as plain ASGI middleware.

With no fault set a request costs one attribute check. Otherwise, after the injected delay:

- error: 503 problem "injected fault" (with ``Retry-After``, as every 503 of ours);
- hang: held until the caller's deadline (``X-Ordermesh-Deadline-Ms``, or one set by an outer
  layer) passes, then 504; without one, for ``HOLD_BOUND`` seconds; a caller that gives up first
  ends it;
- reset: the TCP connection is dropped (RST) with no answer at all. The listener
  (``kit.listeners``) puts the connection's transport in the scope's ``state`` under
  :data:`TRANSPORT`; served by anything else, the request is answered 503 "connection reset
  (injected)" instead;
- blackhole: no answer: held until the caller gives up (after ``HOLD_BOUND`` seconds the
  connection is dropped, still unanswered).

Health (``/livez``, ``/readyz``), ``/metrics`` and the admin surface (``/admin/...``) are never
faulted. Installed inside the metrics middleware (:func:`install`), so injected answers are
counted as real ones would be (a reset one, unanswered, counts as 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ordermesh.errors import ValidationError
from ordermesh.http.access import AccessLog
from ordermesh.http.metrics import MetricsMiddleware
from ordermesh.problems import PROBLEM, problem_body, problem_for
from ordermesh.resilience import deadline
from ordermesh.resilience.faults import HOLD_BOUND, FaultInjected, Faults, Outcome

#: The scope ``state`` key under which the listener hands the connection's transport.
TRANSPORT = "ordermesh.transport"
EXEMPT = frozenset({"/livez", "/readyz", "/metrics"})
ADMIN_PREFIX = "/admin/"
_DEADLINE_HEADER = deadline.DEADLINE_HEADER.lower().encode()


class FaultInjection:
    """Pure ASGI middleware applying ``faults.link`` to every request but the exempt ones."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.faults.link is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in EXEMPT or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        delay, outcome = faults.decide_call()
        if delay:
            await faults.sleep(delay)
        if outcome is Outcome.PASS:
            await self.app(scope, receive, send)
        elif outcome is Outcome.ERROR:
            await _problem(send, faults.error())
        elif outcome is Outcome.HANG:
            if not await _held(receive, faults.sleep(_patience(scope))):
                detail = f"deadline exceeded: calls into {faults.service} hang (injected fault)"
                await _answer(send, 504, problem_body(504, "deadline-exceeded", detail), {})
        elif outcome is Outcome.RESET:
            await _drop(scope, receive, send, faults)
        else:  # blackhole: no answer; held until the caller gives up, dropped after the bound
            if not await _held(receive, faults.sleep(HOLD_BOUND)):
                await _drop(scope, receive, send, faults)


async def _drop(scope: Scope, receive: Receive, send: Send, faults: Faults) -> None:
    """Reset the request's connection, unanswered; 503 where the server gives no access to it."""
    transport = scope.get("state", {}).get(TRANSPORT)
    if transport is None:
        detail = f"connection reset (injected into {faults.service}; no access to the connection here)"
        await _problem(send, FaultInjected(detail))
        return
    _reset(transport)
    await _held(receive, asyncio.Event().wait())  # until the server has seen the connection go


def install(app: Starlette, faults: Faults) -> None:
    """Add :class:`FaultInjection` to ``app``, just inside its metrics and access-log middleware
    when it has them (``http.app.create_app``'s), else outermost. Before the app first serves."""
    layers = app.user_middleware
    outer = (MetricsMiddleware, AccessLog)  # a faulted answer is counted and logged like any
    metrics = [i for i, layer in enumerate(layers) if getattr(layer, "cls", None) in outer]
    at = metrics[-1] + 1 if metrics else 0
    layers.insert(at, Middleware(FaultInjection, faults=faults))


def _patience(scope: Scope) -> float:
    """Seconds until the caller's deadline: its header, or the current one; else ``HOLD_BOUND``."""
    for name, value in scope["headers"]:
        if name == _DEADLINE_HEADER:
            with contextlib.suppress(ValidationError):
                return deadline.from_header(value.decode("latin-1"))
    left = deadline.remaining()
    return HOLD_BOUND if left is None else left


async def _held(receive: Receive, hold: Awaitable[object]) -> bool:
    """Wait for ``hold``; True if the client went away first (the request's body, if any, is
    read and dropped meanwhile)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    left = asyncio.ensure_future(gone())
    held = asyncio.ensure_future(hold)
    try:
        await asyncio.wait((left, held), return_when=asyncio.FIRST_COMPLETED)
        return left.done()
    finally:
        for task in (left, held):
            task.cancel()
        await asyncio.gather(left, held, return_exceptions=True)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Drop the connection with a TCP reset (linger 0), writing nothing more."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


async def _problem(send: Send, exc: Exception) -> None:
    problem = problem_for(exc)
    await _answer(send, problem.status, problem.body, problem.headers)


async def _answer(send: Send, status: int, body: bytes, extra: Mapping[str, str]) -> None:
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["TRANSPORT", "FaultInjection", "install"]

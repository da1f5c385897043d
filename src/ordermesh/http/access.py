"""One line per REST request, as the gRPC interceptor logs a call: method, path, status, duration
and caller, at INFO on the ``ordermesh.http`` logger (the fields also as ``http_*`` record
attributes, for the JSON format).

    2026-11-26 17:12:45,637 INFO orders ordermesh.http [4bf9…]: http method=POST path=/api/orders
    status=201 duration_ms=4.210 user=alice order_id=1d2f…

The health probes (``/livez``, ``/readyz``, ``/metrics``) are logged at DEBUG: a prober calls them
every few seconds and they say nothing about an order. To quiet every request line, raise the
logger's level (``logging.getLogger("ordermesh.http").setLevel(logging.WARNING)``): then a
request pays one level check, and nothing else.

The caller is the ``user_id`` log field a route's authentication tagged (``logs.tag``), and the
line carries whatever else the route tagged (the order id of the order it created or read): the
route runs in the request's own context, inside this middleware. Placed inside the middleware
that continues the caller's trace, so the line carries the request's trace id, and outside the
body limits and the caller's deadline, so a 413 or a 504 is logged like any answer.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordermesh import logs

log = logging.getLogger("ordermesh.http")
PROBES = frozenset({"/livez", "/readyz", "/metrics"})


class AccessLog:
    """Pure ASGI: per request a clock read, the response status as it goes out, and one log call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        level = logging.DEBUG if scope["path"] in PROBES else logging.INFO
        if not log.isEnabledFor(level):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            _line(level, scope, status or 500, start)  # answered 500 by the app's outermost layer
            raise
        _line(level, scope, status or 500, start)


def _line(level: int, scope: Scope, status: int, start: float) -> None:
    ms = (time.perf_counter() - start) * 1000
    user = logs.fields().get("user_id")
    log.log(
        level,
        "http method=%s path=%s status=%d duration_ms=%.3f user=%s",
        scope["method"],
        scope["path"],
        status,
        ms,
        user or "-",
        extra={
            "http_method": scope["method"],
            "http_path": scope["path"],
            # The route template groups requests as /metrics does (unmatched: no route).
            "http_route": getattr(scope.get("route"), "path", ""),
            "http_status": status,
            "http_duration_ms": round(ms, 3),
            "http_user": user,
        },
    )


__all__ = ["PROBES", "AccessLog", "log"]

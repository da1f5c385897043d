"""The notification service's HTTP side: ``/livez``, ``/readyz`` and ``/metrics`` on 127.0.0.1
(or ORDERMESH_HTTP_HOST).

Served by uvicorn on the consumer's event loop (``run_notifications`` starts it when
ORDERMESH_NOTIFICATIONS_HTTP_PORT is not 0). The socket is bound before uvicorn starts, so a port
in use is an ``InfrastructureError`` naming the port and the variable (``main()``: one line, exit
1) rather than uvicorn's ``sys.exit`` from inside a task, and the service never consumes
without the probes a deployment relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ordermesh.errors import InfrastructureError
from ordermesh.http.app import create_app
from ordermesh.http.server import OwnedSignals

if TYPE_CHECKING:
    from ordermesh.services.notifications.service import Notifications

log = logging.getLogger("ordermesh.notifications")

HOST = "127.0.0.1"
PORT_VARIABLE = "ORDERMESH_NOTIFICATIONS_HTTP_PORT"
# The service starts before it subscribes (and is None until then), so the endpoint follows it
# through a getter rather than holding it.
ServiceRef = Callable[[], "Notifications | None"]


class NotificationsCollector(Collector):
    """The handler's counters, read at scrape time (the handler pays nothing per message). Zero
    before the service has subscribed, so the series exist from the first scrape."""

    def __init__(self, service: ServiceRef) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service()
        h = service.handler if service is not None else None
        counters = (
            ("sent", "mails sent (and recorded in the inbox)", h.sent if h else 0),
            ("duplicates", "deliveries whose mail was sent before, skipped", h.duplicates if h else 0),
            (
                "ignored",
                "deliveries with a routing key notifications do not mail about",
                h.ignored if h else 0,
            ),
            ("smtp_failures", "mail server failures (the broker retries)", h.failures if h else 0),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"ordermesh_notifications_{name}", documentation, value=value)


def create_health_app(service: ServiceRef) -> FastAPI:
    """Ready while all the service's queues are consumed; 503 while connecting, subscribing or
    stopping."""

    async def ready(_app: FastAPI) -> None:
        reason = not_ready_reason(service())
        if reason is not None:
            raise InfrastructureError(f"notifications: {reason}")

    app = create_app("ordermesh notifications", ready)
    app.state.metrics.registry.register(NotificationsCollector(service))
    return app


def not_ready_reason(service: Notifications | None) -> str | None:
    if service is None:
        return "not consuming yet (connecting to the broker)"
    if service.stopping:
        return "stopping, no longer consuming"
    if not service.consuming:
        return "subscribing to its queues"
    if service.broker is not None and not service.broker.connected:
        return "the broker connection is down (reconnecting; unacknowledged mail is redelivered)"
    return None


class HealthServer:
    """The endpoint serving in a task on the running loop; ``await stop()`` ends it."""

    def __init__(self, server: OwnedSignals, task: asyncio.Task[None], host: str, port: int) -> None:
        self._server, self._task, self.port = server, task, port
        local = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
        self.url = f"http://{local}:{port}"
        self._stopping = False
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # uvicorn does not end on its own; if it does, mail keeps flowing and the probes say why.
        if not self._stopping and not task.cancelled() and task.exception() is not None:
            log.error("notifications: %s stopped serving", self.url, exc_info=task.exception())

    async def stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True
        with contextlib.suppress(Exception):  # logged by _ended; stopping must not fail on it
            await self._task


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restart may rebind while old connections sit in TIME_WAIT (a
        # listening socket still makes bind fail).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InfrastructureError(
            f"cannot serve /livez, /readyz and /metrics on {host}:{port}: {exc.strerror or exc} "
            f"(set {PORT_VARIABLE} to a free port, or 0 for no HTTP endpoint)"
        ) from exc
    return sock


async def start_health_server(app: FastAPI, port: int, host: str = HOST) -> HealthServer:
    """Bind ``host:port`` (``InfrastructureError`` if taken) and serve ``app`` there. ``host``
    is 127.0.0.1 unless ORDERMESH_HTTP_HOST says otherwise (``0.0.0.0`` in a container, where
    probes come from outside)."""
    sock = bind(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's lines go through the service's logging, with its format
        log_level="warning",
        access_log=False,  # probes every few seconds would drown the mail log lines
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = OwnedSignals(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="notifications-http")
    try:
        # uvicorn offers a flag, not an event; startup is a few milliseconds (no lifespan).
        while not server.started:
            if task.done():
                task.result()
                raise InfrastructureError(f"notifications: HTTP endpoint on {host}:{port} did not start")
            await asyncio.sleep(0.01)
    except BaseException:
        server.should_exit = True
        task.cancel()
        try:
            await asyncio.gather(task, return_exceptions=True)
        finally:
            sock.close()
        raise
    http = HealthServer(server, task, host, int(sock.getsockname()[1]))
    log.info("notifications: /livez, /readyz and /metrics on %s", http.url)
    return http


__all__ = [
    "HOST",
    "PORT_VARIABLE",
    "HealthServer",
    "NotificationsCollector",
    "create_health_app",
    "not_ready_reason",
    "start_health_server",
]

"""A service's sockets: bound before anything else starts, so a port in use is one line naming
the variable (``ConfigError``), not a traceback after the database and broker were opened.

HTTP is uvicorn serving a socket we bound; gRPC is grpc.aio, which binds itself (``add_insecure_port``
raises on a taken port because SO_REUSEPORT is off, ``rpc.server.DEFAULT_OPTIONS``).

Slow clients: uvicorn closes idle kept-alive connections (``timeout_keep_alive``) and caps the
size of a request's head (h11's ``max_incomplete_event_size``), but has no timeout for a client
that trickles its headers: such a connection is held for as long as the client likes (measured:
300 connections each sending a header line every 2 s were all still open after 15 s; with the
guard and its 10 s default, none were).
``uvicorn --limit-concurrency`` would not help (it counts such connections, then answers 503 to
everyone else). So :class:`_GuardedH11` adds the missing timer: a connection whose next request
head is not complete ``header_timeout`` seconds after it opened (or after the previous response)
is closed; so is one still draining the rest of a body refused with 413. Request bodies are
timed by ``http.middleware.BodyLimits``.

The connection's transport reaches the app in each request's scope ``state`` (under
``http.faults.TRANSPORT``): an injected "connection reset" drops the real TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import grpc
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ordermesh.config import ENV_PREFIX
from ordermesh.errors import ConfigError, InfrastructureError
from ordermesh.http.faults import TRANSPORT
from ordermesh.http.middleware import HttpLimits
from ordermesh.http.server import OwnedSignals

log = logging.getLogger("ordermesh.kit")


def variable(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def bind(host: str, port: int, setting: str) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (0: any free port); ``ConfigError`` naming
    ``setting``'s variable when the port is taken or the host is wrong."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restart may rebind while old connections sit in TIME_WAIT (a
        # listening socket still makes bind fail).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): set {variable(setting)} to a free port "
            f"or stop what is using it",
            variable(setting),
        ) from exc
    return sock


def add_grpc_port(server: grpc.aio.Server, host: str, port: int, setting: str) -> int:
    """Bind the gRPC server's port; the port bound (``port`` 0: a free one)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        cause: BaseException | None = exc
    else:
        cause = None
    if not bound:
        raise ConfigError(
            f"cannot listen for gRPC on {address} (in use?): set {variable(setting)} to a free port "
            f"or stop what is using it",
            variable(setting),
        ) from cause
    return bound


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (see the module doc)."""

    header_timeout = 10.0  # set per listener by _guarded_h11

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn copies app_state into every request's scope["state"]: this connection's own copy
        # hands its transport to the app (http.faults), at no cost per request.
        self.app_state = {**self.app_state, TRANSPORT: transport}
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = None
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        # Between requests: no head yet, a head still trickling in, or the rest of a refused
        # body still being drained (http.middleware): all have had their time.
        self._head_timer = None
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and not self.transport.is_closing():
            self.transport.close()


def _guarded_h11(header_timeout: float) -> type[_GuardedH11]:
    return type("GuardedH11", (_GuardedH11,), {"header_timeout": header_timeout})


class HttpListener:
    """uvicorn serving ``app`` on a socket we bound, in a task on the running loop, with the
    limits of ``app.state.http_limits`` (``http.app.create_app`` sets them) unless ``limits``."""

    def __init__(
        self, app: FastAPI, sock: socket.socket, name: str, limits: HttpLimits | None = None
    ) -> None:
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._name = name
        limits = limits or getattr(app.state, "http_limits", None) or HttpLimits()
        config = uvicorn.Config(
            app,
            http=_guarded_h11(limits.header_timeout),
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_keep_alive=int(limits.keep_alive_timeout),
            log_config=None,  # uvicorn's lines go through the process's logging, with its format
            log_level="warning",
            access_log=False,
            lifespan="off",  # the kit owns start-up and shutdown
            timeout_graceful_shutdown=5,
        )
        self._server = OwnedSignals(config)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=f"{self._name}-http")
        self._task.add_done_callback(self._ended)
        try:
            # uvicorn offers a flag, not an event; with no lifespan, start-up takes milliseconds.
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise InfrastructureError(f"{self._name}: HTTP listener did not start")
                await asyncio.sleep(0.005)
        except BaseException:
            await self.stop()
            raise

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not self._stopping and not task.cancelled() and task.exception() is not None:
            log.error("%s: HTTP listener stopped", self._name, exc_info=task.exception())

    async def stop(self) -> None:
        """Stop taking connections; requests in flight finish (up to 5 s)."""
        self._stopping = True
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
        self._sock.close()


__all__ = ["HttpListener", "add_grpc_port", "bind", "variable"]

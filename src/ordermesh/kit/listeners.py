"""A service's sockets: bound before anything else starts, so a port in use is one line naming
the variable (``ConfigError``), not a traceback after the database and broker were opened.

HTTP is uvicorn serving a socket we bound; gRPC is grpc.aio, which binds itself (``add_insecure_port``
raises on a taken port because SO_REUSEPORT is off, ``rpc.server.DEFAULT_OPTIONS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import grpc
import uvicorn
from fastapi import FastAPI

from ordermesh.config import ENV_PREFIX
from ordermesh.errors import ConfigError, InfrastructureError
from ordermesh.http.server import OwnedSignals

log = logging.getLogger("ordermesh.kit")


def variable(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def url_host(host: str) -> str:
    """How a client reaches ``host``: a wildcard bind is reached on loopback."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


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


class HttpListener:
    """uvicorn serving ``app`` on a socket we bound, in a task on the running loop."""

    def __init__(self, app: FastAPI, sock: socket.socket, name: str) -> None:
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._name = name
        config = uvicorn.Config(
            app,
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


__all__ = ["HttpListener", "add_grpc_port", "bind", "url_host", "variable"]

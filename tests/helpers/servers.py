"""Servers for a test, on real sockets in the test's own event loop: the order API (``running_api``:
the app on uvicorn, with its order system at hand), any FastAPI app (``serve``), a TCP proxy to
cut a connection and give it back (``TcpProxy``), a server that never answers (``Silent``).

Whole services run in-process with ``ordermesh.kit.testing.running(spec, settings)``; as their
own processes, with ``tests.helpers.processes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn
from fastapi import FastAPI

from ordermesh.auth import Tokens
from ordermesh.clock import Clock
from ordermesh.config import Settings
from ordermesh.services.orders.app import create_order_app
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from tests.helpers.timing import eventually

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now (the OS's pick; free until someone binds it), never one
    this process was given before. The OS may hand a port out again as soon as its probe socket
    closes, so two ports asked for in a row could be the same one (CI once gave the order
    service's gRPC port to payments as well)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on uvicorn on a free port, until the block ends; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # it could not start: its own error, not a timeout
        return bool(server.started)

    await eventually(started, what="uvicorn serving")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    tokens: Tokens
    system: OrderSystem

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(user)}"}

    async def call(self, method: str, path: str, user: str | None = "alice", **kw: Any) -> tuple[int, Any]:
        headers = {**(self.auth(user) if user else {}), **kw.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as r:
            body = await r.read()
            return r.status, (await r.json(content_type=None)) if body else None


@asynccontextmanager
async def running_api(database_url: str, clock: Clock | None = None) -> AsyncIterator[Api]:
    settings = Settings(database_url=database_url)
    system = await build_order_system(database_url, clock)
    await system.start()
    app = create_order_app(settings, system, clock)
    try:
        async with serve(app) as url, aiohttp.ClientSession() as http:
            yield Api(url, http, app.state.tokens, system)
    finally:
        await system.close()


def order_body(email: str = "alice@example.com", **over: Any) -> dict[str, Any]:
    body = {
        "user_email": email,
        "currency": "EUR",
        "items": [
            {"sku": "SKU-1", "quantity": 2, "unit_price": 1250},
            {"sku": "SKU-2", "quantity": 1, "unit_price": 99},
        ],
    }
    body.update(over)
    return body


class TcpProxy:
    """A TCP proxy in the test's loop, to cut a server off and give it back: ``cut()`` drops every
    connection and refuses new ones (as a dead database host would), ``restore()`` accepts again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()


class Silent:
    """A server that accepts connections, reads what comes and never answers (a hung service)."""

    def __init__(self) -> None:
        self.connections = 0
        self._held: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    async def __aenter__(self) -> Silent:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.transport.abort()
        # Each handler ends on its aborted connection; left running, the loop's end would cancel it.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


__all__ = ["Api", "Silent", "TcpProxy", "free_port", "order_body", "running_api", "serve"]

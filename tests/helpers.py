"""Test helpers: run the real app on a real socket inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI

from ordermesh.auth import Tokens
from ordermesh.clock import Clock
from ordermesh.config import Settings
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Delivery, Message
from ordermesh.services.orders.app import create_order_app
from ordermesh.services.orders.runtime import OrderSystem, build_order_system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
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


T = TypeVar("T")


async def take(items: AsyncIterator[T], n: int) -> list[T]:
    """The first ``n`` items of an async iterator (which may be endless)."""
    out: list[T] = []
    async for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out


def assert_committed_document(committed: Path, current: str, how: str) -> None:
    """A generated contract document (OpenAPI, AsyncAPI) must be committed exactly as the code
    generates it today, and serialised deterministically."""
    import difflib

    if not committed.exists():
        pytest.fail(f"{committed} is missing: {how}", pytrace=False)
    text = committed.read_text(encoding="utf-8")
    if text != current:
        name = f"{committed.parent.name}/{committed.name}"
        diff = difflib.unified_diff(text.splitlines(), current.splitlines(), name, "generated", lineterm="")
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"{name} differs from what the code generates: {how}.\n{shown}", pytrace=False)
    assert current.endswith("}\n") and current.isascii()
    assert current == json.dumps(json.loads(current), indent=2, sort_keys=True) + "\n"


class Collector:
    """A handler that keeps its deliveries; ``wait_for(n)`` waits for n of them without polling."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.got.append(delivery)
        self.changed.set()

    async def wait_for(self, count: int) -> list[Delivery]:
        async def until() -> None:
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), 10)
        return self.got


class FailsOnce(MemoryBroker):
    """A memory broker whose first ``publish`` raises ``error`` and publishes nothing."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self._error: Exception | None = error

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        await super().publish(exchange, messages)


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


def start_service(
    service: str, env: dict[str, str], http_port: str, log: Path, timeout: float = 30
) -> subprocess.Popen[bytes]:
    """``ordermesh run SERVICE`` as its own process, returned once its /readyz answers 200.
    Its log goes to ``log``: a pipe nobody reads fills up and blocks the service's logging."""
    import contextlib
    import sys
    import time

    import requests

    binary = Path(sys.executable).parent / "ordermesh"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(binary), "run", service], env=env, stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.05)  # another process's endpoint: nothing to wait on but polling
    proc.kill()
    pytest.fail(f"{service} did not start: {log.read_text(errors='replace')[-2000:]}")


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


HTTP = {
    "orders": "HTTP_PORT",
    "payments": "PAYMENTS_HTTP_PORT",
    "inventory": "INVENTORY_HTTP_PORT",
    "shipping": "SHIPPING_HTTP_PORT",
}
PORTS = [*HTTP.values(), "GRPC_PORT", "PAYMENTS_GRPC_PORT", "INVENTORY_GRPC_PORT", "NOTIFICATIONS_HTTP_PORT"]


class Fleet:
    """The four services a saga needs, each its own process, sharing the data dir's broker."""

    def __init__(self, data: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_")},
            "ORDERMESH_DATA_DIR": str(data),
            "ORDERMESH_SAGA_DEADLINE": "60",
            **{f"ORDERMESH_{p}": str(free_port()) for p in PORTS},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = data.parent

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.env['ORDERMESH_' + HTTP[service]]}"

    def start(self, service: str, **extra: str) -> subprocess.Popen[bytes]:
        port = self.env["ORDERMESH_" + HTTP[service]]
        proc = start_service(service, {**self.env, **extra}, port, self.logs / f"{service}.log")
        self.procs[service] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            if proc.poll() is None:
                proc.kill()

"""Test helpers: run the real app on a real socket inside the test's event loop."""

from __future__ import annotations

import asyncio
import json
import socket
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

"""The demo's session with the running system: it places the orders, follows them live
(``StreamOrderUpdates``, with the REST order and saga views polled as the fallback and for the
current step), polls the order service's circuit breakers, and redraws the table as they move."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from rich.live import Live
from rich.table import Table

from ordermesh.auth import Tokens
from ordermesh.client import AsyncOrdermeshClient, OrdersGrpcClient
from ordermesh.demo.render import orders_table
from ordermesh.demo.rows import Row, current_step
from ordermesh.errors import OrdermeshError
from ordermesh.problems import error_from_problem

POLL_EVERY = 0.2


@dataclass
class Demo:
    url: str
    grpc_target: str
    tokens: Tokens
    rows: list[Row]
    timeout: float
    http: aiohttp.ClientSession
    clients: dict[str, AsyncOrdermeshClient] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    breakers: list[dict[str, Any]] = field(default_factory=list)  # the order service's downstreams
    reads: list[float] = field(default_factory=list)  # seconds per order read while the demo ran
    failed_reads: int = 0

    def client(self, user: str) -> AsyncOrdermeshClient:
        if user not in self.clients:
            self.clients[user] = AsyncOrdermeshClient(self.url, self.tokens.issue(user), timeout=10)
        return self.clients[user]

    def _seen(self, row: Row, order: dict[str, Any]) -> None:
        if row.done:
            return
        row.status, row.total, row.currency = order["status"], order["total"], order["currency"]
        row.reason = order.get("cancel_reason") or row.reason
        if row.done:
            row.latency = asyncio.get_running_loop().time() - row.started
        self.changed.set()

    async def place(self, row: Row, gate: asyncio.Semaphore) -> None:
        async with gate:
            row.started = asyncio.get_running_loop().time()
            try:
                order = await self.client(row.user).create_order(f"{row.user}@example.com", "EUR", row.items)
            except OrdermeshError as exc:
                row.error, row.status = f"not placed: {exc}", "error"
                return
            row.order_id = order["id"]
            self._seen(row, order)

    async def follow(self, user: str) -> None:
        """The user's StreamOrderUpdates: each status change as it happens."""
        by_id = {r.order_id: r for r in self.rows if r.user == user}
        async with OrdersGrpcClient(self.grpc_target, self.tokens.issue(user)) as stream:
            async for update in stream.watch(user_id=user):
                row = by_id.get(update["order_id"])
                if row is None:  # placed after this stream's map was made: look again
                    by_id = {r.order_id: r for r in self.rows if r.user == user}
                    row = by_id.get(update["order_id"])
                if row is not None:
                    self._seen(row, update["order"])

    async def poll(self, row: Row) -> None:
        """The saga view (the current step) and the order itself (when the stream is late)."""
        saga = await self.saga(row)
        if saga is not None:
            row.step = current_step(saga)
            row.parked = row.step.endswith("(parked)")
            row.reason = row.reason or saga.get("reason", "")
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            order = await self.client(row.user).get_order(row.order_id)
        except (OrdermeshError, aiohttp.ClientError, TimeoutError):
            self.failed_reads += 1
            raise
        self.reads.append(loop.time() - began)
        self._seen(row, order)
        self.changed.set()

    async def poll_breakers(self) -> None:
        """The order service's breakers (``GET /admin/breakers``, a service token)."""
        headers = {"Authorization": f"Bearer {self.tokens.issue_service('demo')}"}
        async with self.http.get(
            f"{self.url}/admin/breakers", headers=headers, timeout=aiohttp.ClientTimeout(total=2)
        ) as r:
            if r.status == 200:
                self.breakers = list(orjson.loads(await r.read())["downstreams"])

    async def saga(self, row: Row) -> dict[str, Any] | None:
        """``GET /api/orders/{id}/saga`` (None until the saga has begun)."""
        headers = {"Authorization": f"Bearer {self.tokens.issue(row.user)}"}
        path = f"{self.url}/api/orders/{quote(row.order_id, safe='')}/saga"
        async with self.http.get(path, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as r:
            body = await r.read()
            if r.status == 404:
                return None
            if r.status >= 400:
                raise error_from_problem(r.status, body)
            doc: dict[str, Any] = orjson.loads(body)
            return doc

    async def run(self, live: Live) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(16)
        followers = [asyncio.create_task(self._quietly(self.follow(u))) for u in {r.user for r in self.rows}]
        placing = asyncio.gather(*(self.place(r, gate) for r in self.rows))
        deadline = loop.time() + self.timeout
        try:
            while True:
                pending = [r for r in self.rows if r.order_id and not r.done]
                await asyncio.gather(
                    self._quietly(self.poll_breakers()),
                    *(self._quietly(self.poll(r), gate) for r in pending),
                )
                live.update(self.table())
                # Done when every order ended, or waits for a downstream that is down (parked:
                # it resumes by itself when the downstream is back, demo or no demo).
                settled = all(r.done or r.parked for r in self.rows)
                if (placing.done() and settled) or loop.time() > deadline:
                    break
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), POLL_EVERY)
            for row in self.rows:  # the final step of each saga, for the table
                if row.order_id:
                    await self._quietly(self.poll(row), gate)
            live.update(self.table())
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            placing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await placing

    @staticmethod
    async def _quietly(work: Any, gate: asyncio.Semaphore | None = None) -> None:
        # A failed poll or a dropped stream is retried by the next round; the summary says what ended.
        with contextlib.suppress(OrdermeshError, aiohttp.ClientError, TimeoutError):
            if gate is None:
                await work
            else:
                async with gate:
                    await work

    def table(self) -> Table:
        return orders_table(self.rows, self.breakers)

"""``ordermesh demo``: a mix of orders against the running system, followed live, then a summary.

Most orders should ship; some are priced over the payment limit (declined) and some ask for more
units than the warehouse holds (out of stock). Everything goes through the public APIs: REST to
place orders and read each order's saga view (whichever saga style runs it), and
``StreamOrderUpdates`` for prompt status changes; the REST poll is also the fallback when the
stream is not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ordermesh.auth import Tokens
from ordermesh.client import AsyncOrdermeshClient, OrdersGrpcClient
from ordermesh.config import Settings, client_host
from ordermesh.errors import OrdermeshError
from ordermesh.problems import error_from_problem

TERMINAL = ("shipped", "cancelled")
# "parked": still pending, its saga waiting for a downstream whose circuit breaker is open (it
# resumes when that downstream recovers); "cancelled-unavailable": a downstream stayed down past
# the saga's deadline, so what was done was undone.
OUTCOMES = (
    "shipped",
    "cancelled-declined",
    "cancelled-out-of-stock",
    "cancelled-unavailable",
    "parked",
    "other",
)
ORDERS_PER_USER = 20  # well under the per-user write burst, so no order meets 429
OUT_OF_STOCK_UNITS = 10_000  # the most one line may ask for; the demo catalog holds 1,000 a SKU
SHOWN_ROWS = 30
POLL_EVERY = 0.2


@dataclass
class Row:
    """One demo order as the terminal shows it."""

    intent: str  # "ship", "decline" or "short": what the demo meant to happen
    user: str
    items: list[dict[str, Any]]
    order_id: str = ""
    total: int = 0
    currency: str = "EUR"
    status: str = "placing"
    step: str = ""
    reason: str = ""
    started: float = 0.0
    latency: float | None = None  # seconds from the create call to the terminal state being seen
    error: str = ""
    parked: bool = False  # its saga waits for an open circuit breaker

    @property
    def done(self) -> bool:
        return self.status in TERMINAL or bool(self.error)

    @property
    def outcome(self) -> str:
        if self.status == "shipped":
            return "shipped"
        if self.status == "cancelled" and self.reason:
            text = self.reason.lower()
            if "declin" in text:
                return "cancelled-declined"
            if "stock" in text:
                return "cancelled-out-of-stock"
            if "unavailable" in text or "deadline" in text:
                return "cancelled-unavailable"
        if not self.done and self.parked:
            return "parked"
        return "other"


def _line(sku: str, quantity: int, unit_price: int) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def plan(count: int, payment_limit: int, seed: int | None = None) -> list[Row]:
    """``count`` orders: of every six, four to ship, one declined, one out of stock."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    # A few users, each with few enough orders to stay under the per-user write burst.
    users = [f"demo-{tag}-{n}" for n in range(max(min(count, 3), -(-count // ORDERS_PER_USER)))]
    rows: list[Row] = []
    for n in range(count):
        sku = f"SKU-{rng.randint(1, 9)}"
        kind = ("ship", "ship", "ship", "ship", "decline", "short")[n % 6]
        if kind == "ship":
            skus = rng.sample(range(1, 10), rng.randint(1, 2))
            items = [_line(f"SKU-{s}", rng.randint(1, 3), rng.randint(100, 5000)) for s in skus]
        elif kind == "decline":
            items = [_line(sku, 1, payment_limit + 1)]
        else:
            items = [_line(sku, OUT_OF_STOCK_UNITS, 1)]
        rows.append(Row(kind, users[n % len(users)], items))
    return rows


def current_step(saga: dict[str, Any]) -> str:
    """The step the saga is at: the one still running, else the last one that moved."""
    actions = saga.get("steps", [])
    done = {a["name"] for a in actions}
    # Compensating an action is undoing it; the others (the final "cancel") are steps of their own.
    undos = [
        dict(c, name=f"undo {c['name']}" if c["name"] in done else c["name"])
        for c in saga.get("compensations", [])
    ]
    moves = [*actions, *undos]
    for step in moves:
        if step["outcome"] in ("running", "retrying", "parked"):
            return f"{step['name']} ({step['outcome']})"
    return f"{moves[-1]['name']} ({moves[-1]['outcome']})" if moves else ""


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
        done = sum(r.done for r in self.rows)
        table = Table(title=f"ordermesh demo: {done} of {len(self.rows)} orders ended")
        for column in ("order", "user", "total", "state", "current step", "reason"):
            table.add_column(column, overflow="fold")
        # Open orders first: they are what is moving.
        shown = sorted(self.rows, key=lambda r: r.done)[:SHOWN_ROWS]
        for r in shown:
            style = {"shipped": "green", "cancelled": "yellow", "error": "red"}.get(r.status, "cyan")
            table.add_row(
                r.order_id or "-",
                r.user,
                f"{r.total / 100:.2f} {r.currency}" if r.order_id else "-",
                f"[{style}]{r.status}[/{style}]",
                escape(r.step),
                escape(r.reason or r.error),
            )
        captions = [breakers_line(self.breakers)] if self.breakers else []
        if len(self.rows) > SHOWN_ROWS:
            captions.append(f"{len(self.rows) - SHOWN_ROWS} more not shown")
        table.caption = "\n".join(captions) or None
        return table


def breakers_line(breakers: Sequence[dict[str, Any]]) -> str:
    """``breakers: payments OPEN (12 refused), inventory closed, …``"""
    parts = []
    for b in breakers:
        state = str(b["state"])
        shown = state.upper() if state in ("open", "half_open") else state
        refused = f" ({b['rejected']} refused)" if b.get("rejected") else ""
        parts.append(f"{b['downstream']} {shown}{refused}")
    return "breakers: " + ", ".join(parts)


def _ms(values: Sequence[float], q: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0] * 1000:.0f} ms"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1] * 1000:.0f} ms"


def summarize(rows: Sequence[Row], console: Console, demo: Demo | None = None) -> int:
    """One line per outcome (count, p50 and p99 completion latency); 0 when every order ended
    shipped or cancelled with a reason, or is parked waiting for a downstream that is down (it
    resumes by itself), else 1 with the orders that did not."""
    table = Table(title="summary")
    for column in ("outcome", "orders", "p50", "p99"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for outcome in OUTCOMES:
        ended = [r for r in rows if r.outcome == outcome]
        latencies = sorted(r.latency for r in ended if r.latency is not None)
        table.add_row(outcome, str(len(ended)), _ms(latencies, 50), _ms(latencies, 99))
    console.print(table)
    for outcome in OUTCOMES:
        latencies = sorted(r.latency for r in rows if r.outcome == outcome and r.latency is not None)
        count = sum(r.outcome == outcome for r in rows)
        console.print(
            f"{outcome}: {count}  p50 {_ms(latencies, 50)}  p99 {_ms(latencies, 99)}", highlight=False
        )
    if demo is not None:
        if demo.breakers:
            console.print(breakers_line(demo.breakers), highlight=False)
        reads = sorted(demo.reads)
        console.print(
            f"order reads while it ran: {len(reads)} answered, {demo.failed_reads} failed, "
            f"p50 {_ms(reads, 50)}, p99 {_ms(reads, 99)}",
            highlight=False,
        )
    parked = sum(r.outcome == "parked" for r in rows)
    if parked:
        console.print(
            f"{parked} order(s) parked: their sagas wait for a downstream whose circuit is open, and "
            "resume when it recovers (`ordermesh faults clear`, `ordermesh saga show ORDER_ID`)",
            highlight=False,
        )
    waiting = ("parked", "cancelled-unavailable", "other")
    unexpected = [
        r for r in rows if r.outcome not in waiting and not r.outcome.startswith(_EXPECTED[r.intent])
    ]
    if unexpected:  # not a failure (stock may have run low from earlier runs), but worth a note
        console.print(f"note: {len(unexpected)} order(s) ended otherwise than planned", highlight=False)
    bad = [r for r in rows if r.outcome == "other"]
    if not bad:
        how = "ended shipped or cancelled with a reason" + (" or are parked" if parked else "")
        console.print(f"ok: all {len(rows)} orders {how}", highlight=False)
        return 0
    console.print(
        f"[red]{len(bad)} of {len(rows)} orders did not end shipped or cancelled with a reason:[/red]"
    )
    for r in bad:
        what = (
            r.error or f"{r.status}{f' at {r.step}' if r.step else ''}{f': {r.reason}' if r.reason else ''}"
        )
        console.print(f"  {r.order_id or '(not placed)'}  {escape(what)}", highlight=False)
    return 1


_EXPECTED = {"ship": "shipped", "decline": "cancelled-declined", "short": "cancelled-out-of-stock"}


async def _ready(url: str) -> str | None:
    """None when the order service answers /readyz with 200, else why not."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
            http.get(f"{url}/readyz") as r,
        ):
            return None if r.status == 200 else f"it answers /readyz with {r.status}"
    except (aiohttp.ClientError, TimeoutError):
        return "nothing answers there"


async def run_demo(settings: Settings, count: int, url: str | None, timeout: float, console: Console) -> int:
    host = client_host(settings.http_host)
    url = (url or f"http://{host}:{settings.http_port}").rstrip("/")
    why = await _ready(url)
    if why is not None:
        console.print(f"ordermesh is not running at {url} ({why}): start it with `make up`", highlight=False)
        return 1
    grpc_host = urlsplit(url).hostname or host
    grpc_target = f"{f'[{grpc_host}]' if ':' in grpc_host else grpc_host}:{settings.grpc_port}"
    rows = plan(count, settings.payment_limit)
    async with aiohttp.ClientSession() as http:
        demo = Demo(url, grpc_target, Tokens(settings), rows, timeout, http)
        try:
            with Live(demo.table(), console=console, refresh_per_second=8) as live:
                await demo.run(live)
            if not console.is_terminal:
                console.line()  # a non-terminal Live leaves its last line open
        finally:
            await asyncio.gather(*(c.close() for c in demo.clients.values()))
    return summarize(rows, console, demo)


__all__ = ["OUTCOMES", "Row", "breakers_line", "current_step", "plan", "run_demo", "summarize"]

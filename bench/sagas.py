"""Sagas end to end: orders placed over REST on ``ordermesh up`` (five processes) until each is
shipped, against a floor of the same downstream calls made by a bare client.

Ours: ``python -m ordermesh up`` on ports of its own, with the write-rate limit off, every SKU
stocked high, on the embedded mode (SQLite files + the embedded broker) and on PostgreSQL +
RabbitMQ (``ORDERMESH_BENCH_POSTGRES_URL``, ``ORDERMESH_BENCH_AMQP_URL``: a schema prefix and a
queue prefix of its own, dropped afterwards). Each order: ``POST /api/orders``, then the saga
pays (payments, gRPC), reserves (inventory, gRPC), schedules (shipping, REST) and commits. An
order is done when its ``OrderShipped`` event is in the order service's event store; the bench
reads it there (a read on the service's database, no load on its APIs) and takes the event's own
timestamp, so latency = that timestamp - the wall clock when the create call was sent.

Floor: the same running payments, inventory and shipping processes called directly per order by
the bench: ProcessPayment, Reserve, POST /api/shipments, Commit, one after the other. No order
service, no event store, saga log, outbox or inbox.

Two loads, on both sides: closed loop (``CONCURRENCY`` orders in flight, each followed to its end
before the next; orders/s over ``WINDOW`` seconds after a warm-up) and open loop (``RATE`` orders
a second for ``OPEN_SECONDS`` seconds whatever the answers; latency p50/p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from bench.common import Figure, pg_url, print_figures, with_search_path
from bench.messaging import amqp_url
from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.client.shipping import ShippingClient
from ordermesh.config import Settings
from ordermesh.db import SqlDb, connect
from ordermesh.kit.supervisor import probe

CONCURRENCY = 64
WARMUP, WINDOW = 2.0, 8.0
RATE, OPEN_SECONDS = 100, 6.0
DRAIN = 30.0  # the longest the open loop waits for its last orders
USERS = 32
STOCK = 1_000_000_000
TERMINAL = ("OrderShipped", "OrderCancelled")
PORTS = (
    "http_port",
    "grpc_port",
    "mail_sink_port",
    "notifications_http_port",
    "payments_http_port",
    "payments_grpc_port",
    "inventory_http_port",
    "inventory_grpc_port",
    "shipping_http_port",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _items(n: int) -> list[dict[str, int | str]]:
    return [{"sku": f"SKU-{n % 9 + 1}", "quantity": 1, "unit_price": 1250}]


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Run:
    """One load's outcome: completed orders, the window, latencies (seconds)."""

    done: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def ms(self, q: int) -> float:
        return _quantile(sorted(self.latencies), q) * 1000


# ----------------------------------------------------------------------------- the system


@dataclass
class System:
    settings: Settings
    url: str
    orders_db: SqlDb
    http: aiohttp.ClientSession
    tokens: Tokens
    waiting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)  # order id -> its end (negative: cancelled)
    position: int = 0

    async def watch(self, stop: asyncio.Event) -> None:
        """Resolve each waited-for order with its terminal event's timestamp (epoch seconds)."""
        sqlite = self.orders_db.dialect == "sqlite"
        while not stop.is_set():
            rows = await self.orders_db.fetch(
                "SELECT position, stream_id, occurred_at, type FROM events WHERE position > $1 "
                "AND type IN ('OrderShipped', 'OrderCancelled') ORDER BY position",
                self.position,
            )
            for position, stream_id, occurred_at, kind in rows:
                self.position = max(self.position, int(position))
                stamp = int(occurred_at) / 1e6 if sqlite else occurred_at.timestamp()
                order_id = str(stream_id).removeprefix("order-")
                self.ended[order_id] = stamp if kind == "OrderShipped" else -stamp
                future = self.waiting.pop(order_id, None)
                if future is not None and not future.done():
                    future.set_result(self.ended[order_id])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    async def style(self) -> str:
        """The style the saga view reports for an order placed last."""
        order_id = next(reversed(self.ended))
        user = await self.orders_db.fetch(
            "SELECT data FROM events WHERE stream_id = $1 AND version = 1", f"order-{order_id}"
        )
        data = user[0][0] if user else {"user_id": "bench-0"}
        owner = (data if isinstance(data, dict) else orjson.loads(data))["user_id"]  # asyncpg decodes jsonb
        headers = {"Authorization": f"Bearer {self.tokens.issue(owner)}"}
        async with self.http.get(f"{self.url}/api/orders/{order_id}/saga", headers=headers) as r:
            return str(orjson.loads(await r.read()).get("style")) if r.status == 200 else f"HTTP {r.status}"

    async def order(self, n: int) -> tuple[float, float]:
        """Place an order and wait for its end: (sent at, ended at), wall clock."""
        user = f"bench-{n % USERS}"
        body = orjson.dumps({"user_email": f"{user}@example.com", "currency": "EUR", "items": _items(n)})
        headers = {
            "Authorization": f"Bearer {self.tokens.issue(user)}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        sent = time.time()
        async with self.http.post(f"{self.url}/api/orders", data=body, headers=headers) as r:
            doc = orjson.loads(await r.read())
            if r.status != 201:
                raise RuntimeError(f"create answered {r.status}: {doc}")
        ended = self.ended.get(doc["id"])
        if ended is None:  # not seen yet (the watcher may have seen it while the answer was on its way)
            future = self.waiting.setdefault(doc["id"], asyncio.get_running_loop().create_future())
            ended = await asyncio.wait_for(future, DRAIN)
        if ended < 0:
            raise RuntimeError(f"order {doc['id']} was cancelled")
        return sent, ended


async def _wait_ready(proc: asyncio.subprocess.Process, settings: Settings, log: Path) -> None:
    ports = [
        settings.http_port,
        settings.payments_http_port,
        settings.inventory_http_port,
        settings.shipping_http_port,
        settings.notifications_http_port,
    ]
    deadline = time.monotonic() + 60
    pending = [f"http://127.0.0.1:{p}/readyz" for p in ports]
    while pending:
        pending = [u for u in pending if (await probe(u))[0] != 200]
        text = log.read_text(errors="replace")  # noqa: ASYNC240 - a small local file
        # A service that exits at start (a setting it refuses) is restarted for ever: fail at once.
        if proc.returncode is not None or "exited with code" in text or time.monotonic() > deadline:
            raise RuntimeError(f"ordermesh up did not become ready ({pending}):\n{text[-1500:]}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def running(backend: str, style: str) -> AsyncIterator[System]:
    """``ordermesh up`` on its own ports and data dir (and schemas / queue prefix on the servers)."""
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-sagas-") as tmp:
        env = {
            **os.environ,
            "ORDERMESH_DATA_DIR": str(Path(tmp) / "data"),
            "ORDERMESH_SAGA": style,
            "ORDERMESH_WRITE_RATE": "0",  # the per-user limit would measure itself, not the saga
            **{f"ORDERMESH_{name.upper()}": str(_free_port()) for name in PORTS},
        }
        for name in ("ORDERMESH_DATABASE_URL", "ORDERMESH_BROKER_URL", "ORDERMESH_SMTP_URL"):
            env.pop(name, None)
        schema_prefix = f"bsaga{tag}"
        if backend == "postgres":
            env["ORDERMESH_DATABASE_URL"] = with_search_path(pg_url(), schema_prefix)
            env["ORDERMESH_BROKER_URL"] = f"{amqp_url()}?prefix=bench-saga-{tag}."
        settings = Settings.from_env(env)
        log = Path(tmp) / "up.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ordermesh", "up", env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            await _wait_ready(proc, settings, log)
            stock = await connect(settings.service_database_url("inventory"))
            try:  # every SKU deep enough for the whole run: no order is short
                await stock.execute("UPDATE inventory_stock SET available = $1", STOCK)
            finally:
                await stock.close()
            orders_db = await connect(settings.service_database_url("orders"))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
                yield System(
                    settings, f"http://127.0.0.1:{settings.http_port}", orders_db, http, Tokens(settings)
                )
            await orders_db.close()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            if backend == "postgres":
                await _drop_schemas(schema_prefix)
                _delete_queues(f"bench-saga-{tag}.")


async def _drop_schemas(prefix: str) -> None:
    conn = await asyncpg.connect(pg_url(), timeout=5)
    try:
        names = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"{prefix}%")
        for (name,) in names:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


def _delete_queues(prefix: str) -> None:
    """Best effort: the run's queues and exchanges (rabbitmqctl lists them)."""
    import pika

    try:
        listed = {
            kind: subprocess.run(
                ["rabbitmqctl", "-q", f"list_{kind}", "name"], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for kind in ("queues", "exchanges")
        }
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    except Exception as exc:  # a leftover prefix is harmless; say so and go on
        print(f"  (could not clean up RabbitMQ prefix {prefix}: {exc})")
        return
    try:
        channel = connection.channel()
        for name in listed["queues"]:
            if name.startswith(prefix):
                channel.queue_delete(name)
        for name in listed["exchanges"]:
            if name.startswith(prefix):
                channel.exchange_delete(name)
    finally:
        connection.close()


# ----------------------------------------------------------------------------- the floor


@dataclass
class Floor:
    """The saga's four downstream calls, made straight from here."""

    payments: PaymentsClient
    inventory: InventoryClient
    shipping: ShippingClient

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Floor]:
        token = Tokens(settings).issue_service("orders")
        async with (
            PaymentsClient(f"127.0.0.1:{settings.payments_grpc_port}", token) as payments,
            InventoryClient(f"127.0.0.1:{settings.inventory_grpc_port}", token) as inventory,
            ShippingClient(f"http://127.0.0.1:{settings.shipping_http_port}", token) as shipping,
        ):
            yield cls(payments, inventory, shipping)

    async def order(self, n: int) -> tuple[float, float]:
        order_id = str(uuid.uuid4())
        line = _items(n)[0]
        items = [(str(line["sku"]), int(line["quantity"]))]
        sent = time.time()
        paid = await self.payments.process_payment(order_id, int(line["unit_price"]), "EUR")
        held = await self.inventory.reserve(order_id, items)
        if paid.status != "succeeded" or held.status != "reserved":
            raise RuntimeError(f"floor order {order_id}: {paid.status}, {held.status}")
        await self.shipping.schedule(order_id, items)
        await self.inventory.commit(order_id)
        return sent, time.time()


# ----------------------------------------------------------------------------- the loads

Order = Callable[[int], Awaitable[tuple[float, float]]]


async def closed_loop(order: Order) -> Run:
    """``CONCURRENCY`` orders in flight; those that end inside the window after the warm-up count."""
    run = Run()
    start = time.time()
    window = (start + WARMUP, start + WARMUP + WINDOW)
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.time() < window[1]:
            try:
                sent, ended = await order(next(counter))
            except Exception:
                run.failed += 1
                continue
            if window[0] <= ended < window[1]:
                run.done += 1
                run.latencies.append(ended - sent)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    run.seconds = WINDOW
    return run


async def open_loop(order: Order) -> Run:
    """``RATE`` orders a second for ``OPEN_SECONDS``, each sent on time whatever the others do."""
    run = Run()
    loop = asyncio.get_running_loop()
    began = loop.time()
    count = int(RATE * OPEN_SECONDS)

    async def one(n: int) -> None:
        await asyncio.sleep(max(0.0, began + n / RATE - loop.time()))
        try:
            sent, ended = await order(n)
        except Exception:
            run.failed += 1
            return
        run.done += 1
        run.latencies.append(ended - sent)

    await asyncio.gather(*(one(n) for n in range(count)))
    run.seconds = loop.time() - began
    return run


async def measure(backend: str, style: str, with_floor: bool) -> list[Figure]:
    async with running(backend, style) as system:
        stop = asyncio.Event()
        watcher = asyncio.create_task(system.watch(stop))
        try:
            floor_closed = floor_open = None
            if with_floor:  # first: the saga's work would still drain (mail, relays) behind it
                async with Floor.open(system.settings) as floor:
                    floor_closed = await closed_loop(floor.order)
                    floor_open = await open_loop(floor.order)
            saga_closed = await closed_loop(system.order)
            saga_open = await open_loop(system.order)
            seen = await system.style()
        finally:
            stop.set()
            await watcher
    name = f"{backend} {style}"
    if seen != style:  # the setting was not honoured: these figures are not of that style
        raise RuntimeError(f"asked for ORDERMESH_SAGA={style}, the saga view says {seen!r}")
    for label, r in (("saga closed", saga_closed), ("saga open", saga_open)):
        print(f"  {name} {label}: {r.done} done, {r.failed} failed, {r.rate:,.0f}/s, "
              f"p50 {r.ms(50):.1f} ms, p99 {r.ms(99):.1f} ms")  # fmt: skip
    figures = []
    if floor_closed is not None and floor_open is not None:
        for label, r in (("floor closed", floor_closed), ("floor open", floor_open)):
            print(f"  {name} {label}: {r.done} done, {r.failed} failed, {r.rate:,.0f}/s, "
                  f"p50 {r.ms(50):.1f} ms, p99 {r.ms(99):.1f} ms")  # fmt: skip
        figures = [
            Figure(f"{name}: orders/s, {CONCURRENCY} in flight", saga_closed.rate, floor_closed.rate,
                   "orders/s", "bare calls"),
            Figure(f"{name}: p50 ms at {RATE}/s", saga_open.ms(50), floor_open.ms(50), "ms", "bare calls"),
            Figure(f"{name}: p99 ms at {RATE}/s", saga_open.ms(99), floor_open.ms(99), "ms", "bare calls"),
        ]  # fmt: skip
    return figures


async def run() -> list[Figure]:
    print(f"\nsagas: ordermesh up (5 processes), {CONCURRENCY} in flight for {WINDOW:.0f} s; {RATE}/s for "
          f"{OPEN_SECONDS:.0f} s; floor: the same downstream calls, bare")  # fmt: skip
    figures: list[Figure] = []
    for backend in ("embedded", "postgres"):
        figures += await measure(backend, "orchestrated", with_floor=True)
        try:
            figures += await measure(backend, "choreographed", with_floor=False)
        except RuntimeError as exc:
            print(f"  {backend} choreographed: not measured ({str(exc).splitlines()[0]})")
    print_figures("Sagas: ours = ordermesh up, peer = bare downstream calls", figures)
    return figures

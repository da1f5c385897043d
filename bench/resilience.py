"""Resilience (issue 12): what the layer costs on a call between services, and what orders and
reads come to while payments fails half of the calls made to it.

Overhead. ``ordermesh run payments`` and ``ordermesh run shipping`` as processes of their own; from
here, one read made several ways on the same channel / session:

- gRPC ``GetPayment`` (of a payment made first): the bare stub call with the client's timeout and
  metadata; the guarded call (``GrpcClient._call``: deadline, bulkhead, breaker, the first attempt
  outside the retries — the layer alone, default ``Policy()``); ``PaymentsClient.get_payment`` (the
  layer, plus turning the answer into a dataclass).
- REST ``GET /api/shipments/{id}`` (of a shipment scheduled first): a bare aiohttp GET with the
  client's headers; the same plus ``X-Ordermesh-Deadline-Ms`` (the server then serves it under a
  timeout: the server's share of the layer); the guarded call (``ShippingClient._send``);
  ``ShippingClient.get``.

A round: ``CALLS`` sequential calls of every way, the ways taking turns call by call (p50 per
way), then each way's calls/s and this process's CPU time per call with ``TASKS`` tasks for
``BURST`` s, one way after the other, the order reversed every other round. Figures are medians
of ``ROUNDS`` rounds; the medians of the rounds' ratios to the bare way are printed beside them
(on a machine whose load drifts, the pairs agree better than the medians). Target: the layer
costs <= 5 % on p50 and on throughput.

Outage. ``python -m ordermesh up`` (``bench.sagas.running``: embedded mode, orchestrated saga,
write limit off, SKUs stocked high), once with breakers on and once off (``ORDERMESH_BREAKERS``).
Payments is made to fail ``ERROR_RATE`` of the calls into it (``PUT /admin/faults`` on its HTTP
port); orders are placed at ``ORDER_RATE``/s for ``SECONDS`` s while ``GET /api/users/{id}/orders``
and ``GET /api/orders/{id}`` are read at ``READ_RATE``/s in all (open loops: sent on time whatever
the answers); then the fault is cleared and every order's end is waited for (at most ``SETTLE`` s).
An order ended correctly when it is shipped with its saga completed, the total charged net and a
tracking id, or cancelled with its saga compensated, a reason and nothing charged net; the stock
must add up with nothing left reserved. Every constant has an ``ORDERMESH_BENCH_*`` override
(``ORDERMESH_BENCH_SECONDS=5`` for a quick run); ``ORDERMESH_BENCH_ONLY=overhead|outage`` runs one part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import Figure, print_figures
from bench.sagas import STOCK, USERS, System, _free_port, _items, _quantile, running
from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.client.shipping import ShippingClient
from ordermesh.config import Settings
from ordermesh.errors import NotFound
from ordermesh.kit.supervisor import probe
from ordermesh.payments.v1 import payments_pb2 as pb
from ordermesh.resilience import Guard, Policy, deadline


def _setting(name: str, default: float) -> float:
    return float(os.environ.get(f"ORDERMESH_BENCH_{name}", default))


ROUNDS = int(_setting("ROUNDS", 12))
CALLS = int(_setting("CALLS", 500))
BURST = _setting("BURST", 1.0)
TASKS = 32
TIMEOUT = 5.0  # every way's call timeout: the clients' default
SECONDS = _setting("SECONDS", 30.0)
ORDER_RATE = _setting("ORDER_RATE", 20.0)
READ_RATE = _setting("READ_RATE", 100.0)
ERROR_RATE = _setting("ERROR_RATE", 0.5)
SETTLE = _setting("SETTLE", 120.0)
Call = Callable[[], Awaitable[object]]
SAGA_ENDED = ("completed", "compensated")  # "failed" would be a saga stopped half-way: never right


# ----------------------------------------------------------------------------- overhead


#: What a round measures of each way: name, unit, scale from the recorded value.
METRICS = (("p50", "µs", 1e6), (f"{TASKS} tasks", "calls/s", 1.0), ("client CPU per call", "µs", 1e6))


@dataclass
class Way:
    """One way of making the call, and its figures per round, by metric (seconds, calls/s, seconds)."""

    name: str
    call: Call
    rounds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m, _, _ in METRICS})


async def _p50s(ways: list[Way]) -> None:
    """One round of sequential calls, the ways taking turns call by call: each way's p50."""
    times: list[list[float]] = [[] for _ in ways]
    for n in range(CALLS):
        for i in range(len(ways)) if n % 2 == 0 else reversed(range(len(ways))):
            started = time.perf_counter()
            await ways[i].call()
            times[i].append(time.perf_counter() - started)
    for way, values in zip(ways, times, strict=True):
        way.rounds["p50"].append(statistics.median(values))


async def _burst(way: Way) -> None:
    """``TASKS`` tasks calling for ``BURST`` s: calls/s, and this process's CPU time per call (what
    the layer costs the caller, whatever else the machine is doing)."""
    count = 0
    started, cpu = time.perf_counter(), time.process_time()
    until = started + BURST

    async def task() -> None:
        nonlocal count
        while time.perf_counter() < until:
            await way.call()
            count += 1

    await asyncio.gather(*(task() for _ in range(TASKS)))
    way.rounds[METRICS[1][0]].append(count / (time.perf_counter() - started))
    way.rounds[METRICS[2][0]].append((time.process_time() - cpu) / count)


async def _compare(ways: list[Way]) -> None:
    for way in ways:  # warm: connections open, caches filled
        for _ in range(200):
            await way.call()
    for n in range(ROUNDS):
        await _p50s(ways)
        for way in ways if n % 2 == 0 else ways[::-1]:  # drift and position cancel out
            await _burst(way)


def _figures(title: str, ways: list[Way], peer: str) -> list[Figure]:
    bare, figures = ways[0], []
    for way in ways:
        print(f"  {title} {way.name}:")
        for metric, unit, scale in METRICS:
            values = way.rounds[metric]
            median = statistics.median(values) * scale
            line = (
                f"    {metric}: {median:,.0f} {unit} ({min(values) * scale:,.0f}-{max(values) * scale:,.0f})"
            )
            if way is not bare:
                # The median of the rounds' ratios: what a machine whose load drifts disturbs least.
                pairs = zip(values, bare.rounds[metric], strict=True)
                line += f", paired ratio {statistics.median(a / b for a, b in pairs):.3f}x"
                base = statistics.median(bare.rounds[metric]) * scale
                figures.append(Figure(f"{title} {way.name}: {metric}", median, base, unit, peer))
            print(line)
    return figures


def _clean(guard: Guard) -> None:
    """The figures are of calls that succeeded at once: refuse them otherwise."""
    s = guard.snapshot()
    if s["failures"] or s["retries"] or s["bulkhead_rejected"] or s["rejected"]:
        raise RuntimeError(f"{guard.name}: calls failed during the overhead run: {s}")


def _logs(folder: Path) -> str:
    return "".join(log.read_text(errors="replace")[-800:] for log in sorted(folder.glob("*.log")))


@asynccontextmanager
async def downstreams() -> AsyncIterator[Settings]:
    """``ordermesh run payments`` and ``ordermesh run shipping`` on ports and a data dir of their own."""
    with tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
        ports = ("payments_http_port", "payments_grpc_port", "shipping_http_port")
        env = {
            **os.environ,
            "ORDERMESH_DATA_DIR": str(Path(tmp) / "data"),
            **{f"ORDERMESH_{name.upper()}": str(_free_port()) for name in ports},
        }
        for name in ("ORDERMESH_DATABASE_URL", "ORDERMESH_BROKER_URL"):
            env.pop(name, None)
        settings = Settings.from_env(env)
        procs: list[asyncio.subprocess.Process] = []
        try:
            for name in ("payments", "shipping"):
                with (Path(tmp) / f"{name}.log").open("wb") as out:
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable, "-m", "ordermesh", "run", name,
                            env=env, stdout=out, stderr=subprocess.STDOUT,
                        )
                    )  # fmt: skip
            urls = [
                f"http://127.0.0.1:{p}/readyz"
                for p in (settings.payments_http_port, settings.shipping_http_port)
            ]
            until = time.monotonic() + 60
            while urls := [u for u in urls if (await probe(u))[0] != 200]:
                if time.monotonic() > until or any(p.returncode is not None for p in procs):
                    raise RuntimeError(
                        f"payments/shipping did not become ready ({urls}):\n{_logs(Path(tmp))}"
                    )
                await asyncio.sleep(0.1)
            yield settings
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()  # SIGTERM: the kit drains and exits 0
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def overhead() -> list[Figure]:
    print(f"\nresilience overhead: {CALLS} sequential calls and {TASKS} tasks for {BURST:.0f} s per way, "
          f"{ROUNDS} rounds (order reversed each round); medians of rounds (min-max)")  # fmt: skip
    async with downstreams() as settings:
        token = Tokens(settings).issue_service("bench")
        auth = {"Authorization": f"Bearer {token}"}
        target = f"127.0.0.1:{settings.payments_grpc_port}"
        async with PaymentsClient(target, token, timeout=TIMEOUT, guard=Guard("payments", Policy())) as pay:
            order_id = str(uuid.uuid4())
            await pay.process_payment(order_id, 1250, "EUR")
            request = pb.GetPaymentRequest(order_id=order_id)
            metadata = tuple((k.lower(), v) for k, v in auth.items())

            async def stub() -> object:
                return await pay.stub.GetPayment(request, timeout=TIMEOUT, metadata=metadata)

            grpc_ways = [
                Way("bare stub", stub),
                Way("guarded", lambda: pay._call(pay.stub.GetPayment, request, None)),
                Way("get_payment", lambda: pay.get_payment(order_id)),
            ]
            await _compare(grpc_ways)
            _clean(pay.guard)
        base = f"http://127.0.0.1:{settings.shipping_http_port}"
        async with ShippingClient(base, token, timeout=TIMEOUT, guard=Guard("shipping", Policy())) as ship:
            order_id = str(uuid.uuid4())
            await ship.schedule(order_id, [("SKU-1", 1)])
            path = f"/api/shipments/{order_id}"
            session = ship._open()  # the client's own session: every way on the same connections
            limit = aiohttp.ClientTimeout(total=TIMEOUT)
            with_deadline = {**auth, deadline.DEADLINE_HEADER: deadline.to_header(TIMEOUT)}

            async def get(headers: dict[str, str]) -> object:
                async with session.get(base + path, headers=headers, timeout=limit) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"GET {path} answered {r.status}: {body[:200]!r}")
                return orjson.loads(body)

            rest_ways = [
                Way("bare GET", lambda: get(auth)),
                Way("bare GET + deadline header", lambda: get(with_deadline)),
                Way("guarded", lambda: ship._send("GET", path)),
                Way("ShippingClient.get", lambda: ship.get(order_id)),
            ]
            await _compare(rest_ways)
            _clean(ship.guard)
    return _figures("gRPC GetPayment", grpc_ways, "bare stub") + _figures(
        "REST GET shipment", rest_ways, "bare GET"
    )


# ----------------------------------------------------------------------------- outage


@dataclass
class Outage:
    breakers: bool
    placed: dict[str, str] = field(default_factory=dict)  # order id -> its user
    sent: dict[str, float] = field(default_factory=dict)  # order id -> wall clock of its create
    create_failed: Counter[str] = field(default_factory=Counter)
    reads: dict[str, list[float]] = field(default_factory=lambda: {"list": [], "detail": []})
    read_failed: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)  # "shipped" / "cancelled: REASON"
    wrong: list[str] = field(default_factory=list)  # orders that did not end correctly, and why
    stock_wrong: list[str] = field(default_factory=list)
    settled_after: float = float("nan")  # seconds from clearing the fault to the last order's end
    breaker: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # user -> bearer token: signed once

    def auth(self, system: System, user: str) -> dict[str, str]:
        token = self.tokens.get(user) or self.tokens.setdefault(user, system.tokens.issue(user))
        return {"Authorization": f"Bearer {token}"}

    @property
    def correct(self) -> int:
        return len(self.placed) - len(self.wrong)

    def ms(self, kind: str, q: int) -> float:
        return _quantile(sorted(self.reads[kind]), q) * 1000


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (``bench.sagas.running`` passes it on)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _open_loop(rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``one(n)`` ``rate`` times a second for ``seconds``, each on time whatever the others do."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, began + n / rate - loop.time()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)


async def _place(system: System, out: Outage, n: int) -> None:
    user = f"bench-{n % USERS}"
    body = orjson.dumps({"user_email": f"{user}@example.com", "currency": "EUR", "items": _items(n)})
    headers = {
        **out.auth(system, user),
        "Content-Type": "application/json",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    sent = time.time()
    try:
        async with system.http.post(f"{system.url}/api/orders", data=body, headers=headers) as r:
            status, doc = r.status, orjson.loads(await r.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.create_failed[type(exc).__name__] += 1
        return
    if status != 201:
        out.create_failed[f"HTTP {status}"] += 1
        return
    out.placed[doc["id"]], out.sent[doc["id"]] = user, sent


async def _read(system: System, out: Outage, n: int) -> None:
    placed = list(out.placed.items())[-50:]  # the recent orders: those whose sagas are running
    if n % 2 == 0 or not placed:
        kind, user = "list", f"bench-{n % USERS}"
        url = f"{system.url}/api/users/{user}/orders"
    else:
        order_id, user = placed[n % len(placed)]
        kind, url = "detail", f"{system.url}/api/orders/{order_id}"
    headers = out.auth(system, user)
    started = time.perf_counter()
    try:
        async with system.http.get(url, headers=headers) as r:
            await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.read_failed[f"{kind}: {type(exc).__name__}"] += 1
        return
    if status != 200:
        out.read_failed[f"{kind}: HTTP {status}"] += 1
        return
    out.reads[kind].append(time.perf_counter() - started)


async def _admin(system: System, method: str, port: int, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {system.tokens.issue_service('bench')}"}
    data = None if body is None else orjson.dumps(body)
    async with system.http.request(method, f"http://127.0.0.1:{port}{path}", data=data, headers=headers) as r:
        raw = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path} on port {port} answered {r.status}: {raw[:300]!r}")
    return orjson.loads(raw)


async def _check(system: System, pay: PaymentsClient, out: Outage, order_id: str) -> None:
    """Record how the order ended, and what is wrong with it if anything."""
    headers = out.auth(system, out.placed[order_id])
    until = time.monotonic() + 15  # the read model follows the event store a moment later
    while True:
        async with system.http.get(f"{system.url}/api/orders/{order_id}", headers=headers) as r:
            order = orjson.loads(await r.read())
        async with system.http.get(f"{system.url}/api/orders/{order_id}/saga", headers=headers) as r:
            saga = orjson.loads(await r.read())
        if order.get("status") in ("shipped", "cancelled") and saga.get("state") in SAGA_ENDED:
            break
        if time.monotonic() > until:
            out.wrong.append(f"{order_id}: not ended: order {order.get('status')}, saga {saga.get('state')}")
            return
        await asyncio.sleep(0.2)
    try:
        payment = await pay.get_payment(order_id)
        net = payment.charged - payment.refunded
    except NotFound:
        net = 0
    if order["status"] == "shipped":
        out.ends["shipped"] += 1
        ok = net == order["total"] and bool(order["tracking_id"]) and saga["state"] == "completed"
    else:
        out.ends[f"cancelled: {order['cancel_reason'] or '(no reason)'}"] += 1
        ok = net == 0 and bool(order["cancel_reason"]) and saga["state"] == "compensated"
    if not ok:
        out.wrong.append(
            f"{order_id}: {order['status']}, net {net} of {order['total']}, saga {saga['state']}"
        )


async def _checks(system: System, out: Outage) -> None:
    token = Tokens(system.settings).issue_service("bench")
    gate = asyncio.Semaphore(16)

    async def one(order_id: str) -> None:
        async with gate:
            await _check(system, pay, out, order_id)

    async with PaymentsClient(f"127.0.0.1:{system.settings.payments_grpc_port}", token) as pay:
        await asyncio.gather(*(one(order_id) for order_id in out.placed))
    async with InventoryClient(f"127.0.0.1:{system.settings.inventory_grpc_port}", token) as stock:
        levels = await stock.stock()
    if sum(level.shipped for level in levels) != out.ends["shipped"]:  # one unit an order
        out.stock_wrong.append(
            f"{sum(lv.shipped for lv in levels)} units shipped for {out.ends['shipped']} orders"
        )
    out.stock_wrong += [f"{lv}" for lv in levels if lv.reserved or lv.available + lv.shipped != STOCK]


async def outage(breakers: bool) -> Outage:
    out = Outage(breakers)
    with _environ(ORDERMESH_BREAKERS="1" if breakers else "0"):
        async with running("embedded", "orchestrated") as system:
            stop = asyncio.Event()
            watcher = asyncio.create_task(system.watch(stop))
            s = system.settings
            try:
                plan = {"link": {"error_rate": ERROR_RATE}}
                await _admin(system, "PUT", s.payments_http_port, "/admin/faults", plan)
                await asyncio.gather(
                    _open_loop(ORDER_RATE, SECONDS, lambda n: _place(system, out, n)),
                    _open_loop(READ_RATE, SECONDS, lambda n: _read(system, out, n)),
                )
                await _admin(system, "DELETE", s.payments_http_port, "/admin/faults")
                cleared = time.monotonic()
                while time.monotonic() - cleared < SETTLE:
                    if not set(out.placed) - set(system.ended):
                        break
                    await asyncio.sleep(0.2)
                out.settled_after = time.monotonic() - cleared
                rows = (await _admin(system, "GET", s.http_port, "/admin/breakers"))["downstreams"]
                out.breaker = next((row for row in rows if row["downstream"] == "payments"), {})
                await _checks(system, out)
                latencies = sorted(
                    abs(system.ended[i]) - out.sent[i] for i in out.placed if i in system.ended
                )
            finally:
                stop.set()
                await watcher
    _report(out, latencies)
    return out


def _report(out: Outage, latencies: list[float]) -> None:
    name = "breakers on" if out.breakers else "breakers off"
    placed = len(out.placed)
    share = out.correct / placed if placed else float("nan")
    print(f"  {name}: {placed} orders placed ({sum(out.create_failed.values())} creates failed "
          f"{dict(out.create_failed)}), {out.correct} ended correctly ({share:.1%}); last ended "
          f"{out.settled_after:.1f} s after the fault was cleared"
          f"{' (gave up waiting)' if out.settled_after >= SETTLE else ''}")  # fmt: skip
    for end, count in out.ends.most_common():
        print(f"    {count:>5}  {end}")
    for problem in out.wrong[:10]:
        print(f"    WRONG {problem}")
    print(f"    stock: {'; '.join(out.stock_wrong) or 'adds up, nothing reserved'}")
    print(
        f"    order create -> end: p50 {_quantile(latencies, 50):.1f} s, p99 {_quantile(latencies, 99):.1f} s"
    )
    for kind in ("list", "detail"):
        print(f"    reads {kind}: {len(out.reads[kind])} ok, p50 {out.ms(kind, 50):.1f} ms, "
              f"p99 {out.ms(kind, 99):.1f} ms")  # fmt: skip
    if out.read_failed:
        print(f"    reads failed: {dict(out.read_failed)}")
    keys = ("state", "calls", "failures", "retries", "retry_budget_exhausted", "opened", "rejected")
    print(
        "    payments breaker: "
        + ", ".join(f"{k} {out.breaker.get(k)}" for k in (*keys, "bulkhead_rejected"))
    )


async def run() -> list[Figure]:
    only = os.environ.get("ORDERMESH_BENCH_ONLY", "")
    figures = await overhead() if only in ("", "overhead") else []
    if only in ("", "outage"):
        print(f"\nresilience outage: payments failing {ERROR_RATE:.0%} of calls for {SECONDS:.0f} s, "
              f"{ORDER_RATE:.0f} orders/s, reads {READ_RATE:.0f}/s; ordermesh up (embedded, "
              "orchestrated)")  # fmt: skip
        on, off = await outage(True), await outage(False)
        for kind in ("list", "detail"):
            for q in (50, 99):
                name = f"GET {kind} p{q} during the outage"
                figures.append(
                    Figure(name, on.ms(kind, q) * 1000, off.ms(kind, q) * 1000, "µs", "breakers off")
                )
    print_figures(
        "Resilience: ours = through the layer (outage: breakers on), peer = bare (breakers off)", figures
    )
    return figures

"""What tracing costs: a REST order read, a REST order create and a gRPC call, each served with
tracing off (no SDK: OpenTelemetry's API alone, the default), on without export (an SDK
``TracerProvider``, every span sampled and recorded, then dropped: no processor) and on with
export (``kit.telemetry``'s provider: a ``BatchSpanProcessor`` and the OTLP/HTTP exporter, to a
receiver on this machine that answers 200 to every batch).

Each server runs in its own process (``python -m bench.tracing serve KIND MODE PORT DIR``) the
way the service does: the SDK installed first, then the app or the gRPC server built (so the
contrib ASGI and grpc instrumentations are in place exactly when a service would have them). The
load comes from this process: ``CONNECTIONS`` concurrent requests (aiohttp) or calls (grpc.aio)
for ``SECONDS`` after a warm-up; rounds alternate the modes so drift hits them alike, and the best
round of each counts. Requests carry no ``traceparent``: with an SDK each one starts a trace.

- REST read: ``GET /api/orders/{id}``: the server span (ASGI middleware), named and tagged.
- REST create: ``POST /api/orders`` (``write_rate=0``): the server span, the event's metadata.
- gRPC: ``GetUserOrders`` (10 orders): the grpc.aio server interceptor's span.

Knobs: ``ORDERMESH_BENCH_SECONDS`` (3), ``ORDERMESH_BENCH_ROUNDS`` (2).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import orjson

from bench.common import Figure, print_figures
from ordermesh.auth import Tokens
from ordermesh.clock import SystemClock
from ordermesh.config import Settings
from ordermesh.ratelimit import RateLimiter
from ordermesh.tuning import tune_gc

CONNECTIONS = 32
SECONDS = float(os.environ.get("ORDERMESH_BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("ORDERMESH_BENCH_ROUNDS", "2"))
WARMUP = 1.0
MODES = ("off", "sdk", "export")
LABELS = {"off": "tracing off (no SDK)", "sdk": "SDK, no export", "export": "SDK + OTLP/HTTP export"}
USER = "bench-user"
ORDER = orjson.dumps(
    {
        "user_email": "bench@example.com",
        "currency": "EUR",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": 990}],
    }
)
GET_USER_ORDERS = "/ordermesh.orders.v1.OrderService/GetUserOrders"


# --- the servers, each in its own process -----------------------------------------------------


def _install(mode: str) -> None:
    """The SDK as ``kit.telemetry`` would install it (before anything is built), or none."""
    if mode == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from ordermesh.kit import telemetry

    provider = TracerProvider() if mode == "sdk" else telemetry.build_provider("orders", "http/protobuf")
    trace.set_tracer_provider(provider)


def _settings(data_dir: str) -> Settings:
    return Settings(data_dir=Path(data_dir), write_rate=0)


def _serve_rest(port: int, data_dir: str) -> None:
    import uvicorn

    from ordermesh.services.orders.app import create_order_app

    settings = _settings(data_dir)
    app = create_order_app(settings)
    # As the service wires it from settings (services/orders/spec.py): write_rate 0, no limit.
    app.state.write_limiter = RateLimiter(settings.write_rate, settings.write_burst, SystemClock(), "orders")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _serve_grpc(port: int, data_dir: str) -> None:
    from ordermesh.rpc.server import build_server
    from ordermesh.services.orders.app import create_order_app
    from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
    from ordermesh.services.orders.runtime import build_order_system

    settings = _settings(data_dir)
    system = await build_order_system(settings.effective_database_url)
    await system.start()
    app = create_order_app(settings, system)  # not served: it holds the tokens and the metrics
    server = build_server(
        registrations=[OrderGrpcService(system).register],
        service_names=[SERVICE_NAME],
        tokens=app.state.tokens,
        metrics=app.state.metrics.registry,
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _receive(port: int) -> None:
    """An OTLP/HTTP endpoint that takes every batch (``ExportTraceServiceResponse`` is empty)."""
    from aiohttp import web

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# --- the load ---------------------------------------------------------------------------------


async def _seed(data_dir: str) -> str:
    from ordermesh.services.orders.events import OrderLine
    from ordermesh.services.orders.runtime import build_order_system

    system = await build_order_system(_settings(data_dir).effective_database_url)
    try:
        ids = [
            (
                await system.service.create_order(
                    USER, "bench@example.com", "EUR", [OrderLine(f"SKU-{i}", 1, 990)]
                )
            )["id"]
            for i in range(10)
        ]
        return str(ids[0])
    finally:
        await system.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rate(call: Callable[[], Awaitable[None]], server: int) -> tuple[float, float]:
    """Calls per second of ``call`` at ``CONNECTIONS`` concurrent callers after a warm-up, and the
    server's CPU time per call in µs (less sensitive than the rate to what else runs here)."""
    done = 0

    async def worker(until: float, count: bool) -> None:
        nonlocal done
        while time.perf_counter() < until:
            await call()
            done += count

    warm = time.perf_counter() + WARMUP
    await asyncio.gather(*(worker(warm, False) for _ in range(CONNECTIONS)))
    began, cpu = time.perf_counter(), _cpu_seconds(server)
    await asyncio.gather(*(worker(began + SECONDS, True) for _ in range(CONNECTIONS)))
    elapsed, used = time.perf_counter() - began, _cpu_seconds(server) - cpu
    return done / elapsed, used / max(done, 1) * 1e6


async def _rest(url: str, method: str, body: bytes | None, server: int) -> tuple[float, float]:
    headers = {
        "Authorization": f"Bearer {Tokens(Settings()).issue(USER)}",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as http:

        async def call() -> None:
            async with http.request(method, url, data=body, headers=headers) as r:
                await r.read()
                if r.status >= 300:
                    raise RuntimeError(f"{method} {url}: HTTP {r.status} {(await r.read())[:200]!r}")

        return await _rate(call, server)


async def _grpc(target: str, server: int) -> tuple[float, float]:
    from ordermesh.orders.v1 import orders_pb2 as pb

    metadata = (("authorization", f"Bearer {Tokens(Settings()).issue(USER)}"),)
    request = pb.GetUserOrdersRequest(user_id=USER).SerializeToString()
    async with grpc.aio.insecure_channel(target) as channel:
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GET_USER_ORDERS)

        async def call() -> None:
            await stub(request, metadata=metadata, timeout=10)

        return await _rate(call, server)


async def _ready(kind: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if kind == "grpc":
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await asyncio.wait_for(channel.channel_ready(), 1)
                    return
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the {kind} server on {port} did not come up")


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.tracing", *args], env=env)


async def _measure(kind: str, mode: str, data_dir: str, order_id: str, receiver: str) -> tuple[float, float]:
    from tests.helpers import free_port

    port = free_port()
    # A fresh copy of the seeded database for every run: the creates of one run must not make
    # the next run's reads or writes dearer.
    data_dir = shutil.copytree(data_dir, tempfile.mkdtemp(dir=Path(data_dir).parent), dirs_exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver
    server = _spawn("serve", "grpc" if kind == "grpc" else "rest", mode, str(port), data_dir, env=env)
    try:
        await _ready("grpc" if kind == "grpc" else "rest", port)
        if kind == "grpc":
            return await _grpc(f"127.0.0.1:{port}", server.pid)
        if kind == "read":
            return await _rest(f"http://127.0.0.1:{port}/api/orders/{order_id}", "GET", None, server.pid)
        return await _rest(f"http://127.0.0.1:{port}/api/orders", "POST", ORDER, server.pid)
    finally:
        server.terminate()
        server.wait(10)


async def run() -> list[Figure]:
    from tests.helpers import free_port

    receiver_port = free_port()
    receiver = _spawn("receive", str(receiver_port))
    figures: list[Figure] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            seed = os.path.join(tmp, "seed")
            os.makedirs(seed)
            order_id = await _seed(seed)
            for kind, what in (
                ("read", "REST GET /api/orders/{id}"),
                ("create", "REST POST /api/orders"),
                ("grpc", "gRPC GetUserOrders"),
            ):
                rates = dict.fromkeys(MODES, 0.0)
                cpu = dict.fromkeys(MODES, float("inf"))
                for _ in range(ROUNDS):
                    for mode in MODES:
                        rate, used = await _measure(
                            kind, mode, seed, order_id, f"http://127.0.0.1:{receiver_port}"
                        )
                        rates[mode], cpu[mode] = max(rates[mode], rate), min(cpu[mode], used)
                for mode in MODES:
                    figures.append(
                        Figure(f"{what}: {LABELS[mode]}", rates[mode], rates["off"], "req/s", "off")
                    )
                for mode in MODES:
                    name = f"{what}: {LABELS[mode]}, server CPU"
                    figures.append(Figure(name, cpu[mode], cpu["off"], "µs/req", "off"))
    finally:
        receiver.terminate()
        receiver.wait(10)
    print_figures(f"Tracing cost at {CONNECTIONS} concurrent callers (best of {ROUNDS} rounds each)", figures)
    return figures


if __name__ == "__main__":
    tune_gc()  # as every ordermesh process runs (bench/__main__.py)
    command, *args = sys.argv[1:]
    if command == "receive":
        asyncio.run(_receive(int(args[0])))
    else:
        kind, mode, port, data_dir = args
        _install(mode)
        if kind == "grpc":
            asyncio.run(_serve_grpc(int(port), data_dir))
        else:
            _serve_rest(int(port), data_dir)

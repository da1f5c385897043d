"""`GET /api/users/{id}/orders` at 32 connections vs a bare FastAPI endpoint.

Both servers run in their own process with one uvicorn worker and the same settings; the peer
returns a constant Python list of the same orders (same JSON size) the usual FastAPI way. Ours
authenticates the bearer token, reads the first page (the default 50, so the whole list here)
from the SQLite read model and records metrics. The load comes from this process: 32 aiohttp
connections for a fixed time. Target >= 1.0x.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Figure, print_figures
from ordermesh.auth import Tokens
from ordermesh.config import Settings
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import build_order_system
from ordermesh.tuning import tune_gc

CONNECTIONS = 32
SECONDS = 5.0
WARMUP = 1.0
SIZES = (10, 50)  # orders in the user's list


def _serve_ours(port: int, data_dir: str) -> None:
    import uvicorn

    from ordermesh.services.orders.app import create_order_app

    app = create_order_app(Settings(data_dir=Path(data_dir)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_bare(port: int, body_file: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    orders = json.loads(Path(body_file).read_text())["orders"]
    app = FastAPI()

    @app.get("/api/users/{user_id}/orders")
    async def user_orders(user_id: str) -> dict[str, Any]:
        return {"orders": orders, "next": None}  # one page holds them all, as ours

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _seed(data_dir: str, orders: int = SIZES[0]) -> bytes:
    settings = Settings(data_dir=Path(data_dir))
    system = await build_order_system(settings.effective_database_url)
    try:
        for i in range(orders):
            lines = [OrderLine(f"SKU-{i}", 1 + i % 3, 1250), OrderLine("SKU-X", 1, 99)]
            await system.service.create_order("bench-user", "bench@example.com", "EUR", lines)
        return await system.service.user_orders_json("bench-user", "bench-user")
    finally:
        await system.close()


def _start(kind: str, port: int, arg: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.http_orders", kind, str(port), arg])


async def _wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def _load(url: str, headers: dict[str, str]) -> tuple[float, float, int]:
    """Requests per second, p99 latency in ms, and the body size, over SECONDS after a warm-up."""
    latencies: list[float] = []
    size = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as http:

        async def worker(until: float, record: bool) -> None:
            nonlocal size
            while time.perf_counter() < until:
                start = time.perf_counter()
                async with http.get(url, headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status} {body[:200]!r}")
                if record:
                    latencies.append(time.perf_counter() - start)
                    size = len(body)

        warm = time.perf_counter() + WARMUP
        await asyncio.gather(*(worker(warm, False) for _ in range(CONNECTIONS)))
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + SECONDS, True) for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - began
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return len(latencies) / elapsed, p99, size


async def _compare(orders: int) -> list[Figure]:
    from tests.helpers import free_port

    with tempfile.TemporaryDirectory() as tmp:
        body = await _seed(tmp, orders)
        body_file = os.path.join(tmp, "body.json")
        await asyncio.to_thread(Path(body_file).write_bytes, body)
        token = Tokens(Settings()).issue("bench-user")
        headers = {"Authorization": f"Bearer {token}"}
        results: dict[str, list[tuple[float, float, int]]] = {"ours": [], "bare": []}
        # Two alternating rounds, so drift on a noisy machine hits both sides alike.
        for _ in range(2):
            for kind, arg in (("ours", tmp), ("bare", body_file)):
                port = free_port()
                proc = _start(kind, port, arg)
                try:
                    url = f"http://127.0.0.1:{port}/api/users/bench-user/orders"
                    await _wait_ready(f"http://127.0.0.1:{port}/openapi.json")
                    results[kind].append(await _load(url, headers))
                finally:
                    proc.terminate()
                    proc.wait(10)
    ours = max(results["ours"])
    bare = max(results["bare"])
    return [
        Figure(
            f"{orders} orders ({ours[2]:,} B): req/s at {CONNECTIONS} conns",
            ours[0],
            bare[0],
            "req/s",
            "bare",
        ),
        Figure(f"{orders} orders: p99 latency", ours[1], bare[1], "ms", "bare FastAPI"),
    ]


async def run() -> list[Figure]:
    figures = []
    for orders in SIZES:
        figures += await _compare(orders)
    print_figures("GET /api/users/{id}/orders (best of 2 rounds each; for latency lower is better)", figures)
    return figures


if __name__ == "__main__":
    tune_gc()  # both servers, as every ordermesh process runs (bench/__main__.py)
    kind, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    (_serve_ours if kind == "ours" else _serve_bare)(port, arg)

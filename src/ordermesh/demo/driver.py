"""``ordermesh demo``'s entry point: check the system answers, plan the orders, run the live
session until they end (or park, or time out), then print the summary and return the exit code."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.live import Live

from ordermesh.auth import Tokens
from ordermesh.config import Settings, client_host
from ordermesh.demo.live import Demo
from ordermesh.demo.rows import plan
from ordermesh.demo.summary import summarize


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

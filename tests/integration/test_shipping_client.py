"""The shipping client on its own, against an aiohttp server on a loopback socket: it loads no
FastAPI, and it retries what is safe. (Problem documents become errors through
``ordermesh.problems``, tested with the server side.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from ordermesh import errors
from ordermesh.client import shipping
from ordermesh.client.shipping import ShippingClient
from tests.helpers import free_port


def test_the_client_module_loads_no_fastapi() -> None:
    # The package's __init__ loads the order clients (which do); this module alone must not.
    folder = str(Path(shipping.__file__).resolve().parent)
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('ordermesh.client'); pkg.__path__ = [{folder!r}]\n"
        "sys.modules['ordermesh.client'] = pkg\n"
        "import ordermesh.client.shipping\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class Flaky:
    """A server that answers 503 ``failures`` times, then a shipment."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        assert request.headers["Authorization"] == f"Bearer token-{self.calls}"
        if self.calls <= self.failures:
            return web.json_response({"detail": "starting", "status": 503}, status=503)
        doc = {
            "shipment_id": "s",
            "order_id": "o-1",
            "tracking_id": "OMAAAAAAAAAAAA",
            "status": "scheduled",
            "items": [{"sku": "A", "quantity": 1}],
            "address": None,
            "scheduled_at": "2026-01-01T00:00:00+00:00",
            "cancelled_at": None,
        }
        return web.json_response(doc, status=201)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    server = Flaky(failures=2)
    app = web.Application()
    app.router.add_post("/api/shipments", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_schedule_is_retried_on_503_with_a_fresh_token_each_time(flaky: tuple[Flaky, str]) -> None:
    server, url = flaky
    tokens = iter(f"token-{n}" for n in range(1, 10))
    async with ShippingClient(url, lambda: next(tokens), timeout=5.0) as client:
        shipment = await client.schedule("o-1", [("A", 1)])
    assert server.calls == 3 and shipment.tracking_id == "OMAAAAAAAAAAAA"


async def test_503_after_the_last_retry_is_an_infrastructure_error(flaky: tuple[Flaky, str]) -> None:
    server, url = flaky
    tokens = iter(f"token-{n}" for n in range(1, 10))
    async with ShippingClient(url, lambda: next(tokens), retries=1) as client:
        with pytest.raises(errors.InfrastructureError, match="HTTP 503: starting"):
            await client.schedule("o-1", [("A", 1)])
    assert server.calls == 2


async def test_nobody_listening_is_an_infrastructure_error_within_the_timeout() -> None:
    async with ShippingClient(f"http://127.0.0.1:{free_port()}", "t", timeout=1.0, retries=3) as client:
        with pytest.raises(errors.InfrastructureError):
            await client.cancel("o-1")

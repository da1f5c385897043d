"""The service kit: one composition root, probes, ordered start-up and shutdown, one-line failures."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ordermesh.config import Settings
from ordermesh.errors import ConfigError
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.kit.process import main
from ordermesh.kit.runtime import started
from ordermesh.kit.testing import running
from ordermesh.messaging.port import Message
from ordermesh.services.orders.grpc_api import SERVICE_NAME as ORDERS
from ordermesh.services.orders.spec import SPEC as ORDERS_SPEC
from tests.helpers import AMQP_URL, Collector, eventually, free_port, require_rabbitmq, within


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def status(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as r:
        return r.status, await r.text()


def spec_of(build: Callable[[Runtime], Awaitable[None]] | None = None, **over: object) -> ServiceSpec:
    async def nothing(rt: Runtime) -> None:
        pass

    fields: dict[str, object] = {
        "name": "payments",  # any service with a database setting and both ports
        "title": "kit test",
        "build": build or nothing,
        "http_port": "payments_http_port",
        "grpc_port": "payments_grpc_port",
    }
    fields.update(over)
    return ServiceSpec(**fields)  # type: ignore[arg-type]


def settings(tmp_path: Path, **over: object) -> Settings:
    return Settings(data_dir=tmp_path, broker_url="memory://", **over)  # type: ignore[arg-type]


async def test_probes_follow_start_up_and_shutdown(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    building, release, draining, drained = (asyncio.Event() for _ in range(4))
    runtimes: list[Runtime] = []

    async def build(rt: Runtime) -> None:
        runtimes.append(rt)
        await rt.database()
        building.set()
        await release.wait()

        async def drain() -> None:
            draining.set()
            await drained.wait()

        rt.on_drain(drain)

    async def serve() -> None:
        async with started(spec_of(build), settings(tmp_path, payments_http_port=0, payments_grpc_port=0)):
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    await within(building.wait())
    rt = runtimes[0]
    # Bound and answering before the service is built: live, not ready.
    assert await status(http, f"{rt.http_url}/livez") == (200, '{"status":"ok"}')
    code, body = await status(http, f"{rt.http_url}/readyz")
    assert code == 503 and "payments: starting" in body
    release.set()
    await eventually(lambda: rt.started, what="the service started")
    assert (await status(http, f"{rt.http_url}/readyz"))[0] == 200
    assert "ordermesh_http_requests" in (await status(http, f"{rt.http_url}/metrics"))[1]

    task.cancel()  # shutdown begins: drains run while the listener still answers
    await within(draining.wait())
    code, body = await status(http, f"{rt.http_url}/readyz")
    assert code == 503 and "payments: stopping" in body
    drained.set()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await status(http, f"{rt.http_url}/livez")
    assert rt._db is not None and not _usable(rt)


def _usable(rt: Runtime) -> bool:
    """Whether the runtime's SQLite database still answers (it is closed at shutdown)."""
    import sqlite3

    assert rt._db is not None
    try:
        rt._db._inline.execute("SELECT 1")  # type: ignore[attr-defined]
    except sqlite3.ProgrammingError:
        return False
    return True


async def test_a_failure_half_way_closes_what_was_opened_and_frees_the_ports(tmp_path: Path) -> None:
    opened: list[Runtime] = []

    async def build(rt: Runtime) -> None:
        await rt.database()
        await rt.outbox()
        opened.append(rt)
        raise RuntimeError("the service could not be built")

    s = settings(tmp_path, payments_http_port=free_port(), payments_grpc_port=free_port())
    with pytest.raises(RuntimeError, match="could not be built"):
        async with started(spec_of(build), s):
            pytest.fail("a service whose build failed must not run")
    assert not _usable(opened[0])
    for port in (s.payments_http_port, s.payments_grpc_port):
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))  # free again


@pytest.mark.parametrize("which", ["payments_http_port", "payments_grpc_port"])
async def test_a_port_in_use_fails_before_anything_is_built(tmp_path: Path, which: str) -> None:
    built: list[Runtime] = []

    async def build(rt: Runtime) -> None:
        built.append(rt)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        s = settings(
            tmp_path, **{"payments_http_port": free_port(), "payments_grpc_port": free_port(), which: port}
        )
        with pytest.raises(ConfigError) as caught:
            async with started(spec_of(build), s):
                pass
    variable = f"ORDERMESH_{which.upper()}"
    assert caught.value.variable == variable
    assert f"set {variable} to a free port" in str(caught.value)
    assert built == []


def test_the_process_says_a_bad_setting_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(spec_of(), {"ORDERMESH_PAYMENTS_GRPC_PORT": "grpc"}) == 1
    err = capsys.readouterr().err
    assert err.startswith("payments: ORDERMESH_PAYMENTS_GRPC_PORT='grpc': ") and err.count("\n") == 1


def test_the_process_says_an_unreachable_database_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "ORDERMESH_PAYMENTS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        "ORDERMESH_PAYMENTS_HTTP_PORT": "0",
        "ORDERMESH_PAYMENTS_GRPC_PORT": "0",
        "ORDERMESH_BROKER_URL": "memory://",
        "ORDERMESH_DATA_DIR": str(tmp_path),
    }

    async def build(rt: Runtime) -> None:
        await rt.database()

    assert main(spec_of(build), env) == 1
    err = capsys.readouterr().err
    assert err.startswith("payments: cannot connect to PostgreSQL at postgresql://") and err.count("\n") == 1


async def test_background_loops_run_until_shutdown_and_the_outbox_publishes(tmp_path: Path) -> None:
    ticks: list[str] = []

    async def loop(stop: asyncio.Event) -> None:
        ticks.append("started")
        await stop.wait()
        ticks.append("stopped")

    async def build(rt: Runtime) -> None:
        rt.background("ticker", loop)
        await rt.outbox()

    async with running(spec_of(build), settings(tmp_path)) as rt:
        broker = await rt.broker()
        got = Collector()
        await broker.subscribe("kit.test", "payments", ["payment.#"], got)
        outbox = await rt.outbox()
        async with (await rt.database()).transaction() as tx:
            await outbox.add(tx, "payments", [Message.json("payment.processed", {"order_id": "o-1"})])
        outbox.wake()
        [delivery] = await got.wait_for(1)
        assert delivery.message.routing_key == "payment.processed"
        assert ticks == ["started"]
    assert ticks == ["started", "stopped"]


async def test_a_grpc_service_is_served_with_health_and_its_database_in_its_own_schema(
    pg_url: str, tmp_path: Path
) -> None:
    # The order service on PostgreSQL through ORDERMESH_DATABASE_URL: its own schema of it.
    s = Settings(data_dir=tmp_path, broker_url="memory://", database_url=pg_url)
    async with running(ORDERS_SPEC, s) as rt:
        async with grpc.aio.insecure_channel(rt.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=ORDERS), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        db = await rt.database()
        row = await db.fetchrow("SELECT current_schema()")
        assert row is not None and str(row[0]).endswith("_orders")


async def test_production_mode_keeps_nothing_local(pg_url: str, tmp_path: Path) -> None:
    """With ORDERMESH_DATABASE_URL on PostgreSQL, the notification inbox is there too, in the
    service's own schema, and nothing is written to the data dir."""
    from ordermesh.services.notifications.spec import SPEC as NOTIFICATIONS

    s = Settings(data_dir=tmp_path / "data", broker_url="memory://", database_url=pg_url)
    async with running(NOTIFICATIONS, s) as rt:
        db = await rt.database()
        row = await db.fetchrow(
            "SELECT table_schema FROM information_schema.tables WHERE table_name LIKE 'inbox%' "
            "AND table_schema = current_schema()"
        )
        assert row is not None and str(row[0]).endswith("_notifications")
    assert not (tmp_path / "data").exists()


@pytest.mark.rabbitmq
def test_a_refused_broker_login_is_one_line_about_the_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_rabbitmq()
    assert "guest:guest@" in AMQP_URL
    env = {
        "ORDERMESH_BROKER_URL": AMQP_URL.replace("guest:guest@", "guest:wrong@"),
        "ORDERMESH_PAYMENTS_HTTP_PORT": "0",
        "ORDERMESH_PAYMENTS_GRPC_PORT": "0",
        "ORDERMESH_DATA_DIR": str(tmp_path),
    }

    async def build(rt: Runtime) -> None:
        await rt.broker()

    assert main(spec_of(build), env) == 1
    err = capsys.readouterr().err
    assert err.startswith("payments: RabbitMQ at amqp://guest:***@") and err.count("\n") == 1, err
    assert "refused the login" in err and "check the user and password" in err
    assert "rabbitmq-server" not in err  # the server is running: starting one would not help


@pytest.mark.rabbitmq
async def test_a_broker_prefix_is_a_dotted_namespace() -> None:
    require_rabbitmq()
    from ordermesh.messaging import open_broker

    broker = await open_broker(f"{AMQP_URL}?prefix=dev")
    try:
        assert broker.prefix == "dev."  # type: ignore[attr-defined]  # dev.orders, not devorders
    finally:
        await broker.close()

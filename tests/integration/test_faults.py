"""Fault injection through real sockets: services run by the kit in the test's loop, faults set
through their admin routes (and the CLI), called by the real clients; bus faults on the embedded
broker's SQLite file and through the kit's broker."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from ordermesh import catalog
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from ordermesh.errors import InfrastructureError
from ordermesh.kit import Runtime, ServiceSpec, faults_cli
from ordermesh.kit.testing import running
from ordermesh.messaging import open_broker
from ordermesh.messaging.embedded import EmbeddedBroker
from ordermesh.messaging.faults import with_faults
from ordermesh.messaging.port import Message, RetryPolicy
from ordermesh.payments.v1 import payments_pb2 as pb
from ordermesh.payments.v1 import payments_pb2_grpc as pb_grpc
from ordermesh.resilience.faults import REDELIVERY_PAUSE, FaultPlan, Faults, QueueFaults
from tests.helpers import Collector, dead_letters, eventually, free_port, within

PAYMENTS = catalog.spec("payments")
SHIPPING = catalog.spec("shipping")


def settings(tmp_path: Path, **over: Any) -> Settings:
    # Explicit, so that no ORDERMESH_* of the environment (a PostgreSQL URL…) decides the guard.
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": "",
        "broker_url": "memory://",
        "faults": "enabled",
        "write_rate": 0,
    }
    return Settings(**(values | over))


class Admin:
    """The admin routes of one running service, with a service token (or ``token``)."""

    def __init__(self, http: aiohttp.ClientSession, rt: Runtime, token: str | None = None) -> None:
        self.http, self.url = http, rt.http_url + "/admin/faults"
        self.headers = {"Authorization": f"Bearer {token or rt.tokens.issue_service('cli')}"}

    async def call(self, method: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.request(method, self.url, data=data, headers=self.headers | headers) as r:
            return r.status, await r.json(content_type=None)

    async def set(self, plan: dict[str, Any]) -> dict[str, Any]:
        status, doc = await self.call("PUT", plan)
        assert status == 200, doc
        return dict(doc)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def rpc_error(exc: BaseException) -> grpc.aio.AioRpcError:
    """The gRPC error behind a client's error."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, grpc.aio.AioRpcError):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no gRPC error behind {exc!r}"
    return seen


async def test_payments_erroring_fails_real_client_calls_until_cleared(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running(PAYMENTS, settings(tmp_path)) as rt:
        admin = Admin(http, rt)
        doc = await admin.set({"link": {"error_rate": 1}})
        assert doc["service"] == "payments" and doc["link"]["error_rate"] == 1 and doc["allowed"]
        token = rt.tokens.issue_service("orders")
        async with PaymentsClient(rt.grpc_target, token, timeout=2.0, retries=0) as client:
            with pytest.raises(InfrastructureError, match="injected fault") as caught:
                await client.process_payment("o-1", 1000, "EUR")
            assert rpc_error(caught.value).code() == grpc.StatusCode.UNAVAILABLE
            # health, readiness and metrics are never faulted; the plan is in the metrics
            async with grpc.aio.insecure_channel(rt.grpc_target) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            async with http.get(rt.http_url + "/readyz") as ready:
                assert ready.status == 200
            async with http.get(rt.http_url + "/metrics") as metrics:
                text = await metrics.text()
            assert "ordermesh_fault_error_rate 1.0" in text
            assert 'ordermesh_grpc_calls_total{code="UNAVAILABLE",method="/ordermesh.payments' in text

            status, cleared = await admin.call("DELETE")
            assert status == 200 and cleared["link"]["error_rate"] == 0
            assert (await client.process_payment("o-1", 1000, "EUR")).succeeded


async def test_payments_slow_hanging_reset_and_blackholed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        running(PAYMENTS, settings(tmp_path)) as rt,
        grpc.aio.insecure_channel(rt.grpc_target) as channel,
    ):
        admin = Admin(http, rt)
        stub = pb_grpc.PaymentServiceStub(channel)
        auth = (("authorization", f"Bearer {rt.tokens.issue_service('orders')}"),)

        async def charge(order_id: str, timeout: float) -> tuple[float, grpc.StatusCode]:
            start = time.monotonic()
            try:
                request = pb.ProcessPaymentRequest(order_id=order_id, amount=100, currency="EUR")
                await stub.ProcessPayment(request, timeout=timeout, metadata=auth)
            except grpc.aio.AioRpcError as exc:
                return time.monotonic() - start, exc.code()
            return time.monotonic() - start, grpc.StatusCode.OK

        await admin.set({"link": {"delay_ms": 300}})
        took, code = await charge("o-slow", 5.0)
        assert code == grpc.StatusCode.OK and took >= 0.3

        await admin.set({"link": {"hang": True}})
        took, code = await charge("o-hang", 0.5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 0.45 <= took < 3

        await admin.set({"link": {"blackhole": True}})
        took, code = await charge("o-hole", 0.4)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 0.35 <= took < 3

        await admin.set({"link": {"reset": True}})
        try:
            await stub.ProcessPayment(
                pb.ProcessPaymentRequest(order_id="o-reset", amount=100, currency="EUR"),
                timeout=2,
                metadata=auth,
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and "connection reset (injected" in (
                exc.details() or ""
            )
        else:
            pytest.fail("a reset call was answered")


async def test_shipping_reset_drops_the_connection(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(SHIPPING, settings(tmp_path)) as rt:
        admin = Admin(http, rt)
        url = rt.http_url + "/api/shipments/o-1"
        auth = {"Authorization": f"Bearer {rt.tokens.issue_service('orders')}"}
        async with http.get(url, headers=auth) as before:
            assert before.status == 404

        await admin.set({"link": {"reset": True}})
        with pytest.raises(aiohttp.ClientConnectionError):  # no answer at all: not a 5xx
            async with http.get(url, headers=auth) as answer:
                pytest.fail(f"answered {answer.status}")
        async with http.get(rt.http_url + "/livez") as live:
            assert live.status == 200

        await admin.set({"link": {"error_rate": 1}})
        async with http.get(url, headers=auth) as failed:
            assert failed.status == 503 and failed.headers["Retry-After"] == "1"
            assert "injected fault" in (await failed.json(content_type=None))["detail"]

        await admin.set({"link": {"hang": True}})
        start = time.monotonic()
        async with http.get(url, headers=auth | {"X-Ordermesh-Deadline-Ms": "300"}) as hung:
            assert hung.status == 504 and time.monotonic() - start >= 0.3

        await admin.set({"link": {"blackhole": True}})
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(url, headers=auth, timeout=aiohttp.ClientTimeout(total=0.3)) as answer:
                pytest.fail(f"answered {answer.status}")
        assert time.monotonic() - start >= 0.3

        await admin.call("DELETE")
        async with http.get(url, headers=auth) as after:
            assert after.status == 404


async def test_the_admin_surface_takes_service_tokens_and_precise_plans(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running(SHIPPING, settings(tmp_path)) as rt:
        user = Admin(http, rt, rt.tokens.issue("alice"))
        for method in ("GET", "PUT", "DELETE"):
            status, doc = await user.call(method, {"link": {"error_rate": 1}})
            assert status == 403 and "service tokens only" in doc["detail"]
        async with http.get(rt.http_url + "/admin/faults") as anonymous:
            assert anonymous.status == 401

        admin = Admin(http, rt)
        status, doc = await admin.call("PUT", b"{not json")
        assert status == 422 and "JSON" in doc["detail"]
        status, doc = await admin.call("PUT", {"link": {"error_rate": 2}})
        assert status == 422 and doc["violations"] == [
            {"field": "link.error_rate", "description": "out of range 0..1"}
        ]
        status, doc = await admin.call("PUT", {"queues": {"shipping.stock_reserved": {"drop": 1}}})
        assert status == 422 and "shipping consumes no queue" in doc["detail"]  # orchestrated: none
        status, doc = await admin.call("GET")
        assert status == 200 and doc["link"]["error_rate"] == 0
        async with http.get(rt.http_url + "/openapi.json") as api:
            assert "/admin/faults" not in (await api.json())["paths"]


async def test_faults_are_refused_where_not_allowed(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(SHIPPING, settings(tmp_path, faults="disabled")) as rt:
        admin = Admin(http, rt)
        status, doc = await admin.call("PUT", {"link": {"error_rate": 1}})
        assert status == 403 and "ORDERMESH_FAULTS=enabled" in doc["detail"]
        status, doc = await admin.call("GET")
        assert status == 200 and doc["allowed"] is False and doc["link"]["error_rate"] == 0
        assert (await admin.call("DELETE"))[0] == 200


def consuming(queue: str, handler: Collector) -> ServiceSpec:
    """A service that consumes ``queue`` through the kit's broker."""

    async def build(rt: Runtime) -> None:
        broker = await rt.broker()
        await broker.declare_exchange("orders")
        sub = await broker.subscribe(queue, "orders", ["order.*"], handler)
        rt.stack.push_async_callback(sub.stop)

    return ServiceSpec("notifications", "consumer", build, "notifications_http_port")


async def test_the_kits_broker_applies_queue_faults(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    handler = Collector()
    async with running(consuming("q", handler), settings(tmp_path)) as rt:
        admin = Admin(http, rt)
        status, doc = await admin.call("PUT", {"queues": {"elsewhere": {"drop": 1}}})
        assert status == 422 and "(it consumes: q)" in doc["detail"]
        doc = await admin.set({"queues": {"q": {"duplicate": 1}}})
        assert doc["consumes"] == ["q"] and doc["queues"]["q"]["duplicate"] == 1
        async with http.get(rt.http_url + "/metrics") as metrics:
            assert 'ordermesh_fault_queue_rate{fault="duplicate",queue="q"} 1.0' in await metrics.text()
        broker = await rt.broker()
        await broker.publish("orders", [Message.json("order.created", {"id": "o-1"})])
        first, second = await handler.wait_for(2)
        assert first.message.message_id == second.message.message_id and second.redelivered


class Scripted(random.Random):
    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self.values = list(values)
        self.decided = asyncio.Event()

    def random(self) -> float:
        self.decided.set()
        return self.values.pop(0)


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    broker = await open_broker(f"sqlite:///{tmp_path}/bus.db")
    assert isinstance(broker, EmbeddedBroker)
    yield broker
    await broker.close()


async def subscribe(broker: Any, handler: Collector) -> None:
    retry = RetryPolicy(max_attempts=3, initial=0.05)
    await broker.subscribe("q", "orders", ["order.*"], handler, prefetch=4, retry=retry)


async def test_embedded_poison_is_dead_lettered_with_the_reason(embedded: EmbeddedBroker) -> None:
    faults, handler = Faults("notifications"), Collector(decode=True)
    broker = with_faults(embedded, faults)
    await subscribe(broker, handler)
    faults.set(FaultPlan(queues={"q": QueueFaults(poison=1)}))
    message = Message.json("order.created", {"id": "o-1"})
    await broker.publish("orders", [message])

    [letter] = await dead_letters(broker, "q", 1)
    assert letter.id == message.message_id and letter.attempts == 1  # at once, no retries
    assert "not JSON" in letter.error and "poisoned by an injected fault" in letter.error
    assert letter.message.body == message.body and handler.got == []
    faults.clear()
    await broker.replay("q", message.message_id)  # the original body: it is handled now
    [handled] = await handler.wait_for(1)
    assert handled.message.message_id == message.message_id


async def test_embedded_duplicate_hands_the_message_twice(embedded: EmbeddedBroker) -> None:
    faults, handler = Faults("notifications"), Collector()
    broker = with_faults(embedded, faults)
    await subscribe(broker, handler)
    faults.set(FaultPlan(queues={"q": QueueFaults(duplicate=1)}))
    await broker.publish("orders", [Message.json("order.created", {"id": "o-1"})])
    first, second = await handler.wait_for(2)
    assert first.message.message_id == second.message.message_id
    assert (first.redelivered, second.redelivered) == (False, True)


async def test_embedded_drop_leaves_it_unacked_and_it_comes_again(embedded: EmbeddedBroker) -> None:
    rng = Scripted([0.1, 0.9])  # dropped once, then kept
    faults, handler = Faults("notifications", rng=rng), Collector()
    broker = with_faults(embedded, faults)
    await subscribe(broker, handler)
    faults.set(FaultPlan(queues={"q": QueueFaults(drop=0.5)}))
    start = time.monotonic()
    await broker.publish("orders", [Message.json("order.created", {"id": "o-1"})])
    await within(rng.decided.wait())
    row = await embedded.db.fetchrow("SELECT count(*) FROM mq_messages WHERE queue = 'q'")
    assert row is not None and row[0] == 1  # dropped: not handled, not acknowledged
    assert handler.got == []
    [delivery] = await handler.wait_for(1)
    assert delivery.redelivered and time.monotonic() - start >= REDELIVERY_PAUSE

    async def acked() -> bool:
        row = await embedded.db.fetchrow("SELECT count(*) FROM mq_messages WHERE queue = 'q'")
        return row is not None and row[0] == 0

    await eventually(acked, interval=0.02)  # another task's SQLite writes: polled


def port_of(rt: Runtime) -> str:
    return str(urlsplit(rt.http_url).port)


async def test_the_cli_sets_shows_and_clears(tmp_path: Path) -> None:
    runner = CliRunner()
    async with (
        running(PAYMENTS, settings(tmp_path / "p")) as payments,
        running(SHIPPING, settings(tmp_path / "s", faults="disabled")) as shipping,
    ):
        env = {
            "ORDERMESH_HTTP_HOST": "127.0.0.1",
            "ORDERMESH_PAYMENTS_HTTP_PORT": port_of(payments),
            "ORDERMESH_SHIPPING_HTTP_PORT": port_of(shipping),
            # nothing listens there: orders, inventory and notifications are not running
            "ORDERMESH_HTTP_PORT": str(free_port()),
            "ORDERMESH_INVENTORY_HTTP_PORT": str(free_port()),
            "ORDERMESH_NOTIFICATIONS_HTTP_PORT": str(free_port()),
        }

        async def cli(*args: str) -> Any:
            return await asyncio.to_thread(runner.invoke, faults_cli.app, list(args), env=env)

        done = await cli("set", "payments", "--error-rate", "1", "--delay", "50")
        assert done.exit_code == 0, done.output
        assert "payments: faults now error 100%, delay 50 ms" in done.output
        assert payments.app.state.faults.link is not None

        shown = await cli("show", "--json")
        assert shown.exit_code == 0, shown.output
        rows = {row["service"]: row for row in json.loads(shown.stdout)}
        assert rows["payments"]["link"] | {"reachable": rows["payments"]["reachable"]} == {
            "error_rate": 1.0,
            "delay_ms": 50.0,
            "hang": False,
            "reset": False,
            "blackhole": False,
            "reachable": True,
        }
        assert rows["shipping"]["allowed"] is False
        assert [name for name, row in rows.items() if not row["reachable"]] == [
            "orders",
            "inventory",
            "notifications",
        ]
        table = await cli("show")
        assert "unreachable" in table.output and "error 100%, delay 50 ms" in table.output

        refused = await cli("set", "shipping", "--reset")
        assert refused.exit_code == 2 and "ORDERMESH_FAULTS=enabled" in refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
        bad = await cli("set", "payments", "--hang", "--error-rate", "0.5")
        assert bad.exit_code == 2 and "cannot go together" in bad.output
        no_queue = await cli("set", "payments", "--queue", "q", "--drop", "1")  # the service says so
        assert (
            no_queue.exit_code == 2
            and "payments consumes no queue 'q' (it consumes: none)" in no_queue.output
        )

        cleared = await cli("clear")
        assert cleared.exit_code == 0, cleared.output
        assert "payments: faults cleared" in cleared.output and "orders: not running" in cleared.output
        assert payments.app.state.faults.link is None
        gone = await cli("clear", "orders")
        assert gone.exit_code == 1 and "orders is not reachable" in gone.output

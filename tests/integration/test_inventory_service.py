"""The inventory service as the kit runs it, through its real gRPC and HTTP sockets: the client,
auth, error statuses, the seeded catalog, messages reaching the broker, and client retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped, unused-ignore]

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient, Item, StockLevel
from ordermesh.config import Settings
from ordermesh.contracts import inventory as contract
from ordermesh.errors import (
    DomainError,
    InfrastructureError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)
from ordermesh.inventory.v1 import inventory_pb2 as pb
from ordermesh.inventory.v1 import inventory_pb2_grpc as pb_grpc
from ordermesh.kit import Runtime, started
from ordermesh.kit.testing import running
from ordermesh.resilience import CircuitOpen, Guard, Policy, RetryPolicy
from ordermesh.services.inventory.grpc_api import SERVICE_NAME
from ordermesh.services.inventory.spec import SPEC
from tests.helpers import Collector, free_port


@dataclass
class Served:
    rt: Runtime
    client: InventoryClient  # with a service token


def settings(sql_url: str, **ports: int) -> Settings:
    return Settings(inventory_database_url=sql_url, broker_url="memory://").model_copy(update=ports)


@pytest.fixture
async def served(sql_url: str) -> AsyncIterator[Served]:
    async with running(SPEC, settings(sql_url)) as rt:
        client = InventoryClient(rt.grpc_target, rt.tokens.issue_service("orders"), timeout=5)
        yield Served(rt, client)
        await client.close()


async def test_the_demo_catalog_is_stocked_on_first_start_only(sql_url: str) -> None:
    async with (
        running(SPEC, settings(sql_url)) as rt,
        InventoryClient(rt.grpc_target, rt.tokens.issue_service("ops")) as client,
    ):
        assert await client.stock() == [StockLevel(f"SKU-{n}", 1000, 0, 0) for n in range(1, 10)]
        await client.reserve("o-1", [("SKU-1", 10)])
    async with (
        running(SPEC, settings(sql_url)) as rt,
        InventoryClient(rt.grpc_target, rt.tokens.issue_service("ops")) as client,
    ):
        assert (await client.stock(["SKU-1"])) == [StockLevel("SKU-1", 990, 10, 0)]


async def test_reserve_release_commit_and_stock_over_grpc(served: Served) -> None:
    inventory = served.client
    held = await inventory.reserve("o-1", [Item("SKU-2", 3), ("SKU-1", 2), ("SKU-1", 1)])
    assert held.reserved and held.order_id == "o-1" and held.reservation_id.startswith("rsv-")
    assert held.items == (Item("SKU-1", 3), Item("SKU-2", 3))
    assert await inventory.reserve("o-1", [("SKU-1", 3), ("SKU-2", 3)]) == held  # a retry
    assert await inventory.stock(["SKU-2", "SKU-1"]) == [
        StockLevel("SKU-1", 997, 3, 0),
        StockLevel("SKU-2", 997, 3, 0),
    ]
    shipped = await inventory.commit("o-1")
    assert shipped.status == "committed"
    assert await inventory.stock(["SKU-1"]) == [StockLevel("SKU-1", 997, 0, 3)]

    short = await inventory.reserve("o-2", [("SKU-3", 5), ("SKU-4", 1001), ("GHOST", 1)])
    assert short.status == "rejected" and short.short_skus == ("GHOST", "SKU-4")
    assert "SKU-4 (1001 asked, 1000 available)" in short.reason

    cancelled = await inventory.release("o-3", "payment failed")  # before its Reserve
    assert cancelled.status == "released" and cancelled.items == ()
    late = await inventory.reserve("o-3", [("SKU-5", 1)])
    assert late.status == "rejected" and late.reason == "released before reserve"


async def test_rule_violations_have_their_statuses(served: Served) -> None:
    inventory = served.client
    await inventory.reserve("o-1", [("SKU-1", 1)])
    with pytest.raises(DomainError, match="other items"):
        await inventory.reserve("o-1", [("SKU-1", 2)])
    await inventory.commit("o-1")
    with pytest.raises(DomainError, match="committed"):
        await inventory.release("o-1", "too late")
    with pytest.raises(NotFound):
        await inventory.commit("o-never")
    with pytest.raises(NotFound, match="NOPE"):
        await inventory.stock(["SKU-1", "NOPE"])


async def test_malformed_input_is_invalid_argument_with_field_violations(served: Served) -> None:
    inventory = served.client
    with pytest.raises(ValidationError) as invalid:
        await inventory.reserve("", [("SKU-1", 0), ("bad sku", 1)])
    fields = {v.field for v in invalid.value.violations}
    assert fields == {"order_id", "items[0].quantity", "items[1].sku"}
    with pytest.raises(ValidationError) as invalid:
        await inventory.reserve("o-1", [])
    assert {v.field for v in invalid.value.violations} == {"items"}
    with pytest.raises(ValidationError):
        await inventory.release("")
    with pytest.raises(ValidationError):
        await inventory.commit("")
    # The status code itself, for callers that do not use our client.
    async with grpc.aio.insecure_channel(served.rt.grpc_target) as channel:
        token = served.rt.tokens.issue_service("orders")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pb_grpc.InventoryServiceStub(channel).Reserve(
                pb.ReserveRequest(order_id="o-1", items=[pb.Item(sku="SKU-1", quantity=-5)]),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=5,
            )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_services_may_call(served: Served) -> None:
    target, tokens = served.rt.grpc_target, served.rt.tokens
    async with InventoryClient(target, tokens.issue("alice")) as user:
        for call in (
            user.reserve("o-1", [("SKU-1", 1)]),
            user.release("o-1"),
            user.commit("o-1"),
            user.stock(),
        ):
            with pytest.raises(PermissionDenied):
                await call
    async with InventoryClient(target, None) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.stock()
    assert (await served.client.stock(["SKU-1"]))[0].reserved == 0  # nothing was reserved


async def test_messages_reach_the_inventory_exchange(served: Served) -> None:
    got = Collector()
    broker = await served.rt.broker()
    await broker.subscribe("test.stock", contract.EXCHANGE, ["stock.#"], got)
    await served.client.reserve("o-1", [("SKU-1", 2)])
    await served.client.release("o-1", "cancelled")
    await served.client.reserve("o-2", [("SKU-1", 5000)])
    await served.client.reserve("o-3", [("SKU-1", 1)])
    await served.client.commit("o-3")
    deliveries = await got.wait_for(5)
    seen = [(d.message.routing_key, d.message.correlation_id) for d in deliveries]
    assert seen == [
        (contract.STOCK_RESERVED, "o-1"),
        (contract.STOCK_RELEASED, "o-1"),
        (contract.STOCK_RESERVATION_FAILED, "o-2"),
        (contract.STOCK_RESERVED, "o-3"),
        (contract.STOCK_COMMITTED, "o-3"),
    ]
    for d in deliveries:
        assert d.message.message_id == contract.message_id(
            d.message.routing_key, d.message.correlation_id or ""
        )
        contract.BODIES[d.message.routing_key].model_validate(d.message.payload())


async def test_fifty_concurrent_reserves_over_grpc_never_oversell(served: Served) -> None:
    inventory = served.client
    results = await asyncio.gather(*(inventory.reserve(f"o-{n}", [("SKU-9", 40)]) for n in range(50)))
    assert sum(r.reserved for r in results) == 25  # 1,000 units, 40 each
    assert await inventory.stock(["SKU-9"]) == [StockLevel("SKU-9", 0, 1000, 0)]


async def test_health_over_http_and_grpc(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/livez", "/readyz"):
            async with http.get(served.rt.http_url + path) as response:
                assert response.status == 200, path
    async with grpc.aio.insecure_channel(served.rt.grpc_target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_client_retries_until_the_service_is_up_within_its_deadline(sql_url: str) -> None:
    port = free_port()
    config = settings(sql_url, inventory_grpc_port=port, inventory_http_port=0)
    token = Tokens(config).issue_service("orders")
    # Patient enough for a service that is starting: its breaker opens only after 50 failures
    # (with the default 5, the retries would open it and the call would fail fast; see below).
    patient = Guard("inventory", Policy(timeout=8, retry=RetryPolicy(attempts=1000), breaker_failures=50))
    async with InventoryClient(f"127.0.0.1:{port}", token, timeout=8, guard=patient) as client:
        call = asyncio.create_task(client.reserve("o-1", [("SKU-1", 1)]))
        await asyncio.sleep(0.5)  # nothing listens yet: the first attempts are UNAVAILABLE
        assert not call.done()
        async with started(SPEC, config):
            assert (await call).reserved
    async with InventoryClient(f"127.0.0.1:{port}", token, timeout=0.5) as client:
        with pytest.raises(InfrastructureError):  # still down when the deadline comes
            await client.stock()
    async with InventoryClient(f"127.0.0.1:{port}", token, timeout=5) as client:
        with pytest.raises(InfrastructureError):  # five failures in a row open the breaker...
            await client.stock()
        assert client.guard.breaker.current_state() == "open"
        with pytest.raises(CircuitOpen):  # ...and the next call fails at once, unsent
            await client.stock()

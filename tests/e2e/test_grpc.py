"""gRPC against a real `ordermesh up` process: parity with REST, auth, errors, reflection, and a
stream that survives kill -9."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ordermesh.client import OrdermeshClient, OrdersGrpcClient, SyncOrdersGrpcClient
from ordermesh.errors import NotFound, PermissionDenied, Unauthenticated, ValidationError
from ordermesh.orders.v1.orders_pb2 import GetUserOrdersRequest, StreamRequest
from ordermesh.orders.v1.orders_pb2_grpc import OrderServiceStub
from tests.helpers import cli, eventually, eventually_sync, free_port, start_up

ITEMS = [{"sku": "SKU-1", "quantity": 2, "unit_price": 1250}]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    proc, url, env = start_up(tmp_path)
    yield url, f"127.0.0.1:{env['ORDERMESH_GRPC_PORT']}", env
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def settle(rest: OrdermeshClient, order_id: str, timeout: float = 30) -> dict[str, Any]:
    """The order once its saga has shipped or cancelled it (``ordermesh up`` runs the saga)."""

    def ended() -> dict[str, Any] | None:
        order = rest.get_order(order_id)
        return order if order["status"] in ("shipped", "cancelled") else None

    return eventually_sync(ended, timeout, what=f"order {order_id} shipped or cancelled")


def token_for(env: dict[str, str], user: str) -> str:
    return cli(env, "token", user).strip().splitlines()[-1]


async def test_orders_created_over_rest_read_over_grpc_field_for_field(
    server: tuple[str, str, dict[str, str]],
) -> None:
    url, target, env = server
    token = token_for(env, "alice")
    with OrdermeshClient(url, token=token) as rest:
        created = [rest.create_order("alice@example.com", "EUR", ITEMS) for _ in range(3)]
        settled = [settle(rest, order["id"]) for order in created]  # each saga has run its course
        rest_list = rest.get_user_orders("alice")
        rest_history = rest.get_order_events(created[0]["id"])

    async with OrdersGrpcClient(target, token) as client:
        assert await client.get_user_orders("alice") == rest_list
        assert await client.get_order(created[0]["id"]) == settled[0]
        assert await client.get_order(created[0]["id"], version=1) == created[0]
        assert await client.get_order_history(created[0]["id"]) == rest_history
        made = await client.create_order("alice@example.com", "USD", ITEMS, idempotency_key="g-1")
        assert await client.create_order("alice@example.com", "USD", ITEMS, idempotency_key="g-1") == made

    # The seed's snippet, with the token as metadata.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = OrderServiceStub(channel)
        response = await stub.GetUserOrders(
            GetUserOrdersRequest(user_id="alice"), metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
    assert [o.id for o in response.orders] == [made["id"]] + [o["id"] for o in rest_list]

    with SyncOrdersGrpcClient(target, token) as sync_client:
        assert sync_client.get_order(made["id"], version=1) == made


async def test_auth_ownership_and_bad_input(server: tuple[str, str, dict[str, str]]) -> None:
    _, target, env = server
    alice, bob = token_for(env, "alice"), token_for(env, "bob")
    async with OrdersGrpcClient(target, alice) as client:
        order = await client.create_order("alice@example.com", "EUR", ITEMS)
        with pytest.raises(ValidationError) as invalid:
            await client.create_order("not-an-email", "EUR", [{"sku": "A", "quantity": 0, "unit_price": 1}])
        fields = {v.field for v in invalid.value.violations}
        assert {"user_email", "items[0].quantity"} <= fields
        with pytest.raises(NotFound):
            await client.get_order("no-such-order")
    async with OrdersGrpcClient(target, bob) as client:
        with pytest.raises(PermissionDenied):
            await client.get_user_orders("alice")
        with pytest.raises(NotFound):
            await client.get_order(order["id"])
        with pytest.raises(PermissionDenied):
            await anext(aiter(client.watch(user_id="alice", reconnect=False)))
        with pytest.raises(NotFound):
            await anext(aiter(client.watch(order_id=order["id"], reconnect=False)))
    async with OrdersGrpcClient(target) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get_user_orders("alice")


async def test_health_and_a_generic_client_through_reflection(
    server: tuple[str, str, dict[str, str]],
) -> None:
    _, target, env = server
    token = token_for(env, "alice")
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="ordermesh.orders.v1.OrderService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    # Knows only the service name: everything else comes from the server's reflection.
    sync_channel = grpc.insecure_channel(target)
    try:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(sync_channel))
        service = pool.FindServiceByName("ordermesh.orders.v1.OrderService")
        method = service.methods_by_name["GetUserOrders"]
        request_cls: Any = message_factory.GetMessageClass(method.input_type)
        response_cls: Any = message_factory.GetMessageClass(method.output_type)
        call = sync_channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = call(
            request_cls(user_id="alice"), metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
        assert list(response.orders) == []
    finally:
        sync_channel.close()


async def test_a_stream_resumes_after_kill_9_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    proc, url, env = start_up(tmp_path, port, grpc_port)
    token = token_for(env, "alice")
    target = f"127.0.0.1:{grpc_port}"
    seen: list[dict[str, Any]] = []
    want = 6

    def created() -> int:  # the saga adds its steps' updates in between: count the orders
        return sum(u["event_type"] == "OrderCreated" for u in seen)

    async def watch() -> None:
        async with OrdersGrpcClient(target, token) as client:
            async for update in client.watch(user_id="alice", max_backoff=0.5):
                seen.append(update)
                if created() == want:
                    return

    watcher = asyncio.create_task(watch())
    try:
        with OrdermeshClient(url, token=token) as rest:
            for _ in range(3):
                rest.create_order("alice@example.com", "EUR", ITEMS)
        await eventually(lambda: created() == 3, 20)
        proc.kill()  # kill -9: no goodbye, the stream just breaks
        proc.wait()
        proc, url, env = start_up(tmp_path, port, grpc_port)
        with OrdermeshClient(url, token=token) as rest:
            for _ in range(3):
                rest.create_order("alice@example.com", "EUR", ITEMS)
        await asyncio.wait_for(watcher, 30)
    finally:
        watcher.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
    positions = [u["position"] for u in seen]
    assert positions == sorted(set(positions)), "no duplicate, in order"
    firsts = [u for u in seen if u["event_type"] == "OrderCreated"]
    assert len(firsts) == want and len({u["order_id"] for u in firsts}) == want
    assert {u["order_id"] for u in seen} == {u["order_id"] for u in firsts}


async def test_clean_shutdown_ends_streams_with_unavailable(tmp_path: Path) -> None:
    proc, _, env = start_up(tmp_path)
    token = token_for(env, "alice")
    target = f"127.0.0.1:{env['ORDERMESH_GRPC_PORT']}"
    async with OrdersGrpcClient(target, token) as client:
        await client.create_order("alice@example.com", "EUR", ITEMS)
        stream = client.stub.StreamOrderUpdates(
            StreamRequest(user_id="alice"), metadata=(("authorization", f"Bearer {token}"),)
        )
        first = await stream.read()  # the history arrives: the stream is open, then idles at the head
        assert not isinstance(first, type(grpc.aio.EOF)) and first.event_type == "OrderCreated"
        proc.send_signal(signal.SIGINT)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await stream.read() is not grpc.aio.EOF:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "resume after position" in (ended.value.details() or "")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out


async def test_a_grpc_call_continues_the_callers_trace_into_the_events(
    server: tuple[str, str, dict[str, str]],
) -> None:
    from ordermesh import tracing
    from ordermesh.eventstore import open_event_store
    from ordermesh.orders.v1.orders_pb2 import CreateOrderRequest, OrderItem

    _, target, env = server
    token = token_for(env, "erin")
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with grpc.aio.insecure_channel(target) as channel:
        order = await OrderServiceStub(channel).CreateOrder(
            CreateOrderRequest(
                user_email="erin@example.com",
                currency="EUR",
                items=[OrderItem(sku="A", quantity=1, unit_price=5)],
            ),
            metadata=(("authorization", f"Bearer {token}"), ("traceparent", caller)),
            timeout=5,
        )
    store = await open_event_store(f"sqlite:///{env['ORDERMESH_DATA_DIR']}/orders.db")  # an absolute tmp path
    try:
        created, *_saga_steps = await store.read_stream(f"order-{order.id}")
    finally:
        await store.close()
    assert tracing.trace_id(created.metadata["traceparent"]) == tracing.trace_id(caller)
    assert created.metadata["traceparent"] == caller  # no SDK in the server: passed through as it came

"""Issue 10, gRPC edge and write limits: message sizes, input validated as REST validates it,
short error echoes, the write rate limit (gRPC and REST) and the stream cap, through the order
service as the kit runs it (real sockets), with an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

from ordermesh.clock import FakeClock
from ordermesh.config import Settings
from ordermesh.errors import RateLimited
from ordermesh.kit.testing import running
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1.orders_pb2_grpc import OrderServiceStub
from ordermesh.ratelimit import WRITE_BURST, WRITE_RATE
from ordermesh.rpc.server import MAX_MESSAGE_BYTES
from ordermesh.rpc.status import error_from_rpc
from ordermesh.services.orders.spec import SPEC
from ordermesh.services.orders.updates import MAX_STREAMS_PER_USER
from tests.helpers import eventually

HUGE = "x" * 1_000_000
ITEM = pb.OrderItem(sku="SKU-1", quantity=1, unit_price=100)
ORDER = {
    "user_email": "a@example.com",
    "currency": "EUR",
    "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": 100}],
}


@dataclass
class Service:
    stub: OrderServiceStub
    http_url: str
    clock: FakeClock
    tokens: Any

    def auth(self, user: str = "alice") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.tokens.issue(user)}"),)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = Settings(data_dir=tmp_path, broker_url="memory://", database_url="memory://")
    clock = FakeClock()
    async with running(SPEC, settings, clock) as rt, grpc.aio.insecure_channel(rt.grpc_target) as channel:
        yield Service(OrderServiceStub(channel), rt.http_url, clock, rt.tokens)


def _details(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = next(v for k, v in exc.trailing_metadata() or () if k == "grpc-status-details-bin")
    return status_pb2.Status.FromString(raw)


def _violations(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    out = []
    for detail in _details(exc).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


async def _fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value


async def test_a_message_over_the_size_limit_is_resource_exhausted(service: Service) -> None:
    big = "x" * (MAX_MESSAGE_BYTES + 1)
    failed = await _fails(service.stub.GetOrder(pb.GetOrderRequest(order_id=big), metadata=service.auth()))
    assert failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("as_of", "field"),
    [
        (Timestamp(seconds=0, nanos=-1), "as_of.nanos"),
        (Timestamp(seconds=0, nanos=1_000_000_000), "as_of.nanos"),
        (Timestamp(seconds=253_402_300_800), "as_of.seconds"),
        (Timestamp(seconds=-62_135_596_801), "as_of.seconds"),
        (Timestamp(seconds=-(2**62)), "as_of.seconds"),
    ],
)
async def test_an_as_of_out_of_range_is_invalid_argument(
    service: Service, as_of: Timestamp, field: str
) -> None:
    request = pb.GetOrderRequest(order_id="some-order", as_of=as_of)
    failed = await _fails(service.stub.GetOrder(request, metadata=service.auth()))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.details()
    assert [f for f, _ in _violations(failed)] == [field]


async def test_the_ends_of_the_timestamp_range_are_valid(service: Service) -> None:
    made = await service.stub.CreateOrder(
        pb.CreateOrderRequest(user_email="a@example.com", currency="EUR", items=[ITEM]),
        metadata=service.auth(),
    )
    for as_of, found in (
        (Timestamp(seconds=-62_135_596_800), False),
        (Timestamp(seconds=253_402_300_799, nanos=999_999_999), True),
    ):
        request = pb.GetOrderRequest(order_id=made.id, as_of=as_of)
        if found:
            assert (await service.stub.GetOrder(request, metadata=service.auth())).id == made.id
        else:
            failed = await _fails(service.stub.GetOrder(request, metadata=service.auth()))
            assert failed.code() == grpc.StatusCode.NOT_FOUND  # it did not exist yet


async def test_a_huge_or_malformed_id_is_invalid_argument_and_not_echoed(service: Service) -> None:
    metadata = service.auth()
    calls = {
        "GetOrder": lambda v: service.stub.GetOrder(pb.GetOrderRequest(order_id=v), metadata=metadata),
        "GetOrderHistory": lambda v: service.stub.GetOrderHistory(
            pb.GetOrderHistoryRequest(order_id=v), metadata=metadata
        ),
        "StreamOrderUpdates(order_id)": lambda v: _first(
            service.stub.StreamOrderUpdates(pb.StreamRequest(order_id=v), metadata=metadata)
        ),
        "StreamOrderUpdates(user_id)": lambda v: _first(
            service.stub.StreamOrderUpdates(pb.StreamRequest(user_id=v), metadata=metadata)
        ),
    }
    for name, call in calls.items():
        for bad in (HUGE, "a\x00b", "x" * 129, "a/b"):
            failed = await _fails(call(bad))
            assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, bad[:10], failed.details())
            assert len(failed.details() or "") < 200, name
            assert all(len(d) < 200 for _, d in _violations(failed)), name
            assert len(_details(failed).SerializeToString()) < 1000, name


async def _first(call: Any) -> Any:
    async for message in call:
        return message
    return None


async def test_a_bad_idempotency_key_or_too_many_items_is_invalid_argument(service: Service) -> None:
    for key in ("k" * 256, "with space", "nul\x00", "é"):
        request = pb.CreateOrderRequest(
            user_email="a@example.com", currency="EUR", items=[ITEM], idempotency_key=key
        )
        failed = await _fails(service.stub.CreateOrder(request, metadata=service.auth()))
        assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in _violations(failed)] == ["idempotency_key"]
    request = pb.CreateOrderRequest(user_email="a@example.com", currency="EUR", items=[ITEM] * 100_000)
    failed = await _fails(service.stub.CreateOrder(request, metadata=service.auth()))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT and len(_violations(failed)) == 1


async def test_errors_quoting_a_huge_input_are_clipped_everywhere(service: Service) -> None:
    # Through the domain (not the edge checks): an email of 1 MB.
    request = pb.CreateOrderRequest(user_email=HUGE, currency="EUR", items=[ITEM])
    failed = await _fails(service.stub.CreateOrder(request, metadata=service.auth()))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT and len(failed.details() or "") < 600
    async with aiohttp.ClientSession() as http:
        # REST: a path of 10 kB comes back in a 404's detail, clipped.
        async with http.get(f"{service.http_url}/{'y' * 10_000}") as response:
            problem = await response.json(content_type=None)
        assert response.status == 404 and len(problem["detail"]) < 200 and "yyyy…" in problem["detail"]


async def test_writes_over_the_rate_are_refused_until_the_clock_moves(service: Service) -> None:
    metadata = service.auth("writer")
    request = pb.CreateOrderRequest(user_email="a@example.com", currency="EUR", items=[ITEM])
    for _ in range(WRITE_BURST):
        await service.stub.CreateOrder(request, metadata=metadata)
    failed = await _fails(service.stub.CreateOrder(request, metadata=metadata))
    assert failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    limited = error_from_rpc(failed)
    assert isinstance(limited, RateLimited) and limited.retry_after == pytest.approx(1 / WRITE_RATE)
    # Someone else is not held back; reads are not limited.
    await service.stub.CreateOrder(request, metadata=service.auth("other"))
    made = await service.stub.CreateOrder(request, metadata=service.auth("other"))
    for _ in range(WRITE_BURST + 5):
        await service.stub.GetOrder(pb.GetOrderRequest(order_id=made.id), metadata=service.auth("other"))
    service.clock.advance(1 / WRITE_RATE)
    await service.stub.CreateOrder(request, metadata=metadata)  # one token back
    assert (await _fails(service.stub.CreateOrder(request, metadata=metadata))).code() == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_rest_writes_over_the_rate_get_429_with_retry_after(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.tokens.issue('rester')}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(WRITE_BURST):
            async with http.post(f"{service.http_url}/api/orders", json=ORDER, headers=headers) as response:
                assert response.status == 201
        async with http.post(f"{service.http_url}/api/orders", json=ORDER, headers=headers) as response:
            problem = await response.json(content_type=None)
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert problem["type"].endswith("/rate-limited")
        # Invalid bodies count too (the limit comes before validation), and reads are not limited.
        async with http.get(f"{service.http_url}/api/users/rester/orders", headers=headers) as response:
            assert response.status == 200
        service.clock.advance(1 / WRITE_RATE)
        async with http.post(f"{service.http_url}/api/orders", json=ORDER, headers=headers) as response:
            assert response.status == 201


async def test_a_user_may_hold_only_so_many_streams_open(service: Service) -> None:
    metadata = service.auth()
    await service.stub.CreateOrder(
        pb.CreateOrderRequest(user_email="a@example.com", currency="EUR", items=[ITEM]), metadata=metadata
    )
    calls = [
        service.stub.StreamOrderUpdates(pb.StreamRequest(user_id="alice"), metadata=metadata)
        for _ in range(MAX_STREAMS_PER_USER)
    ]
    for call in calls:
        assert (await call.read()).order.user_id == "alice"  # open, past the first update
    extra = service.stub.StreamOrderUpdates(pb.StreamRequest(user_id="alice"), metadata=metadata)
    failed = await _fails(extra.read())
    assert failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 16" in (failed.details() or "")
    calls.pop().cancel()

    async def opened() -> bool:
        again = service.stub.StreamOrderUpdates(pb.StreamRequest(user_id="alice"), metadata=metadata)
        calls.append(again)
        await again.read()
        return True

    # The server sees the cancel shortly: a stream's place is given back.
    await eventually(opened, what="a place for a new stream", interval=0.02, ignoring=(grpc.aio.AioRpcError,))
    for call in calls:
        call.cancel()

"""The gRPC server's interceptors, health and reflection, over a real grpc.aio server and channel
on a loopback socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from ordermesh import errors
from ordermesh.auth import Tokens
from ordermesh.config import Settings
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1 import orders_pb2_grpc as pb_grpc
from ordermesh.rpc.context import current_principal, remaining_seconds
from ordermesh.rpc.server import build_server, stop_server
from ordermesh.rpc.status import DOMAIN, error_from_rpc
from tests.helpers import eventually, within

SERVICE = pb.DESCRIPTOR.services_by_name["OrderService"].full_name
DEFAULT_DEADLINE = 0.2

ERRORS: dict[str, tuple[errors.OrdermeshError, grpc.StatusCode, str]] = {
    "validation": (
        errors.ValidationError(
            "2 invalid fields",
            [
                errors.FieldViolation("items[0].sku", "is required"),
                errors.FieldViolation("currency", "unknown"),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_INPUT",
    ),
    "domain": (
        errors.DomainError("order is cancelled"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RULE_VIOLATED",
    ),
    "not-found": (errors.NotFound("no order o-1"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    "conflict": (errors.ConcurrencyConflict("order-o-1", 3, 4), grpc.StatusCode.ABORTED, "CONCURRENT_CHANGE"),
    "unauthenticated": (
        errors.Unauthenticated("token expired"),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    ),
    "forbidden": (errors.PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN"),
    "in-use": (
        errors.IdempotencyKeyInUse("key k in flight"),
        grpc.StatusCode.ABORTED,
        "IDEMPOTENCY_KEY_IN_USE",
    ),
    "reused": (
        errors.IdempotencyKeyReused("key k, other request"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IDEMPOTENCY_KEY_REUSED",
    ),
    "down": (errors.InfrastructureError("database unreachable"), grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
}


class Servicer(pb_grpc.OrderServiceServicer):
    """GetUserOrders: the caller and the time left; StreamOrderUpdates: three updates, then an
    error (or, for order "live", nothing until shutdown); GetOrder: raises what order_id names;
    GetOrderHistory: never answers. CreateOrder stays unimplemented."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def GetUserOrders(self, request: Any, context: Any) -> pb.GetUserOrdersResponse:
        left = remaining_seconds()
        total = -1 if left is None else round(left * 1e6)
        return pb.GetUserOrdersResponse(orders=[pb.Order(user_id=current_principal(), total=total)])

    async def StreamOrderUpdates(
        self, request: pb.StreamRequest, context: Any
    ) -> AsyncIterator[pb.OrderUpdate]:
        left = remaining_seconds()
        for position in (1, 2, 3):
            order = pb.Order(user_id=current_principal(), total=-1 if left is None else round(left * 1e6))
            yield pb.OrderUpdate(position=position, order=order)
        if request.order_id == "live":
            await asyncio.Event().wait()
        raise errors.ConcurrencyConflict("order-o-1", 3, 4)

    async def GetOrder(self, request: pb.GetOrderRequest, context: Any) -> pb.Order:
        if request.order_id == "bug":
            raise RuntimeError("secret internals")
        raise ERRORS[request.order_id][0]

    async def GetOrderHistory(self, request: Any, context: Any) -> pb.GetOrderHistoryResponse:
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


@dataclass
class Served:
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    stub: Any  # OrderServiceAsyncStub
    servicer: Servicer
    registry: CollectorRegistry
    auth: tuple[tuple[str, str], ...]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    tokens = Tokens(Settings())
    servicer, registry = Servicer(), CollectorRegistry()
    server = build_server(
        registrations=[lambda s: pb_grpc.add_OrderServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE],
        tokens=tokens,
        metrics=registry,
        default_deadline=DEFAULT_DEADLINE,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    auth = (("authorization", f"Bearer {tokens.issue('alice')}"),)
    yield Served(server, channel, pb_grpc.OrderServiceStub(channel), servicer, registry, auth)
    await channel.close()
    await server.stop(None)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def details(exc: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """The ErrorInfo (always there) and the BadRequest violations of a failed call."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no rich status details"
    info, violations = None, []
    for detail in status.details:
        unpacked, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(unpacked):
            info = unpacked
        elif detail.Unpack(bad):
            violations += [(v.field, v.description) for v in bad.field_violations]
    assert info is not None and info.domain == DOMAIN
    return info, violations


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def drain(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Every message of a streaming call, and the error that ended it (None for OK)."""
    messages = []
    try:
        async for message in call:
            messages.append(message)
    except grpc.aio.AioRpcError as exc:
        return messages, exc
    return messages, None


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ((), "no credentials"),
        ((("authorization", "Bearer not-a-jwt"),), "invalid token"),
        ((("authorization", "Basic YWxpY2U6cHc="),), "Bearer <token>"),
    ],
)
async def test_a_call_without_a_valid_token_is_unauthenticated(
    served: Served, metadata: tuple[tuple[str, str], ...], says: str
) -> None:
    exc = await failure(served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=metadata))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert says in (exc.details() or "")
    assert details(exc)[0].reason == "UNAUTHENTICATED"


async def test_the_principal_is_the_token_subject_in_unary_and_stream_handlers(served: Served) -> None:
    response = await served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=served.auth)
    assert response.orders[0].user_id == "alice"
    updates, _ = await drain(
        served.stub.StreamOrderUpdates(pb.StreamRequest(user_id="alice"), metadata=served.auth)
    )
    assert [(u.position, u.order.user_id) for u in updates] == [(1, "alice"), (2, "alice"), (3, "alice")]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ERRORS))
async def test_each_ordermesh_error_has_its_code_and_rich_details(served: Served, name: str) -> None:
    error, code, reason = ERRORS[name]
    exc = await failure(served.stub.GetOrder(pb.GetOrderRequest(order_id=name), metadata=served.auth))
    assert (exc.code(), exc.details()) == (code, str(error))
    info, violations = details(exc)
    assert info.reason == reason
    back = error_from_rpc(exc)
    assert (type(back), str(back)) == (type(error), str(error))
    if isinstance(error, errors.ValidationError):
        assert violations == [(v.field, v.description) for v in error.violations]
        assert isinstance(back, errors.ValidationError) and back.violations == error.violations
    if isinstance(error, errors.ConcurrencyConflict):
        assert dict(info.metadata) == {
            "stream_id": "order-o-1",
            "expected_version": "3",
            "actual_version": "4",
        }


async def test_an_error_raised_mid_stream_maps_the_same_way(served: Served) -> None:
    call = served.stub.StreamOrderUpdates(pb.StreamRequest(user_id="alice"), metadata=served.auth)
    updates, exc = await drain(call)
    assert [u.position for u in updates] == [1, 2, 3]
    assert exc is not None and exc.code() == grpc.StatusCode.ABORTED
    assert details(exc)[0].reason == "CONCURRENT_CHANGE"
    assert isinstance(error_from_rpc(exc), errors.ConcurrencyConflict)


async def test_an_unexpected_exception_is_internal_generic_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    exc = await failure(served.stub.GetOrder(pb.GetOrderRequest(order_id="bug"), metadata=served.auth))
    assert (exc.code(), exc.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert details(exc)[0].reason == "INTERNAL"
    bug = [r for r in caplog.records if r.name == "ordermesh.rpc" and r.levelno == logging.ERROR]
    assert bug and bug[0].exc_info and "secret internals" in str(bug[0].exc_info[1])


async def test_an_undecodable_request_is_invalid_argument_not_unknown(served: Served) -> None:
    raw = served.channel.unary_unary(method("GetUserOrders"))
    exc = await failure(raw(b"\xff\xff\xff", metadata=served.auth))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(exc)[1][0][0] == "request"


async def test_a_status_the_handler_chose_stands(served: Served) -> None:
    exc = await failure(served.stub.CreateOrder(pb.CreateOrderRequest(), metadata=served.auth))
    assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(error_from_rpc(exc), errors.InfrastructureError)


# --- deadlines ----------------------------------------------------------------------------------


async def test_a_call_without_a_deadline_gets_the_server_default(served: Served) -> None:
    response = await served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=served.auth)
    assert 0 < response.orders[0].total <= DEFAULT_DEADLINE * 1e6
    loop = asyncio.get_running_loop()
    start = loop.time()
    exc = await failure(served.stub.GetOrderHistory(pb.GetOrderHistoryRequest(), metadata=served.auth))
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "default" in (exc.details() or "")
    # Cut at the default deadline (the handler never answers): not before, and not much after.
    assert DEFAULT_DEADLINE <= loop.time() - start < DEFAULT_DEADLINE + 2
    assert served.servicer.cancelled.is_set()


async def test_the_client_deadline_is_honoured_and_seen_by_the_handler(served: Served) -> None:
    response = await served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=served.auth, timeout=3)
    # grpc-timeout travels rounded up to a coarser unit, so the server may see a few ms more
    assert DEFAULT_DEADLINE * 1e6 < response.orders[0].total <= 3.1e6
    exc = await failure(
        served.stub.GetOrderHistory(pb.GetOrderHistoryRequest(), metadata=served.auth, timeout=0.05)
    )
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await within(served.servicer.cancelled.wait(), what="the handler cancelled")


async def test_streams_have_the_client_deadline_or_none(served: Served) -> None:
    request = pb.StreamRequest(user_id="alice")
    with_deadline, _ = await drain(served.stub.StreamOrderUpdates(request, metadata=served.auth, timeout=3))
    # grpc-timeout travels rounded up to a coarser unit: a few ms above 3 s is the client's 3 s
    assert 0 < with_deadline[0].order.total <= 3.1e6
    without, _ = await drain(served.stub.StreamOrderUpdates(request, metadata=served.auth))
    assert without[0].order.total == -1


# --- health, reflection, shutdown ---------------------------------------------------------------


async def test_health_answers_serving_without_a_token(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for name in ("", SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    exc = await failure(health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert exc.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services_without_a_token(served: Served) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in call for s in r.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_stop_server_reports_not_serving_then_ends_streams_with_unavailable(served: Served) -> None:
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    live = served.stub.StreamOrderUpdates(pb.StreamRequest(order_id="live"), metadata=served.auth)
    assert [(await live.read()).position for _ in range(3)] == [1, 2, 3]
    stopping = asyncio.create_task(stop_server(served.server, grace=0.1))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await live.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- metrics and logging ------------------------------------------------------------------------


async def test_metrics_count_calls_codes_latency_and_streamed_messages(served: Served) -> None:
    def sample(name: str, **labels: str) -> float:
        return served.registry.get_sample_value(name, labels) or 0.0

    await served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=served.auth)
    await failure(served.stub.GetUserOrders(pb.GetUserOrdersRequest()))
    await drain(served.stub.StreamOrderUpdates(pb.StreamRequest(), metadata=served.auth))
    get, stream = method("GetUserOrders"), method("StreamOrderUpdates")
    # Observers record a failed call just after its status goes out: wait for that.
    await eventually(lambda: sample("ordermesh_grpc_calls_total", method=stream, code="ABORTED") == 1)
    assert sample("ordermesh_grpc_calls_total", method=get, code="OK") == 1
    assert sample("ordermesh_grpc_calls_total", method=get, code="UNAUTHENTICATED") == 1
    assert sample("ordermesh_grpc_call_seconds_count", method=get) == 2
    assert sample("ordermesh_grpc_stream_messages_total", method=stream) == 3


async def test_one_log_line_per_call_with_method_code_duration_and_user(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ordermesh.rpc")
    await served.stub.GetUserOrders(pb.GetUserOrdersRequest(), metadata=served.auth)
    await failure(served.stub.GetOrder(pb.GetOrderRequest(order_id="not-found")))

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "ordermesh.rpc" and r.levelno == logging.INFO]

    await eventually(lambda: len(lines()) == 2)  # the failed call's line comes just after its status
    ok, refused = lines()
    assert (ok.rpc_method, ok.rpc_code, ok.rpc_user) == (method("GetUserOrders"), "OK", "alice")  # type: ignore[attr-defined]
    assert (refused.rpc_code, refused.rpc_user) == ("UNAUTHENTICATED", None)  # type: ignore[attr-defined]
    assert ok.rpc_duration_ms >= 0 and "code=OK" in ok.getMessage() and "user=alice" in ok.getMessage()  # type: ignore[attr-defined]

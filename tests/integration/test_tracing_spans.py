"""The server and client spans of one process, with an OpenTelemetry SDK installed before the app,
the gRPC server and the channel are built (as ``kit.telemetry`` does): REST spans named after the
route and tagged with the order, gRPC spans carrying our final status, health probes untraced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ordermesh import tracing
from ordermesh.auth import Tokens
from ordermesh.config import Settings
from ordermesh.errors import NotFound
from ordermesh.rpc.server import build_server
from tests.helpers import Api, captured_spans, named, order_body, running_api

Call = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with captured_spans() as exporter:
        yield exporter


@pytest.fixture
async def api(spans: InMemorySpanExporter, database_url: str) -> AsyncIterator[Api]:
    async with running_api(database_url) as a:  # built with the SDK in place: instrumented
        yield a


async def test_rest_spans_continue_the_caller_and_name_the_route_and_the_order(
    api: Api, spans: InMemorySpanExporter
) -> None:
    async with api.http.post(
        api.url + "/api/orders", json=order_body(), headers={**api.auth("alice"), "traceparent": CALLER}
    ) as r:
        assert r.status == 201
        order_id = (await r.json())["id"]
        answered = r.headers["traceparent"]
    status, _ = await api.call("GET", f"/api/orders/{order_id}")
    assert status == 200
    async with api.http.get(api.url + "/readyz") as r:
        assert r.status == 200
    (created,) = named(spans, "POST")
    (read,) = named(spans, "GET")  # and none for /readyz
    assert created.name == "POST /api/orders" and created.kind is SpanKind.SERVER
    assert created.parent is not None and f"{created.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert answered == f"00-{TRACE}-{created.context.span_id:016x}-01"  # the server's span
    assert dict(created.attributes or {})["ordermesh.order_id"] == order_id
    assert read.name == "GET /api/orders/{order_id}" and read.parent is None  # a trace of its own
    assert dict(read.attributes or {})["ordermesh.order_id"] == order_id
    # The event the request wrote continues the server's span.
    (event,) = await api.system.store.read_stream(f"order-{order_id}")
    assert event.metadata["traceparent"] == answered


def _register(server: grpc.aio.Server) -> None:
    async def ok(request: bytes, context: Any) -> bytes:
        return request

    async def missing(request: bytes, context: Any) -> bytes:
        raise NotFound("order o-9 not found")

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))


async def test_grpc_client_and_server_spans_share_the_trace_and_carry_our_status(
    spans: InMemorySpanExporter,
) -> None:
    tokens = Tokens(Settings())
    server = build_server(registrations=[_register], service_names=["test.Echo"], tokens=tokens)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {tokens.issue('alice')}"),)
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=tracing.grpc_client_interceptors()
        ) as channel:
            ok: Call = channel.unary_unary("/test.Echo/Ok")
            missing: Call = channel.unary_unary("/test.Echo/Missing")
            health: Call = channel.unary_unary("/grpc.health.v1.Health/Check")
            with tracing.span("caller") as caller:
                assert await ok(b"hi", metadata=metadata) == b"hi"
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await missing(b"", metadata=metadata)
                assert refused.value.code() is grpc.StatusCode.NOT_FOUND
            await health(b"")  # the server makes no span for it
    finally:
        await server.stop(None)
    trace_id = caller.get_span_context().trace_id
    servers = {s.name: s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER}
    clients = {s.name: s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT}
    assert set(servers) == {"/test.Echo/Ok", "/test.Echo/Missing"}  # no span for the probe
    assert set(clients) == {*servers, "/grpc.health.v1.Health/Check"}  # the client's own choice
    for name, server_span in servers.items():
        assert server_span.context.trace_id == clients[name].context.trace_id == trace_id
        assert server_span.parent is not None and server_span.parent.span_id == clients[name].context.span_id
    assert servers["/test.Echo/Ok"].status.status_code is not StatusCode.ERROR
    failed = servers["/test.Echo/Missing"]
    assert failed.status.status_code is StatusCode.ERROR and "NOT_FOUND" in (failed.status.description or "")
    assert dict(failed.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]

"""One REST order is one trace across all five services, each its own process (``ordermesh run
NAME``) exporting over OTLP/HTTP to a receiver in this test, for both saga styles.

The receiver decodes what the exporters send (``ExportTraceServiceRequest``), so both are proven:
the export itself and each process's ``service.name``. The order is placed without a
``traceparent``: the order service's REST span is the root, and every hop after it (the saga's
steps and their gRPC and REST calls, the outbox publishes, each consumed message, each SMTP send)
must hang under it. Only spans are polled for (not the REST API, whose reads are traces of their
own), until both mails were sent and the tree is whole.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ordermesh.auth import Tokens
from ordermesh.config import Settings
from tests.helpers import Fleet, free_port, start_service

SERVICES = ("orders", "payments", "inventory", "shipping", "notifications")
TOKENS = Tokens(Settings())


@dataclass(frozen=True)
class Exported:
    service: str
    span: Span

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: _value(kv.value) for kv in self.span.attributes}

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


class Receiver:
    """An OTLP/HTTP trace endpoint (``POST /v1/traces``) keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.requests = 0
        lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    received.requests += 1
                    for batch in request.resource_spans:
                        names = [
                            kv.value.string_value
                            for kv in batch.resource.attributes
                            if kv.key == "service.name"
                        ]
                        for scope in batch.scope_spans:
                            received.spans += [Exported(names[0] if names else "", s) for s in scope.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def trace(self, trace_id: str) -> list[Exported]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def smtp_port() -> Iterator[int]:
    port = free_port()
    controller = Controller(Mailbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def start_all(tmp_path: Path, receiver: Receiver, smtp_port: int, saga: str) -> Fleet:
    fleet = Fleet(tmp_path / "data")
    for name in [k for k in fleet.env if k.startswith("OTEL_")]:
        del fleet.env[name]
    fleet.env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export while the test waits, not every 5 s
            "ORDERMESH_SAGA": saga,
            "ORDERMESH_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "ORDERMESH_WRITE_RATE": "0",
        }
    )
    try:
        for service in ("payments", "inventory", "shipping"):
            fleet.start(service)
        port = fleet.env["ORDERMESH_NOTIFICATIONS_HTTP_PORT"]
        log = fleet.logs / "notifications.log"
        fleet.procs["notifications"] = start_service("notifications", fleet.env, port, log)
        fleet.start("orders")
    except BaseException:
        fleet.stop_all()
        raise
    return fleet


def place_order(fleet: Fleet) -> tuple[str, str]:
    """The order's id and its trace id (the ``traceparent`` of the answer: the server's span)."""
    answer = requests.post(
        f"{fleet.url('orders')}/api/orders",
        json={
            "user_email": "tess@example.com",
            "currency": "EUR",
            "items": [{"sku": "SKU-2", "quantity": 1, "unit_price": 700}],
        },
        headers={"Authorization": f"Bearer {TOKENS.issue('tess')}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    traceparent = answer.headers["traceparent"]
    return str(answer.json()["id"]), traceparent.split("-")[1]


def whole(spans: list[Exported]) -> bool:
    """Every span's parent was received too: one tree, nothing still on its way."""
    ids = {s.span.span_id for s in spans}
    return all(not s.span.parent_span_id or s.span.parent_span_id in ids for s in spans)


def wait_for_the_trace(receiver: Receiver, trace_id: str, timeout: float = 45) -> list[Exported]:
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.trace(trace_id)
        sends = [s for s in spans if s.span.name == "smtp send"]
        if (
            len(sends) == 2
            and {s.service for s in spans} >= {f"ordermesh-{n}" for n in SERVICES}
            and whole(spans)
        ):
            time.sleep(0.5)  # what is still in flight (a consumer's span ends after its send)
            spans = receiver.trace(trace_id)
            if whole(spans):
                return spans
        if time.monotonic() > deadline:
            names = sorted({(s.service, s.span.name) for s in spans})
            pytest.fail(f"trace {trace_id} incomplete after {timeout} s: {len(sends)} mails, spans {names}")
        time.sleep(0.1)  # other processes' exports: nothing to wait on but polling


def by_service(spans: list[Exported]) -> dict[str, set[tuple[int, str]]]:
    kinds: dict[str, set[tuple[int, str]]] = {}
    for s in spans:
        kinds.setdefault(s.service.removeprefix("ordermesh-"), set()).add((s.span.kind, s.span.name))
    return kinds


@pytest.mark.parametrize("saga", ["orchestrated", "choreographed"])
def test_one_rest_order_is_one_trace_across_all_five_services(
    tmp_path: Path, receiver: Receiver, smtp_port: int, saga: str
) -> None:
    fleet = start_all(tmp_path, receiver, smtp_port, saga)
    try:
        order_id, trace_id = place_order(fleet)
        spans = wait_for_the_trace(receiver, trace_id)
        # Nothing about this order went to another trace (reads would: none were made).
        strays = {
            (s.service, s.span.name)
            for s in receiver.spans
            if s.attributes.get("ordermesh.order_id") == order_id and s.trace_id != trace_id
        }
        assert not strays
        (root,) = [s for s in spans if not s.span.parent_span_id]
        assert (root.service, root.span.name, root.span.kind) == (
            "ordermesh-orders",
            "POST /api/orders",
            Span.SPAN_KIND_SERVER,
        )
        assert root.attributes["ordermesh.order_id"] == order_id
        seen = by_service(spans)
        server, client, producer, consumer = (
            Span.SPAN_KIND_SERVER,
            Span.SPAN_KIND_CLIENT,
            Span.SPAN_KIND_PRODUCER,
            Span.SPAN_KIND_CONSUMER,
        )
        assert (producer, "publish orders") in seen["orders"]
        assert {
            (consumer, "process notifications.order_created"),
            (consumer, "process notifications.order_shipped"),
        } <= seen["notifications"]
        assert (client, "smtp send") in seen["notifications"]  # twice: wait_for_the_trace counted
        if saga == "orchestrated":
            steps = {name for _, name in seen["orders"] if name.startswith("saga order-fulfilment ")}
            assert steps == {
                f"saga order-fulfilment {step}" for step in ("payment", "stock", "shipment", "commit")
            }
            assert (server, "/ordermesh.payments.v1.PaymentService/ProcessPayment") in seen["payments"]
            assert {kind for kind, _ in seen["inventory"]} >= {server}
            assert (server, "POST /api/shipments") in seen["shipping"]
            grpc_calls = {name for kind, name in seen["orders"] if kind == client and name.startswith("/")}
            assert len(grpc_calls) >= 2  # ProcessPayment, Reserve, Commit: to payments and inventory
            assert any(
                kind == client and name.startswith("POST") for kind, name in seen["orders"]
            )  # shipping
        else:
            for service in ("payments", "inventory", "shipping"):
                assert any(kind == consumer for kind, _ in seen[service]), service
                assert any(kind == producer for kind, _ in seen[service]), service
        saga_spans = [s for s in spans if s.span.name.startswith("saga ")]
        assert all(s.attributes["ordermesh.saga_id"] == order_id for s in saga_spans)
    finally:
        fleet.stop_all()
    assert receiver.requests > 0

"""``ordermesh.tracing`` (W3C propagation over OpenTelemetry's context), ``kit.telemetry`` (when the
SDK is installed and how the process is named) and the saga's spans."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ordermesh import tracing
from ordermesh.clock import FakeClock
from ordermesh.errors import ConfigError
from ordermesh.kit import telemetry
from ordermesh.saga import MemorySagaStore, SagaContext, SagaDefinition, SagaRunner, Step, StepFailed
from ordermesh.services.orders.events import OrderCreated, OrderLine
from ordermesh.services.orders.saga import saga_data
from tests.helpers import captured_spans, named

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with captured_spans() as exporter:
        yield exporter


def test_trace_and_span_ids_of_a_traceparent() -> None:
    assert (tracing.trace_id(PARENT), tracing.span_id(PARENT)) == (TRACE, "b7ad6b7169203331")
    for bad in (None, "", "garbage", PARENT.upper(), "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        assert (tracing.trace_id(bad), tracing.span_id(bad)) == (None, None)


def test_outside_a_trace_nothing_is_carried() -> None:
    assert tracing.current() is None and tracing.current_state() is None
    assert tracing.event_metadata() == {} and tracing.current_ids() == ("", "")
    assert tracing.inject({"a": "1"}) == {"a": "1"}


def test_a_callers_trace_is_continued_without_an_sdk_as_it_came() -> None:
    token = tracing.continue_remote(PARENT, "k=v")
    assert token is not None
    try:
        assert tracing.event_metadata() == {"traceparent": PARENT, "tracestate": "k=v"}
        assert tracing.current_ids() == (TRACE, "b7ad6b7169203331")
    finally:
        otel_context.detach(token)
    assert tracing.current() is None
    assert tracing.continue_remote(None) is None and tracing.continue_remote("garbage") is None


def test_with_an_sdk_our_spans_are_children_and_tagged(spans: InMemorySpanExporter) -> None:
    assert tracing.enabled()
    with tracing.span("work", parent=tracing.extract({"Traceparent": PARENT})) as span:
        tracing.tag(order_id="o-1", saga_id="o-1")
        assert tracing.current_ids() == (TRACE, f"{span.get_span_context().span_id:016x}")
    (done,) = spans.get_finished_spans()
    assert done.parent is not None and done.parent.span_id == int("b7ad6b7169203331", 16)
    assert done.attributes == {"ordermesh.order_id": "o-1", "ordermesh.saga_id": "o-1"}


def test_an_exception_leaving_a_span_marks_it(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("work"):
        raise ValueError("no")
    (done,) = spans.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR


def test_the_instrumentations_come_with_an_sdk_only() -> None:
    assert tracing.grpc_client_interceptors() == [] and tracing.http_trace_configs() == []
    with captured_spans():
        assert len(tracing.grpc_client_interceptors()) == 4  # unary/stream x unary/stream
        assert len(tracing.http_trace_configs()) == 1
    assert not tracing.enabled()


def test_an_orders_saga_data_carries_its_trace() -> None:
    created = OrderCreated("o-1", "u", "u@example.com", (OrderLine("A", 1, 5),), "EUR", 5)
    data = saga_data(created, {"traceparent": PARENT, "tracestate": "k=v", "correlation_id": "c"})
    assert (data["traceparent"], data["tracestate"]) == (PARENT, "k=v") and "correlation_id" not in data
    assert "traceparent" not in saga_data(created, {})


# -- the saga: a span per step and compensation, in the order's trace ------------------------------


async def test_saga_steps_and_compensations_are_spans_of_the_orders_trace(
    spans: InMemorySpanExporter,
) -> None:
    async def pay(ctx: SagaContext) -> str:
        assert tracing.trace_id(tracing.current()) == TRACE  # what the step calls continues it
        return "paid"

    async def refund(ctx: SagaContext) -> str:
        return "refunded"

    async def reserve(ctx: SagaContext) -> str:
        raise StepFailed("out of stock")

    definition = SagaDefinition(
        "s", (Step("pay", "payments", pay, refund), Step("stock", "inventory", reserve))
    )
    runner = SagaRunner(MemorySagaStore(), {"s": definition}, FakeClock())
    record = await runner.start("o-1", "s", {"traceparent": PARENT})
    assert record.state == "compensated"
    names = [s.name for s in named(spans, "saga ")]
    assert names == ["saga s pay", "saga s stock", "saga s undo pay"]
    for span in named(spans, "saga "):
        assert span.parent is not None and f"{span.context.trace_id:032x}" == TRACE
        attributes: dict[str, Any] = dict(span.attributes or {})
        assert attributes["ordermesh.saga_id"] == attributes["ordermesh.order_id"] == "o-1"
    failed = named(spans, "saga s stock")[0]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(named(spans, "saga s undo pay")[0].attributes or {})["ordermesh.saga.kind"] == "compensation"


# -- kit.telemetry: the SDK only when spans are exported ------------------------------------------


@pytest.mark.parametrize(
    ("env", "protocol"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None),  # no endpoint: nothing to export to
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            "http/protobuf",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_the_export_protocol_follows_the_standard_variables(
    env: dict[str, str], protocol: str | None
) -> None:
    assert telemetry.export_protocol(env) == protocol


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_what_we_do_not_ship_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OTEL_"):
        telemetry.export_protocol(env)


def test_the_process_is_named_after_its_service_unless_otel_service_name_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for protocol in telemetry.PROTOCOLS:
        provider = telemetry.build_provider("payments", protocol)
        assert provider.resource.attributes["service.name"] == "ordermesh-payments"
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-payments")
    provider = telemetry.build_provider("payments", "http/protobuf")
    assert provider.resource.attributes["service.name"] == "shop-payments"
    provider.shutdown()


async def test_installed_sets_the_sdk_only_when_exporting_and_never_twice() -> None:
    async with telemetry.installed("orders", {}) as provider:
        assert provider is None and not tracing.enabled()
    with captured_spans():
        before = trace.get_tracer_provider()
        async with telemetry.installed(
            "orders", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
        ) as ours:
            assert ours is None and trace.get_tracer_provider() is before  # the test's stays

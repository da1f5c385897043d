"""``messaging.context``: a consumer continues the message's trace, one delivery at a time, and a
publish is a span the consumer hangs under; with OpenTelemetry's SDK installed and without."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ordermesh import tracing
from ordermesh.messaging.context import published, traced, with_current_trace
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Delivery, Message, Unroutable
from tests.helpers import captured_spans, named

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with captured_spans() as exporter:
        yield exporter


def delivery(headers: Mapping[str, str] | None = None, attempt: int = 1) -> Delivery:
    message = Message.json(
        "order.created", {"id": "o-1"}, headers=dict(headers or {}), correlation_id="o-1", message_id="m-1"
    )
    return Delivery(message, exchange="orders", queue="notifications.order_created", attempt=attempt)


class Seen:
    """A handler that records the trace context it ran in."""

    def __init__(self) -> None:
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self.metadata: dict[str, str] = {}

    async def __call__(self, d: Delivery) -> None:
        self.traceparent, self.tracestate = tracing.current(), tracing.current_state()
        self.metadata = tracing.event_metadata()


# -- with an SDK: a CONSUMER span per delivery ---------------------------------------------------


async def test_a_delivery_is_a_consumer_span_in_the_messages_trace(spans: InMemorySpanExporter) -> None:
    seen = Seen()
    await traced(seen)(delivery({"traceparent": PARENT}, attempt=2))
    (span,) = spans.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER and span.name == "process notifications.order_created"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_SPAN
    assert f"{span.context.trace_id:032x}" == TRACE
    assert dict(span.attributes or {}) == {
        "messaging.operation.type": "process",
        "messaging.destination.name": "notifications.order_created",
        "messaging.message.id": "m-1",
        "messaging.rabbitmq.destination.routing_key": "order.created",
        "messaging.message.conversation_id": "o-1",
        "ordermesh.order_id": "o-1",
        "ordermesh.delivery.attempt": 2,
    }
    # What the handler writes continues the consumer's span: same trace, its span id.
    assert seen.traceparent == f"00-{TRACE}-{span.context.span_id:016x}-01"
    assert seen.metadata == {"traceparent": seen.traceparent}


async def test_every_delivery_is_its_own_span(spans: InMemorySpanExporter) -> None:
    seen, ids = Seen(), set()
    handler = traced(seen)
    for _ in range(3):  # a retry or a duplicate of the same message
        await handler(delivery({"traceparent": PARENT}))
        assert tracing.trace_id(seen.traceparent) == TRACE
        ids.add(tracing.span_id(seen.traceparent))
    assert len(ids) == 3 and PARENT_SPAN not in ids
    assert len(spans.get_finished_spans()) == 3


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": ""},
        {"traceparent": "garbage"},
        {"traceparent": "00-abc-def-01"},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},  # all-zero trace
        {"traceparent": PARENT.upper()},  # W3C: lowercase hex only
        {"traceparent": "ff" + PARENT[2:]},  # the version W3C forbids
    ],
    ids=["none", "empty", "garbage", "short", "zero-trace", "uppercase", "version-ff"],
)
async def test_no_or_an_invalid_traceparent_starts_a_new_trace(
    spans: InMemorySpanExporter, headers: dict[str, str]
) -> None:
    seen = Seen()
    await traced(seen)(delivery({**headers, "tracestate": "congo=t61rcWkgMzE"}))
    (span,) = spans.get_finished_spans()
    assert span.parent is None  # a root: nothing to continue
    new_trace = tracing.trace_id(seen.traceparent)
    assert new_trace is not None and new_trace != TRACE
    assert seen.tracestate is None  # its entries belong to a trace we do not continue


async def test_tracestate_is_carried(spans: InMemorySpanExporter) -> None:
    seen = Seen()
    await traced(seen)(
        delivery({"traceparent": PARENT, "tracestate": "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"})
    )
    assert seen.tracestate == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"  # W3C's list form
    assert seen.metadata == {"traceparent": seen.traceparent, "tracestate": seen.tracestate}


@pytest.mark.parametrize("state", ["a=1\r\nBcc: eve@example.com", "   ", "caf\u00e9=1"])
async def test_a_tracestate_unfit_for_a_header_is_dropped_and_the_trace_kept(
    spans: InMemorySpanExporter, state: str
) -> None:
    seen = Seen()
    await traced(seen)(delivery({"traceparent": PARENT, "tracestate": state}))
    assert tracing.trace_id(seen.traceparent) == TRACE and seen.tracestate is None


async def test_header_names_are_matched_case_insensitively(spans: InMemorySpanExporter) -> None:
    seen = Seen()
    await traced(seen)(delivery({"Traceparent": PARENT, "TraceState": "k=v"}))
    assert tracing.trace_id(seen.traceparent) == TRACE and seen.tracestate == "k=v"


async def test_a_handler_that_raises_leaves_an_error_span_and_the_previous_context(
    spans: InMemorySpanExporter,
) -> None:
    async def boom(d: Delivery) -> None:
        assert tracing.trace_id(tracing.current()) == TRACE
        raise RuntimeError("mail server down")

    with trace.use_span(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)):
        with pytest.raises(RuntimeError, match="mail server down"):
            await traced(boom)(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
        assert tracing.current() is None
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


async def test_the_previous_context_is_restored_after_the_handler(spans: InMemorySpanExporter) -> None:
    outer = "00-11111111111111111111111111111111-2222222222222222-01"
    with trace.use_span(
        trace.NonRecordingSpan(
            trace.get_current_span(tracing.extract({"traceparent": outer})).get_span_context()
        )
    ):
        await traced(Seen())(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
        assert tracing.current() == outer


async def test_a_worker_handling_messages_one_after_another_does_not_leak_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    seen = Seen()
    handler = traced(seen)
    await handler(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
    await handler(delivery())  # the next message in the same task has no trace of its own
    assert tracing.trace_id(seen.traceparent) not in (None, TRACE)
    assert seen.tracestate is None


async def test_concurrent_deliveries_do_not_see_each_others_context(spans: InMemorySpanExporter) -> None:
    other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    both_inside = asyncio.Barrier(2)
    seen: dict[str, tuple[str | None, str | None]] = {}

    async def handler(d: Delivery) -> None:
        mine = d.message.headers["traceparent"]
        await both_inside.wait()  # the other delivery has set its context by now
        await asyncio.sleep(0)
        seen[mine] = (tracing.trace_id(tracing.current()), tracing.current_state())

    wrapped = traced(handler)
    await asyncio.gather(
        wrapped(delivery({"traceparent": PARENT, "tracestate": "a=1"})),
        wrapped(delivery({"traceparent": other, "tracestate": "b=2"})),
    )
    assert seen == {PARENT: (TRACE, "a=1"), other: ("4bf92f3577b34da6a3ce929d0e0e4736", "b=2")}


async def test_current_ids_are_the_consumer_spans_and_empty_outside(spans: InMemorySpanExporter) -> None:
    inside: list[tuple[str, str]] = []

    async def handler(d: Delivery) -> None:
        inside.append(tracing.current_ids())

    assert tracing.current_ids() == ("", "")
    await traced(handler)(delivery({"traceparent": PARENT}))
    (span,) = spans.get_finished_spans()
    assert inside == [(TRACE, f"{span.context.span_id:016x}")]


# -- without an SDK: the context passes through, no ids are made ---------------------------------


async def test_without_an_sdk_a_delivery_passes_the_messages_context_through() -> None:
    assert not tracing.enabled()
    seen = Seen()
    await traced(seen)(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
    assert (seen.traceparent, seen.tracestate) == (PARENT, "k=v")  # nothing minted, nothing lost
    assert seen.metadata == {"traceparent": PARENT, "tracestate": "k=v"}


async def test_without_an_sdk_a_message_without_a_trace_runs_outside_any() -> None:
    seen = Seen()
    await traced(seen)(delivery())
    assert (seen.traceparent, seen.metadata) == (None, {})
    assert tracing.current_ids() == ("", "")


# -- publishing ---------------------------------------------------------------------------------


async def test_a_publish_is_a_producer_span_the_consumer_hangs_under(spans: InMemorySpanExporter) -> None:
    broker = MemoryBroker()
    seen = Seen()
    await broker.declare_exchange("orders")
    await broker.subscribe("q", "orders", ["order.created"], traced(seen))
    written = Message.json("order.created", {"id": "o-1"}, headers={"traceparent": PARENT, "x": "1"})
    with published("orders", [written]) as messages:
        await broker.publish("orders", messages)
    for _ in range(100):
        if seen.traceparent is not None:
            break
        await asyncio.sleep(0.01)
    await broker.close()
    (produced,) = named(spans, "publish orders")
    (consumed,) = named(spans, "process q")
    assert produced.kind is SpanKind.PRODUCER
    assert produced.parent is not None and f"{produced.parent.span_id:016x}" == PARENT_SPAN
    assert consumed.parent is not None and consumed.parent.span_id == produced.context.span_id
    assert {produced.context.trace_id, consumed.context.trace_id} == {int(TRACE, 16)}
    (message,) = messages
    assert message.headers["x"] == "1" and message.headers["traceparent"] != PARENT
    assert written.headers["traceparent"] == PARENT  # the written message is left as it was


async def test_unroutable_marks_only_the_messages_no_queue_took(spans: InMemorySpanExporter) -> None:
    a = Message.json("order.created", {"id": "a"}, message_id="a", headers={"traceparent": PARENT})
    b = Message.json("order.created", {"id": "b"}, message_id="b", headers={"traceparent": PARENT})
    with pytest.raises(Unroutable), published("orders", [a, b]):
        raise Unroutable("no queue for b", ["b"])
    statuses = {
        s.attributes["messaging.message.id"]: s.status.status_code
        for s in spans.get_finished_spans()
        if s.attributes
    }
    assert statuses == {"a": StatusCode.UNSET, "b": StatusCode.ERROR}


async def test_without_an_sdk_messages_are_published_as_written() -> None:
    written = [Message.json("order.created", {"id": "a"}, headers={"traceparent": PARENT})]
    with published("orders", written) as messages:
        assert messages == written


async def test_what_is_written_to_an_outbox_keeps_the_current_trace(spans: InMemorySpanExporter) -> None:
    own = Message.json("x", {}, headers={"traceparent": PARENT})
    bare = Message.json("y", {}, headers={"k": "v"})
    assert with_current_trace([own, bare]) == [own, bare]  # outside a trace: unchanged
    with tracing.span("request"):
        kept, stamped = with_current_trace([own, bare])
        now = tracing.current()
    assert kept is own and now is not None and tracing.trace_id(now) != TRACE
    assert stamped.headers == {"k": "v", "traceparent": now}

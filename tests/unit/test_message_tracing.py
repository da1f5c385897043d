"""``messaging.context.traced``: a consumer continues the message's W3C trace, one delivery at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from ordermesh import tracing
from ordermesh.messaging.context import traced
from ordermesh.messaging.port import Delivery, Message

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = "0af7651916cd43dd8448eb211c80319c"


def delivery(headers: Mapping[str, str] | None = None) -> Delivery:
    message = Message.json("order.created", {"id": "o-1"}, headers=dict(headers or {}))
    return Delivery(message, exchange="orders", queue="notifications.order_created")


class Seen:
    """A handler that records the trace context it ran in."""

    def __init__(self) -> None:
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self.metadata: dict[str, str] = {}

    async def __call__(self, d: Delivery) -> None:
        self.traceparent, self.tracestate = tracing.current(), tracing.current_state()
        self.metadata = tracing.event_metadata()


async def test_a_child_span_keeps_the_trace_id_and_gets_a_new_span_id() -> None:
    seen = Seen()
    await traced(seen)(delivery({"traceparent": PARENT}))
    assert seen.traceparent is not None
    assert tracing.trace_id(seen.traceparent) == TRACE
    assert tracing.span_id(seen.traceparent) not in (None, tracing.span_id(PARENT))
    assert seen.traceparent.endswith("-01")  # the parent's flags (sampled)
    assert seen.metadata == {"traceparent": seen.traceparent}  # events written here continue it


async def test_every_delivery_is_its_own_span() -> None:
    seen, spans = Seen(), set()
    handler = traced(seen)
    for _ in range(3):  # a retry or a duplicate of the same message
        await handler(delivery({"traceparent": PARENT}))
        assert tracing.trace_id(seen.traceparent) == TRACE
        spans.add(tracing.span_id(seen.traceparent))
    assert len(spans) == 3


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": ""},
        {"traceparent": "garbage"},
        {"traceparent": "00-abc-def-01"},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},  # all-zero trace
        {"traceparent": PARENT.upper()},  # W3C: lowercase hex only
        {"traceparent": "01" + PARENT[2:]},  # a version we do not know
    ],
    ids=["none", "empty", "garbage", "short", "zero-trace", "uppercase", "version"],
)
async def test_no_or_an_invalid_traceparent_starts_a_new_trace(headers: dict[str, str]) -> None:
    seen = Seen()
    await traced(seen)(delivery({**headers, "tracestate": "congo=t61rcWkgMzE"}))
    new_trace = tracing.trace_id(seen.traceparent)
    assert new_trace is not None and new_trace != TRACE
    assert tracing.span_id(seen.traceparent) is not None
    assert seen.tracestate is None  # its entries belong to a trace we do not continue


async def test_tracestate_is_carried_unchanged() -> None:
    seen = Seen()
    state = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"
    await traced(seen)(delivery({"traceparent": PARENT, "tracestate": state}))
    assert seen.tracestate == state
    assert seen.metadata == {"traceparent": seen.traceparent, "tracestate": state}


@pytest.mark.parametrize("state", ["a=1\r\nBcc: eve@example.com", "   ", "caf\u00e9=1"])
async def test_a_tracestate_unfit_for_a_header_is_dropped(state: str) -> None:
    seen = Seen()
    await traced(seen)(delivery({"traceparent": PARENT, "tracestate": state}))
    assert tracing.trace_id(seen.traceparent) == TRACE and seen.tracestate is None


async def test_header_names_are_matched_case_insensitively() -> None:
    seen = Seen()
    await traced(seen)(delivery({"Traceparent": PARENT, "TraceState": "k=v"}))
    assert tracing.trace_id(seen.traceparent) == TRACE and seen.tracestate == "k=v"


async def test_the_previous_context_is_restored_after_the_handler() -> None:
    outer = tracing.enter("00-11111111111111111111111111111111-2222222222222222-01", "outer=1")
    try:
        await traced(Seen())(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
        assert tracing.current() == "00-11111111111111111111111111111111-2222222222222222-01"
        assert tracing.current_state() == "outer=1"
    finally:
        tracing.leave(outer)


async def test_the_previous_context_is_restored_when_the_handler_raises() -> None:
    before = tracing.current(), tracing.current_state()

    async def boom(d: Delivery) -> None:
        assert tracing.trace_id(tracing.current()) == TRACE
        raise RuntimeError("mail server down")

    with pytest.raises(RuntimeError, match="mail server down"):
        await traced(boom)(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
    assert (tracing.current(), tracing.current_state()) == before


async def test_a_worker_handling_messages_one_after_another_does_not_leak_a_trace() -> None:
    seen = Seen()
    handler = traced(seen)
    await handler(delivery({"traceparent": PARENT, "tracestate": "k=v"}))
    await handler(delivery())  # the next message in the same task has no trace of its own
    assert tracing.trace_id(seen.traceparent) not in (None, TRACE)
    assert seen.tracestate is None


async def test_concurrent_deliveries_do_not_see_each_others_context() -> None:
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


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_log_records_carry_the_trace_and_span_ids() -> None:
    capture = Records()
    logger = logging.getLogger("tests.message_tracing")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    tracing.install_log_filter(logger)
    tracing.install_log_filter(logger)  # idempotent
    spans: list[str | None] = []

    async def handler(d: Delivery) -> None:
        spans.append(tracing.span_id(tracing.current()))
        logger.info("inside")

    try:
        logger.info("outside")
        await traced(handler)(delivery({"traceparent": PARENT}))
    finally:
        logger.removeHandler(capture)
    assert len(capture.filters) == 1
    outside, inside = (vars(r) for r in capture.records)
    assert (outside["trace_id"], outside["span_id"]) == ("", "")
    assert (inside["trace_id"], inside["span_id"]) == (TRACE, spans[0])
    formatted = logging.Formatter("[%(trace_id)s %(span_id)s] %(message)s").format(capture.records[1])
    assert formatted == f"[{TRACE} {spans[0]}] inside"

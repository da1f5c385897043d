"""Fault injection without real time: the plan's validation, the decisions (scripted randomness),
the HTTP middleware around a fake app, the gRPC injection with a fake context, and the bus
wrapper on the memory broker (sleeps recorded, never slept)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Sequence
from typing import Any

import grpc
import orjson
import pytest
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from ordermesh.errors import ValidationError
from ordermesh.http.access import AccessLog
from ordermesh.http.app import create_app
from ordermesh.http.faults import TRANSPORT, FaultInjection, install
from ordermesh.http.metrics import MetricsMiddleware
from ordermesh.http.middleware import BodyLimits
from ordermesh.messaging.faults import with_faults
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Delivery, Message, RetryPolicy
from ordermesh.resilience.faults import (
    HOLD_BOUND,
    POISON,
    FaultInjected,
    FaultPlan,
    Faults,
    FaultsNotAllowed,
    LinkFaults,
    Outcome,
    QueueFaults,
)
from ordermesh.rpc.faults import inject
from tests.helpers import Collector, dead_letters, within


class Scripted(random.Random):
    """``random()`` answers the given values in turn (then fails: a decision nobody expected)."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self.values = list(values)
        self.asked = 0

    def random(self) -> float:
        self.asked += 1
        return self.values.pop(0)


class Sleeps:
    """An injected sleep: records what it was asked; ``forever`` makes every sleep wait for good."""

    def __init__(self, forever: bool = False) -> None:
        self.asked: list[float] = []
        self.forever = forever

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if self.forever:
            await asyncio.Event().wait()


def faults(plan: dict[str, Any] | None = None, rng: random.Random | None = None, **kw: Any) -> Faults:
    holder = Faults("payments", rng=rng or Scripted([]), **kw)
    if plan is not None:
        holder.set(FaultPlan.from_dict(plan))
    return holder


# --- the plan -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field", "says"),
    [
        ({"link": {"error_rate": 1.5}}, "link.error_rate", "from 0 to 1"),
        ({"link": {"error_rate": -0.1}}, "link.error_rate", "from 0 to 1"),
        ({"link": {"error_rate": True}}, "link.error_rate", "expected a number"),
        ({"link": {"error_rate": "0.5"}}, "link.error_rate", "expected a number"),
        ({"link": {"delay_ms": -1}}, "link.delay_ms", "milliseconds from 0"),
        ({"link": {"delay_ms": float("inf")}}, "link.delay_ms", "expected a number"),
        ({"link": {"hang": 1}}, "link.hang", "true or false"),
        ({"link": {"hang": True, "reset": True}}, "link", "cannot go together"),
        ({"link": {"blackhole": True, "error_rate": 0.5}}, "link", "cannot go together"),
        ({"link": {"latency": 5}}, "link.latency", "unknown field"),
        ({"link": [1]}, "link", "expected an object"),
        ({"queues": {"q": {"drop": 2}}}, "queues.q.drop", "from 0 to 1"),
        ({"queues": {"q": {"bus_delay": 2}}}, "queues.q.bus_delay", "unknown field"),
        ({"queues": ["q"]}, "queues", "expected an object"),
        ({"queues": {"": {"drop": 1}}}, "queues", "must not be empty"),
        ({"faults": {}}, "plan.faults", "unknown field"),
        ([], "plan", "expected an object"),
    ],
)
def test_a_bad_plan_names_its_field(doc: Any, field: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        FaultPlan.from_dict(doc)
    assert [v.field for v in caught.value.violations] == [field]


def test_a_plan_round_trips_and_drops_what_faults_nothing() -> None:
    doc = {
        "link": {"error_rate": 0.25, "delay_ms": 100},
        "queues": {"q": {"poison": 0.5}, "idle": {"drop": 0}},
    }
    plan = FaultPlan.from_dict(doc)
    assert plan.active and set(plan.queues) == {"q"}
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    assert plan.to_dict()["link"] == {
        "error_rate": 0.25,
        "delay_ms": 100.0,
        "hang": False,
        "reset": False,
        "blackhole": False,
    }
    assert plan.describe() == "link error_rate=0.25 delay_ms=100; queue q poison=0.5"
    assert not FaultPlan.from_dict({}).active and not FaultPlan.from_dict({"link": None}).active
    assert LinkFaults(delay_ms=5, reset=True).active  # a delay goes with a terminal fault


def test_faults_are_refused_where_not_allowed_but_clearing_is_not() -> None:
    holder = faults(allowed=False)
    with pytest.raises(FaultsNotAllowed, match="ORDERMESH_FAULTS=enabled"):
        holder.set(FaultPlan(LinkFaults(error_rate=1)))
    assert holder.link is None
    holder.clear()
    assert holder.snapshot()["allowed"] is False


def test_a_queue_plan_must_name_a_queue_the_process_consumes() -> None:
    holder = faults()
    holder.consumed.add("notifications.order_created")
    with pytest.raises(ValidationError, match=r"consumes no queue 'nope' \(it consumes: notifications.order"):
        holder.set(FaultPlan(queues={"nope": QueueFaults(drop=1)}))
    holder.set(FaultPlan(queues={"notifications.order_created": QueueFaults(drop=1)}))
    assert holder.snapshot()["queues"] == {
        "notifications.order_created": {"duplicate": 0.0, "delay_ms": 0.0, "drop": 1.0, "poison": 0.0}
    }


def test_every_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    holder = faults()
    plan = FaultPlan(LinkFaults(error_rate=0.5))
    with caplog.at_level(logging.WARNING, "ordermesh.faults"):
        holder.set(plan, by="service:cli")
        holder.set(plan, by="service:cli")  # no change
        holder.clear()
        holder.clear()  # nothing to clear
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["payments: faults set by service:cli: link error_rate=0.5", "payments: faults cleared"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


# --- decisions --------------------------------------------------------------------------------


def test_link_decisions() -> None:
    assert faults().decide_call() == (0.0, Outcome.PASS)
    holder = faults({"link": {"error_rate": 0.3, "delay_ms": 250}}, Scripted([0.1, 0.3, 0.9]))
    outcomes = [holder.decide_call() for _ in range(3)]
    assert outcomes == [(0.25, Outcome.ERROR), (0.25, Outcome.PASS), (0.25, Outcome.PASS)]
    always = faults({"link": {"error_rate": 1}})  # a certain share asks the dice nothing
    assert always.decide_call() == (0.0, Outcome.ERROR)
    for name, outcome in (("hang", Outcome.HANG), ("reset", Outcome.RESET), ("blackhole", Outcome.BLACKHOLE)):
        assert faults({"link": {name: True}}).decide_call() == (0.0, outcome)


def test_seeded_error_rate_hits_about_its_share() -> None:
    holder = faults({"link": {"error_rate": 0.2}}, random.Random(7))
    errors = sum(holder.decide_call()[1] is Outcome.ERROR for _ in range(5000))
    assert 850 < errors < 1150


def test_delivery_decisions() -> None:
    holder = faults()
    plan = QueueFaults(duplicate=0.5, delay_ms=20, drop=0.5, poison=0.5)
    holder.rng = Scripted([0.1])  # dropped: neither poisoned nor duplicated
    dropped = holder.decide_delivery(plan)
    assert (dropped.delay, dropped.drop, dropped.poison, dropped.duplicate) == (0.02, True, False, False)
    holder.rng = Scripted([0.9, 0.1, 0.9])  # kept, poisoned, not duplicated
    kept = holder.decide_delivery(plan)
    assert (kept.drop, kept.poison, kept.duplicate) == (False, True, False)


# --- HTTP -------------------------------------------------------------------------------------


class FakeApp:
    def __init__(self) -> None:
        self.calls: list[tuple[Scope, Receive, Send]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class FakeTransport:
    def __init__(self) -> None:
        self.sock = FakeSocket()
        self.aborted = asyncio.Event()

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def abort(self) -> None:
        self.aborted.set()


class FakeSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, bytes]] = []

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options.append((level, option, value))


class Exchange:
    """One request through the middleware: what it sent back; ``disconnect`` ends the client's
    patience (``receive`` answers ``http.disconnect`` once it is set)."""

    def __init__(self, path: str = "/api/x", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.sent: list[AsgiMessage] = []
        self.disconnect = asyncio.Event()
        self.scope: Scope = {"type": "http", "path": path, "headers": headers or [], "state": {}}

    async def receive(self) -> AsgiMessage:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: AsgiMessage) -> None:
        self.sent.append(message)

    async def through(self, middleware: FaultInjection) -> None:
        await middleware(self.scope, self.receive, self.send)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def body(self) -> dict[str, Any]:
        return dict(
            orjson.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))
        )


async def test_without_faults_the_request_passes_untouched() -> None:
    app = FakeApp()
    exchange = Exchange()
    await exchange.through(FaultInjection(app, faults()))
    scope, receive, send = app.calls[0]
    # the app gets the server's own callables: nothing wrapped, nothing allocated for the request
    assert scope is exchange.scope and receive == exchange.receive and send == exchange.send
    assert exchange.status == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/admin/faults", "/admin/breakers"])
async def test_health_metrics_and_admin_are_never_faulted(path: str) -> None:
    app = FakeApp()
    exchange = Exchange(path)
    await exchange.through(FaultInjection(app, faults({"link": {"error_rate": 1}})))
    assert exchange.status == 200 and len(app.calls) == 1


async def test_an_error_is_a_503_problem_and_the_app_never_runs() -> None:
    app, sleeps = FakeApp(), Sleeps()
    exchange = Exchange()
    await exchange.through(
        FaultInjection(app, faults({"link": {"error_rate": 1, "delay_ms": 200}}, sleep=sleeps))
    )
    assert exchange.status == 503 and not app.calls
    assert "injected fault" in exchange.body["detail"]
    headers = dict(exchange.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/problem+json" and headers[b"retry-after"] == b"1"
    assert sleeps.asked == [0.2]  # the delay came first


async def test_a_delay_then_the_app() -> None:
    app, sleeps = FakeApp(), Sleeps()
    exchange = Exchange()
    await exchange.through(FaultInjection(app, faults({"link": {"delay_ms": 1500}}, sleep=sleeps)))
    assert sleeps.asked == [1.5] and exchange.status == 200 and len(app.calls) == 1


async def test_a_hang_holds_until_the_callers_deadline_then_504() -> None:
    sleeps = Sleeps()
    exchange = Exchange(headers=[(b"x-ordermesh-deadline-ms", b"750")])
    await exchange.through(FaultInjection(FakeApp(), faults({"link": {"hang": True}}, sleep=sleeps)))
    assert sleeps.asked == [0.75]
    assert exchange.status == 504 and "hang (injected fault)" in exchange.body["detail"]

    without = Exchange()
    await without.through(FaultInjection(FakeApp(), faults({"link": {"hang": True}}, sleep=sleeps)))
    assert sleeps.asked[-1] == HOLD_BOUND and without.status == 504


async def test_a_caller_that_gives_up_ends_a_hang_unanswered() -> None:
    exchange = Exchange()
    middleware = FaultInjection(FakeApp(), faults({"link": {"hang": True}}, sleep=Sleeps(forever=True)))
    task = asyncio.create_task(exchange.through(middleware))
    await asyncio.sleep(0)
    exchange.disconnect.set()
    await within(task, 1)
    assert exchange.sent == []


async def test_a_reset_drops_the_connection_with_an_rst_and_no_answer() -> None:
    transport = FakeTransport()
    exchange = Exchange()
    exchange.scope["state"][TRANSPORT] = transport
    app = FakeApp()
    task = asyncio.create_task(exchange.through(FaultInjection(app, faults({"link": {"reset": True}}))))
    await within(transport.aborted.wait(), 1)
    exchange.disconnect.set()  # what the server reports once the connection is gone
    await within(task, 1)
    assert exchange.sent == [] and not app.calls
    assert transport.sock.options == [
        (socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    ]


async def test_a_reset_without_access_to_the_connection_answers_503() -> None:
    exchange = Exchange()
    await exchange.through(FaultInjection(FakeApp(), faults({"link": {"reset": True}})))
    assert exchange.status == 503 and "connection reset (injected" in exchange.body["detail"]


async def test_a_blackhole_never_answers() -> None:
    exchange = Exchange()
    middleware = FaultInjection(FakeApp(), faults({"link": {"blackhole": True}}, sleep=Sleeps(forever=True)))
    task = asyncio.create_task(exchange.through(middleware))
    await asyncio.sleep(0)
    assert not task.done()
    exchange.disconnect.set()
    await within(task, 1)
    assert exchange.sent == []


async def test_after_the_bound_a_blackhole_drops_the_connection() -> None:
    transport = FakeTransport()
    exchange = Exchange()
    exchange.scope["state"][TRANSPORT] = transport
    sleeps = Sleeps()
    task = asyncio.create_task(
        exchange.through(FaultInjection(FakeApp(), faults({"link": {"blackhole": True}}, sleep=sleeps)))
    )
    await within(transport.aborted.wait(), 1)
    exchange.disconnect.set()
    await within(task, 1)
    assert sleeps.asked == [HOLD_BOUND] and exchange.sent == []


async def _ready(_: Any) -> None:
    return None


def test_installed_inside_the_metrics_middleware() -> None:
    app = create_app("test", _ready)
    install(app, faults())
    layers: list[Any] = [m.cls for m in app.user_middleware]
    assert layers[:4] == [MetricsMiddleware, AccessLog, FaultInjection, BodyLimits]  # seen first


# --- gRPC -------------------------------------------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


@pytest.mark.parametrize(
    ("remaining", "default", "held"), [(1.25, 10.0, 1.25), (None, 10.0, 10.0), (None, None, HOLD_BOUND)]
)
async def test_grpc_hang_holds_for_the_deadline_known(
    remaining: float | None, default: float | None, held: float
) -> None:
    sleeps = Sleeps()
    context = FakeContext(remaining)
    with pytest.raises(Aborted):
        await inject(faults({"link": {"hang": True}}, sleep=sleeps), context, default)  # type: ignore[arg-type]
    assert sleeps.asked == [held]
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_grpc_error_reset_and_blackhole_raise_unavailable_errors() -> None:
    context: Any = FakeContext(None)
    with pytest.raises(FaultInjected, match="injected fault"):
        await inject(faults({"link": {"error_rate": 1}}), context, 10.0)
    with pytest.raises(FaultInjected, match=r"connection reset \(injected"):
        await inject(faults({"link": {"reset": True}}), context, 10.0)
    sleeps = Sleeps()
    with pytest.raises(FaultInjected, match="blackhole"):
        await inject(faults({"link": {"blackhole": True}}, sleep=sleeps), context, 10.0)
    assert sleeps.asked == [HOLD_BOUND]
    await inject(faults(), context, 10.0)  # nothing set: the call goes on


# --- the bus ----------------------------------------------------------------------------------


async def consumer(holder: Faults, handler: Collector) -> tuple[Any, MemoryBroker]:
    raw = MemoryBroker()
    broker = with_faults(raw, holder)
    await broker.subscribe("q", "orders", ["order.*"], handler, prefetch=1, retry=RetryPolicy(max_attempts=1))
    return broker, raw


async def test_duplicate_hands_a_delivery_twice() -> None:
    holder, handler = faults(), Collector()
    broker, _ = await consumer(holder, handler)
    holder.set(FaultPlan(queues={"q": QueueFaults(duplicate=1)}))
    await broker.publish("orders", [Message.json("order.created", {"id": "o-1"})])
    first, second = await handler.wait_for(2)
    assert first.message == second.message
    assert (first.redelivered, second.redelivered) == (False, True)
    await broker.close()


async def test_poison_ends_in_the_dead_letter_queue_with_the_reason() -> None:
    holder, handler = faults(), Collector(decode=True)  # decodes every body, as ordermesh's do
    broker, raw = await consumer(holder, handler)
    holder.set(FaultPlan(queues={"q": QueueFaults(poison=1)}))
    message = Message.json("order.created", {"id": "o-1"})
    await broker.publish("orders", [message])
    await dead_letters(raw, "q", 1)
    [letter] = await broker.dead_letters("q")
    assert "not JSON" in letter.error and "poisoned by an injected fault" in letter.error
    assert letter.message.body == message.body != POISON  # the original is kept, to replay
    assert handler.got == []
    await broker.close()


async def test_a_dropped_delivery_comes_again_redelivered() -> None:
    sleeps = Sleeps()
    holder, handler = faults(rng=Scripted([0.1, 0.9]), sleep=sleeps), Collector()
    broker, _ = await consumer(holder, handler)
    holder.set(FaultPlan(queues={"q": QueueFaults(drop=0.5, delay_ms=30)}))
    await broker.publish("orders", [Message.json("order.created", {"id": "o-1"})])
    [delivery] = await handler.wait_for(1)
    assert delivery.redelivered
    assert sleeps.asked == [0.03, 0.5, 0.03]  # delay, the redelivery pause, the delay again
    await broker.close()


class Waiting:
    """A broker whose subscriptions, as RabbitMQ's and the embedded one's, wait for the handlers
    in flight when they stop; ``deliver`` runs the subscribed handler in a task."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.inflight: list[asyncio.Task[None]] = []

    async def subscribe(
        self, queue: str, exchange: str, keys: Sequence[str], handler: Any, **kw: Any
    ) -> Waiting:
        self.handler = handler
        return self

    def deliver(self, delivery: Delivery) -> None:
        self.inflight.append(asyncio.create_task(self.handler(delivery)))

    async def stop(self) -> None:
        await asyncio.gather(*self.inflight)


async def test_a_stopping_consumer_lets_its_held_deliveries_through() -> None:
    holder, handler, inner = faults(sleep=Sleeps(forever=True)), Collector(), Waiting()
    sub = await with_faults(inner, holder).subscribe("q", "orders", ["order.*"], handler)  # type: ignore[arg-type]
    holder.set(FaultPlan(queues={"q": QueueFaults(drop=1)}))
    inner.deliver(Delivery(Message.json("order.created", {"id": "o-1"}), "orders", "q"))
    await asyncio.sleep(0)
    assert handler.got == []  # held: dropped, waiting to come again
    await within(sub.stop(), 1)  # would wait for good if the held one did not go
    [delivery] = handler.got
    assert delivery.redelivered

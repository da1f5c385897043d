"""`ordermesh outbox status` and `ordermesh outbox replay` on the embedded broker (no server).

The CLI runs as its own process, as an operator would run it beside `ordermesh up`; the test
parks messages with the relay exactly as `ordermesh up` builds it, then binds a consumer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ordermesh.config import Settings
from ordermesh.eventstore.subscription import SqlCheckpoints
from ordermesh.messaging import open_broker
from ordermesh.messaging.port import Delivery, Message
from ordermesh.messaging.relay import OutboxRelay, ParkingLot
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.outbox import EXCHANGE, RELAY_NAME, OrderMessages
from ordermesh.services.orders.runtime import build_order_system
from tests.helpers import free_port, within

BIN = Path(sys.executable).parent / "ordermesh"
QUEUE = "test.order_created"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class ParkedOrder:
    env: dict[str, str]
    settings: Settings
    order_id: str
    created_id: str  # the OrderCreated event's id, which is its message's id
    cancelled_id: str


async def _park_two_messages(settings: Settings) -> tuple[str, str, str]:
    """An order created and cancelled, relayed once with no queue bound: both messages parked."""
    system = await build_order_system(settings.effective_database_url)
    broker = await open_broker(settings.effective_broker_url)
    try:
        order = await system.service.create_order("alice", "alice@example.com", "EUR", [OrderLine("A", 1, 5)])
        await system.service.change(order["id"], lambda o, now: o.cancel("changed my mind", now))
        assert system.db is not None
        relay = OutboxRelay(
            system.store,
            await SqlCheckpoints.open(system.db),
            broker,
            EXCHANGE,
            OrderMessages(system.service),
            name=RELAY_NAME,
            parking=await ParkingLot.open(system.db),
        )
        await broker.declare_exchange(EXCHANGE)
        assert await relay.step() == 2
        assert await relay.step() == 0
        events = await system.store.read_all(0, 10)
        assert [e.type for e in events] == ["OrderCreated", "OrderCancelled"]
        parked = await (await ParkingLot.open(system.db)).all()
        assert sorted(p.message.message_id for p in parked) == sorted(e.event_id for e in events)
    finally:
        await broker.close()
        await system.close()
    return order["id"], events[0].event_id, events[1].event_id


@pytest.fixture
def parked(tmp_path: Path) -> ParkedOrder:
    env = {**os.environ, "ORDERMESH_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    for name in ("ORDERMESH_DATABASE_URL", "ORDERMESH_BROKER_URL"):
        env.pop(name, None)
    settings = Settings.from_env(env)
    return ParkedOrder(env, settings, *asyncio.run(_park_two_messages(settings)))


async def _bind(settings: Settings, queue: str, binding_key: str) -> None:
    """Bind a durable consumer queue, as a consumer service does when it starts, then go away:
    the binding outlives the consumer, so messages wait in its queue."""

    async def ignore(_: Delivery) -> None:
        raise AssertionError("nothing should be delivered before the replay")

    broker = await open_broker(settings.effective_broker_url)
    try:
        sub = await broker.subscribe(queue, EXCHANGE, [binding_key], ignore)
        await sub.stop()
    finally:
        await broker.close()


async def _consume_one(settings: Settings, queue: str) -> Message:
    broker = await open_broker(settings.effective_broker_url)
    got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def handle(delivery: Delivery) -> None:
        if not got.done():
            got.set_result(delivery.message)

    try:
        await broker.subscribe(queue, EXCHANGE, ["order.created"], handle)
        return await within(got)
    finally:
        await broker.close()


def test_status_lists_parked_messages_and_how_to_replay_them(parked: ParkedOrder) -> None:
    done = cli(parked.env, "outbox", "status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "published up to position 2 of 2 (0 pending)" in out
    assert "parked messages (2)" in out
    assert parked.created_id in out and parked.cancelled_id in out
    assert "order.created" in out and "order.cancelled" in out
    assert "reached no queue" in out  # the broker's reason, as the relay stored it
    assert "ordermesh outbox replay" in out


def test_replay_exits_1_while_no_queue_is_bound(parked: ParkedOrder) -> None:
    done = cli(parked.env, "outbox", "replay")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "replayed 0, still parked 2" in done.stdout
    assert "Traceback" not in done.stderr
    # Nothing was lost on the way: both are still listed.
    status = cli(parked.env, "outbox", "status").stdout
    assert parked.created_id in status and parked.cancelled_id in status


def test_replay_sends_what_is_routable_now_and_keeps_the_rest(parked: ParkedOrder) -> None:
    asyncio.run(_bind(parked.settings, QUEUE, "order.created"))

    done = cli(parked.env, "outbox", "replay")
    assert done.returncode == 1, done.stdout + done.stderr  # order.cancelled has no consumer yet
    assert "replayed 1, still parked 1" in done.stdout

    status = cli(parked.env, "outbox", "status").stdout
    assert "parked messages (1)" in status
    assert parked.cancelled_id in status and parked.created_id not in status

    message = asyncio.run(_consume_one(parked.settings, QUEUE))
    assert message.message_id == parked.created_id
    assert message.routing_key == "order.created"
    assert message.payload()["id"] == parked.order_id

    asyncio.run(_bind(parked.settings, "test.order_cancelled", "order.cancelled"))
    done = cli(parked.env, "outbox", "replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 1, still parked 0" in done.stdout
    status = cli(parked.env, "outbox", "status").stdout
    assert "parked messages: none" in status and parked.cancelled_id not in status


def test_replay_with_nothing_parked_succeeds_without_a_broker(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ORDERMESH_DATA_DIR": str(tmp_path / "data"),
        # Nothing listens there: the command must not need the broker when there is nothing to send.
        "ORDERMESH_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }
    env.pop("ORDERMESH_DATABASE_URL", None)
    done = cli(env, "outbox", "replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 0, still parked 0" in done.stdout


def test_replay_reports_an_unreachable_broker_without_a_traceback(parked: ParkedOrder) -> None:
    env = {**parked.env, "ORDERMESH_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    done = cli(env, "outbox", "replay")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "error:" in done.stderr and "RabbitMQ is not reachable" in done.stderr
    # Still parked, for when the broker is back.
    assert parked.created_id in cli(parked.env, "outbox", "status").stdout


def test_replay_rejects_a_malformed_broker_url_without_a_traceback(parked: ParkedOrder) -> None:
    done = cli({**parked.env, "ORDERMESH_BROKER_URL": "kafka://nowhere"}, "outbox", "replay")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr
    assert "ORDERMESH_BROKER_URL='kafka://nowhere'" in done.stderr and "expected amqp://" in done.stderr

"""A connection lost in the middle of the traffic: nothing is lost, on the publishing side (the
relay's pipelined confirms) nor on the consuming side (tapped deliveries, coalesced acks). On
both wires: the fast path, and aiormq's stock path (its own reader, publish and task per
delivery, under the same coalesced acks).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiormq
import pytest

from ordermesh.db import connect
from ordermesh.eventstore import NewEvent, SqlEventStore
from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.subscription import SqlCheckpoints
from ordermesh.messaging.port import Delivery, Message
from ordermesh.messaging.rabbitmq import RabbitBroker, fastpath
from ordermesh.messaging.relay import OutboxRelay
from tests.helpers import AMQP_URL, PROCESS_TIMEOUT, require_fast_path, require_rabbitmq, within

N = 3_000
WAIT = PROCESS_TIMEOUT  # seconds: three thousand messages through a reconnect


async def _translate(event: StoredEvent) -> Message:
    return Message(routing_key="order.created", body=b'{"n":%d}' % event.data["n"], message_id=event.event_id)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "stock"])
async def test_a_connection_lost_mid_traffic_loses_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    require_rabbitmq()
    if fast:
        require_fast_path()
    fastpath.install(fast)  # the fast wire puts its per-connection reader chooser in place: wrap that
    make = aiormq.connection.FrameReceiver
    readers: list[Any] = []  # the stream reader of every connection, reopened ones included

    def watched(reader: Any) -> Any:
        readers.append(reader)
        return make(reader)

    monkeypatch.setattr(aiormq.connection, "FrameReceiver", watched)
    store = await SqlEventStore.open(await connect(f"sqlite:///{tmp_path / 'events.db'}"))
    for start in range(0, N, 500):
        await asyncio.gather(
            *(
                store.append(f"order-{n}", [NewEvent("OrderCreated", {"n": n})], 0)
                for n in range(start, start + 500)
            )
        )
    prefix = f"chaos{id(store):x}."
    broker = await RabbitBroker.open(
        f"{AMQP_URL}?reconnect_interval=0.2", prefix=prefix, confirm_window=200, fast_path=fast
    )
    assert broker.fast_path is fast
    seen: dict[str, int] = {}
    some, all_of_them = asyncio.Event(), asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        await asyncio.sleep(0)  # a handler that yields, so deliveries are in flight when it drops
        seen[delivery.message.message_id] = seen.get(delivery.message.message_id, 0) + 1
        if len(seen) >= N // 10:
            some.set()
        if len(seen) == N:
            all_of_them.set()

    stop = asyncio.Event()
    try:
        await broker.subscribe("q.chaos", "orders", ["order.*"], handle, prefetch=100)
        relay = OutboxRelay(
            store, await SqlCheckpoints.open(store.db), broker, "orders", _translate, name="chaos", batch=200
        )
        running = asyncio.create_task(relay.run(stop, idle_timeout=0.05))
        await within(some.wait(), WAIT)
        in_flight = relay.position < N
        readers[0]._transport.abort()  # as a network failure would: no close handshake
        await within(all_of_them.wait(), WAIT)
        stop.set()
        await within(running, WAIT)
    finally:
        stop.set()
        await broker.delete_topology()
        await broker.close()
        await store.close()
    assert len(readers) >= 2, "the connection was not re-established"
    assert in_flight, "the relay had published everything before the drop: make N larger"
    assert len(seen) == N  # every message, some maybe twice (redelivered after the drop)
    assert relay.position == N

"""The outbox relay on every database: every order event becomes one message, in order, and a
relay killed mid-batch loses nothing and (with an inbox) has no duplicate effect.

To check an adapter, subclass ``OutboxRelayContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``build_order_system`` opens it, and the relay keeps its
checkpoints there). ``OnMemory``, ``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the
built-in ones. An adapter no URL names overrides the ``env`` fixture instead, to hand each test an
``Env``.

    class TestSqliteOutboxRelay(OnSqlite, OutboxRelayContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from ordermesh.db import connect
from ordermesh.eventstore.subscription import CheckpointStore, MemoryCheckpoints, SqlCheckpoints
from ordermesh.messaging.inbox import MemoryInbox
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Delivery, Message, Unroutable
from ordermesh.messaging.relay import OutboxRelay
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.outbox import EXCHANGE, OrderMessages
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from tests.helpers import Collector, FailsOnce, within

LINES = [OrderLine("A", 2, 150)]


@dataclass
class Env:
    system: OrderSystem
    checkpoints: CheckpointStore
    broker: MemoryBroker

    def relay(self, broker: object | None = None, batch: int = 500) -> OutboxRelay:
        return OutboxRelay(
            self.system.store,
            self.checkpoints,
            broker or self.broker,  # type: ignore[arg-type]
            EXCHANGE,
            OrderMessages(self.system.service),
            batch=batch,
        )


class CrashAfterPublish:
    """Publishes, then 'dies' before the relay can move its checkpoint."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner

    async def declare_exchange(self, exchange: str) -> None:
        await self.inner.declare_exchange(exchange)

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        await self.inner.publish(exchange, messages)
        raise ConnectionResetError("relay killed after the confirms, before the checkpoint")


class ExchangeGone:
    async def declare_exchange(self, exchange: str) -> None:
        return None

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        raise Unroutable(f"exchange {exchange!r} does not exist")  # names no message


def _figures(relay: OutboxRelay) -> dict[str, float]:
    """What /metrics would show for this relay."""
    from ordermesh.messaging.metrics import RelayCollector

    return {
        metric.name.removeprefix("ordermesh_outbox_"): sample.value
        for metric in RelayCollector(lambda: [relay]).collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


class OutboxRelayContract:
    """Every test an OutboxRelay adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def env(self, database_url: str) -> AsyncIterator[Env]:
        system = await build_order_system(database_url)
        broker = MemoryBroker()
        await broker.declare_exchange(EXCHANGE)
        if database_url.startswith("memory://"):
            yield Env(system, MemoryCheckpoints(), broker)
        else:
            db = await connect(database_url)
            yield Env(system, await SqlCheckpoints.open(db), broker)
            await db.close()
        await broker.close()
        await system.close()

    async def test_every_order_event_becomes_one_message_in_order(self, env: Env) -> None:
        seen = Collector()
        await env.broker.subscribe("audit", EXCHANGE, ["order.#"], seen, prefetch=1)
        service = env.system.service
        order = await service.create_order("u1", "u1@example.com", "EUR", LINES)
        await service.change(order["id"], lambda o, now: o.record_payment("p1", 300, "EUR", now))
        await service.change(order["id"], lambda o, now: o.reserve_stock("r1", now))
        await service.change(order["id"], lambda o, now: o.ship("TRACK-9", now))
        while await env.relay().step():
            pass
        got = await seen.wait_for(4)
        assert [d.message.routing_key for d in got] == [
            "order.created",
            "order.paid",
            "order.stock_reserved",
            "order.shipped",
        ]
        bodies = [d.message.payload() for d in got]
        assert {b["id"] for b in bodies} == {order["id"]} and bodies[0]["user_email"] == "u1@example.com"
        assert bodies[-1]["tracking_id"] == "TRACK-9" and bodies[-1]["status"] == "shipped"
        history = await service.history(order["id"], None)
        stored = await env.system.store.read_stream(f"order-{order['id']}")
        assert [d.message.message_id for d in got] == [e.event_id for e in stored]
        assert len(history) == 4
        status = await env.relay().status()
        assert status.pending == 0 and status.position == status.head

    async def test_a_relay_killed_mid_batch_republishes_and_the_inbox_absorbs_it(self, env: Env) -> None:
        inbox, effects = MemoryInbox("mailer"), []
        seen = Collector()

        async def handler(d: Delivery) -> None:
            async def effect(_: object) -> None:
                effects.append(d.message.message_id)

            await inbox.once(d.message.message_id, effect)
            await seen(d)

        await env.broker.subscribe("mailer", EXCHANGE, ["order.*"], handler, prefetch=1)
        service = env.system.service
        ids = [(await service.create_order("u1", "u1@example.com", "EUR", LINES))["id"] for _ in range(5)]

        with pytest.raises(ConnectionResetError):
            await env.relay(CrashAfterPublish(env.broker), batch=3).step()
        while await env.relay(batch=3).step():  # the restarted relay
            pass
        await seen.wait_for(8)  # 3 published twice + 5
        created = [d.message.payload()["id"] for d in seen.got]
        assert created[:3] == ids[:3] and created[3:] == ids, "everything published, in order"
        assert sorted(effects) == sorted(set(effects)) and len(effects) == 5, "one effect per message"

    async def test_unroutable_is_an_error_the_relay_reports_and_retries(self, env: Env) -> None:
        await env.system.service.create_order("u1", "u1@example.com", "EUR", LINES)
        relay = env.relay()
        with pytest.raises(Unroutable):
            await relay.step()
        assert (await relay.status()).pending == 1  # nothing was marked sent
        seen = Collector()
        await env.broker.subscribe("late", EXCHANGE, ["order.created"], seen)
        assert await relay.step() == 1
        await seen.wait_for(1)

    async def test_with_a_parking_lot_unroutable_messages_wait_and_the_rest_flows(self, env: Env) -> None:
        from ordermesh.messaging.relay import ParkingLot

        parking = await ParkingLot.open(env.system.db)
        relay = OutboxRelay(
            env.system.store,
            env.checkpoints,
            env.broker,
            EXCHANGE,
            OrderMessages(env.system.service),
            parking=parking,
        )
        created = Collector()
        await env.broker.subscribe("mailer", EXCHANGE, ["order.created"], created)
        service = env.system.service
        order = await service.create_order("u1", "u1@example.com", "EUR", LINES)
        await service.change(order["id"], lambda o, now: o.record_payment("p1", 300, "EUR", now))
        second = await service.create_order("u1", "u1@example.com", "EUR", LINES)
        while await relay.step():
            pass
        assert [d.message.payload()["id"] for d in await created.wait_for(2)] == [order["id"], second["id"]]
        (parked,) = await parking.all()
        assert parked.message.routing_key == "order.paid" and "order.paid" in parked.reason
        assert (await relay.status()).pending == 0

        assert _figures(relay) == {"position": 3, "published": 2, "parked": 1, "failures": 0}

        paid = Collector()
        await env.broker.subscribe("payments", EXCHANGE, ["order.paid"], paid)
        assert await relay.replay_parked() == (1, 0)
        assert _figures(relay) == {"position": 3, "published": 3, "parked": 0, "failures": 0}
        (delivery,) = await paid.wait_for(1)
        assert delivery.message.message_id == parked.message.message_id
        assert delivery.message.payload()["status"] == "paid"

    async def test_run_keeps_two_batches_in_flight_and_publishes_everything_in_order(self, env: Env) -> None:
        seen = Collector()
        await env.broker.subscribe("audit", EXCHANGE, ["order.#"], seen, prefetch=1)
        service = env.system.service
        for n in range(7):
            order = await service.create_order("u1", "u1@example.com", "EUR", LINES)
            await service.change(order["id"], lambda o, now, n=n: o.cancel(f"reason {n}", now))
        relay = env.relay(batch=3)  # 14 events: five batches, the last one short
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop, idle_timeout=0.05))
        try:
            got = await seen.wait_for(14)
        finally:
            stop.set()
            await within(running)
        stored = await env.system.store.read_all(0, 100)
        assert [d.message.message_id for d in got] == [e.event_id for e in stored]
        assert (await relay.status()).pending == 0 and relay.failures == 0

    async def test_parked_messages_are_replayed_in_event_order(self, env: Env) -> None:
        from ordermesh.messaging.relay import ParkingLot

        parking = await ParkingLot.open(env.system.db)
        relay = OutboxRelay(
            env.system.store,
            env.checkpoints,
            env.broker,
            EXCHANGE,
            OrderMessages(env.system.service),
            parking=parking,
        )
        await env.broker.subscribe("mailer", EXCHANGE, ["order.created"], Collector())
        service = env.system.service
        orders = [await service.create_order("u1", "u1@example.com", "EUR", LINES) for _ in range(6)]
        for order in reversed(orders):
            await service.change(order["id"], lambda o, now: o.record_payment("p", 300, "EUR", now))
        while await relay.step():
            pass
        paid_in_order = [o["id"] for o in reversed(orders)]
        assert [p.message.payload()["id"] for p in await parking.all()] == paid_in_order

        paid = Collector()
        await env.broker.subscribe("payments", EXCHANGE, ["order.paid"], paid, prefetch=1)
        assert await relay.replay_parked() == (6, 0)
        assert [d.message.payload()["id"] for d in await paid.wait_for(6)] == paid_in_order

    async def test_an_unroutable_batch_naming_no_message_is_not_parked_but_retried(self, env: Env) -> None:
        from ordermesh.messaging.relay import ParkingLot

        parking = await ParkingLot.open(env.system.db)
        relay = OutboxRelay(
            env.system.store,
            env.checkpoints,
            ExchangeGone(),  # type: ignore[arg-type]
            EXCHANGE,
            OrderMessages(env.system.service),
            parking=parking,
        )
        await env.system.service.create_order("u1", "u1@example.com", "EUR", LINES)
        with pytest.raises(Unroutable):
            await relay.step()
        assert await parking.all() == [] and (await relay.status()).pending == 1

    async def test_an_unforeseen_error_does_not_stop_the_relay(self, env: Env) -> None:
        broker = FailsOnce(RuntimeError("the client library failed in an unforeseen way"))
        await broker.declare_exchange(EXCHANGE)
        seen = Collector()
        await broker.subscribe("audit", EXCHANGE, ["order.#"], seen)
        await env.system.service.create_order("u1", "u1@example.com", "EUR", LINES)
        relay = env.relay(broker)
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop, idle_timeout=0.05))
        try:
            await seen.wait_for(1)  # published after the failure, from the unmoved checkpoint
        finally:
            stop.set()
            await within(running)
            await broker.close()
        assert relay.failures == 1 and relay.last_error is None  # cleared by the success

    async def test_a_fact_nobody_asked_for_is_dropped_from_the_bus_not_parked(self, env: Env) -> None:
        """The order service's relay parks only what its own consumers need (MUST_ARRIVE): under a
        saga every order records half a dozen lifecycle events, and parking the ones no queue wants
        would grow the replay set forever. They stay in the event store."""
        from ordermesh.contracts.orders import MUST_ARRIVE
        from ordermesh.messaging.relay import ParkingLot

        parking = await ParkingLot.open(env.system.db)
        relay = OutboxRelay(
            env.system.store,
            env.checkpoints,
            env.broker,
            EXCHANGE,
            OrderMessages(env.system.service),
            parking=parking,
            must_arrive=lambda message: message.routing_key in MUST_ARRIVE,
        )
        service = env.system.service
        order = await service.create_order("u1", "u1@example.com", "EUR", LINES)  # nobody bound yet
        await service.change(order["id"], lambda o, now: o.record_payment("p1", 300, "EUR", now))
        while await relay.step():
            pass
        assert [p.message.routing_key for p in await parking.all()] == ["order.created"]  # waits
        assert relay.dropped == 1 and relay.parked == 1  # order.paid: gone from the bus
        assert len(await service.history(order["id"], None)) == 2  # and still in the store

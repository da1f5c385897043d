"""The shipping service on SQLite and PostgreSQL: one shipment per order whatever the
concurrency, each change and its message committed together, and a cancellation always wins.

To check an adapter, subclass ``ShippingStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (connected with ``ordermesh.db.connect`` for the shipping
service and its outbox). ``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones.
An adapter no URL names overrides the ``env`` fixture instead, to hand each test an ``Env``.

    class TestSqliteShippingStore(OnSqlite, ShippingStoreContract):
        pass
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from ordermesh.clock import FakeClock
from ordermesh.contracts import shipping as contract
from ordermesh.db import SqlDb, Tx, connect
from ordermesh.errors import DomainError, NotFound, ValidationError
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.outbox import OutboxPublisher, SqlOutbox
from ordermesh.messaging.port import Message
from ordermesh.services.shipping.domain import Address, Item
from ordermesh.services.shipping.service import ShippingService, message_id
from tests.helpers import Collector

ITEMS = [Item("SKU-1", 2), Item("SKU-2", 1)]


@dataclass
class Env:
    db: SqlDb
    outbox: SqlOutbox
    service: ShippingService
    clock: FakeClock

    async def messages(self) -> list[Message]:
        return [o.message for o in await self.outbox.pending(1000)]


class FailingOutbox(SqlOutbox):
    """Writes the messages, then the transaction fails (as a crash before the commit would)."""

    async def add(self, tx: Tx, exchange: str, messages: list[Message]) -> None:  # type: ignore[override]
        await super().add(tx, exchange, messages)
        raise RuntimeError("crash before commit")


class ShippingStoreContract:
    """Every test a ShippingStore adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def env(self, database_url: str) -> AsyncIterator[Env]:
        db = await connect(database_url)
        clock = FakeClock()
        outbox = await SqlOutbox.open(db)
        service = await ShippingService.open(db, outbox, clock)
        yield Env(db, outbox, service, clock)
        await db.close()

    async def test_schedule_then_the_same_again_is_the_same_shipment_and_one_message(self, env: Env) -> None:
        first, created = await env.service.schedule("o-1", ITEMS)
        assert created and first.status == "scheduled" and first.tracking_id
        assert first.scheduled_at == env.clock.now()
        again, created_again = await env.service.schedule("o-1", list(reversed(ITEMS)))
        assert again == first and not created_again
        assert await env.service.get("o-1") == first
        (message,) = await env.messages()
        assert message.routing_key == contract.SHIPMENT_SCHEDULED
        assert message.message_id == message_id(contract.SHIPMENT_SCHEDULED, "o-1")
        assert message.correlation_id == "o-1"
        body = contract.ShipmentScheduled.model_validate(message.payload())
        assert body.tracking_id == first.tracking_id and body.shipment_id == first.shipment_id
        assert [(i.sku, i.quantity) for i in body.items] == [("SKU-1", 2), ("SKU-2", 1)]

    async def test_the_address_is_kept_and_part_of_what_a_repeat_must_match(self, env: Env) -> None:
        home = Address("Ada", "1 Road", "Town", "1000", "DE", line2="Flat 2")
        shipment, _ = await env.service.schedule("o-1", ITEMS, home)
        assert (await env.service.get("o-1")).address == home == shipment.address
        with pytest.raises(DomainError, match="another address"):
            await env.service.schedule("o-1", ITEMS)

    async def test_other_items_for_the_same_order_are_refused_and_nothing_changes(self, env: Env) -> None:
        first, _ = await env.service.schedule("o-1", ITEMS)
        with pytest.raises(DomainError, match="order o-1 already has a shipment with other items"):
            await env.service.schedule("o-1", [Item("SKU-1", 3)])
        assert await env.service.get("o-1") == first
        assert len(await env.messages()) == 1

    async def test_twenty_concurrent_schedules_make_one_shipment_and_one_message(self, env: Env) -> None:
        results = await asyncio.gather(*(env.service.schedule("o-1", ITEMS) for _ in range(20)))
        assert len({s for s, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert [m.routing_key for m in await env.messages()] == [contract.SHIPMENT_SCHEDULED]

    async def test_cancel_is_idempotent_and_announced_once(self, env: Env) -> None:
        scheduled, _ = await env.service.schedule("o-1", ITEMS)
        env.clock.advance(60)
        cancelled, changed = await env.service.cancel("o-1")
        assert changed and cancelled.status == "cancelled" and cancelled.cancelled_at == env.clock.now()
        assert cancelled.tracking_id == scheduled.tracking_id and cancelled.items == scheduled.items
        again, changed_again = await env.service.cancel("o-1")
        assert again == cancelled and not changed_again
        keys = [m.routing_key for m in await env.messages()]
        assert keys == [contract.SHIPMENT_SCHEDULED, contract.SHIPMENT_CANCELLED]
        body = contract.ShipmentCancelled.model_validate((await env.messages())[1].payload())
        assert body.cancelled_at == env.clock.now() and body.tracking_id == scheduled.tracking_id

    async def test_concurrent_cancels_announce_once(self, env: Env) -> None:
        await env.service.schedule("o-1", ITEMS)
        results = await asyncio.gather(*(env.service.cancel("o-1") for _ in range(10)))
        assert sum(changed for _, changed in results) == 1
        assert len({s for s, _ in results}) == 1
        assert [m.routing_key for m in await env.messages()].count(contract.SHIPMENT_CANCELLED) == 1

    async def test_a_cancel_before_the_schedule_wins(self, env: Env) -> None:
        tombstone, changed = await env.service.cancel("o-1")
        assert changed and tombstone.status == "cancelled" and tombstone.tracking_id is None
        assert tombstone.items == () and tombstone.scheduled_at is None
        assert await env.messages() == []  # nothing was scheduled: nothing to announce
        with pytest.raises(DomainError, match="cancelled"):
            await env.service.schedule("o-1", ITEMS)
        assert await env.service.get("o-1") == tombstone
        assert (await env.service.cancel("o-1")) == (tombstone, False)
        assert await env.messages() == []

    async def test_a_schedule_racing_a_cancel_ends_cancelled_either_way(self, env: Env) -> None:
        for n in range(10):
            order = f"race-{n}"
            outcomes = await asyncio.gather(
                env.service.schedule(order, ITEMS), env.service.cancel(order), return_exceptions=True
            )
            assert (await env.service.get(order)).status == "cancelled"
            if isinstance(outcomes[0], BaseException):  # the cancel came first: the schedule was refused
                assert isinstance(outcomes[0], DomainError)
        # Every scheduled shipment was announced as cancelled too: none is left half-way.
        keys = [m.routing_key for m in await env.messages()]
        assert keys.count(contract.SHIPMENT_SCHEDULED) == keys.count(contract.SHIPMENT_CANCELLED)

    async def test_unknown_orders_and_bad_ids(self, env: Env) -> None:
        with pytest.raises(NotFound, match="order o-404 has no shipment"):
            await env.service.get("o-404")
        with pytest.raises(ValidationError) as caught:
            await env.service.get("no spaces")
        assert [v.field for v in caught.value.violations] == ["order_id"]
        with pytest.raises(ValidationError):
            await env.service.cancel("")

    async def test_state_and_message_commit_together_or_not_at_all(self, env: Env) -> None:
        failing = ShippingService(env.db, FailingOutbox(env.db), env.clock)
        with pytest.raises(RuntimeError):
            await failing.schedule("o-1", ITEMS)
        with pytest.raises(NotFound):
            await env.service.get("o-1")  # no shipment without its message...
        assert await env.messages() == []  # ...and no message without its shipment

        await env.service.schedule("o-1", ITEMS)
        with pytest.raises(RuntimeError):
            await failing.cancel("o-1")
        assert (await env.service.get("o-1")).status == "scheduled"
        assert [m.routing_key for m in await env.messages()] == [contract.SHIPMENT_SCHEDULED]

    async def test_a_taken_tracking_id_is_replaced(self, env: Env) -> None:
        repeating: Iterator[str] = itertools.chain(["OMAAAAAAAAAAAA"] * 3, ["OMBBBBBBBBBBBB"])
        service = ShippingService(env.db, env.outbox, env.clock, tracking_ids=lambda: next(repeating))
        first, _ = await service.schedule("o-1", ITEMS)
        second, created = await service.schedule("o-2", ITEMS)
        assert created and (first.tracking_id, second.tracking_id) == ("OMAAAAAAAAAAAA", "OMBBBBBBBBBBBB")

    async def test_published_messages_reach_a_consumer_with_their_envelope(self, env: Env) -> None:
        broker = MemoryBroker()
        await broker.declare_exchange(contract.EXCHANGE)
        seen = Collector()
        await broker.subscribe("audit", contract.EXCHANGE, ["shipment.#"], seen)
        await env.service.schedule("o-1", ITEMS)
        await env.service.cancel("o-1")
        await OutboxPublisher(env.outbox, broker).step()
        got = await seen.wait_for(2)
        assert [d.message.routing_key for d in got] == list(contract.ROUTING_KEYS)
        assert {d.message.correlation_id for d in got} == {"o-1"}
        assert await env.outbox.count() == 0
        await broker.close()

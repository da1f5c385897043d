"""The transactional outbox table on SQLite and PostgreSQL: messages leave only with their
transaction's commit, in order, are deleted once confirmed, and nothing is lost on the way.

To check an adapter, subclass ``TableOutboxContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (connected with ``ordermesh.db.connect`` for a
``SqlOutbox``). ``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An
adapter no URL names overrides the ``env`` fixture instead, to hand each test an ``Env``.

    class TestSqliteTableOutbox(OnSqlite, TableOutboxContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from ordermesh.db import SqlDb, connect
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.outbox import OutboxPublisher, SqlOutbox
from ordermesh.messaging.port import Message
from tests.helpers import Collector, FailsOnce, within


@dataclass
class Env:
    db: SqlDb
    outbox: SqlOutbox
    broker: MemoryBroker
    seen: Collector


def reserved(sku: str, n: int) -> Message:
    return Message.json("stock.reserved", {"sku": sku, "n": n})


async def reserve(env: Env, sku: str, n: int, *, fail: bool = False) -> None:
    async with env.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO stock (sku, reserved) VALUES ($1, $2) "
            "ON CONFLICT (sku) DO UPDATE SET reserved = stock.reserved + $2",
            sku,
            n,
        )
        await env.outbox.add(tx, "inventory", [reserved(sku, n)])
        if fail:
            raise RuntimeError("the business rule said no")


class Crashing(MemoryBroker):
    """Confirms the publish, then the publisher 'dies' before it can delete the rows."""

    async def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        await super().publish(exchange, messages)
        raise asyncio.CancelledError  # as a kill at that point would


class TableOutboxContract:
    """Every test a TableOutbox adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def env(self, database_url: str) -> AsyncIterator[Env]:
        db = await connect(database_url)
        await db.execute("CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, reserved integer NOT NULL)")
        broker = MemoryBroker()
        await broker.declare_exchange("inventory")
        seen = Collector()
        await broker.subscribe("audit", "inventory", ["stock.#"], seen, prefetch=1)
        yield Env(db, await SqlOutbox.open(db), broker, seen)
        await broker.close()
        await db.close()

    async def test_messages_leave_with_their_commit_only_and_in_order(self, env: Env) -> None:
        await reserve(env, "A", 1)
        with pytest.raises(RuntimeError):
            await reserve(env, "B", 5, fail=True)  # rolled back: state and message both gone
        await reserve(env, "A", 2)
        publisher = OutboxPublisher(env.outbox, env.broker)
        assert await publisher.step() == 2
        assert [d.message.payload() for d in await env.seen.wait_for(2)] == [
            {"sku": "A", "n": 1},
            {"sku": "A", "n": 2},
        ]
        assert await env.outbox.count() == 0 and await publisher.step() == 0  # deleted once confirmed
        assert publisher.published == 2

    async def test_a_publisher_killed_after_the_confirm_publishes_again_with_the_same_ids(
        self, env: Env
    ) -> None:
        await reserve(env, "A", 1)
        crashing = Crashing()
        first = Collector()
        await crashing.subscribe("audit", "inventory", ["stock.#"], first)
        with pytest.raises(asyncio.CancelledError):
            await OutboxPublisher(env.outbox, crashing).step()
        (published,) = await first.wait_for(1)
        await crashing.close()
        assert await env.outbox.count() == 1  # not deleted: as far as it knows, not confirmed
        await OutboxPublisher(env.outbox, env.broker).step()
        assert await env.outbox.count() == 0
        (again,) = await env.seen.wait_for(1)
        assert again.message.message_id == published.message.message_id  # the inbox sees a duplicate

    async def test_unroutable_messages_are_parked_and_the_rest_flows(self, env: Env) -> None:
        async with env.db.transaction() as tx:
            await env.outbox.add(
                tx, "inventory", [reserved("A", 1), Message.json("nobody.listens", {}), reserved("A", 2)]
            )
        publisher = OutboxPublisher(env.outbox, env.broker)
        assert await publisher.step() == 3
        assert [d.message.payload()["n"] for d in await env.seen.wait_for(2)] == [1, 2]
        (stuck,) = await env.outbox.parked()
        assert stuck.message.routing_key == "nobody.listens" and "reached no queue" in (stuck.parked or "")
        assert publisher.parked == 1

        late = Collector()
        await env.broker.subscribe("late", "inventory", ["nobody.#"], late)
        assert await publisher.replay_parked() == 1 and await publisher.step() == 1
        assert [d.message.routing_key for d in await late.wait_for(1)] == ["nobody.listens"]
        assert await env.outbox.parked() == [] and await env.outbox.count() == 0

    async def test_run_publishes_on_wake_and_survives_a_failing_broker(self, env: Env) -> None:
        flaky = FailsOnce(ConnectionError("broker restarting"))
        await flaky.declare_exchange("inventory")
        seen = Collector()
        await flaky.subscribe("audit", "inventory", ["stock.#"], seen)
        publisher = OutboxPublisher(env.outbox, flaky)
        stop = asyncio.Event()
        running = asyncio.create_task(publisher.run(stop, poll_interval=30))  # only wake() prompts it
        try:
            await reserve(env, "A", 1)
            env.outbox.wake()
            await seen.wait_for(1)
        finally:
            stop.set()
            env.outbox.wake()
            await within(running)
            await flaky.close()
        assert publisher.failures == 1 and publisher.last_error is None

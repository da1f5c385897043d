"""The saga log and engine, on every store (memory, SQLite, PostgreSQL), with an injected clock:
timeouts and deadlines without sleeping, resumption after a crash, compensation last step first.

To check an adapter, subclass ``SagaStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``memory://`` is the ``MemorySagaStore``, any other URL is
connected with ``ordermesh.db.connect`` for a ``SqlSagaStore``). ``OnMemory``, ``OnSqlite`` and
``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names overrides the
``store`` fixture instead, to hand each test a ``SagaStore``.

    class TestSqliteSagaStore(OnSqlite, SagaStoreContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from ordermesh.clock import FakeClock
from ordermesh.db import connect
from ordermesh.errors import DomainError, InfrastructureError
from ordermesh.resilience import CircuitOpen
from ordermesh.saga import (
    MemorySagaStore,
    SagaContext,
    SagaDefinition,
    SagaPolicy,
    SagaRecord,
    SagaRunner,
    SagaStore,
    SqlSagaStore,
    Step,
    StepFailed,
)
from tests.helpers import eventually


class World:
    """Downstream effects of the steps, and scripts for how each call goes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.effects: dict[str, int] = {"charged": 0, "reserved": 0, "shipped": 0}
        self.script: dict[str, list[Any]] = {}  # name -> outcomes to play, then success
        self.called = asyncio.Event()

    def step(self, name: str, effect: str, sign: int) -> Any:
        async def act(ctx: SagaContext) -> str:
            self.calls.append(name)
            self.called.set()
            plan = self.script.get(name)
            if plan:
                outcome = plan.pop(0)
                if outcome == "hang":
                    await asyncio.Event().wait()
                if outcome == "acted-then-lost":  # took effect downstream, the answer was lost
                    self.effects[effect] += sign
                    raise InfrastructureError("connection reset")
                if isinstance(outcome, BaseException):
                    raise outcome
            self.effects[effect] += sign
            ctx.produced[f"{effect}_by"] = name
            return f"{name} ok"

        return act

    def definition(self) -> SagaDefinition:
        return SagaDefinition(
            "order",
            (
                Step("pay", "payments", self.step("pay", "charged", 1), self.step("refund", "charged", -1)),
                Step(
                    "reserve",
                    "inventory",
                    self.step("reserve", "reserved", 1),
                    self.step("release", "reserved", -1),
                ),
                Step(
                    "ship",
                    "shipping",
                    self.step("ship", "shipped", 1),
                    self.step("cancel-shipment", "shipped", -1),
                ),
            ),
            finish=Step("cancel-order", "orders", self.step("cancel-order", "shipped", 0)),
        )


def runner_for(store: SagaStore, world: World, clock: FakeClock, **policy: float) -> SagaRunner:
    return SagaRunner(store, {"order": world.definition()}, clock, SagaPolicy(**policy))


class SagaStoreContract:
    """Every test a SagaStore adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[SagaStore]:
        if database_url == "memory://":
            yield MemorySagaStore()
            return
        db = await connect(database_url)
        try:
            yield await SqlSagaStore.open(db)
        finally:
            await db.close()

    async def test_a_saga_runs_every_step_and_completes(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        record = await runner_for(store, world, clock).start("o-1", "order", {"total": 100})
        assert record.state == "completed" and record.terminal
        assert world.calls == ["pay", "reserve", "ship"]
        assert [(s.name, s.outcome, s.attempts) for s in record.steps] == [
            ("pay", "succeeded", 1),
            ("reserve", "succeeded", 1),
            ("ship", "succeeded", 1),
        ]
        assert record.data == {
            "total": 100,
            "charged_by": "pay",
            "reserved_by": "reserve",
            "shipped_by": "ship",
        }
        assert (await store.get("o-1")) == record
        # Starting it again (the event that starts it, delivered twice) changes nothing.
        again = await runner_for(store, world, clock).start("o-1", "order", {"total": 999})
        assert again == record and world.calls == ["pay", "reserve", "ship"]

    async def test_a_business_no_compensates_what_was_done_last_first(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["reserve"] = [StepFailed("SKU-1 is short")]
        record = await runner_for(store, world, clock).start("o-2", "order", {})
        assert record.state == "compensated" and record.reason == "SKU-1 is short"
        assert world.calls == ["pay", "reserve", "refund", "cancel-order"]
        assert world.effects == {"charged": 0, "reserved": 0, "shipped": 0}
        assert [(s.name, s.kind, s.outcome) for s in record.steps] == [
            ("pay", "action", "succeeded"),
            ("reserve", "action", "failed"),
            ("pay", "compensation", "succeeded"),
            ("cancel-order", "compensation", "succeeded"),
        ]
        view = record.to_json()
        assert [c["name"] for c in view["compensations"]] == ["pay", "cancel-order"]

    async def test_an_outage_is_retried_on_durable_wake_ups_within_the_deadline(
        self, store: SagaStore
    ) -> None:
        world, clock = World(), FakeClock()
        world.script["pay"] = [InfrastructureError("payments down"), InfrastructureError("payments down")]
        runner = runner_for(store, world, clock, retry_initial=1.0, deadline=60.0)
        record = await runner.start("o-3", "order", {})
        assert record.state == "running" and record.wake_at == clock.now() + timedelta(seconds=1)
        assert await store.due(clock.now()) == []  # not before its wake-up time
        clock.advance(1)
        assert await store.due(clock.now()) == ["o-3"]
        record = await runner.drive("o-3")  # second failure: waits twice as long
        assert record.step("pay") is not None and record.step("pay").attempts == 2  # type: ignore[union-attr]
        clock.advance(2)
        record = await runner.drive("o-3")
        assert record.state == "completed" and record.step("pay").attempts == 3  # type: ignore[union-attr]
        assert world.effects["charged"] == 1

    async def test_an_open_breaker_parks_the_step_until_it_lets_a_probe_through(
        self, store: SagaStore
    ) -> None:
        world, clock = World(), FakeClock()
        open_for = [CircuitOpen("payments is unavailable", "payments", retry_after=7.0)] * 2
        world.script["pay"] = list(open_for)
        runner = runner_for(store, world, clock, retry_initial=0.2, deadline=60.0)
        record = await runner.start("o-park", "order", {})
        pay = record.step("pay")
        assert record.state == "running" and pay is not None and pay.outcome == "parked"
        assert "payments is unavailable" in pay.detail
        # Parked until the breaker lets a probe through (7 s), not on the retry backoff (0.2 s).
        assert record.wake_at == clock.now() + timedelta(seconds=7)
        clock.advance(7)
        record = await runner.drive("o-park")
        assert record.step("pay").outcome == "parked"  # type: ignore[union-attr]
        clock.advance(7)
        record = await runner.drive("o-park")
        assert record.state == "completed" and world.effects["charged"] == 1

    async def test_a_breaker_open_past_the_deadline_compensates_and_the_undo_waits_for_it(
        self,
        store: SagaStore,
    ) -> None:
        world, clock = World(), FakeClock()
        world.script["reserve"] = [CircuitOpen("inventory is unavailable", "inventory", retry_after=5.0)] * 3
        world.script["refund"] = [CircuitOpen("payments is unavailable", "payments", retry_after=5.0)]
        runner = runner_for(store, world, clock, deadline=12.0)
        record = await runner.start("o-late", "order", {})
        while record.state == "running":
            clock.advance(5)
            record = await runner.drive("o-late")
        assert (
            record.state == "compensating" and "stayed unavailable past the saga's deadline" in record.reason
        )
        assert record.step("pay", "compensation").outcome == "parked"  # type: ignore[union-attr]
        clock.advance(5)
        record = await runner.drive("o-late")
        assert record.state == "compensated" and world.effects["charged"] == 0
        # The parked reserve may have acted (an earlier attempt): it is released too, before the refund.
        assert world.calls[-4:] == [
            "release",
            "refund",
            "refund",
            "cancel-order",
        ]  # refund: parked, then done

    async def test_past_its_deadline_a_saga_compensates_even_a_step_that_may_have_acted(
        self, store: SagaStore
    ) -> None:
        world, clock = World(), FakeClock()
        # Reserve took effect downstream, but its answer never came back; then inventory stays down.
        world.script["reserve"] = ["acted-then-lost", *[InfrastructureError("inventory down")] * 50]
        runner = runner_for(store, world, clock, retry_initial=1.0, retry_max=4.0, deadline=10.0)
        record = await runner.start("o-4", "order", {})
        while not record.terminal:
            clock.advance(4)
            record = await runner.drive("o-4")
        assert record.state == "compensated" and "deadline" in record.reason
        # Released although no attempt ever answered: compensations are idempotent, so undo it.
        assert "release" in world.calls and world.effects == {"charged": 0, "reserved": 0, "shipped": 0}
        assert world.calls.index("release") < world.calls.index("refund")

    async def test_a_step_that_hangs_is_cut_by_the_step_timeout(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["ship"] = ["hang"]
        runner = runner_for(store, world, clock, step_timeout=0.05, retry_initial=1.0)
        record = await runner.start("o-5", "order", {})
        assert record.step("ship").detail == "timed out"  # type: ignore[union-attr]
        clock.advance(1)
        assert (await runner.drive("o-5")).state == "completed"

    async def test_compensations_are_retried_until_they_succeed(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["ship"] = [StepFailed("no carrier for that address")]
        world.script["refund"] = [InfrastructureError("payments down")] * 3
        runner = runner_for(store, world, clock, retry_initial=1.0, deadline=1.0)  # past the deadline too
        record = await runner.start("o-6", "order", {})
        while not record.terminal:
            clock.advance(5)
            record = await runner.drive("o-6")
        assert record.state == "compensated"
        assert record.step("pay", "compensation").attempts == 4  # type: ignore[union-attr]
        assert world.effects == {"charged": 0, "reserved": 0, "shipped": 0}

    async def test_a_compensation_refused_for_good_fails_the_saga_for_an_operator(
        self, store: SagaStore
    ) -> None:
        world, clock = World(), FakeClock()
        world.script["reserve"] = [StepFailed("short")]
        world.script["refund"] = [DomainError("the card was closed")]
        record = await runner_for(store, world, clock).start("o-7", "order", {})
        assert record.state == "failed" and "the card was closed" in record.reason
        assert [r.saga_id for r in await store.list("failed")] == ["o-7"]

    async def test_a_crash_mid_step_resumes_with_the_step_sent_again(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["reserve"] = ["hang"]
        runner = runner_for(store, world, clock)
        driving = asyncio.create_task(runner.start("o-8", "order", {}))
        while "reserve" not in world.calls:
            world.called.clear()
            await world.called.wait()
        driving.cancel()  # the process dies while reserve is in flight
        await asyncio.gather(driving, return_exceptions=True)
        crashed = await store.get("o-8")
        assert crashed is not None and crashed.state == "running"
        assert crashed.step("reserve").outcome == "running"  # type: ignore[union-attr]
        # A new process: the saga is due at once and resumes; reserve is re-sent (idempotent
        # downstream), pay is not.
        fresh = runner_for(store, world, clock)
        assert await store.due(clock.now()) == ["o-8"]
        record = await fresh.drive("o-8")
        assert record.state == "completed" and world.calls == ["pay", "reserve", "reserve", "ship"]
        assert record.step("reserve").attempts == 2  # type: ignore[union-attr]

    async def test_two_drivers_never_both_move_a_saga(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["pay"] = [InfrastructureError("down")]
        record = await runner_for(store, world, clock).start("o-9", "order", {})  # waiting to retry
        first, second = replace(record, reason="first"), replace(record, reason="second")
        assert await store.save(first) is not None
        assert await store.save(second) is None  # written from the same version: refused
        stored = await store.get("o-9")
        assert stored is not None and stored.reason == "first" and stored.version == record.version + 1

    async def test_the_runner_drives_what_is_due_until_stopped(self, store: SagaStore) -> None:
        world, clock = World(), FakeClock()
        world.script["pay"] = [InfrastructureError("down")]
        runner = runner_for(store, world, clock, retry_initial=1.0)
        await runner.start("o-11", "order", {})
        stop = asyncio.Event()
        loop = asyncio.create_task(runner.run(stop, poll=0.01))
        clock.advance(1)
        runner.kick()

        async def ended() -> SagaRecord | None:
            record = await store.get("o-11")
            return record if record is not None and record.terminal else None

        try:
            record = await eventually(ended, what="the runner's own task ends the saga")
        finally:
            stop.set()
            await loop
        assert record.state == "completed"

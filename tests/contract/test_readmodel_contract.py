"""Read models over every backend: exactly-once projection, rebuild beside the live model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from ordermesh.eventstore import NewEvent, StoredEvent
from ordermesh.readmodel.projection import DocBatch, Projector
from ordermesh.services.orders.runtime import OrderSystem, build_order_system


class Counter:
    """Counts events per stream: any double application shows as a count too high."""

    name = "counter"

    async def apply(self, event: StoredEvent, docs: DocBatch) -> None:
        doc = await docs.get(event.stream_id) or {"n": 0}
        doc["n"] += 1
        docs.put(event.stream_id, doc)


@dataclass
class Env:
    system: OrderSystem

    def projector(self, page_size: int = 7) -> Projector:
        return Projector(self.system.store, self.system.docs, Counter(), page_size)

    async def append(self, streams: int, each: int) -> None:
        for s in range(streams):
            for i in range(each):
                await self.system.store.append(f"s{s}", [NewEvent("E", {"i": i})], i)

    async def counts(self) -> dict[str, int]:
        out = {}
        for s in range(10):
            raw = await self.system.docs.get("counter", f"s{s}")
            if raw is not None:
                out[f"s{s}"] = orjson.loads(raw)["n"]
        return out


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    system = await build_order_system(database_url)
    yield Env(system)
    await system.close()


async def test_racing_projectors_apply_every_event_exactly_once(env: Env) -> None:
    await env.append(streams=4, each=15)
    await asyncio.gather(*(env.projector().catch_up() for _ in range(3)))
    assert await env.counts() == {f"s{s}": 15 for s in range(4)}
    state = await env.system.docs.state("counter")
    assert state.position == 60


async def test_a_failed_page_is_retried_not_half_applied(env: Env) -> None:
    await env.append(streams=1, each=10)

    class Flaky(Counter):
        calls = 0

        async def apply(self, event: StoredEvent, docs: DocBatch) -> None:
            Flaky.calls += 1
            if Flaky.calls == 5:
                raise RuntimeError("projection bug on the 5th event")
            await super().apply(event, docs)

    flaky = Projector(env.system.store, env.system.docs, Flaky(), page_size=100)
    with pytest.raises(RuntimeError):
        await flaky.catch_up()
    assert await env.counts() == {}, "nothing of the failed page may be committed"
    await flaky.catch_up()
    assert await env.counts() == {"s0": 10}


async def test_live_projector_follows_new_events(env: Env) -> None:
    projector = env.projector()
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop, idle_timeout=0.05))
    head = (await env.system.store.append("s0", [NewEvent("E", {})], 0)).position
    assert await projector.wait_until(head, timeout=10)
    assert await env.counts() == {"s0": 1}
    stop.set()
    await task


async def test_rebuild_serves_the_old_model_until_the_new_one_is_complete(env: Env) -> None:
    await env.append(streams=2, each=20)
    await env.projector().catch_up()
    # Corrupt the live model, as a buggy projection would have.
    live = await env.system.docs.state("counter")
    await env.system.docs.commit(
        "counter", live.generation, live.position, live.position, {"s0": b'{"n": 999}'}
    )
    seen_during_rebuild: list[int] = []

    def progress(done: int, total: int) -> None:
        seen_during_rebuild.append(done)

    rebuilder = env.projector(page_size=5)
    original_page = rebuilder._page

    async def page_and_peek(generation: int, position: int) -> int | None:
        result = await original_page(generation, position)
        raw = await env.system.docs.get("counter", "s0")
        assert raw is not None and orjson.loads(raw)["n"] == 999, "a half-built model was served"
        return result

    rebuilder._page = page_and_peek  # type: ignore[method-assign]
    replayed = await rebuilder.rebuild(progress)
    assert replayed == 40 and seen_during_rebuild[-1] == 40
    assert await env.counts() == {"s0": 20, "s1": 20}
    state = await env.system.docs.state("counter")
    assert state.generation == live.generation + 1 and state.position == 40
    # The live projector carries on from the new generation without re-applying anything.
    await env.append(streams=1, each=0)
    await env.system.store.append("s1", [NewEvent("E", {})], 20)
    await env.projector().catch_up()
    assert await env.counts() == {"s0": 20, "s1": 21}


async def test_order_read_models_rebuild_to_the_same_documents(env: Env) -> None:
    from ordermesh.services.orders.events import OrderLine

    service = env.system.service
    ids = [
        (await service.create_order("u1", "u1@example.com", "EUR", [OrderLine("A", i + 1, 100)]))["id"]
        for i in range(3)
    ]
    await service.change(ids[0], lambda o, now: o.record_payment("p", o.total, "EUR", now))
    before = await service.user_orders_json("u1", "u1")
    detail_before = await service.get_order(ids[0], "u1")
    for p in env.system.projectors:
        await p.rebuild()
    assert orjson.loads(await service.user_orders_json("u1", "u1")) == orjson.loads(before)
    assert await service.get_order(ids[0], "u1") == detail_before
    assert detail_before["status"] == "paid"

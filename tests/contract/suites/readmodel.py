"""Read models over every backend: exactly-once projection, rebuild beside the live model.

To check an adapter, subclass ``ReadModelContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``build_order_system`` opens it). ``OnMemory``,
``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names
overrides the ``env`` fixture instead, to hand each test an ``Env``.

    class TestSqliteReadModel(OnSqlite, ReadModelContract):
        pass
"""

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


# -- scan: an ordered range read over keys with a prefix -----------------------------------------

# Code-point order, which every backend must share whatever the database's locale: a locale would
# put "p/a" before "p/Z", or ignore the "/" and mix "p/x" with "px".
SCAN_KEYS = ["p/", "p/0", "p/Z", "p/a", "p/a/b", "p/é", "p/😀", "p0", "px", "o/9", "q/1"]


async def _put(env: Env, model: str, docs: dict[str, bytes | None]) -> None:
    live = await env.system.docs.state(model)
    assert await env.system.docs.commit(model, live.generation, live.position, live.position + 1, docs)


class ReadModelContract:
    @pytest.fixture
    async def env(self, database_url: str) -> AsyncIterator[Env]:
        system = await build_order_system(database_url)
        yield Env(system)
        await system.close()

    async def test_racing_projectors_apply_every_event_exactly_once(self, env: Env) -> None:
        await env.append(streams=4, each=15)
        await asyncio.gather(*(env.projector().catch_up() for _ in range(3)))
        assert await env.counts() == {f"s{s}": 15 for s in range(4)}
        state = await env.system.docs.state("counter")
        assert state.position == 60

    async def test_a_failed_page_is_retried_not_half_applied(self, env: Env) -> None:
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

    async def test_live_projector_follows_new_events(self, env: Env) -> None:
        projector = env.projector()
        stop = asyncio.Event()
        task = asyncio.create_task(projector.run(stop, idle_timeout=0.05))
        head = (await env.system.store.append("s0", [NewEvent("E", {})], 0)).position
        assert await projector.wait_until(head, timeout=10)
        assert await env.counts() == {"s0": 1}
        stop.set()
        await task

    async def test_rebuild_serves_the_old_model_until_the_new_one_is_complete(self, env: Env) -> None:
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

    async def test_order_read_models_rebuild_to_the_same_documents(self, env: Env) -> None:
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

    async def test_scan_reads_a_prefix_in_code_point_order_after_a_key_up_to_a_limit(self, env: Env) -> None:
        docs = env.system.docs
        await _put(env, "idx", {k: k.encode() for k in SCAN_KEYS})
        await _put(env, "other", {"p/zz": b"x"})
        inside = ["p/", "p/0", "p/Z", "p/a", "p/a/b", "p/é", "p/😀"]
        assert [k for k, _ in await docs.scan("idx", "p/")] == inside
        assert await docs.scan("idx", "p/", limit=2) == [("p/", b"p/"), ("p/0", b"p/0")]
        assert [k for k, _ in await docs.scan("idx", "p/", after="p/a", limit=3)] == ["p/a/b", "p/é", "p/😀"]
        assert [k for k, _ in await docs.scan("idx", "p/", after="p/az")] == ["p/é", "p/😀"]
        assert await docs.scan("idx", "p/", after="p/😀") == []
        assert [k for k, _ in await docs.scan("idx", "p/", after="a")] == inside, "after below the prefix"
        assert [k for k, _ in await docs.scan("idx", "p")] == [*inside, "p0", "px"]
        assert [k for k, _ in await docs.scan("idx", "")] == sorted(SCAN_KEYS)
        assert await docs.scan("idx", "zz/") == [] and await docs.scan("nothing", "p/") == []
        await _put(env, "idx", {"p/a": None, "p/b": b"new"})
        assert [k for k, _ in await docs.scan("idx", "p/", after="p/Z", limit=2)] == ["p/a/b", "p/b"]

    async def test_scan_reads_the_live_generation_only(self, env: Env) -> None:
        docs = env.system.docs
        await _put(env, "idx", {"p/1": b"old"})
        building = await docs.start_generation("idx")
        assert await docs.commit("idx", building, 0, 5, {"p/1": b"new", "p/2": b"new"})
        assert await docs.scan("idx", "p/") == [("p/1", b"old")], "a generation being built is not served"
        await docs.activate("idx", building)
        assert await docs.scan("idx", "p/") == [("p/1", b"new"), ("p/2", b"new")]

    async def test_scan_is_one_range_read_not_a_walk_of_the_model(self, env: Env) -> None:
        """A page at the far end of a big model comes back as fast as one at its start: the read
        is a range on the key index (asserted by counting, not timing, on memory: by the plan)."""
        docs = env.system.docs
        await _put(env, "big", {f"a/{i:05d}": b"{}" for i in range(3000)} | {"b/1": b"{}", "b/2": b"{}"})
        assert [k for k, _ in await docs.scan("big", "b/")] == ["b/1", "b/2"]
        assert len(await docs.scan("big", "a/", after="a/02990")) == 9
        db = env.system.db
        if db is None:
            return
        sql = (
            "SELECT key, body FROM rm_docs WHERE model = $1 AND generation = "
            "(SELECT generation FROM rm_live WHERE model = $1) "
            "AND key >= $2 AND key < $4 ORDER BY key LIMIT $3"
        )
        if db.dialect == "sqlite":
            plan = " ".join(
                str(r[-1]) for r in await db.fetch("EXPLAIN QUERY PLAN " + sql, "big", "b/", 2, "b0")
            )
            assert "USING INDEX" in plan and "key>? AND key<?" in plan.replace("key>=?", "key>?"), plan
            assert "TEMP B-TREE" not in plan, plan
        else:
            plan = " ".join(str(r[0]) for r in await db.fetch("EXPLAIN " + sql, "big", "b/", 2, "b0"))
            assert "Index" in plan and "Sort" not in plan, plan

    async def test_an_upgraded_projection_rebuilds_a_model_built_by_its_old_version(self, env: Env) -> None:
        from ordermesh.services.orders.events import OrderLine
        from ordermesh.services.orders.listing import user_orders_page
        from ordermesh.services.orders.projections import USER_ORDERS

        service = env.system.service
        await service.create_order("u1", "u1@example.com", "EUR", [OrderLine("A", 1, 100)])
        # The model as version 1 left it: one list document per user, no version stamp.
        docs, live = env.system.docs, await env.system.docs.state(USER_ORDERS)
        old = {k: None for k, _ in await docs.scan(USER_ORDERS, "")}
        old |= {"u:u1": b'{"orders":[{"id":"x"}]}', "o:x": b'{"user_id":"u1"}'}
        assert await docs.commit(USER_ORDERS, live.generation, live.position, live.position, old)
        assert orjson.loads(await user_orders_page(docs, "u1", 10, None))["orders"] == []

        fresh = Projector(env.system.store, docs, env.system.projector(USER_ORDERS).projection)
        await fresh.catch_up()
        (order,) = orjson.loads(await user_orders_page(docs, "u1", 10, None))["orders"]
        assert order["user_id"] == "u1"
        assert await docs.get(USER_ORDERS, "u:u1") is None, "the old documents went with the old generation"
        assert (await docs.state(USER_ORDERS)).generation == live.generation + 1
        await Projector(env.system.store, docs, fresh.projection).catch_up()
        assert (await docs.state(USER_ORDERS)).generation == live.generation + 1, "rebuilt once, not twice"

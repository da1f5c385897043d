"""The inventory under concurrent calls, on SQLite and PostgreSQL, through the real store: stock
never goes negative, no reservation is half made, and available + reserved + shipped stays the
stock that was set.

To check an adapter, subclass ``InventoryConcurrencyContract`` and give the subclass a
``database_url`` fixture: a fresh database for each test (connected twice with
``ordermesh.db.connect``, as two service processes would be). ``OnSqlite`` and ``OnPostgres``
(``tests.helpers``) give the built-in ones. An adapter no URL names overrides the ``stores`` fixture
instead, to hand each test two ``InventoryStore`` on one database.

    class TestSqliteInventoryConcurrency(OnSqlite, InventoryConcurrencyContract):
        pass
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from ordermesh.contracts import inventory as contract
from ordermesh.db import SqlDb, connect
from ordermesh.errors import DomainError, NotFound
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.inventory.domain import Line, Reservation, Status
from ordermesh.services.inventory.store import InventoryStore


async def levels(store: InventoryStore) -> dict[str, tuple[int, int, int]]:
    return {s.sku: (s.available, s.reserved, s.shipped) for s in await store.stock()}


def held(reservations: list[Reservation], status: Status) -> Counter[str]:
    """Units per SKU over the reservations in ``status``."""
    units: Counter[str] = Counter()
    for r in reservations:
        if r.status is status:
            units.update({line.sku: line.quantity for line in r.items})
    return units


class InventoryConcurrencyContract:
    """Every test an InventoryConcurrency adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def stores(self, database_url: str) -> AsyncIterator[list[InventoryStore]]:
        """Two stores on two connections (pools) to one database, as two service processes would be."""
        dbs: list[SqlDb] = [await connect(database_url), await connect(database_url)]
        outbox = await SqlOutbox.open(dbs[0])
        first = await InventoryStore.open(dbs[0], outbox)
        yield [first, InventoryStore(dbs[1], SqlOutbox(dbs[1]))]
        for db in dbs:
            await db.close()

    async def test_fifty_orders_compete_for_the_last_units(self, stores: list[InventoryStore]) -> None:
        store = stores[0]
        await store.set_available("A", 25)
        await store.set_available("B", 40)
        await store.set_available("C", 1000)
        orders = []
        for n in range(50):
            lines = [Line("A", 1), Line("B", 1)] + ([Line("C", 3)] if n % 3 == 0 else [])
            orders.append(list(reversed(lines)) if n % 2 else lines)  # both listing orders of the SKUs
        results = await asyncio.gather(
            *(stores[n % 2].reserve(f"o-{n}", lines) for n, lines in enumerate(orders))
        )
        reserved = [r for r in results if r.status is Status.RESERVED]
        assert len(reserved) == 25  # exactly what was available of A
        assert all(r.short_skus == ("A",) for r in results if r.status is Status.REJECTED)
        c_units = 3 * sum(1 for r in reserved if any(line.sku == "C" for line in r.items))
        assert await levels(store) == {"A": (0, 25, 0), "B": (15, 25, 0), "C": (1000 - c_units, c_units, 0)}
        assert held(results, Status.RESERVED) == Counter({"A": 25, "B": 25, "C": c_units})
        keys = Counter(o.message.routing_key for o in await store.outbox.pending(1000))
        assert keys == {contract.STOCK_RESERVED: 25, contract.STOCK_RESERVATION_FAILED: 25}

    async def test_random_multi_line_orders_are_all_or_nothing(self, stores: list[InventoryStore]) -> None:
        rng = random.Random(7)
        skus = {"P": 12, "Q": 9, "R": 15, "S": 6}
        for sku, initial in skus.items():
            await stores[0].set_available(sku, initial)
        orders = [
            [Line(sku, rng.randint(1, 3)) for sku in rng.sample(sorted(skus), rng.randint(1, 4))]
            for _ in range(50)
        ]
        results = await asyncio.gather(*(stores[n % 2].reserve(f"o-{n}", o) for n, o in enumerate(orders)))
        statuses = Counter(r.status for r in results)
        assert statuses[Status.RESERVED] > 0 and statuses[Status.REJECTED] > 0
        now = await levels(stores[0])
        holding = held(results, Status.RESERVED)
        for sku, initial in skus.items():
            available, reserved, shipped = now[sku]
            assert available >= 0 and shipped == 0
            assert reserved == holding[sku]  # every reserved order holds all its lines, the others none
            assert available + reserved == initial
        for r, lines in zip(results, orders, strict=True):
            if r.status is Status.RESERVED:
                assert sorted(r.items) == sorted(lines)

    async def test_concurrent_retries_of_one_order_hold_it_once(self, stores: list[InventoryStore]) -> None:
        await stores[0].set_available("A", 100)
        results = await asyncio.gather(*(stores[n % 2].reserve("o-1", [Line("A", 7)]) for n in range(20)))
        assert {r.status for r in results} == {Status.RESERVED} and len(set(results)) == 1
        assert await levels(stores[0]) == {"A": (93, 7, 0)}
        assert len(await stores[0].outbox.pending(100)) == 1

    async def test_a_release_racing_its_reserve_always_wins(self, stores: list[InventoryStore]) -> None:
        await stores[0].set_available("A", 1000)
        rng = random.Random(3)
        calls: list[Awaitable[Reservation]] = []
        for n in range(25):
            pair = [stores[0].reserve(f"o-{n}", [Line("A", 2)]), stores[1].release(f"o-{n}", "cancelled")]
            rng.shuffle(pair)
            calls += pair
        await asyncio.gather(*calls)
        for n in range(25):
            # Whichever came first, the order ends with nothing held and never reserves again.
            final = await stores[0].reserve(f"o-{n}", [Line("A", 2)])
            assert final.status in (Status.RELEASED, Status.REJECTED)
        assert await levels(stores[0]) == {"A": (1000, 0, 0)}

    async def test_available_reserved_shipped_add_up_to_the_stock_set(
        self, stores: list[InventoryStore]
    ) -> None:
        """Random batches of concurrent reserves, retries, releases and commits between operator sets:
        per SKU the three columns always add up to the stock set, and reserved/shipped equal what the
        reservations hold/shipped."""
        rng = random.Random(11)
        skus = ["W", "X", "Y", "Z"]
        expected: dict[str, int] = {}
        orders: dict[str, list[Line]] = {}

        async def tolerant(call: Awaitable[Reservation]) -> Any:
            try:
                return await call
            except (DomainError, NotFound):  # releasing a committed order, committing one not reserved yet
                return None

        for round_ in range(8):
            for sku in rng.sample(skus, 2):
                expected[sku] = (await stores[round_ % 2].set_available(sku, rng.randint(0, 30))).total
            batch: list[Awaitable[Any]] = []
            for _ in range(30):
                store, known = rng.choice(stores), sorted(orders)
                what = rng.random()
                if what < 0.45 or not known:
                    order_id = f"o-{len(orders)}"
                    orders[order_id] = [
                        Line(s, rng.randint(1, 4)) for s in rng.sample(skus, rng.randint(1, 3))
                    ]
                    batch.append(tolerant(store.reserve(order_id, orders[order_id])))
                elif what < 0.6:
                    order_id = rng.choice(known)
                    batch.append(tolerant(store.reserve(order_id, orders[order_id])))
                elif what < 0.8:
                    batch.append(tolerant(store.release(rng.choice(known), "random")))
                else:
                    batch.append(tolerant(store.commit(rng.choice(known))))
            await asyncio.gather(*batch)
            now = await levels(stores[0])
            assert {sku: sum(now[sku]) for sku in expected} == expected, f"round {round_}"
            every = [r for r in [await stores[0].reservation(o) for o in orders] if r is not None]
            reserved, shipped = held(every, Status.RESERVED), held(every, Status.COMMITTED)
            for sku in expected:
                assert (now[sku][1], now[sku][2]) == (reserved[sku], shipped[sku]), f"round {round_}"
        statuses = Counter(r.status for r in every)
        assert all(statuses[s] > 0 for s in Status), statuses  # every path was taken

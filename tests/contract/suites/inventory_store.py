"""The inventory store on SQLite and PostgreSQL: all-or-nothing reservations, idempotency by order
id, the lifecycle rules, validation, and messages in the outbox with the stock change.

To check an adapter, subclass ``InventoryStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (connected with ``ordermesh.db.connect``). ``OnSqlite`` and
``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names overrides the
``db`` fixture instead, to hand each test the ``SqlDb`` the store is built on.

    class TestSqliteInventoryStore(OnSqlite, InventoryStoreContract):
        pass
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from ordermesh.clock import FakeClock
from ordermesh.contracts import inventory as contract
from ordermesh.db import SqlDb, Tx, connect
from ordermesh.errors import DomainError, NotFound, ValidationError
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.messaging.port import Message
from ordermesh.services.inventory.domain import (
    DEMO_CATALOG,
    Line,
    Reservation,
    Status,
    StockLevel,
    reservation_id,
)
from ordermesh.services.inventory.store import InventoryStore


async def levels(store: InventoryStore) -> dict[str, tuple[int, int, int]]:
    return {s.sku: (s.available, s.reserved, s.shipped) for s in await store.stock()}


async def messages(store: InventoryStore) -> list[Message]:
    return [o.message for o in await store.outbox.pending(1000)]


def violations(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {v.field for v in exc.value.violations}


class FailingOutbox(SqlOutbox):
    """Writes its rows, then fails: the transaction around it must undo everything."""

    async def add(self, tx: Tx, exchange: str, batch: Sequence[Message]) -> None:
        await super().add(tx, exchange, batch)
        raise RuntimeError("crash after the outbox insert")


class InventoryStoreContract:
    """Every test an InventoryStore adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def db(self, database_url: str) -> AsyncIterator[SqlDb]:
        database = await connect(database_url)
        yield database
        await database.close()

    @pytest.fixture
    async def store(self, db: SqlDb) -> InventoryStore:
        inventory = await InventoryStore.open(db, await SqlOutbox.open(db), FakeClock())
        await inventory.set_available("A", 10)
        await inventory.set_available("B", 5)
        return inventory

    async def test_seed_stocks_the_demo_catalog_only_into_an_empty_table(self, db: SqlDb) -> None:
        store = await InventoryStore.open(db, await SqlOutbox.open(db))
        assert await store.seed() is True
        assert [(s.sku, s.available, s.reserved, s.shipped) for s in await store.stock()] == [
            (f"SKU-{n}", 1000, 0, 0) for n in range(1, 10)
        ]
        await store.set_available("SKU-1", 3)
        assert await store.seed() is False  # a restart keeps what is there
        assert (await store.stock(["SKU-1"]))[0].available == 3
        assert len(DEMO_CATALOG) == 9

    async def test_seed_does_nothing_once_any_sku_exists(self, store: InventoryStore) -> None:
        assert await store.seed() is False
        assert sorted(await levels(store)) == ["A", "B"]

    async def test_reserve_holds_every_line_and_queues_stock_reserved(self, store: InventoryStore) -> None:
        got = await store.reserve("o-1", [Line("B", 2), Line("A", 3)])
        assert got.status is Status.RESERVED and got.reservation_id == reservation_id("o-1")
        assert got.items == (Line("A", 3), Line("B", 2))  # one line per SKU, sorted
        assert await levels(store) == {"A": (7, 3, 0), "B": (3, 2, 0)}
        [message] = await messages(store)
        assert message.routing_key == contract.STOCK_RESERVED and message.correlation_id == "o-1"
        assert message.message_id == contract.message_id(contract.STOCK_RESERVED, "o-1")
        body = contract.StockReserved.model_validate(message.payload())
        assert body.reservation_id == got.reservation_id
        assert [(i.sku, i.quantity) for i in body.items] == [("A", 3), ("B", 2)]

    async def test_one_short_line_rejects_the_whole_order_and_holds_nothing(
        self, store: InventoryStore
    ) -> None:
        got = await store.reserve("o-1", [Line("A", 3), Line("B", 6), Line("NOPE", 1)])
        assert got.status is Status.REJECTED
        assert got.short_skus == ("B", "NOPE")
        assert "B (6 asked, 5 available)" in got.reason and "NOPE (unknown SKU)" in got.reason
        assert "A" not in got.short_skus
        assert await levels(store) == {"A": (10, 0, 0), "B": (5, 0, 0)}
        [message] = await messages(store)
        body = contract.StockReservationFailed.model_validate(message.payload())
        assert message.routing_key == contract.STOCK_RESERVATION_FAILED
        assert body.short_skus == ["B", "NOPE"] and body.reason == got.reason

    async def test_lines_of_the_same_sku_are_merged(self, store: InventoryStore) -> None:
        got = await store.reserve("o-1", [Line("A", 4), Line("B", 1), Line("A", 6)])
        assert got.status is Status.RESERVED and got.items == (Line("A", 10), Line("B", 1))
        assert await levels(store) == {"A": (0, 10, 0), "B": (4, 1, 0)}
        # Merged, 11 units of A are short even though each line alone fits.
        assert (await store.reserve("o-2", [Line("B", 3), Line("B", 3)])).short_skus == ("B",)

    async def test_a_retried_reserve_answers_the_first_outcome_and_changes_nothing(
        self, store: InventoryStore
    ) -> None:
        first = await store.reserve("o-1", [Line("A", 4)])
        again = await store.reserve("o-1", [Line("A", 2), Line("A", 2)])  # the same lines, merged
        assert again == first
        rejected = await store.reserve("o-2", [Line("B", 9)])
        await store.set_available("B", 100)
        assert await store.reserve("o-2", [Line("B", 9)]) == rejected  # a "no" stays a "no"
        assert await levels(store) == {"A": (6, 4, 0), "B": (100, 0, 0)}
        assert len(await messages(store)) == 2

    async def test_a_second_reserve_with_other_items_is_refused(self, store: InventoryStore) -> None:
        await store.reserve("o-1", [Line("A", 4)])
        with pytest.raises(DomainError, match="other items") as refused:
            await store.reserve("o-1", [Line("A", 5)])
        assert not isinstance(refused.value, ValidationError)
        assert await levels(store) == {"A": (6, 4, 0), "B": (5, 0, 0)}

    async def test_release_gives_units_back_once(self, store: InventoryStore) -> None:
        await store.reserve("o-1", [Line("A", 4), Line("B", 5)])
        released = await store.release("o-1", "payment failed")
        assert released.status is Status.RELEASED and released.reason == "payment failed"
        assert await store.release("o-1", "again") == released
        assert await levels(store) == {"A": (10, 0, 0), "B": (5, 0, 0)}
        keys = [m.routing_key for m in await messages(store)]
        assert keys == [contract.STOCK_RESERVED, contract.STOCK_RELEASED]
        body = contract.StockReleased.model_validate((await messages(store))[1].payload())
        assert body.reason == "payment failed" and len(body.items) == 2

    async def test_commit_moves_reserved_to_shipped_once(self, store: InventoryStore) -> None:
        await store.reserve("o-1", [Line("A", 4)])
        committed = await store.commit("o-1")
        assert committed.status is Status.COMMITTED
        assert await store.commit("o-1") == committed
        assert await levels(store) == {"A": (6, 0, 4), "B": (5, 0, 0)}
        keys = [m.routing_key for m in await messages(store)]
        assert keys == [contract.STOCK_RESERVED, contract.STOCK_COMMITTED]

    async def test_shipped_goods_are_not_released_and_released_ones_not_shipped(
        self, store: InventoryStore
    ) -> None:
        await store.reserve("shipped", [Line("A", 1)])
        await store.commit("shipped")
        with pytest.raises(DomainError, match="committed"):
            await store.release("shipped", "cancel")
        await store.reserve("cancelled", [Line("A", 1)])
        await store.release("cancelled")
        with pytest.raises(DomainError, match="released"):
            await store.commit("cancelled")
        await store.reserve("short", [Line("B", 50)])
        with pytest.raises(DomainError, match="rejected"):
            await store.commit("short")
        with pytest.raises(NotFound):
            await store.commit("never")
        assert await levels(store) == {"A": (9, 0, 1), "B": (5, 0, 0)}

    async def test_release_of_a_rejected_reservation_changes_nothing(self, store: InventoryStore) -> None:
        rejected = await store.reserve("o-1", [Line("B", 50)])
        assert await store.release("o-1", "compensate") == rejected
        assert [m.routing_key for m in await messages(store)] == [contract.STOCK_RESERVATION_FAILED]

    async def test_release_before_reserve_makes_the_later_reserve_rejected(
        self, store: InventoryStore
    ) -> None:
        tombstone = await store.release("o-1", "order cancelled")
        assert tombstone.status is Status.RELEASED and tombstone.items == ()
        assert await messages(store) == []  # nothing moved
        late = await store.reserve("o-1", [Line("A", 2)])
        assert late.status is Status.REJECTED and late.reason == "released before reserve"
        assert late.short_skus == () and late.reservation_id == tombstone.reservation_id
        assert await store.reserve("o-1", [Line("A", 2)]) == late
        assert await store.release("o-1") == late
        assert await levels(store) == {"A": (10, 0, 0), "B": (5, 0, 0)}
        [message] = await messages(store)
        assert contract.StockReservationFailed.model_validate(message.payload()).short_skus == []

    @pytest.mark.parametrize(
        ("order_id", "items", "fields"),
        [
            ("", [Line("A", 1)], {"order_id"}),
            ("o 1", [Line("A", 1)], {"order_id"}),
            ("o-1", [], {"items"}),
            ("o-1", [Line("A", 0), Line("B", -2)], {"items[0].quantity", "items[1].quantity"}),
            ("o-1", [Line("", 1), Line("A;drop", 1)], {"items[0].sku", "items[1].sku"}),
            ("", [Line("A", 0)], {"order_id", "items[0].quantity"}),
        ],
    )
    async def test_malformed_reservations_name_every_bad_field(
        self, store: InventoryStore, order_id: str, items: list[Line], fields: set[str]
    ) -> None:
        with pytest.raises(ValidationError) as invalid:
            await store.reserve(order_id, items)
        assert violations(invalid) == fields
        assert await messages(store) == []

    async def test_malformed_release_commit_set_and_query(self, store: InventoryStore) -> None:
        with pytest.raises(ValidationError) as invalid:
            await store.release("", "x")
        assert violations(invalid) == {"order_id"}
        with pytest.raises(ValidationError) as invalid:
            await store.release("o-1", "x" * 501)
        assert violations(invalid) == {"reason"}
        with pytest.raises(ValidationError):
            await store.commit("")
        with pytest.raises(ValidationError) as invalid:
            await store.set_available("A", -1)
        assert violations(invalid) == {"available"}
        with pytest.raises(ValidationError) as invalid:
            await store.stock(["A", "b a d"])
        assert violations(invalid) == {"skus[1]"}

    async def test_stock_of_some_skus_and_unknown_ones(self, store: InventoryStore) -> None:
        assert await store.stock(["B", "A", "B"]) == [StockLevel("A", 10, 0, 0), StockLevel("B", 5, 0, 0)]
        with pytest.raises(NotFound, match="unknown SKU: X, Y"):
            await store.stock(["A", "Y", "X"])

    async def test_set_changes_only_available(self, store: InventoryStore) -> None:
        await store.reserve("o-1", [Line("A", 4)])
        await store.reserve("o-2", [Line("A", 1)])
        await store.commit("o-2")
        assert await store.set_available("A", 2) == StockLevel("A", 2, 4, 1)
        assert await store.set_available("NEW", 0) == StockLevel("NEW", 0, 0, 0)
        await store.release("o-1")
        assert (await store.stock(["A"]))[0] == StockLevel("A", 6, 0, 1)

    async def test_stock_reservation_and_message_commit_together_or_not_at_all(self, db: SqlDb) -> None:
        good = await InventoryStore.open(db, await SqlOutbox.open(db))
        await good.set_available("A", 10)
        await good.reserve("held", [Line("A", 2)])
        broken = InventoryStore(db, FailingOutbox(db))
        calls: list[Callable[[], Awaitable[Reservation]]] = [
            lambda: broken.reserve("o-1", [Line("A", 3)]),
            lambda: broken.reserve("o-2", [Line("A", 30)]),
            lambda: broken.release("held"),
            lambda: broken.commit("held"),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="crash"):
                await call()
        assert await levels(good) == {"A": (8, 2, 0)}
        assert await good.reservation("o-1") is None and await good.reservation("o-2") is None
        held = await good.reservation("held")
        assert held is not None and held.status is Status.RESERVED
        assert [m.routing_key for m in await messages(good)] == [contract.STOCK_RESERVED]
